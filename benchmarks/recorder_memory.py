"""Benchmark: the load generator's interval recorder over many intervals -- does its memory
stay flat, and what does a cut cost?

    python benchmarks/recorder_memory.py [--intervals 2000] [--values 4000] [--repeat 3]

Two modes, interleaved (reuse, drop, reuse, drop ...): ``reuse`` is the recorder as it is
(each interval's histograms emptied and reused); ``drop`` does what it did before (new
histograms every interval, the old ones left to the collector).

Each trial runs in a fresh interpreter with Locust's GC thresholds
(``loadtests.locustfile.GC_THRESHOLDS``): ``--intervals`` one-second intervals compressed in
time, each recording ``--values`` latencies into 6 metrics (as DELIVERY, HTTP GET, REPOLL_GAP
... do) and then cut (encoded, as shipped).  Prints per trial the RSS at interval 100 and
at the end, the growth in KiB per 1,000 intervals (a second of a run each: 1,000 intervals
are ~17 minutes), the mean cut time and the collector's gen-2 passes; then the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TRIAL = r"""
import gc, json, random, sys, time
import psutil
sys.path.insert(0, sys.argv[1])
from loadtests.locustfile import GC_THRESHOLDS
from loadtests.recorder import Recorder
intervals, values, drop = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "drop"
gc.set_threshold(*GC_THRESHOLDS)
proc = psutil.Process()
rec = Recorder()
metrics = ["DELIVERY", "HTTP GET /channels/[name]", "REPOLL_GAP", "PUBLISH_LAG",
           "HTTP POST /channels/[name]", "GC_PAUSE"]
rng = random.Random(1)
samples = [rng.lognormvariate(1.0, 0.8) for _ in range(values)]
cut_s = 0.0
rss_100 = None
gen2 = gc.get_stats()[2]["collections"]
for i in range(intervals):
    for m in metrics:
        for v in samples[: values // len(metrics)]:
            rec.record_ms(m, v)
    t = time.perf_counter()
    rec.cut()
    if drop:  # what the recorder did before: new histograms every interval
        rec.hists = {}
    cut_s += time.perf_counter() - t
    if i == 99:
        rss_100 = proc.memory_info().rss
rss_end = proc.memory_info().rss
print(json.dumps({"rss_100_mib": rss_100 / 2**20, "rss_end_mib": rss_end / 2**20,
                  "kib_per_1000": (rss_end - rss_100) / 1024 / (intervals - 100) * 1000,
                  "cut_ms": cut_s / intervals * 1000,
                  "gen2": gc.get_stats()[2]["collections"] - gen2}))
"""


def trial(intervals: int, values: int, mode: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", TRIAL, str(REPO), str(intervals), str(values),
                           mode],
                          capture_output=True, text=True, timeout=1800, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--intervals", type=int, default=2000)
    ap.add_argument("--values", type=int, default=4000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    if a.intervals <= 100:
        ap.error("--intervals must be over 100 (growth is taken from interval 100 on)")
    rows: dict[str, list[dict]] = {"reuse": [], "drop": []}
    for i in range(a.repeat):
        for mode in rows:
            r = trial(a.intervals, a.values, mode)
            rows[mode].append(r)
            print(f"trial {i + 1} {mode:5}: RSS {r['rss_100_mib']:.1f} -> "
                  f"{r['rss_end_mib']:.1f} MiB, {r['kib_per_1000']:.0f} KiB per 1,000 "
                  f"intervals, cut {r['cut_ms']:.3f} ms, gen-2 passes {r['gen2']}", flush=True)
    for mode, rs in rows.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(f"{mode:5} median of {a.repeat}: {med['kib_per_1000']:.0f} KiB per 1,000 "
              f"intervals (min {min(r['kib_per_1000'] for r in rs):.0f}, max "
              f"{max(r['kib_per_1000'] for r in rs):.0f}); cut {med['cut_ms']:.3f} ms (min "
              f"{min(r['cut_ms'] for r in rs):.3f}, max {max(r['cut_ms'] for r in rs):.3f}); "
              f"RSS at the end {med['rss_end_mib']:.1f} MiB")


if __name__ == "__main__":
    main()
