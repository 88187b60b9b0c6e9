"""Benchmark: memory per held long poll in one component, two trees interleaved.

    python benchmarks/held_poll_memory.py --base DIR [--component backend|loadgen]
        [--polls 15000] [--rounds 4]

``--base`` is another checkout (e.g. ``git worktree add /tmp/base HEAD~1``); this tree is
the other.  Rounds alternate the order (base, this, this, base, ...).  Printed per trial:
bytes of RSS per held poll; then this tree's over the base's per round, median and range.
Everything on 127.0.0.1; every wait is bounded.

``backend``: one reference backend process from that tree (``python -m target_app
--processes 1``) answers a few polls (first-request allocations done), its RSS is taken,
then it holds ``--polls`` channel polls (100 channels; each sent as nginx forwards the load
generator's: Host, X-Real-IP, X-Scheme, X-Request-Id) from client processes until its
/stats counts them all waiting, and its RSS is taken again.

``loadgen``: one Locust process from that tree (a local runner, the tree's
``ChannelSubscriber``, the run's GC thresholds) starts ``--polls`` subscribers (at most
19,000: one process's descriptors) against a server that holds every poll unanswered; its
RSS before the first and once the server holds them all.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
PER_CLIENT = 9000  # connections per client process (each process has 20,000 descriptors here)

CLIENT = r'''
import socket, sys, time
port, first, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
socks = []
for i in range(first, first + n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(("GET /channels/c%d?timeout=180 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
               "X-Real-IP: 127.0.0.1\r\nX-Scheme: http\r\n"
               "X-Request-Id: %032x\r\n\r\n" % (i % 100, i)).encode())
    socks.append(s)
print("sent", flush=True)
sys.stdin.read()  # held until the benchmark closes stdin
'''


LOADGEN = r'''
import argparse, gc, json, socket, subprocess, sys, time
SERVER = """
import asyncio, sys
async def handle(reader, writer):
    try:
        await reader.readuntil(b"\\r\\n\\r\\n")
        await reader.read(1)  # never answered: held until the client goes
    except Exception:
        pass
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    print("ready", flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""
n = int(sys.argv[1])
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE,
                          text=True)
try:
    assert server.stdout.readline().strip() == "ready"
    import gevent, psutil
    import loadtests.locustfile as lf  # monkey-patches, as in a run
    from locust.env import Environment
    from loadtests.metrics import MetricsPlumbing
    from loadtests.users import ChannelSubscriber
    gc.set_threshold(*lf.GC_THRESHOLDS)
    opts = argparse.Namespace(pb_connection="keepalive", pb_poll_timeout=180.0,
                              pb_channels=100, pb_retry_backoff="0.1:5", pb_protocol="pollbench")
    env = Environment(user_classes=[ChannelSubscriber], parsed_options=opts)
    runner = env.create_local_runner()
    env.pollbench = MetricsPlumbing(env, None)
    ChannelSubscriber.host = f"http://127.0.0.1:{port}"
    gevent.sleep(0.5)
    me, held = psutil.Process(), psutil.Process(server.pid)
    before = me.memory_info().rss
    runner.start(n, spawn_rate=2000)
    deadline = time.monotonic() + 120
    while len(held.net_connections()) < n:
        if time.monotonic() > deadline:
            sys.exit(f"only {len(held.net_connections())} of {n} polls held after 120 s")
        gevent.sleep(0.5)
    gevent.sleep(1)
    print(json.dumps({"per_poll": (me.memory_info().rss - before) / n}), flush=True)
finally:
    server.kill()
'''


def loadgen_trial(tree: Path, polls: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.run([sys.executable, "-c", LOADGEN, str(polls)], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"load generator from {tree} failed: {proc.stderr.strip()[-600:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["per_poll"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def waiting(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as r:
        return json.load(r)["long_polls_waiting"]


def backend_trial(tree: Path, polls: int) -> float:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(tree))
    backend = subprocess.Popen(
        [sys.executable, "-m", "target_app", "--processes", "1", "--port", str(port),
         "--max-hold", "190", "--default-hold", "180", "--max-waiters", str(polls + 100),
         "--max-connections", str(polls + 200)],
        cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    clients: list[subprocess.Popen] = []
    try:
        assert backend.stdout is not None
        line = backend.stdout.readline()
        if not line.startswith("ready"):
            raise SystemExit(f"backend from {tree} did not start: {line!r}")
        for i in range(50):  # first requests of each kind: lazy imports, caches
            urllib.request.urlopen(f"http://127.0.0.1:{port}/channels/c{i % 100}?timeout=0",
                                   timeout=5).read()
        proc = psutil.Process(backend.pid)
        before = proc.memory_info().rss
        for first in range(0, polls, PER_CLIENT):
            c = subprocess.Popen([sys.executable, "-c", CLIENT, str(port), str(first),
                                  str(min(PER_CLIENT, polls - first))],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            clients.append(c)
        deadline = time.monotonic() + 120
        while waiting(port) < polls:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {waiting(port)} of {polls} polls held after 120 s")
            time.sleep(0.2)
        time.sleep(1)  # (RSS settles: the last answers' buffers freed)
        return (proc.memory_info().rss - before) / polls
    finally:
        for c in clients:
            c.kill()
            c.wait()
        backend.terminate()
        try:
            backend.wait(timeout=20)
        except subprocess.TimeoutExpired:
            backend.kill()
            backend.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="the other checkout")
    ap.add_argument("--this", type=Path, default=REPO)
    ap.add_argument("--component", choices=("backend", "loadgen"), default="backend")
    ap.add_argument("--polls", type=int, default=15000)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    if args.component == "loadgen" and not 0 < args.polls <= 19000:
        ap.error("--polls for the load generator: 1 to 19,000 (one process's descriptors)")
    trial = backend_trial if args.component == "backend" else loadgen_trial
    if not (args.base / "target_app").is_dir():
        ap.error(f"--base {args.base} is not a pollbench checkout (no target_app/ in it)")
    trees = {"base": args.base.resolve(), "this": args.this.resolve()}
    ratios: list[float] = []
    per: dict[str, list[float]] = {"base": [], "this": []}
    for rnd in range(args.rounds):
        order = ["base", "this"] if rnd % 2 == 0 else ["this", "base"]
        got = {side: trial(trees[side], args.polls) for side in order}
        for side in order:
            per[side].append(got[side])
        ratios.append(got["this"] / got["base"])
        print(f"round {rnd}: base {got['base']:.0f} B, this {got['this']:.0f} B of {args.component} RSS "
              f"per held poll; this / base {ratios[-1]:.3f}", flush=True)
    print(f"{args.component} RSS per held poll at {args.polls:,}: base median "
          f"{statistics.median(per['base']):.0f} B ({min(per['base']):.0f}-{max(per['base']):.0f}),"
          f" this {statistics.median(per['this']):.0f} B ({min(per['this']):.0f}-"
          f"{max(per['this']):.0f}); this / base median {statistics.median(ratios):.3f} "
          f"({min(ratios):.3f}-{max(ratios):.3f}) over {len(ratios)} rounds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
