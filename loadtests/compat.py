"""Fixes applied to the libraries under Locust before any user runs.

geventhttpclient 2.6.1 (under Locust's FastHttpUser) checks that an idle pooled
socket is still alive with ``select.select([sock], [], [], 0)``.  select() cannot
take a descriptor numbered 1024 or more: it raises ValueError, the check answers
"dead", and the pool opens a new connection for every request.  Any process
holding more than ~1,000 connections (every scale test) silently loses
keep-alive: at 5,000 subscribers nginx accepted 47,000 connections in 75 s with
1.3 requests per connection.  ``poll()`` has no such ceiling.
"""

from __future__ import annotations

import select

from gevent import monkey

# gevent replaces select.poll; the original is non-blocking with a zero timeout.
_original_poll = monkey.get_original("select", "poll")
_READABLE = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | select.POLLNVAL


def is_idle_socket_alive(_pool, sock) -> bool:
    """An idle keep-alive socket is alive when nothing (data, FIN, error) is waiting on it."""
    if sock is None:
        return False
    try:
        fd = sock.fileno()
        if fd < 0:
            return False
        poller = _original_poll()
        poller.register(fd, _READABLE)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False


def apply() -> None:
    from geventhttpclient.connectionpool import ConnectionPool

    ConnectionPool._is_socket_alive = is_idle_socket_alive
