"""Does a run right after a socket-heavy run, on fresh ports, measure what it would after the
full 60-s TIME_WAIT wait?  (The sweep's ``cooldown = "fresh-ports"`` against "time-wait".)

    python benchmarks/cooldown.py --rounds 3

Each round, twice (the two modes alternate, ABAB...): a socket-heavy run (``--connection
close``: every poll a new connection, thousands of sockets left in TIME_WAIT on the stack's
ports), then the measured run (the CI scenario, keep-alive) either at once on the next of
the sweep's port sets (fresh-ports, after its 2-s settle) or on the same ports once no
socket there is left in TIME_WAIT (time-wait).  Prints each measured run, then per mode the
median delivery p50 / p95 / p99 and request p95, the ratio fresh/time-wait with its
Mann-Whitney p, and the time each mode cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.figures import compute  # noqa: E402
from analysis.load import load_run  # noqa: E402
from pollbench.actions.sweep import time_wait_count  # noqa: E402
from pollbench.actions.sweepfile import FRESH_PORTS_SETTLE_S  # noqa: E402
from pollbench.stack.net import find_free_ports  # noqa: E402

SHOWN = ("delivery_latency_p50", "delivery_latency_p95", "delivery_latency_p99",
         "request_latency_p95")


def run(out: Path, port: int, backend: int, connection: str, users: int, seconds: int) -> None:
    args = ["--profile", "keepalive", "--scenario", "channels", "--users", str(users),
            "--spawn-rate", str(users), "--duration", f"{seconds}s", "--channels", "10",
            "--publish-rate", "50", "--poll-timeout", "2", "--connection", connection,
            "--port", str(port), "--backend-port", str(backend), "--no-report",
            "--out", str(out)]
    proc = subprocess.run([sys.executable, "-m", "pollbench", "run", *args], cwd=REPO,
                          capture_output=True, text=True,
                          env=dict(os.environ, POLLBENCH_HISTORY="off"))
    if proc.returncode != 0:
        raise SystemExit(f"run {out.name} failed: {proc.stderr[-400:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10, help="length of each measured run")
    a = ap.parse_args()
    base = find_free_ports(20)
    sets = [(base + i, base + 4 + 4 * i) for i in range(2)]  # nginx, first of 4 backends
    ports = {p for n, b in sets for p in (n, *range(b, b + 4))}
    root = Path(tempfile.mkdtemp(prefix="cooldown-"))
    figures: dict[str, list[dict]] = {"fresh-ports": [], "time-wait": []}
    cost: dict[str, list[float]] = {"fresh-ports": [], "time-wait": []}
    for r in range(a.rounds):
        for mode in ("fresh-ports", "time-wait"):
            heavy = root / f"heavy-{r}-{mode}"
            run(heavy, *sets[0], "close", 200, 10)
            left = time_wait_count(ports)
            t = time.monotonic()
            if mode == "fresh-ports":
                time.sleep(FRESH_PORTS_SETTLE_S)
                where = sets[1]
            else:
                while time_wait_count(ports) and time.monotonic() - t < 90:
                    time.sleep(1)
                where = sets[0]
            cost[mode].append(time.monotonic() - t)
            out = root / f"measured-{r}-{mode}"
            run(out, *where, "keepalive", 100, a.seconds)
            m = compute(load_run(out), 2.0).summary["metrics"]
            figures[mode].append({k: m[k]["value"] for k in SHOWN})
            print(f"round {r + 1} {mode:11}: {left} sockets in TIME_WAIT after the heavy run; "
                  f"waited {cost[mode][-1]:.0f} s; " + ", ".join(
                      f"{k.replace('_latency', '')} {m[k]['value']:.3f}" for k in SHOWN),
                  flush=True)
    from scipy.stats import mannwhitneyu

    print(f"\nmedians over {a.rounds} rounds (ms), fresh-ports / time-wait:")
    for k in SHOWN:
        f = [x[k] for x in figures["fresh-ports"]]
        w = [x[k] for x in figures["time-wait"]]
        p = mannwhitneyu(f, w).pvalue
        print(f"  {k:22} fresh {statistics.median(f):.3f}  time-wait {statistics.median(w):.3f}"
              f"  ratio {statistics.median(f) / statistics.median(w):.2f}  (Mann-Whitney p "
              f"{p:.2f})")
    for mode, c in cost.items():
        print(f"  cool-down cost, {mode}: median {statistics.median(c):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
