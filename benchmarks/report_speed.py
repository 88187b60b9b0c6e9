"""Benchmark: `pollbench report` over a run with 1,000,000 latency samples (target: < 10 s).

    python benchmarks/report_speed.py [--samples 1000000] [--seconds 600]

Builds a synthetic run folder (1 M delivery latencies in 1-s HDR intervals over
``--seconds``, 200 k plain-request latencies, an nginx access log of the same
1 M requests) and times the report, printing the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from analysis.synthetic import T0, make_run  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        run = make_run(Path(tmp) / "run", delivery_ms=rng.lognormal(1.0, 0.8, args.samples),
                       request_ms=rng.lognormal(0.5, 0.5, args.samples // 5),
                       duration_s=args.seconds, counters={"delivered": args.samples})
        # a realistic access log: one line per delivery poll, 100 connections
        with open(run / "nginx" / "logs" / "access.jsonl", "w") as f:
            line = ('{{"msec":"{t:.3f}","connection":"{c}","connection_requests":"{r}",'
                    '"remote_addr":"127.0.0.1","method":"GET","uri":"/channels/ch1",'
                    '"status":"200","body_bytes_sent":"120","request_time":"0.002",'
                    '"upstream_addr":"127.0.0.1:8000","upstream_status":"200",'
                    '"upstream_connect_time":"0.000","upstream_header_time":"0.002",'
                    '"upstream_response_time":"0.002","request_id":"x"}}\n')
            per = args.samples // 100
            for i in range(args.samples):
                f.write(line.format(t=T0 + i * args.seconds / args.samples, c=i % 100,
                                    r=i // 100 + 1))
        setup = time.perf_counter() - t
        hdr_lines = sum(1 for _ in open(run / "metrics" / "latency.hdr.jsonl"))
        os.sync()  # don't time the writeback of the files just written
        times = []
        for i in range(args.repeat):
            out = run / f"report-{i}"
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "pollbench", "report", str(run),
                                   "--out", str(out)], capture_output=True, text=True)
            times.append(time.perf_counter() - t)
            if proc.returncode != 0:
                print(proc.stderr)
                return 1
        elapsed = statistics.median(times)
        summary = json.loads((run / "report-0" / "summary.json").read_text())
        m = summary["metrics"]
        print(f"samples: {args.samples:,} deliveries + {args.samples // 5:,} requests over "
              f"{args.seconds} s ({hdr_lines} interval histograms), access log "
              f"{args.samples:,} lines; setup {setup:.1f} s")
        print(f"report: median {elapsed:.2f} s wall of {args.repeat} (each a new `pollbench "
              f"report` process, imports included; all: {', '.join(f'{t:.2f}' for t in times)})"
              f" -> {'OK' if elapsed < 10 else 'TOO SLOW'} against the 10 s target")
        print(f"check: delivery n={m['delivery_latency_count']['value']:,} "
              f"p50={m['delivery_latency_p50']['value']:.3f} ms "
              f"p99={m['delivery_latency_p99']['value']:.3f} ms; "
              f"client reuse {m['requests_per_connection_client']['value']:.0f} requests/conn "
              f"(expected {per})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
