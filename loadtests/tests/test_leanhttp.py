"""The lean client: receipt time from the kernel, HTTP framing, keep-alive (loadtests/leanhttp.py).

Runs in this process with gevent's cooperative sockets (no monkey-patching); the
peer is a plain socket server in a real thread.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import gevent
import pytest

from loadtests.leanhttp import (
    CLOCK_KERNEL,
    CLOCK_USER,
    HttpError,
    LeanConnection,
    Response,
    build_request,
)


class ScriptedServer:
    """Answers each request on a connection with the next scripted bytes (then keeps it open)."""

    made: list[ScriptedServer] = []  # closed after each test

    def __init__(self, answers: list[bytes], delay_s: float = 0.0) -> None:
        ScriptedServer.made.append(self)
        self.answers, self.delay_s = list(answers), delay_s
        self.requests: list[bytes] = []
        self.accepted = 0
        self.closed = 0  # connections this server has closed
        self.sent_at: list[float] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                while self.answers:
                    data = conn.recv(65536)
                    if not data:
                        break
                    self.requests.append(data)
                    time.sleep(self.delay_s)  # creates the condition: a slow answer
                    answer = self.answers.pop(0)
                    self.sent_at.append(time.time())
                    eof = answer.endswith(b"<EOF>")  # close right after this answer
                    conn.sendall(answer.removesuffix(b"<EOF>"))
                    if eof or b"Connection: close" in answer:
                        break
            self.closed += 1


@pytest.fixture(autouse=True)
def sockets_closed(monkeypatch):
    """Every server socket and client connection a test makes is closed after it."""
    made: list[LeanConnection] = []
    original = LeanConnection.__init__

    def tracked(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(LeanConnection, "__init__", tracked)
    yield
    for conn in made:
        conn.close()
    for server in ScriptedServer.made:
        server.sock.close()
    ScriptedServer.made.clear()


OK_204 = b"HTTP/1.1 204 No Content\r\nX-Cursor: 7\r\nX-Epoch: e1\r\n\r\n"


def ok_json(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def test_receipt_time_excludes_the_wait_behind_a_busy_greenlet():
    """The answer arrives while another greenlet hogs the process for 0.3 s: the kernel's
    stamp says when it arrived; the user clock says when we got round to reading it."""
    results = {}
    for kernel in (True, False):
        server = ScriptedServer([ok_json(b'{"a": 1}')], delay_s=0.05)
        conn = LeanConnection("127.0.0.1", server.port, kernel_timestamps=kernel)
        getter = gevent.spawn(conn.request, build_request("GET", "/x", "h"))
        gevent.sleep(0.01)  # the request is out; now the process is busy elsewhere
        time.sleep(0.3)     # not cooperative: every greenlet waits
        resp = getter.get(timeout=5)
        results[kernel] = (resp, server.sent_at[0], conn.clock)
    resp, sent_at, clock = results[True]
    assert clock == CLOCK_KERNEL
    assert resp.status == 200 and resp.body == b'{"a": 1}'
    assert 0 <= resp.received - sent_at < 0.05  # when it reached this host, not when read
    resp, sent_at, clock = results[False]
    assert clock == CLOCK_USER
    assert resp.received - sent_at > 0.2  # the user clock includes the 0.3 s wait


def test_an_answer_that_comes_later_costs_one_read_not_a_failed_read_and_one(monkeypatch):
    """Reading right after the send finds nothing (a poll is held) and pays a failed
    system call and an exception for it; the client waits for the socket first."""
    from gevent import _socket3

    calls = {"reads": 0, "would_block": 0}
    real = {name: getattr(_socket3._wrefsocket, name, None)
            for name in ("recvmsg_into", "recv_into")}

    def counting(name):
        def read(self, *args):
            calls["reads"] += 1
            try:
                return real[name](self, *args)
            except BlockingIOError:
                calls["would_block"] += 1
                raise
        return read

    for name in real:
        monkeypatch.setattr(_socket3._wrefsocket, name, counting(name), raising=False)
    for kernel in (True, False):
        calls.update(reads=0, would_block=0)
        server = ScriptedServer([ok_json(b'{"a": 1}')] * 3, delay_s=0.05)
        conn = LeanConnection("127.0.0.1", server.port, kernel_timestamps=kernel)
        for _ in range(3):
            assert conn.request(build_request("GET", "/x", "h")).body == b'{"a": 1}'
        assert calls == {"reads": 3, "would_block": 0}, kernel


@pytest.mark.parametrize("body", [
    b'{"epoch": "e1", "cursor": 3, "messages": [{"seq": 3, "ts": 1.5, "data": {"pad": "x"}}]}',
    b'{"a": "caf\xc3\xa9"}', b' {"a": 1}\r\n', b'\xef\xbb\xbf{"a": 1}', b'[1, 2]',
    '{"a": "\u00e9"}'.encode("utf-16"),
    b'{"a": 1} trailing', b'{"a": ', b'', b'\xff\xfe\xfd', b'{"a": 1}{"b": 2}'])
def test_an_answers_json_reads_as_json_loads_and_fails_where_it_fails(body):
    resp = Response(200, {}, body, 0.0)
    try:
        expected = json.loads(body)
    except ValueError:
        with pytest.raises(ValueError):
            resp.json()
    else:
        assert resp.json() == expected


def test_keep_alive_reuses_one_connection_and_close_reconnects():
    server = ScriptedServer([OK_204, ok_json(b"{}"), ok_json(b"{}"), OK_204])
    conn = LeanConnection("127.0.0.1", server.port)
    assert conn.request(build_request("GET", "/a", "h")).header("x-cursor") == "7"
    assert conn.request(build_request("GET", "/b", "h")).status == 200
    resp = conn.request(build_request("GET", "/c", "h", close=True), close=True)
    assert resp.status == 200 and conn.sock is None  # closed as asked
    assert conn.request(build_request("GET", "/d", "h")).status == 204
    assert conn.connects == 2 and server.accepted == 2
    assert server.requests[2].startswith(b"GET /c HTTP/1.1\r\n")
    assert b"\r\nConnection: close\r\n" in server.requests[2]


def test_a_keep_alive_connection_the_server_closed_while_idle_is_replaced_not_failed():
    # the server closes after its first answer without saying so (nginx's keepalive_timeout)
    server = ScriptedServer([ok_json(b"{}") + b"<EOF>", OK_204])
    conn = LeanConnection("127.0.0.1", server.port, timeout=5)
    conn.stale_after_s = 0.0  # check on every reuse (the default waits for 1 s of idling)
    assert conn.request(build_request("POST", "/channels/a", "h", body=b"{}")).status == 200
    deadline = time.monotonic() + 5
    while server.closed < 1 and time.monotonic() < deadline:
        gevent.sleep(0.01)  # the bounded wait for the server's close (an event in its thread)
    assert server.closed == 1
    assert conn.request(build_request("POST", "/channels/a", "h", body=b"{}")).status == 204
    assert conn.connects == 2 and server.accepted == 2


def test_chunked_body_and_post_with_body():
    chunked = (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4\r\n{\"se\r\n6\r\nq\": 1}\r\n0\r\n\r\n")
    server = ScriptedServer([chunked, OK_204])
    conn = LeanConnection("127.0.0.1", server.port)
    resp = conn.request(build_request("POST", "/channels/a", "h", body=b'{"x": 1}'))
    assert resp.status == 201 and resp.body == b'{"seq": 1}'
    assert conn.request(build_request("GET", "/a", "h")).status == 204  # framing kept in step
    assert server.requests[0].endswith(b'Content-Length: 8\r\n\r\n{"x": 1}')


def test_truncated_answer_is_an_error_and_the_connection_is_dropped():
    server = ScriptedServer([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort<EOF>"])
    conn = LeanConnection("127.0.0.1", server.port, timeout=2)
    with pytest.raises((HttpError, OSError)):
        conn.request(build_request("GET", "/a", "h"))
    assert conn.sock is None


def test_refused_connection_raises_oserror():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(OSError):
        LeanConnection("127.0.0.1", port, connect_timeout=2).request(build_request("GET", "/", "h"))


def test_a_request_larger_than_the_socket_buffer_arrives_whole():
    """One send() takes a small request whole; a large one is sent in part, and the rest
    must follow (the server counts every byte of the body before it answers)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    got: list[int] = []

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += conn.recv(65536)
            head, _, body = buf.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            n = len(body)
            while n < length:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                n += len(chunk)
            got.append(n)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    conn = LeanConnection("127.0.0.1", srv.getsockname()[1], timeout=30)
    try:
        body = b"x" * 8_000_000
        resp = conn.request(build_request("POST", "/big", "h", body))
        assert resp.status == 200 and resp.body == b"ok"
        assert got == [len(body)]
    finally:
        conn.close()
        thread.join(10)
        srv.close()


def test_a_request_the_server_never_answers_times_out_and_drops_the_connection():
    """The sockets wait without a timeout of their own; the watchdog ends a request that
    passes the connection's, as a timeout (the cause a user sees: "timed out")."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    conn = LeanConnection("127.0.0.1", srv.getsockname()[1], timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out"):
        conn.request(build_request("GET", "/never", "h"))
    waited = time.monotonic() - t0
    assert 0.5 <= waited < 3.0, waited
    assert conn.sock is None and not conn.expired
    srv.close()
