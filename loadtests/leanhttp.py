"""A lean HTTP/1.1 client for long polling: one keep-alive connection, receipt stamped by the kernel.

    conn = LeanConnection("127.0.0.1", 8080)
    resp = conn.request(build_request("GET", "/channels/a?timeout=20", "127.0.0.1"))
    resp.status, resp.header("x-cursor"), resp.body, resp.received   # received: epoch seconds

Why not Locust's FastHttpUser: per long-poll answer, geventhttpclient plus
Locust's request wrapper cost ~6x the CPU of a raw client (profile in
docs/accuracy.md), and on two shared cores that CPU shows up as
latency.  This client sends prebuilt request bytes and parses only what a long
poll needs (status, headers, a Content-Length or chunked body).

Receipt time: with ``SO_TIMESTAMPNS`` set, Linux attaches to every ``recvmsg``
the time (CLOCK_REALTIME, ns) at which the last segment it returns entered the
receive path, also on loopback TCP.  ``received`` is that stamp of the read that
completed the answer, so the time the answer waited behind other greenlets in
the load generator is not counted.  Where the kernel gives no stamp (another OS,
or ``kernel_timestamps=False``), ``received`` is ``time.time()`` right after that
read and ``clock`` says ``"user"``.

Memory: every read lands in one buffer the module owns (``recv_into``), and only the
bytes received are copied out.  Reading with ``recv(65536)`` instead allocates 64 KiB per
read and shrinks it to the answer's size: millions of such reads in a soak fragment the
heap, and the process's RSS grew for hours (docs/measured.md, the soak).  The buffer is
safe to share between greenlets: nothing switches between the read and the copy.

A numeric host (``127.0.0.1``) is connected without a name lookup: gevent would hand
each ``getaddrinfo`` to a thread of its resolver pool.

Source address: ``source="127.0.0.2"`` binds the connection to that local address before
it connects, with ``IP_BIND_ADDRESS_NO_PORT`` so that the port is chosen at connect time
(per destination, as without a bind): each source address then has the whole ephemeral
range to every destination, which is how one host holds more connections to one address
and port than ``ip_local_port_range`` has ports.

Timeouts: a request (send and read) that takes longer than ``timeout`` fails with
``TimeoutError("timed out")``.  The sockets themselves wait without a timeout: gevent makes a
Timeout object and a timer for every wait on a socket that has one, a tenth of the client's
CPU per long-poll answer (py-spy, 1,000 subscribers).  Instead one watchdog greenlet per
process looks at the busy connections a few times a timeout and closes any past its
deadline, which wakes the waiting read with an error that the request turns into the
timeout.

Reads: an answer is never in the socket yet when its request has just been sent (a long
poll is held; even a publish's answer needs nginx and a backend to run first), so a read
right after the send fails with EAGAIN, which costs a system call and a Python exception
before gevent waits.  The first read of each answer waits for the socket to be readable
first (through the socket's own read watcher, as gevent's ``recv`` does after its EAGAIN);
later reads of the same answer read at once, as the rest is usually there.

Sockets are gevent's (cooperative).  This module imports gevent, not locust.
"""

from __future__ import annotations

import ipaddress
import json
import struct
import time
import weakref

import gevent
from gevent import socket

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux value; absent elsewhere
_ANC_SIZE = 64  # room for one struct timespec control message
_TIMESPEC = struct.Struct("qq")
_READ_SIZE = 65536
_READ_BUF = bytearray(_READ_SIZE)  # every read's landing place (see the module's doc)
_READ_VIEW = memoryview(_READ_BUF)
CLOCK_KERNEL = "kernel (SO_TIMESTAMPNS)"
CLOCK_USER = "user (time.time after read)"
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux value
_JSON = json.JSONDecoder()


def _numeric_family(host: str) -> int | None:
    """AF_INET / AF_INET6 for an address literal; None for a name (looked up)."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if addr.version == 6 else socket.AF_INET


_live: weakref.WeakSet[LeanConnection] = weakref.WeakSet()  # every connected client
_watchdog: gevent.Greenlet | None = None
_watch_every_s = 5.0  # a quarter of the shortest timeout seen (0.05 to 5 s)


def _watch() -> None:
    """Close every connection busy past its timeout, until none is connected."""
    while _live:
        gevent.sleep(_watch_every_s)
        now = time.monotonic()
        for conn in list(_live):
            since = conn.busy_since
            if since and now - since > conn.timeout and conn.sock is not None:
                conn.expired = True
                conn.close()  # the greenlet waiting on it wakes with an error


def _watch_over(conn: LeanConnection) -> None:
    global _watchdog, _watch_every_s
    _live.add(conn)
    every = max(min(conn.timeout / 4, 5.0), 0.05)
    if every < _watch_every_s and _watchdog is not None:
        _watchdog.kill(block=False)  # (asleep for the longer interval)
        _watchdog = None
    _watch_every_s = min(_watch_every_s, every)
    if _watchdog is None or _watchdog.dead:
        _watchdog = gevent.spawn(_watch)


class HttpError(Exception):
    """The peer broke the protocol or closed the connection mid-answer."""


class Response:
    __slots__ = ("status", "headers", "body", "received")

    def __init__(self, status: int, headers: dict[str, str], body: bytes, received: float):
        self.status, self.headers, self.body, self.received = status, headers, body, received

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        """The body as JSON, read as ``json.loads(body)`` reads it, at half its cost:
        ``loads`` sniffs the bytes' encoding and matches whitespace around the document on
        every call (1.5 of 3 us for a one-message poll answer here).  UTF-8 without
        surrounding whitespace, as the target sends, is decoded directly; anything else
        goes through ``json.loads`` (and raises its ValueError)."""
        body = self.body
        try:
            text = body.decode()
            obj, end = _JSON.raw_decode(text)
        except ValueError:  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
            return json.loads(body)
        return obj if end == len(text) else json.loads(body)


def build_request(method: str, target: str, host: str, body: bytes | None = None,
                  close: bool = False, content_type: str = "application/json",
                  headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """The request's bytes, built once per request (or once per user for a fixed one).
    ``headers``: more header lines, as (name, value) (a protocol's cursor, say)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    if headers:
        lines += [f"{name}: {value}" for name, value in headers]
    if body is not None:
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body if body is not None else head


class LeanConnection:
    """One keep-alive connection; one request at a time; reconnects lazily after a close."""

    # one per held poll: slots, not an instance dict (benchmarks/held_poll_memory.py)
    __slots__ = ("host", "port", "source", "timeout", "connect_timeout", "kernel_timestamps",
                 "clock", "sock", "buf", "connects", "idle_since", "busy_since", "expired",
                 "family", "stale_after_s", "__weakref__")

    def __init__(self, host: str, port: int, timeout: float = 300.0,
                 connect_timeout: float = 10.0, kernel_timestamps: bool = True,
                 source: str | None = None) -> None:
        # idle longer than this, a connection is checked before it is used again (1 s: far
        # below any keep-alive timeout, and a busy poller never pays the check)
        self.stale_after_s = 1.0
        self.host, self.port, self.source = host, port, source
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.kernel_timestamps = kernel_timestamps
        self.clock = CLOCK_KERNEL if kernel_timestamps else CLOCK_USER
        self.sock: socket.socket | None = None
        self.buf = b""
        self.connects = 0
        self.idle_since = 0.0  # time.monotonic() when the last answer was read
        self.busy_since = 0.0  # time.monotonic() when the request under way began (0: none)
        self.expired = False  # the watchdog closed it: the request under way timed out
        self.family = _numeric_family(host)

    # --- connection
    def _connect(self) -> socket.socket:
        if self.family is None:
            sock = socket.create_connection(
                (self.host, self.port), timeout=self.connect_timeout,
                source_address=(self.source, 0) if self.source else None)
        else:  # a numeric address: no lookup through gevent's resolver threads
            sock = socket.socket(self.family, socket.SOCK_STREAM)
            try:
                if self.source:  # the port is chosen at connect(), per destination
                    try:
                        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                    except OSError:
                        pass  # an older kernel: bind() takes a port of its own
                    sock.bind((self.source, 0))
                sock.settimeout(self.connect_timeout)
                sock.connect((self.host, self.port))
            except BaseException:
                sock.close()
                raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.kernel_timestamps:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            except OSError:
                self.kernel_timestamps, self.clock = False, CLOCK_USER
        sock.settimeout(None)  # waits without a gevent Timeout each: the watchdog times out
        self.sock, self.buf = sock, b""
        self.connects += 1
        _watch_over(self)
        return sock

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock, self.buf = None, b""

    # --- one exchange
    def request(self, raw: bytes, close: bool = False) -> Response:
        """Send ``raw`` and read one whole answer; on any error the connection is closed.

        ``close``: the request asked for ``Connection: close`` (so will the socket).  A
        connection idle for longer than ``stale_after_s`` is first checked: one the server
        has closed meanwhile (nginx's keepalive_timeout) is replaced before the request is
        sent, as browsers do, instead of failing it."""
        now = time.monotonic()
        if self.sock is not None and now - self.idle_since > self.stale_after_s \
                and self._peer_closed():
            self.close()
        self.busy_since = now
        try:
            sock = self.sock or self._connect()
            # one send() takes a request this small whole; gevent's sendall asks the socket
            # for SO_SNDBUF on every call to size its chunks (a syscall per request)
            sent = sock.send(raw)
            if sent < len(raw):
                sock.sendall(raw[sent:])
            resp = self._read_response(raw.startswith(b"HEAD "))
        except BaseException as e:
            self.busy_since = 0.0
            self.close()
            if self.expired:
                self.expired = False
                raise TimeoutError("timed out") from e
            raise
        self.busy_since = 0.0
        if close or resp.headers.get("connection", "").lower() == "close":
            self.close()
        self.idle_since = time.monotonic()
        return resp

    def _peer_closed(self) -> bool:
        """Has the server closed (or written to) this idle connection?  A peek that does
        not wait: nothing to read is a live connection."""
        assert self.sock is not None
        self.sock.settimeout(0.0)
        try:
            # b"": the server closed it; a byte: it said something unasked (e.g. a 408)
            self.sock.recv(1, socket.MSG_PEEK)
            return True
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            if self.sock is not None:
                self.sock.settimeout(None)

    def _recv(self, wait_first: bool = False) -> tuple[bytes, float]:
        """One read: its bytes and the receipt time of its last segment.  ``wait_first``:
        wait until the socket is readable before reading (the first read of an answer; see
        the module's doc)."""
        sock = self.sock
        if sock is None:
            raise ConnectionError("read on a closed connection")
        if wait_first:
            # gevent's own wait on the socket's read watcher; a close by the watchdog or
            # another greenlet wakes it with an error (cancel_wait), as it wakes gevent's recv
            sock._wait(sock._read_event)
        if not self.kernel_timestamps:
            n = sock.recv_into(_READ_VIEW)
            return bytes(_READ_VIEW[:n]), time.time()
        n, anc, _flags, _addr = sock.recvmsg_into([_READ_VIEW], _ANC_SIZE)
        data = bytes(_READ_VIEW[:n])  # copied before anything can switch greenlets
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                sec, nsec = _TIMESPEC.unpack_from(payload)
                return data, sec + nsec * 1e-9
        return data, time.time()  # no stamp on this read (e.g. an empty one at EOF)

    def _read_response(self, head_only: bool) -> Response:
        buf, received = self.buf, 0.0
        first = True
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            data, received = self._recv(wait_first=first)
            first = False
            if not data:
                raise HttpError("connection closed before the answer's headers"
                                if not buf else "connection closed inside the headers")
            buf += data
        lines = buf[:end].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        buf = buf[end + 4:]
        if head_only or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body, buf, received = self._read_chunked(buf, received)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            while len(buf) < length:
                data, received = self._recv()
                if not data:
                    raise HttpError(f"connection closed {length - len(buf)} bytes before the "
                                    "body's end")
                buf += data
            body, buf = buf[:length], buf[length:]
        else:  # HTTP/1.0 style: the body ends with the connection
            chunks = [buf]
            while True:
                data, t = self._recv()
                if not data:
                    break
                chunks.append(data)
                received = t
            body, buf = b"".join(chunks), b""
            headers["connection"] = "close"
        self.buf = buf
        return Response(status, headers, body, received or time.time())

    def _read_chunked(self, buf: bytes, received: float) -> tuple[bytes, bytes, float]:
        parts: list[bytes] = []
        while True:
            while b"\r\n" not in buf:
                data, received = self._recv()
                if not data:
                    raise HttpError("connection closed inside a chunked body")
                buf += data
            size_line, buf = buf.split(b"\r\n", 1)
            size = int(size_line.split(b";", 1)[0], 16)
            while len(buf) < size + 2:
                data, received = self._recv()
                if not data:
                    raise HttpError("connection closed inside a chunk")
                buf += data
            if size == 0:  # no trailers expected from nginx
                return b"".join(parts), buf[2:], received
            parts.append(buf[:size])
            buf = buf[size + 2:]
