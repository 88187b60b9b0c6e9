"""Connection accounting: the HTTP server of the target counts connections and the requests
each carries (so connection reuse on the nginx->backend hop is measurable), caps open
connections, and answers what Tornado would refuse with an empty 400 as JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tornado import httputil
from tornado.httpserver import HTTPServer


@dataclass
class ConnectionStats:
    """Connections and requests per connection; O(1) to update per request."""

    connections_accepted: int = 0
    connections_rejected: int = 0
    connections_closed: int = 0
    requests: int = 0
    # closed connections by how many requests each carried: {requests: connections}
    requests_per_closed_connection: dict[int, int] = field(default_factory=dict)
    # open connection -> requests so far (keyed by Tornado's per-connection object)
    open_connections: dict[object, int] = field(default_factory=dict)

    def connection_figures(self) -> dict:
        """What /stats says of connections and their reuse."""
        closed = self.requests_per_closed_connection
        open_counts = list(self.open_connections.values())
        total_conns = self.connections_closed + len(open_counts)
        total_reqs = sum(k * v for k, v in closed.items()) + sum(open_counts)
        return {
            "connections": {
                "accepted": self.connections_accepted,
                "open": len(open_counts),
                "closed": self.connections_closed,
                "rejected": self.connections_rejected,
            },
            "requests": self.requests,
            "requests_per_connection": {
                "mean": round(total_reqs / total_conns, 4) if total_conns else None,
                "closed_histogram": {str(k): v for k, v in sorted(closed.items())},
                "open_max": max(open_counts, default=0),
            },
        }


# A body over the server's limit is refused with a 413 before it is read.  Closing at once
# while the client is still sending makes the kernel answer the unread bytes with a reset,
# and the reset can destroy the 413 before the client reads it (what nginx's lingering_close
# prevents).  So the refused body is read and thrown away, up to this many bytes and within
# REFUSED_BODY_TIMEOUT_S, and the connection closes after it; a larger body is cut at once.
REFUSED_BODY_DRAIN_BYTES = 16 << 20
REFUSED_BODY_TIMEOUT_S = 30.0


class PollHTTPServer(HTTPServer):
    """HTTPServer that counts connections and requests per connection, and caps connections.

    ``refuse_body_above``: bodies larger than this are answered 413 before they are read
    (drained, bounded, then the connection closes)."""

    def initialize(self, *args, stats: ConnectionStats, max_connections: int,  # type: ignore[override]
                   refuse_body_above: int = 1 << 20, **kwargs) -> None:
        kwargs.setdefault("max_body_size", max(REFUSED_BODY_DRAIN_BYTES, refuse_body_above))
        kwargs.setdefault("body_timeout", REFUSED_BODY_TIMEOUT_S)
        super().initialize(*args, **kwargs)
        self.stats = stats
        self.max_connections = max_connections
        self.refuse_body_above = refuse_body_above

    def handle_stream(self, stream, address) -> None:
        if len(self.stats.open_connections) >= self.max_connections:
            # Answer instead of letting the fd count grow past what the loop can watch.
            self.stats.connections_rejected += 1
            body = b'{"error": "too many open connections (limit %d)"}' % self.max_connections
            stream.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            stream.close()
            return
        self.stats.connections_accepted += 1
        self.stats.open_connections[stream] = 0
        super().handle_stream(stream, address)

    def start_request(self, server_conn, request_conn):
        # Tornado asks for the next request's delegate before that request arrives, so
        # count on headers_received, not here.
        return _CountingDelegate(super().start_request(server_conn, request_conn),
                                 self.stats, server_conn.stream, request_conn,
                                 self.refuse_body_above, self.conn_params.max_body_size)

    def on_close(self, server_conn) -> None:
        super().on_close(server_conn)
        stats = self.stats
        n = stats.open_connections.pop(server_conn.stream, 0)
        stats.connections_closed += 1
        stats.requests_per_closed_connection[n] = stats.requests_per_closed_connection.get(n, 0) + 1


class _CountingDelegate(httputil.HTTPMessageDelegate):
    """Counts requests per connection, and answers what Tornado would refuse with an empty
    400 (too many query fields, a body over the server's limit) as JSON, like the API."""

    __slots__ = ("_inner", "_stats", "_stream", "_conn", "_max_body", "_drain_limit",
                 "_refused", "_draining")

    def __init__(self, inner, stats: ConnectionStats, stream, conn, max_body: int | None,
                 drain_limit: int | None):
        self._inner, self._stats, self._stream = inner, stats, stream
        self._conn, self._max_body, self._drain_limit = conn, max_body, drain_limit
        self._refused = self._draining = False

    def headers_received(self, start_line, headers):
        stats = self._stats
        stats.requests += 1
        stats.open_connections[self._stream] = stats.open_connections.get(self._stream, 0) + 1
        length = headers.get("Content-Length", "")
        if self._max_body is not None and length.isdigit() and int(length) > self._max_body:
            # refused before the body is read; the body is drained (bounded) so the client
            # reads the answer instead of a reset, then the connection closes
            drain = self._drain_limit is not None and int(length) <= self._drain_limit
            return self._refuse(413, "Payload Too Large", f"body of {length} bytes is over "
                                f"the limit of {self._max_body}", finish=not drain)
        try:
            return self._inner.headers_received(start_line, headers)
        except httputil.HTTPInputError as e:
            return self._refuse(400, "Bad Request", f"malformed request: {e}")

    def _refuse(self, code: int, reason: str, message: str, finish: bool = True) -> None:
        self._refused = True
        body = json.dumps({"error": message, "status": code}).encode()
        self._conn.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", code, reason),
            httputil.HTTPHeaders({"Content-Type": "application/json",
                                  "Content-Length": str(len(body)), "Connection": "close"}),
            body)
        if finish:
            self._conn.finish()
        else:  # finished (and closed) once the body has been read and dropped
            self._draining = True
        return None

    def data_received(self, chunk):
        return None if self._refused else self._inner.data_received(chunk)

    def finish(self):
        if self._draining:
            self._draining = False
            self._conn.finish()
            return None
        return None if self._refused else self._inner.finish()

    def on_connection_close(self):
        return None if self._refused else self._inner.on_connection_close()
