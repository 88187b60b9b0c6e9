"""Benchmark: a soak -- does every process's memory stay flat, how fast does the run folder
grow, and does latency drift from the start of the run to its end?

    python benchmarks/soak.py                      # 1,000 subscribers, 40 messages/s, 1 hour
    python benchmarks/soak.py --minutes 6          # shorter, for development
    python benchmarks/soak.py --minutes 3 --checkout /tmp/old --checkout . --rounds 2

Each run is a real ``pollbench run --profile longpoll`` on free ports (127.0.0.1 only,
bounded by ``--minutes``).  From its run folder it prints:

* each component's RSS slope (MiB per hour, a least-squares line through the 1-s samples
  of ``samples/processes.csv`` after ``--warmup``; a component's processes summed), and its
  RSS at the start and end of that window;
* bytes the run folder holds, and per hour of run;
* how long ``pollbench report`` takes on it;
* delivery p50 / p99 in the first and the last window of ``min(10 min, run / 3)`` after the
  warm-up, side by side (latency drift), from the lossless histograms;
* whether the load generator (or the machine) was CPU-saturated (run.json).

``--checkout DIR`` (repeatable) runs pollbench from another tree (e.g. an older revision:
``git worktree add /tmp/old REV``) with this interpreter; several are interleaved per
round (A B A B ...), for a before/after ratio in one sitting.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.hdr import merged, read_hdr_log  # noqa: E402
from analysis.hdr_format import percentiles_ms  # noqa: E402
from pollbench.stack.net import find_free_ports  # noqa: E402


def run_soak(checkout: Path, args, out: Path) -> float:
    """One ``pollbench run`` from ``checkout``; its wall time."""
    base = find_free_ports(5)
    cmd = [sys.executable, "-m", "pollbench", "run", "--profile", args.profile,
           "--users", str(args.users + 1), "--channels", str(args.channels),
           "--publish-rate", f"{args.publish_rate:g}", "--duration", f"{args.minutes:g}m",
           "--port", str(base + 4), "--backend-port", str(base), "--out", str(out),
           "--no-report", *args.extra]
    env = dict(os.environ, PYTHONPATH=str(checkout))  # that tree's pollbench and loadtests
    t = time.monotonic()
    proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True,
                          timeout=args.minutes * 60 + 300)
    if proc.returncode != 0:
        raise RuntimeError(f"run failed ({checkout}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return time.monotonic() - t


def rss_slopes(run: Path, warmup_s: float) -> dict[str, dict]:
    """Component -> RSS slope (MiB/h) and RSS at the window's start and end (MiB)."""
    per: dict[str, dict[float, float]] = {}
    with (run / "samples" / "processes.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            comp = row["component"].split("/")[0]
            if comp == "system":
                continue
            t = float(row["time"])
            per.setdefault(comp, {})
            per[comp][t] = per[comp].get(t, 0.0) + float(row["rss_bytes"]) / 2**20
    out = {}
    for comp, series in sorted(per.items()):
        ts = np.array(sorted(series))
        t0 = ts[0] + warmup_s
        keep = ts[ts >= t0]
        if len(keep) < 10:
            continue
        ys = np.array([series[t] for t in keep])
        slope = np.polyfit(keep - keep[0], ys, 1)[0] * 3600
        out[comp] = {"slope_mib_per_h": float(slope), "start_mib": float(ys[:5].mean()),
                     "end_mib": float(ys[-5:].mean())}
    return out


def delivery_windows(run: Path, warmup_s: float, minutes: float) -> dict:
    """Delivery p50 / p99 (ms) in the first and the last window after the warm-up."""
    log = read_hdr_log(run / "metrics" / "latency.hdr.jsonl")
    d = log[log["metric"] == "DELIVERY"]
    start, end = float(d["t0"].min()) + warmup_s, float(d["t1"].max())
    width = min(600.0, (end - start) / 3)
    out = {}
    for name, lo, hi in (("first", start, start + width), ("last", end - width, end)):
        h = merged(d, "DELIVERY", lo, hi - 1.0)  # intervals starting within the window
        pct = percentiles_ms(h, [50, 99])
        out[name] = {"p50": pct[50] or float("nan"), "p99": pct[99] or float("nan"),
                     "count": h.get_total_count(), "window_s": width}
    return out


def folder_bytes(run: Path) -> int:
    return sum(p.stat().st_size for p in run.rglob("*") if p.is_file())


def measure(run: Path, checkout: Path, args, wall_s: float) -> dict:
    t = time.monotonic()
    rep = subprocess.run([sys.executable, "-m", "pollbench", "report", str(run)], cwd=REPO,
                         capture_output=True, text=True, timeout=3600)
    report_s = time.monotonic() - t
    if rep.returncode != 0:
        raise RuntimeError(f"report failed: {rep.stderr[-2000:]}")
    info = json.loads((run / "run.json").read_text())
    size = folder_bytes(run)
    return {"checkout": str(checkout), "run": str(run), "wall_s": wall_s,
            "rss": rss_slopes(run, args.warmup), "bytes": size,
            "bytes_per_hour": size / (args.minutes / 60), "report_s": report_s,
            "delivery": delivery_windows(run, args.warmup, args.minutes),
            "loadgen_saturated": info.get("cpu", {}).get("loadgen_saturated"),
            "machine_saturated": info.get("cpu", {}).get("machine_saturated"),
            "lost": info.get("loadgen", {}).get("lost"),
            "delivered": info.get("loadgen", {}).get("delivered")}


def show(r: dict) -> None:
    print(f"== {r['checkout']}  ({r['run']})")
    for comp, s in r["rss"].items():
        print(f"   {comp:12} RSS {s['start_mib']:8.1f} -> {s['end_mib']:8.1f} MiB, slope "
              f"{s['slope_mib_per_h']:8.1f} MiB/h")
    print(f"   run folder {r['bytes'] / 2**20:.1f} MiB ({r['bytes_per_hour'] / 2**30:.2f} GiB "
          f"per hour); report {r['report_s']:.1f} s")
    d = r["delivery"]
    print(f"   delivery first {d['first']['window_s']:.0f} s: p50 {d['first']['p50']:.2f} / "
          f"p99 {d['first']['p99']:.2f} ms; last: p50 {d['last']['p50']:.2f} / p99 "
          f"{d['last']['p99']:.2f} ms (last/first p99 {d['last']['p99'] / d['first']['p99']:.2f})")
    print(f"   delivered {r['delivered']}, lost {r['lost']}; load generator saturated: "
          f"{r['loadgen_saturated']}, machine saturated: {r['machine_saturated']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds left out (spawning)")
    ap.add_argument("--users", type=int, default=1000, help="subscribers (one publisher more)")
    ap.add_argument("--channels", type=int, default=10)
    ap.add_argument("--publish-rate", type=float, default=40.0)
    ap.add_argument("--profile", default="longpoll")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--checkout", type=Path, action="append",
                    help="a tree to run pollbench from (repeatable; default: this one)")
    ap.add_argument("--keep", type=Path, help="keep the run folders here (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                    help="more pollbench run options (last)")
    args = ap.parse_args()
    if not 1 <= args.minutes <= 24 * 60:
        ap.error("--minutes must be from 1 to 1440")
    if args.warmup >= args.minutes * 60 / 2:
        ap.error("--warmup must be under half the run")
    checkouts = [c.resolve() for c in (args.checkout or [REPO])]
    work = args.keep or Path(tempfile.mkdtemp(prefix="pollbench-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for k in range(args.rounds):
        for i, checkout in enumerate(checkouts):
            out = work / f"r{k + 1}-c{i + 1}"
            wall = run_soak(checkout, args, out)
            results.append(measure(out, checkout, args, wall))
            show(results[-1])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
