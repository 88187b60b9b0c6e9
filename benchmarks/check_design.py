"""Which repetition length gives ``pollbench check`` the smallest detectable change in 5 min?

    python benchmarks/check_design.py --durations 8,15,30 --rounds 4

Runs the CI scenario (``pollbench.actions.check.CI_LOAD``) at each duration, the durations
shuffled within each round so drift hits all alike, and times each run as a check pays for
it (a fresh ``python -m pollbench run``: interpreter, stack start and stop, load, then the
summary).  For each duration it prints the per-metric spread between repetitions (pooled
standard deviation / median), the repetitions a side that fit in the budget (interleaved: 2
runs a repetition), and the smallest change the check could then detect at Holm's strictest
level over the compared metrics with 80 % power (``analysis.verdict.detectable_factor``).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.catalog import COMPARED  # noqa: E402
from analysis.figures import compute  # noqa: E402
from analysis.load import load_run  # noqa: E402
from analysis.verdict import DEFAULT_ALPHA, detectable_factor  # noqa: E402
from pollbench.actions.check import ci_run_arguments  # noqa: E402
from pollbench.stack.net import find_free_ports  # noqa: E402

SHOWN = ("delivery_latency_p50", "delivery_latency_p95", "delivery_latency_p99",
         "request_latency_p95", "throughput_deliveries")


def one_run(duration: float, warmup: float, out: Path) -> tuple[float, dict]:
    port = find_free_ports(5)
    backend = port + 1
    args = [*ci_run_arguments(port, backend, duration), "--out", str(out)]
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pollbench", "run", *args], cwd=REPO,
                          capture_output=True, text=True,
                          env=dict(os.environ, POLLBENCH_HISTORY="off"))
    if proc.returncode != 0:
        raise SystemExit(f"run failed: {proc.stderr[-400:]}")
    summary = compute(load_run(out), warmup).summary
    return time.perf_counter() - t, summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--durations", default="8,15,30", help="seconds, comma-separated")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds dropped from each run")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds a check may take")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    durations = [float(d) for d in a.durations.split(",")]
    rng = random.Random(a.seed)
    walls: dict[float, list[float]] = {d: [] for d in durations}
    values: dict[float, dict[str, list[float]]] = {d: {m: [] for m in COMPARED}
                                                    for d in durations}
    root = Path(tempfile.mkdtemp(prefix="check-design-"))
    for r in range(a.rounds):
        order = list(durations)
        rng.shuffle(order)
        for d in order:
            wall, s = one_run(d, a.warmup, root / f"d{d:g}-r{r + 1}")
            walls[d].append(wall)
            for m in COMPARED:
                v = s["metrics"].get(m, {}).get("value")
                if v is not None:
                    values[d][m].append(float(v))
            print(f"round {r + 1} duration {d:g} s: wall {wall:.1f} s, p95 "
                  f"{s['metrics']['delivery_latency_p95']['value']:.3f} ms, loadgen saturated "
                  f"{s.get('loadgen_saturated')}", flush=True)
    level = DEFAULT_ALPHA / len(COMPARED)
    print(f"\nbudget {a.budget:g} s, interleaved (2 runs a repetition), level {level:.4f} "
          f"(Holm over {len(COMPARED)} metrics), power 0.8, warm-up {a.warmup:g} s dropped")
    print(f"{'duration':>8} {'wall/run':>8} {'n/side':>6}  " +
          "  ".join(f"{m.replace('delivery_latency', 'deliv').replace('request_latency', 'req'):>22}"
                    for m in SHOWN))
    for d in durations:
        wall = statistics.median(walls[d])
        n = int(a.budget // (2 * wall))
        factor = detectable_factor(n, n, level) if n >= 2 else math.inf
        cells = []
        for m in SHOWN:
            v = values[d][m]
            cv = statistics.stdev(v) / statistics.median(v) if len(v) > 1 else math.nan
            cells.append(f"cv {cv:5.1%} -> MDE {factor * cv:6.1%}")
        print(f"{d:8g} {wall:8.1f} {n:6d}  " + "  ".join(f"{c:>22}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
