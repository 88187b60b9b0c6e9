"""Benchmark: import 10,000 runs into the results history and render the trend page of one
metric (target: < 10 s together).

    python benchmarks/history_speed.py [--runs 10000] [--repeat 3]

Writes ``--runs`` complete run folders (run.json and report/summary.json with every figure
a real report has: 60 metrics) over 2,500 commits, then times, in fresh processes as a user
runs them, ``pollbench history import FOLDER`` into a new SQLite history and
``pollbench history --metric delivery_latency_p99 --html OUT``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRICS = [f"{family}_{q}" for family in ("delivery_latency", "request_latency",
                                          "task_turnaround", "task_overhead", "repoll_gap",
                                          "publish_lag")
           for q in ("p50", "p95", "p99", "p99_9", "max", "mean", "count")]
METRICS += ["throughput_requests", "throughput_deliveries", "error_rate", "errors",
            "lost_messages", "lost_epoch_messages", "duplicate_messages", "epoch_changes",
            "requests_per_connection_client", "requests_per_connection_upstream",
            "cpu_percent_nginx", "cpu_percent_backends", "cpu_percent_loadgen",
            "cpu_seconds_nginx", "cpu_seconds_loadgen", "cpu_seconds_backend-0", "cpu_seconds_backend-1", "cpu_seconds_backend-2"]


def make_runs(root: Path, n: int) -> None:
    for i in range(n):
        run = root / f"run-{i:05d}"
        (run / "report").mkdir(parents=True)
        commit = f"{i // 4:040x}"
        (run / "run.json").write_text(json.dumps({
            "kind": "run", "status": "complete", "complete": True,
            "started_at": 1_700_000_000 + i * 60, "ended_at": 1_700_000_030 + i * 60,
            "parameters": {"scenario": "channels", "users": 200}, "stack": {"profile": "seed"},
            "machine": {"fingerprint": "m1"},
            "git": {"commit": commit, "branch": "main", "dirty": False}}))
        step = 1.2 if i >= n * 0.7 else 1.0
        (run / "report" / "summary.json").write_text(json.dumps({"metrics": {
            m: {"value": (3.0 + (i * 7919 % 13) * 0.01) * step, "unit": "ms",
                "better": "lower"} for m in METRICS}}))


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    took = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pollbench-history-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        make_runs(root / "runs", a.runs)
        print(f"{a.runs} run folders written in {time.perf_counter() - t:.1f} s "
              f"({len(METRICS)} figures each)")
        imports, pages = [], []
        for rep in range(a.repeat):
            url = f"sqlite:///{root / f'h{rep}.sqlite'}"
            pb = [sys.executable, "-m", "pollbench", "history", "--history", url]
            imports.append(timed([*pb, "import", str(root / "runs")]))
            pages.append(timed([*pb, "--metric", "delivery_latency_p99", "--html",
                                str(root / f"trend{rep}.html")]))
            print(f"  repetition {rep + 1}: import {imports[-1]:.2f} s, trend page "
                  f"{pages[-1]:.2f} s, together {imports[-1] + pages[-1]:.2f} s")
        total = [i + p for i, p in zip(imports, pages, strict=True)]
        print(f"import of {a.runs} runs: median {statistics.median(imports):.2f} s "
              f"(min {min(imports):.2f}, max {max(imports):.2f})")
        print(f"trend page, one metric: median {statistics.median(pages):.2f} s "
              f"(min {min(pages):.2f}, max {max(pages):.2f})")
        print(f"together: median {statistics.median(total):.2f} s, max {max(total):.2f} s; "
              f"target < 10 s: {'met' if max(total) < 10 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
