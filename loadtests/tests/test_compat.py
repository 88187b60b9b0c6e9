"""Keep-alive must survive descriptors above 1024 in the load generator (loadtests/compat.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHECK = textwrap.dedent("""
    import locust  # monkey-patches, as in a real run
    import socket
    from geventhttpclient.connectionpool import ConnectionPool
    {patch}
    hold = [socket.socket() for _ in range(1100)]   # push new fds past 1024
    alive, peer = socket.socketpair()
    assert alive.fileno() >= 1024
    idle = ConnectionPool._is_socket_alive(None, alive)
    peer.sendall(b"x")                               # stray bytes: not reusable
    dirty = ConnectionPool._is_socket_alive(None, alive)
    closed_a, closed_b = socket.socketpair()
    closed_b.close()                                 # FIN from the server
    fin = ConnectionPool._is_socket_alive(None, closed_a)
    print(idle, dirty, fin)
""")


def run(patch: str) -> str:
    proc = subprocess.run([sys.executable, "-c", CHECK.format(patch=patch)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_unpatched_pool_calls_a_live_high_fd_socket_dead():
    # documents the upstream fault this project works around
    assert run("") == "False False False"


def test_patched_pool_keeps_live_sockets_and_drops_dead_ones():
    assert run("from loadtests import compat; compat.apply()") == "True False False"
