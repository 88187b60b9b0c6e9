"""Benchmark: what one connect() costs as a source address's local ports fill up.

    python benchmarks/connect_cost.py [--connections 19000] [--sources 1 4] [--step 3000]

For each ``--sources`` count, opens ``--connections`` TCP connections to one local listener
(another process, which accepts and holds them), bound to 127.0.0.1 .. 127.0.0.N in turn
with IP_BIND_ADDRESS_NO_PORT (the port is chosen at connect(), as the load generator's
connections are), and prints the CPU microseconds per connect() over every ``--step``
connections.  Why the run keeps each address's ports under
``pollbench.stack.capacity.CONNECT_SHARE`` in use.  Only 127.0.0.1; bounded by
``--connections`` (at most 19,500: one process's descriptors here).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time

SERVER = r'''
import asyncio, sys
held = []
async def handle(reader, writer):
    held.append(writer)
async def main():
    await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=8192)
    print("ready", flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
'''
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux value


def one_series(connections: int, sources: int, step: int) -> list[float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)],
                              stdout=subprocess.PIPE, text=True)
    held: list[socket.socket] = []
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        per_step, started = [], time.process_time()
        for i in range(connections):
            c = socket.socket()
            held.append(c)
            c.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            c.bind((f"127.0.0.{i % sources + 1}", 0))
            c.connect(("127.0.0.1", port))
            if (i + 1) % step == 0:
                now = time.process_time()
                per_step.append((now - started) / step * 1e6)
                started = now
        return per_step
    finally:
        for c in held:
            c.close()
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=19000)
    ap.add_argument("--sources", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--step", type=int, default=3000)
    args = ap.parse_args()
    if not 0 < args.connections <= 19500:
        ap.error("--connections: 1 to 19,500 (one process's descriptors here)")
    if not all(1 <= n <= 254 for n in args.sources):
        ap.error("--sources: 1 to 254 (127.0.0.1 to 127.0.0.254)")
    low, high = (int(x) for x in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    print(f"ip_local_port_range {low}-{high}: {high - low + 1:,} ports")
    for n in args.sources:
        steps = one_series(args.connections, n, args.step)
        print(f"{n} source address(es): CPU us per connect() by connections open: " + ", ".join(
            f"{(k + 1) * args.step:,}: {us:.0f}" for k, us in enumerate(steps)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
