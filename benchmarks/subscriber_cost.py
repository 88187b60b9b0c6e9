"""Benchmark: the load generator's CPU per delivery, without a stack's noise.  The real
``ChannelSubscriber`` of two trees (``--base DIR``, e.g. a worktree of the head before the
protocol seam, and this one) polls a canned server in another process that answers every
poll at once with the next message (the reference target's answer, one message, the
payload each tree's publisher sends); the subscriber process's own CPU time (user + system)
over ``--polls`` polls, interleaved ABBA BAAB ... ``--rounds`` times.

    python benchmarks/subscriber_cost.py --base /tmp/base [--rounds 6] [--polls 20000]

Printed: each run's microseconds of CPU per poll (= per delivery), then this tree's over
the base's per round, median and range.  The server is on 127.0.0.1; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SERVER = r'''
import asyncio, json, sys, time
payload = json.loads(sys.argv[2])

async def handle(reader, writer):
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client is done
        line = head.split(b"\r\n", 1)[0].decode()
        if "cursor=" not in line:
            writer.write(b"HTTP/1.1 204 No Content\r\nX-Cursor: 0\r\nX-Epoch: e1\r\n\r\n")
        else:
            cursor = int(line.split("cursor=")[1].split("&")[0])
            body = json.dumps({"messages": [{"seq": cursor + 1, "ts": time.time(),
                                             "data": payload}], "cursor": cursor + 1,
                               "epoch": "e1", "dropped": None}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
'''

CLIENT = r'''
import argparse, json, resource, sys
import locust  # monkey-patches, as in a run
from locust.env import Environment
from loadtests.metrics import MetricsPlumbing
from loadtests.users import ChannelSubscriber

url, polls = sys.argv[1], int(sys.argv[2])
opts = argparse.Namespace(pb_connection="keepalive", pb_poll_timeout=20.0, pb_channels=1,
                          pb_retry_backoff="0.1:5", pb_protocol="pollbench")
env = Environment(user_classes=[ChannelSubscriber], parsed_options=opts)
env.create_local_runner()
env.pollbench = plumbing = MetricsPlumbing(env, None)
ChannelSubscriber.host = url
user = ChannelSubscriber(env)
user.on_start()
for _ in range(500):
    user.poll()
plumbing.rows.merge()
plumbing.recorder.cut()

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

counters = {}
start = cpu()
for i in range(polls):
    user.poll()
    if i % 1000 == 999:  # as the plumbing does once a second and 4 times a second
        plumbing.rows.merge()
        for k, v in plumbing.recorder.cut()["counters"].items():
            counters[k] = counters.get(k, 0) + v
spent = cpu() - start
print(json.dumps({"us_per_poll": spent / polls * 1e6, "counters": counters}))
'''

# each tree's publisher payload, as the subscriber receives it in ``data``
PAYLOADS: dict[str, dict] = {"base": {"pad": "x" * 53},
            "this": {"pb": ["loadhost-12345-0", 1, 1765000000.123456], "pad": "x" * 2}}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(tree: Path, payload: dict, polls: int) -> float:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), json.dumps(payload)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        env = dict(os.environ, PYTHONPATH=str(tree))
        proc = subprocess.run([sys.executable, "-c", CLIENT, f"http://127.0.0.1:{port}",
                               str(polls)], capture_output=True, text=True, cwd=tree, env=env,
                              timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"client failed in {tree}: {proc.stderr[-800:]}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        c = got["counters"]
        # (the plumbing also cuts the interval once a second: counts are partial here)
        assert not c.get("lost_silent") and not c.get("duplicate"), c
        return got["us_per_poll"]
    finally:
        server.kill()
        server.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--this", type=Path, default=REPO)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--polls", type=int, default=20000)
    args = ap.parse_args()
    trees = {"base": args.base.resolve(), "this": args.this.resolve()}
    ratios = []
    for rnd in range(args.rounds):
        order = ["base", "this"] if rnd % 4 in (0, 3) else ["this", "base"]
        got = {side: one_run(trees[side], PAYLOADS[side], args.polls) for side in order}
        ratios.append(got["this"] / got["base"])
        print(f"round {rnd}: base {got['base']:.2f} us/poll, this {got['this']:.2f} us/poll, "
              f"ratio {ratios[-1]:.3f}", flush=True)
    print(f"this / base: median {statistics.median(ratios):.3f} "
          f"({min(ratios):.3f}-{max(ratios):.3f}) over {len(ratios)} rounds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
