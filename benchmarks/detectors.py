"""Benchmark: the history's two step detectors on synthetic series -- false and missed steps.

    python benchmarks/detectors.py                 # 200 series a kind, 20 commits, +-4 % noise
    python benchmarks/detectors.py --series 50 --commits 40
    python benchmarks/detectors.py --noise-kind uniform     # +-4 % at most, not 4 % sd

Each series is ``--commits`` commits of one run each, a value of 100 with noise of
``--noise`` (4 %: one standard deviation of Gaussian noise, or with ``--noise-kind uniform``
the most a value strays, uniformly), and either no step or a step of 5 %, 10 % or
20 % at a random commit between the 5th and the 5th from last.  Both detectors of
``analysis.trends`` (``pelt``, ``edivisive``) read every series through ``steps`` -- the
code ``pollbench history --detector`` runs.  A step found within one commit of the true
one is a hit; any other step is false; a series whose step was not hit is a miss.  Printed:
per kind and detector, the series with a false step, the misses, and the seconds taken.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.trends import DETECTORS, steps  # noqa: E402

STEPS = (0.0, 0.05, 0.10, 0.20)


def series(rng: np.random.Generator, commits: int, noise: float, step: float,
           kind: str = "gauss"):
    at = int(rng.integers(5, commits - 4)) if step else None
    wiggle = rng.normal(0, noise, commits) if kind == "gauss" else \
        rng.uniform(-noise, noise, commits)
    values = 100 * (1 + wiggle)
    if at is not None:
        values[at:] *= 1 + step
    rows = pd.DataFrame({"run_key": [f"r{i}" for i in range(commits)],
                         "started_at": np.arange(commits, dtype=float),
                         "commit": [f"c{i:03d}" for i in range(commits)],
                         "machine": "m", "value": values})
    return rows, at


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=200, help="series of each kind")
    ap.add_argument("--commits", type=int, default=20)
    ap.add_argument("--noise", type=float, default=0.04, help="standard deviation, relative")
    ap.add_argument("--noise-kind", choices=("gauss", "uniform"), default="gauss")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    what = "sd, Gaussian" if a.noise_kind == "gauss" else "at most, uniform"
    print(f"{a.series} series a kind, {a.commits} commits, noise {a.noise:.0%} ({what})")
    print(f"{'series':14} {'detector':10} {'false steps':>12} {'missed':>8} {'seconds':>8}")
    for step in STEPS:
        rng = np.random.default_rng(a.seed)
        made = [series(rng, a.commits, a.noise, step, a.noise_kind) for _ in range(a.series)]
        for detector in DETECTORS:
            false = missed = 0
            t0 = time.perf_counter()
            for rows, at in made:
                found = [int(s.after_commit[1:]) for s in steps("delivery_latency_p50", rows,
                                                                detector)]
                hit = at is not None and any(abs(f - at) <= 1 for f in found)
                false += any(at is None or abs(f - at) > 1 for f in found)
                missed += at is not None and not hit
            took = time.perf_counter() - t0
            kind = "no step" if not step else f"{step:.0%} step"
            miss = "-" if not step else f"{missed}/{a.series}"
            print(f"{kind:14} {detector:10} {f'{false}/{a.series}':>12} {miss:>8} {took:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
