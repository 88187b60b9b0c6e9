"""Benchmark: what starting subscribers costs the load generator, two trees interleaved.

    python benchmarks/spawn_cost.py --base DIR [--users 12001] [--spawn-rate 150]
        [--workers 3] [--rounds 4] [--keep DIR]

``--base`` is another checkout (e.g. ``git worktree add /tmp/base HEAD~1``); this tree is
the other.  Each trial is one ``pollbench run --scenario channels --profile scale`` from that
tree: ``--users`` subscribers started at ``--spawn-rate`` by ``--workers`` Locust processes,
4 backends, 180-s polls, a slow broadcast, ended 10 s after the last one started.  Rounds
alternate the order (base, this, this, base, ...).  Printed per trial: the load generator's
CPU-seconds per 1,000 subscribers started (its processes' whole run, from run.json), the
median of the machine's CPU over the spawn (% of all cores, processes.csv), whether the run
found the machine saturated, nginx's most active connections (every subscriber held: one
more than --users, the publisher), and the failures and losses it counted; then this tree's over
the base's per round, median and range.  Load goes to 127.0.0.1 only; every run is bounded.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_trial(tree: Path, args, out: Path) -> dict:
    spawn_s = args.users / args.spawn_rate
    cmd = [sys.executable, "-m", "pollbench", "run", "--scenario", "channels", "--profile",
           "scale", "--users", str(args.users), "--spawn-rate", f"{args.spawn_rate:g}",
           "--duration", f"{spawn_s + 10:.0f}s", "--channels", "40", "--publish-rate", "0.2",
           "--poll-timeout", "180", "--max-hold", "190", "--backends", "4", "--workers",
           str(args.workers), "--port", str(args.port), "--backend-port",
           str(args.backend_port), "--out", str(out), "--no-report"]
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True,
                          timeout=spawn_s + 300)
    if not (out / "run.json").exists():
        raise SystemExit(f"run from {tree} left no run.json (exit {proc.returncode}): "
                         f"{proc.stderr.strip()[-400:]}")
    record = json.loads((out / "run.json").read_text())
    with open(out / "samples" / "processes.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["component"] == "system"]
    t0 = float(rows[0]["time"])
    during = [float(r["cpu_percent"]) for r in rows if 5 <= float(r["time"]) - t0 <= spawn_s]
    lg = record.get("loadgen") or {}
    with open(out / "samples" / "stub_status.csv", newline="") as f:
        active = max((int(r["active"]) for r in csv.DictReader(f) if r.get("active")), default=0)
    return {"loadgen_cpu_s_per_k": record["cpu"]["cpu_seconds"]["loadgen"] / args.users * 1000,
            "machine_cpu_median_pct": statistics.median(during) if during else float("nan"),
            "machine_saturated": bool(record["cpu"].get("machine_saturated")),
            "exit": proc.returncode, "nginx_active_max": active, "failures": lg.get("failures"),
            "lost": lg.get("lost")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="the other checkout")
    ap.add_argument("--this", type=Path, default=REPO)
    ap.add_argument("--users", type=int, default=12001)
    ap.add_argument("--spawn-rate", type=float, default=150.0)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--backend-port", type=int, default=8000)
    ap.add_argument("--keep", type=Path, default=None, help="keep the run folders here")
    args = ap.parse_args()
    if not (args.base / "pollbench").is_dir():
        ap.error(f"--base {args.base} is not a pollbench checkout (no pollbench/ in it)")
    keep = args.keep or Path(tempfile.mkdtemp(prefix="spawn-cost-"))
    trees = {"base": args.base.resolve(), "this": args.this.resolve()}
    ratios: list[float] = []
    for rnd in range(args.rounds):
        order = ["base", "this"] if rnd % 2 == 0 else ["this", "base"]
        got = {}
        for side in order:
            got[side] = g = one_trial(trees[side], args, keep / f"r{rnd}-{side}")
            print(f"round {rnd} {side}: loadgen {g['loadgen_cpu_s_per_k']:.2f} CPU-s per 1,000 "
                  f"started, machine CPU median {g['machine_cpu_median_pct']:.0f} % while "
                  f"starting, saturated {g['machine_saturated']}, nginx active max {g['nginx_active_max']}, failures "
                  f"{g['failures']}, lost {g['lost']}, exit {g['exit']}", flush=True)
        ratios.append(got["this"]["loadgen_cpu_s_per_k"] / got["base"]["loadgen_cpu_s_per_k"])
        print(f"round {rnd}: this / base {ratios[-1]:.3f}", flush=True)
    print(f"load generator CPU per 1,000 subscribers started, this / base: median "
          f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) over "
          f"{len(ratios)} rounds; runs in {keep}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
