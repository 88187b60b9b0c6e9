"""The lean subscriber's exactly-once accounting and its Locust rows (loadtests/users.py).

A scripted server plays a channel's answers: a first 204 that gives the cursor,
then messages, a duplicate, a silent gap, a buffer drop and an epoch change.
The subscriber runs inside a real Locust environment (in a subprocess, since
``import locust`` monkey-patches), and its counters and Locust's rows must say
exactly what happened.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# A user of ``cls`` in a real Locust environment, speaking ``protocol`` to the scripted
# server on ``port`` (its script's imports: argparse, Environment, MetricsPlumbing).
LOCUST_USER = textwrap.dedent('''
    def locust_user(cls, port, protocol):
        opts = argparse.Namespace(pb_connection="keepalive", pb_poll_timeout=1.0,
                                  pb_channels=1, pb_retry_backoff="0.1:5",
                                  pb_protocol=protocol, pb_message_bytes=64)
        env = Environment(user_classes=[cls], parsed_options=opts)
        env.create_local_runner()
        env.pollbench = plumbing = MetricsPlumbing(env, None)
        cls.host = f"http://127.0.0.1:{port}"
        user = cls(env)
        user.on_start()
        return env, plumbing, user
''')

# The scripted server plays ``script`` (one answer per request) to one subscriber speaking
# ``protocol``, which polls once per answer; printed: its counters, Locust's rows, and the
# requests it sent (their whole heads).
PLAY = LOCUST_USER + textwrap.dedent('''
    requests = []

    def handle(sock, _addr):
        buf = b""
        for make in script:
            while b"\\r\\n\\r\\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\\r\\n\\r\\n")
            requests.append(head.decode())
            sock.sendall(make())

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    env, plumbing, user = locust_user(ChannelSubscriber, server.server_port, protocol)
    for _ in script:
        user.poll()
    plumbing.rows.merge()
    counters = plumbing.recorder.cut()["counters"]
    rows = {f"{e.method} {e.name}": [e.num_requests, e.num_failures]
            for e in env.stats.entries.values()}
    print(json.dumps({"counters": counters, "rows": rows, "requests": requests,
                      "total": env.stats.total.num_requests, "clock": plumbing.recorder.clock}))
''')


SCRIPT = textwrap.dedent('''
    import argparse, json, time
    import locust  # monkey-patches, as in a real run
    from gevent.server import StreamServer
    from locust.env import Environment
    from loadtests.metrics import MetricsPlumbing
    from loadtests.users import ChannelSubscriber

    def answer(messages, epoch="e1", dropped=None):
        now = time.time()
        body = json.dumps({"messages": [{"seq": s, "ts": now - 0.002, "data": {}}
                                        for s in messages],
                           "cursor": messages[-1] if messages else 0, "epoch": epoch,
                           "dropped": dropped}).encode()
        return b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(body), body)

    script = [
        lambda: b"HTTP/1.1 204 No Content\\r\\nX-Cursor: 5\\r\\nX-Epoch: e1\\r\\n\\r\\n",
        lambda: answer([6, 7]),                      # 2 delivered
        lambda: answer([7, 8]),                      # 7 again: a duplicate; 8 delivered
        lambda: answer([11]),                        # 9, 10 never came: silent gap of 2
        lambda: answer([21], dropped=[12, 20]),      # 9 dropped by the buffer; 21 delivered
        lambda: answer([1], epoch="e2"),             # the channel restarted; 1 delivered
        lambda: b"HTTP/1.1 503 Service Unavailable\\r\\nContent-Length: 60\\r\\n\\r\\n"
                b'{"error": "too many waiting polls (limit 5)", "status": 503}',
    ]
    protocol = "pollbench"
''') + PLAY


def test_subscriber_counts_every_kind_of_loss_once_and_feeds_locust_rows():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    c, rows = out["counters"], out["rows"]
    assert c["delivered"] == 6
    assert c["duplicate"] == 1
    assert c["lost_silent"] == 2
    assert c["lost_dropped"] == 9
    assert c["epoch_changes"] == 1
    assert c["requests"] == 7
    # counted under who answered and why (the backend's JSON error, its numbers left out)
    assert c["error:GET /channels/[name]: HTTP 503 from backend: too many waiting polls"] == 1
    # Locust's rows ([requests, failures]; Locust counts a failure as a request too):
    # successes batched in, failures named by kind
    assert rows["DELIVERY publish -> receive"] == [6, 0]
    assert rows["DELIVERY duplicate"] == [1, 1]
    assert rows["DELIVERY lost (silent gap)"] == [1, 1]
    assert rows["DELIVERY lost (dropped by buffer)"] == [1, 1]
    assert rows["DELIVERY lost (epoch change)"] == [1, 1]
    assert rows["GET /channels/[name] (204 timeout)"] == [1, 0]
    assert rows["GET /channels/[name]"] == [6, 1]  # 5 answers with messages + the 503
    # the cursor protocol: no cursor first, then cursor + epoch of the last answer
    lines = [head.split("\r\n")[0] for head in out["requests"]]
    assert lines[0] == "GET /channels/ch0?timeout=1 HTTP/1.1"
    assert lines[1] == "GET /channels/ch0?timeout=1&cursor=5&epoch=e1 HTTP/1.1"
    assert lines[6] == "GET /channels/ch0?timeout=1&cursor=1&epoch=e2 HTTP/1.1"
    assert out["clock"].startswith("kernel")


ROWS_SCRIPT = textwrap.dedent('''
    import json, random
    from locust.stats import RequestStats
    from loadtests.recorder import LocustRows

    rng = random.Random(7)
    samples = [rng.choice([rng.uniform(0.1, 99), rng.uniform(100, 999), rng.uniform(1000, 90000)])
               for _ in range(5000)]
    batched, direct = RequestStats(), RequestStats()
    rows = LocustRows(batched)
    for i, ms in enumerate(samples):
        rows.log("GET", "/a", ms, i % 7)
        direct.get("/a", "GET").log(ms, i % 7)
        direct.total.log(ms, i % 7)
        if i % 1000 == 999:
            rows.merge()
    rows.merge()
    out = {}
    for name, stats in (("batched", batched), ("direct", direct)):
        for row in ("row", "total"):
            e = stats.get("/a", "GET") if row == "row" else stats.total
            out[f"{name}-{row}"] = [e.num_requests, round(e.total_response_time, 6),
                                    e.min_response_time, e.max_response_time,
                                    e.total_content_length, sorted(e.response_times.items()),
                                    [e.get_response_time_percentile(q) for q in (0.5, 0.95, 0.99)],
                                    sum(e.num_reqs_per_sec.values())]
    print(json.dumps(out))
''')


def test_batched_rows_read_as_locusts_own_logging_of_the_same_requests():
    """LocustRows batches successes and merges them 4 times a second: Locust's rows (counts,
    sums, min, max, bytes, rounded buckets, percentiles) must read as if every request had
    been logged by Locust itself."""
    proc = subprocess.run([sys.executable, "-c", ROWS_SCRIPT], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["batched-row"] == got["direct-row"]
    assert got["batched-total"] == got["direct-total"]
    assert got["batched-row"][0] == 5000


STAMPED_SCRIPT = textwrap.dedent('''
    import argparse, json, time
    import locust  # monkey-patches, as in a real run
    from gevent.server import StreamServer
    from locust.env import Environment
    from loadtests.metrics import MetricsPlumbing
    from loadtests.users import ChannelSubscriber

    def stamp(seq, pub="p1"):
        return json.dumps({"pb": [pub, seq, time.time() - 0.002], "pad": "xx"}).encode()

    def one(seq, etag, pub="p1"):
        body = stamp(seq, pub) if seq is not None else b"no stamp here"
        return (b"HTTP/1.1 200 OK\\r\\nLast-Modified: Sun, 06 Dec 2026 10:00:00 GMT\\r\\n"
                b"Etag: %d\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (etag, len(body), body))

    def multi(seqs, etag):
        parts = b"".join(b"--BND\\r\\nContent-Type: text/plain\\r\\n\\r\\n" + stamp(s) + b"\\r\\n"
                         for s in seqs) + b"--BND--"
        return (b"HTTP/1.1 200 OK\\r\\nContent-Type: multipart/mixed; boundary=BND\\r\\n"
                b"Last-Modified: Sun, 06 Dec 2026 10:00:01 GMT\\r\\nEtag: %d\\r\\n"
                b"Content-Length: %d\\r\\n\\r\\n%s" % (etag, len(parts), parts))

    script = [
        lambda: b"HTTP/1.1 408 Request Timeout\\r\\nEtag: 0\\r\\nContent-Length: 0\\r\\n\\r\\n",
        lambda: one(1, 0),                 # the first stamp seen starts the count
        lambda: one(2, 1),                 # in order
        lambda: one(2, 2),                 # seen already: a duplicate
        lambda: one(5, 3),                 # 3 and 4 never came: 2 lost
        lambda: one(4, 4),                 # 4 came late: out of order, no longer lost
        lambda: multi([6, 7, 9], 5),       # three in one answer; 8 missing: 1 lost
        lambda: one(None, 6),              # a message without a stamp: not ours
        lambda: one(1, 7, pub="p2"),       # another publisher: its own count
        lambda: b"HTTP/1.1 408 Request Timeout\\r\\nEtag: 7\\r\\nContent-Length: 0\\r\\n\\r\\n",
    ]
    protocol = "nchan"
''') + PLAY


def test_stamped_subscriber_judges_loss_duplicates_and_order_from_the_publishers_stamps():
    """A protocol without a server sequence (Nchan's wire, scripted): every message is judged
    by the publisher's stamp, so a gap is lost, a repeat a duplicate, a late one out of order
    (no longer lost), several in one multipart answer each counted, and a 408 an empty poll
    that keeps the cursor."""
    proc = subprocess.run([sys.executable, "-c", STAMPED_SCRIPT], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    c, rows, requests = out["counters"], out["rows"], out["requests"]
    assert c["delivered"] == 8  # 1, 2, 5, 4, 6, 7, 9 and p2's 1
    assert c["duplicate"] == 1
    assert c["lost_silent"] == 2 - 1 + 1  # 3 and 4, less 4 found late, plus 8
    assert c["reordered"] == 1
    assert c["unstamped"] == 1
    assert rows["DELIVERY publish -> receive"] == [8, 0]
    assert rows["DELIVERY duplicate"] == [1, 1]
    assert rows["DELIVERY lost (silent gap)"] == [2, 2]
    assert rows["GET /sub/[channel] (408 timeout)"] == [2, 0]
    # Nchan's cursor: nothing at first, then both headers of the last answer on every poll
    # (a 408 keeps the cursor it had)
    assert "If-None-Match" not in requests[0] and "If-None-Match" not in requests[1]
    assert "If-Modified-Since: Sun, 06 Dec 2026 10:00:00 GMT\r\nIf-None-Match: 0" in requests[2]
    assert "If-Modified-Since: Sun, 06 Dec 2026 10:00:01 GMT\r\nIf-None-Match: 5" in requests[7]
    assert requests[0].startswith("GET /sub/ch0 HTTP/1.1")


PUBLISH_SCRIPT = textwrap.dedent('''
    import argparse, json
    import locust  # monkey-patches, as in a real run
    from gevent.server import StreamServer
    from locust.env import Environment
    from loadtests.metrics import MetricsPlumbing
    from loadtests.protocols import read_stamp
    from loadtests.users import Publisher

''') + LOCUST_USER + textwrap.dedent('''
    answers = [b"202 Accepted", b"503 Service Unavailable", b"202 Accepted", b"202 Accepted"]
    stamps = []

    def handle(sock, _addr):
        buf = b""
        for status in answers:
            while b"\\r\\n\\r\\n" not in buf:
                buf += sock.recv(65536)
            head, _, buf = buf.partition(b"\\r\\n\\r\\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\\r\\n")[0])
            while len(buf) < length:
                buf += sock.recv(65536)
            stamps.append(read_stamp(buf[:length])[1])
            buf = buf[length:]
            body = b"queued messages: 1\\n"
            sock.sendall(b"HTTP/1.1 " + status + b"\\r\\nContent-Length: %d\\r\\n\\r\\n%s"
                         % (len(body), body))

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    env, plumbing, pub = locust_user(Publisher, server.server_port, "nchan")
    for _ in answers:
        pub.publish("ch0")
    print(json.dumps({"stamps": stamps, "counters": plumbing.recorder.cut()["counters"]}))
''')


def test_a_refused_publish_gives_its_stamp_back_so_no_subscriber_counts_it_lost():
    proc = subprocess.run([sys.executable, "-c", PUBLISH_SCRIPT], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["stamps"] == [1, 2, 2, 3]  # the 503's seq 2 is published again
    assert out["counters"]["published"] == 3
