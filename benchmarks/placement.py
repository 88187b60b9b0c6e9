"""Benchmark: what CPU placement (``pollbench run --cpus``) does to latency and run-to-run noise.

    python benchmarks/placement.py [--runs 3] [--cpus 0/1] [--users 1000] [--seconds 30]

Runs ``pollbench run`` (channels scenario, ``--profile longpoll``) alternately
without and with ``--cpus`` (A B A B ...), each on its own stack on free ports,
and prints per run and per mode: delivery p50 / p99 after the warm-up (from the
run's report), the load generator's CPU seconds and whether it or the machine
was saturated; then each mode's median and spread (max / min) over its runs.
Traffic goes to 127.0.0.1 only; every run is bounded by ``--seconds``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pollbench.stack.net import find_free_ports  # noqa: E402


def one_run(out: Path, cpus: str | None, args) -> dict:
    port = find_free_ports(5)
    cmd = [sys.executable, "-m", "pollbench", "run", "--profile", "longpoll", "--users",
           str(args.users + 1), "--publish-rate", f"{args.publish_rate:g}", "--duration",
           f"{args.seconds + args.warmup:g}s", "--spawn-rate", f"{(args.users + 1) / 10:g}",
           "--port", str(port), "--backend-port", str(port + 1), "--out", str(out), "--no-report"]
    if cpus:
        cmd += ["--cpus", cpus]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"pollbench run failed: {proc.stderr[-800:]}")
    subprocess.run([sys.executable, "-m", "pollbench", "report", str(out), "--warmup",
                    f"{args.warmup:g}", "--out", str(out / "report-w")], check=True,
                   capture_output=True, cwd=REPO)
    m = {k: v["value"] for k, v in
         json.loads((out / "report-w" / "summary.json").read_text())["metrics"].items()}
    record = json.loads((out / "run.json").read_text())
    return {"mode": cpus or "none", "p50_ms": m["delivery_latency_p50"],
            "p99_ms": m["delivery_latency_p99"], "lost": m["lost_messages"],
            "errors": m["errors"], "loadgen_cpu_s": record["cpu"]["cpu_seconds"]["loadgen"],
            "loadgen_saturated": record["cpu"]["loadgen_saturated"],
            "machine_saturated": record["cpu"]["machine_saturated"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per mode")
    ap.add_argument("--cpus", default="0/1")
    ap.add_argument("--users", type=int, default=1000, help="subscribers")
    ap.add_argument("--publish-rate", type=float, default=20)
    ap.add_argument("--seconds", type=float, default=30, help="measured, after the warm-up")
    ap.add_argument("--warmup", type=float, default=12)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pollbench-placement-"))
    rows = []
    for k in range(args.runs):
        for cpus in (None, args.cpus) if k % 2 == 0 else (args.cpus, None):
            r = one_run(work / f"{k}-{'placed' if cpus else 'free'}", cpus, args)
            rows.append(r)
            print(f"run {k + 1} cpus {r['mode']:>5}: p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} ms,"
                  f" load generator {r['loadgen_cpu_s']:.1f} CPU-s, saturated: load generator "
                  f"{r['loadgen_saturated']}, machine {r['machine_saturated']}, lost {r['lost']}, "
                  f"errors {r['errors']}", flush=True)
    for mode in ("none", args.cpus):
        mine = [r for r in rows if r["mode"] == mode]
        for q in ("p50_ms", "p99_ms"):
            vals = [r[q] for r in mine]
            print(f"cpus {mode:>5} {q}: median {statistics.median(vals):.2f} ms, spread max/min "
                  f"{max(vals) / min(vals):.2f} ({', '.join(f'{v:.2f}' for v in vals)})")
    print(f"runs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
