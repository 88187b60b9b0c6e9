"""An independent, lean long-poll client: the yardstick pollbench's Locust path is checked against.

    python benchmarks/reference_client.py --url http://127.0.0.1:8080 --users 1000 \\
        --channels 10 --publish-rate 20 --spawn-seconds 10 --warmup 12 --seconds 30

It shares no code with pollbench or Locust: raw asyncio protocols on uvloop, one
process, hand-written HTTP/1.1 over keep-alive connections.  N subscribers
long-poll channels ``ch0 .. ch{C-1}`` by cursor (the target's API: first poll
without a cursor, then ``cursor`` + ``epoch``), and a publisher POSTs to them on
a fixed schedule (open model).  Delivery latency is defined as pollbench defines
it: the time the whole answer had arrived, minus the message's ``ts`` (the
backend's ``time.time()`` at publish).  "Arrived" is taken twice: the kernel's
receipt stamp of the answer's last segment (SO_TIMESTAMPNS, CLOCK_REALTIME: what
pollbench reports) and ``time.time()`` once this process had parsed it (which
adds the client's own queueing: every subscriber woken by one message waits for
the ones parsed before it).  Only deliveries
received inside the measurement window (after ``--warmup``, for ``--seconds``)
count.  It prints one JSON object: latency percentiles (ms, from an
HdrHistogram), deliveries, lost / duplicate sequence numbers, errors and its
own CPU seconds inside the window.  Every loop is bounded by the run's time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct
import sys
import time
from urllib.parse import urlsplit

from hdrh.histogram import HdrHistogram

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


class Stats:
    def __init__(self, window_start: float, window_end: float) -> None:
        self.window_start, self.window_end = window_start, window_end
        self.hist = HdrHistogram(1, 3_600_000_000, 3)  # microseconds, kernel receipt stamp
        self.hist_user = HdrHistogram(1, 3_600_000_000, 3)  # time.time() after parsing
        self.delivered = self.lost = self.duplicates = self.errors = self.published = 0
        self.polls = 0

    def in_window(self, t: float) -> bool:
        return self.window_start <= t < self.window_end


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; one request at a time; Content-Length bodies only.

    The socket stays registered with the loop for reading; each read is a
    ``recvmsg`` that also returns the kernel's receipt stamp (SO_TIMESTAMPNS).
    An answer carries both clocks: the kernel's stamp of its last segment and
    ``time.time()`` when this process had parsed it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer, self.kernel_ts = sock, bytearray(), 0.0
        self.waiter: asyncio.Future | None = None
        self.closed = False
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()

    def _fail(self, exc: Exception) -> None:
        self.close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def _readable(self) -> None:
        try:
            data, anc, _, _ = self.sock.recvmsg(65536, 64)
        except BlockingIOError:
            return
        except OSError as e:
            return self._fail(ConnectionError(str(e)))
        if not data:
            return self._fail(ConnectionError("closed by the peer"))
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = struct.unpack_from("qq", payload)
                self.kernel_ts = sec + nsec * 1e-9
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", ""):
            return self._fail(ConnectionError("chunked answers are not supported here"))
        length = int(headers.get("content-length", 0))
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4:end + 4 + length])
        del self.buffer[:end + 4 + length]
        user_ts = time.time()  # the whole answer is here and parsed
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, headers, body, self.kernel_ts or user_ts, user_ts))

    async def request(self, raw: bytes, timeout: float):
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        await loop.sock_sendall(self.sock, raw)
        return await asyncio.wait_for(self.waiter, timeout)


async def connect(host: str, port: int) -> HttpConnection:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    return HttpConnection(sock)


async def subscriber(index: int, args, host: str, port: int, stats: Stats, stop_at: float):
    channel = f"ch{index % args.channels}"
    cursor = epoch = expected = None
    conn = None
    while time.time() < stop_at:
        try:
            if conn is None or conn.closed:
                conn = await connect(host, port)
            query = f"timeout={args.poll_timeout:g}"
            if cursor is not None:
                query += f"&cursor={cursor}&epoch={epoch}"
            raw = (f"GET /channels/{channel}?{query} HTTP/1.1\r\nHost: {host}\r\n\r\n").encode()
            status, headers, body, received, parsed = await conn.request(raw,
                                                                         args.poll_timeout + 30)
        except OSError:  # ConnectionError and TimeoutError are OSErrors
            stats.errors += 1
            if conn is not None:
                conn.close()
            conn = None
            await asyncio.sleep(0.1)
            continue
        stats.polls += 1
        if status == 204:
            if cursor is None:
                cursor, epoch = int(headers["x-cursor"]), headers["x-epoch"]
                expected = cursor + 1
            continue
        if status != 200:
            stats.errors += 1
            await asyncio.sleep(0.1)
            continue
        data = json.loads(body)
        if epoch is not None and data["epoch"] != epoch:
            expected = None  # channel restarted: cannot know what was lost
        epoch = data["epoch"]
        if data.get("dropped"):
            first, last = data["dropped"]
            stats.lost += last - first + 1
            expected = last + 1
        counted = stats.in_window(received)
        for msg in data["messages"]:
            seq = msg["seq"]
            if expected is not None and seq < expected:
                stats.duplicates += 1
                continue
            if expected is not None and seq > expected:
                stats.lost += seq - expected
            expected = seq + 1
            if counted:
                stats.hist.record_value(max(int((received - msg["ts"]) * 1e6), 1))
                stats.hist_user.record_value(max(int((parsed - msg["ts"]) * 1e6), 1))
                stats.delivered += 1
        cursor = data["cursor"]
    if conn is not None:
        conn.close()


async def publisher(args, host: str, port: int, stats: Stats, stop_at: float):
    if args.publish_rate <= 0:
        return
    idle: list[HttpConnection] = []
    body = json.dumps({"pad": "x" * 53}).encode()

    async def publish(k: int) -> None:
        conn = idle.pop() if idle else None
        try:
            if conn is None or conn.closed:
                conn = await connect(host, port)
            raw = (f"POST /channels/ch{k % args.channels} HTTP/1.1\r\nHost: {host}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                   ).encode() + body
            status, *_ = await conn.request(raw, 30)
            stats.published += status == 201
            stats.errors += status != 201
            idle.append(conn)
        except OSError:
            stats.errors += 1
            if conn is not None:
                conn.close()

    start = time.time()
    interval = 1.0 / args.publish_rate
    tasks = set()
    k = 0
    while True:
        scheduled = start + k * interval
        if scheduled >= stop_at:
            break
        delay = scheduled - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        t = asyncio.ensure_future(publish(k))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        k += 1
    if tasks:
        await asyncio.wait(tasks, timeout=5)


async def main_async(args) -> dict:
    url = urlsplit(args.url)
    host, port = url.hostname, url.port or 80
    t0 = args.start_at or time.time()
    stats = Stats(t0 + args.warmup, t0 + args.warmup + args.seconds)
    stop_at = stats.window_end + 0.5
    tasks = [asyncio.ensure_future(publisher(args, host, port, stats, stop_at))]
    steps = max(int(args.spawn_seconds * 10), 1)  # spawn evenly, one step every 0.1 s
    for step in range(steps):
        for i in range(args.users * step // steps, args.users * (step + 1) // steps):
            tasks.append(asyncio.ensure_future(subscriber(i, args, host, port, stats, stop_at)))
        await asyncio.sleep(0.1)
    await asyncio.sleep(max(stats.window_start - time.time(), 0))
    cpu0 = time.process_time()
    await asyncio.sleep(max(stats.window_end - time.time(), 0))
    cpu1 = time.process_time()
    for t in tasks:  # held polls are not waited for: the window is over
        t.cancel()
    await asyncio.wait(tasks, timeout=5)
    h, u = stats.hist, stats.hist_user
    return {
        "client": "reference", "users": args.users, "window_s": args.seconds,
        "delivered": stats.delivered, "lost": stats.lost, "duplicates": stats.duplicates,
        "errors": stats.errors, "published": stats.published, "polls": stats.polls,
        "cpu_s": round(cpu1 - cpu0, 3),
        "p50_ms": h.get_value_at_percentile(50) / 1000, "p99_ms": h.get_value_at_percentile(99) / 1000,
        "max_ms": h.get_max_value() / 1000,
        "user_clock": {"p50_ms": u.get_value_at_percentile(50) / 1000,
                       "p99_ms": u.get_value_at_percentile(99) / 1000},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--channels", type=int, default=10)
    ap.add_argument("--publish-rate", type=float, default=20.0)
    ap.add_argument("--poll-timeout", type=float, default=20.0)
    ap.add_argument("--spawn-seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=12.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--start-at", type=float, default=None,
                    help="epoch s the warm-up counts from (default: now)")
    ap.add_argument("--namespace-target", action="store_true",
                    help="the target is a private address inside this machine's network "
                         "namespaces (benchmarks/scale_out.py): 10.x only")
    args = ap.parse_args()
    host = urlsplit(args.url).hostname or ""
    if args.namespace_target and host.startswith("10."):
        pass
    elif host not in ("127.0.0.1", "localhost", "::1"):
        print("reference_client: loopback targets only", file=sys.stderr)
        return 2
    import uvloop

    result = uvloop.run(main_async(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
