"""Benchmark: what one held long poll costs each component in memory and idle CPU, at several
counts up to 100,000 on this host, so that a user can compute how many a host of a given
size holds.

    python benchmarks/ceilings.py [--users 25001 50001 100001] [--seconds 190]
        [--spawn-rate 250] [--poll-timeout 180] [--channels 100] [--publish-rate 0.2]
        [--backends 8] [--profile scale] [--json FILE] [--keep DIR]

For each count, ``pollbench run --scenario channels`` holds that many subscribers (through
:mod:`scale_subscribers`' run: it checks that every one was held, nothing failed or was
lost) under a slow broadcast (by default one message every 5 s on one of 100 channels of
1,000: each message reaches a channel's every subscriber).  The run sizes itself: as many
Locust processes and nginx workers (profile ``scale``: ``fit_workers``) as the count's
descriptors need, source addresses as its ports need.  Over the hold (from 10 s after the
last subscriber is spawned, as long as one poll timeout: every subscriber re-polls once in
it, whatever the count; a shorter window after a short spawn would see none) it takes the median of each component's RSS and open
descriptors, summed over its processes (nginx's master and workers, the backends, Redis
when used, the load generator's processes, and the harness's own process), and the
CPU-seconds each used.  Prints, per
count, RSS per 1,000 held polls and CPU-seconds per 1,000 held polls per minute of hold
(re-polls and the broadcast included), then the marginal cost between the lowest and
highest count.  A count that does not hold stops the series and says what ran out first.
Load goes to 127.0.0.1 only and every run is bounded in time.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scale_subscribers import add_run_arguments, run_count, spawn_seconds  # noqa: E402

from pollbench.stack.net import local_port_range  # noqa: E402

# "pollbench": the harness itself (its sampler and run loop, one process), which a run on
# this host also carries: shown so that its share is seen, not hidden in "the machine"
KINDS = ("nginx", "backend", "redis", "loadgen", "pollbench")


def kind_of(component: str) -> str | None:
    for kind in KINDS:
        if component.startswith(kind):
            return kind
    return None


def steady(run: Path, after_s: float) -> dict[str, dict[str, float]]:
    """Per kind, over the hold (from ``after_s`` after the first sample): the median of (RSS
    MiB, fds) summed over its processes, its process count, the largest one process's RSS,
    and the CPU-seconds its processes used over the hold and the hold's length."""
    per_time: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    pids: dict[str, set] = defaultdict(set)
    cpu_span: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    largest: dict[str, float] = defaultdict(float)
    with open(run / "samples" / "processes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    t0 = min(float(r["time"]) for r in rows)
    for r in rows:
        kind = kind_of(r["component"])
        if kind is None or float(r["time"]) - t0 < after_s or not r["rss_bytes"]:
            continue
        at = per_time[(kind, r["time"][:10])]  # one sample round per second
        rss = float(r["rss_bytes"]) / 2**20
        at["rss"] += rss
        at["fds"] += float(r["num_fds"] or 0)
        largest[kind] = max(largest[kind], rss)
        pids[kind].add(r["pid"])
        if r["cpu_time_s"]:
            cpu_span[(kind, r["pid"])].append((float(r["time"]), float(r["cpu_time_s"])))
        elif r["cpu_percent"]:  # (the harness's row has no schedstat: its 1-s percentages)
            span = cpu_span[(kind, r["pid"])]
            before = span[-1][1] if span else 0.0
            span.append((float(r["time"]), before + float(r["cpu_percent"]) / 100))
    out = {}
    for kind in KINDS:
        samples = [v for (k, _), v in per_time.items() if k == kind]
        if not samples:
            continue
        spans = [v for (k, _), v in cpu_span.items() if k == kind and len(v) >= 2]
        cpu = sum(v[-1][1] - v[0][1] for v in spans)
        seconds = max((v[-1][0] - v[0][0] for v in spans), default=0.0)
        out[kind] = {"rss_mib": statistics.median(s["rss"] for s in samples),
                     "fds": statistics.median(s["fds"] for s in samples),
                     "processes": len(pids[kind]), "largest_rss_mib": largest[kind],
                     "cpu_s": cpu, "hold_s": seconds}
    return out


def per_thousand(polls: int, figures: dict) -> dict[str, dict[str, float]]:
    """Per kind: RSS MiB per 1,000 held polls (all of it, fixed part included) and CPU-s per
    1,000 held polls per minute of hold."""
    out = {}
    for kind, f in figures.items():
        minutes = f["hold_s"] / 60 if f["hold_s"] else float("nan")
        out[kind] = {"rss_mib_per_k": f["rss_mib"] / polls * 1000,
                     "cpu_s_per_k_per_min": f["cpu_s"] / minutes / polls * 1000}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, nargs="+", default=[25_001, 50_001, 100_001],
                    help="subscriber counts (with the publisher; default 25001 50001 100001; "
                         "the marginal cost needs two)")
    add_run_arguments(ap, seconds=190, publish_rate=0.2, poll_timeout=180, spawn_rate=250,
                      backends=8)
    ap.set_defaults(channels=100)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    out_root = args.keep or Path(tempfile.mkdtemp(prefix="pollbench-ceilings-"))
    out_root.mkdir(parents=True, exist_ok=True)
    measured: list[tuple[int, dict]] = []
    report: dict = {"arguments": {k: str(v) for k, v in vars(args).items()}, "counts": []}
    for users in sorted(args.users):
        r = run_count(users, args, out_root)
        entry = {k: r.get(k) for k in ("users", "held", "run", "failures", "lost",
                                       "duplicates", "delivered", "delivery_p50_ms",
                                       "delivery_p99_ms", "nginx_active_max", "why",
                                       "peak_fds", "machine_saturated", "loadgen_saturated")}
        report["counts"].append(entry)
        if not r["held"]:
            print(f"== {users:,} subscribers did not hold: {'; '.join(r['why']) or r}")
            break
        figures = steady(Path(r["run"]), spawn_seconds(users, args) + 10)
        entry["figures"] = figures
        entry["per_thousand"] = per_thousand(users - 1, figures)
        print(f"== {users:,} subscribers held: failed {r['failures']}, lost {r['lost']}, "
              f"p50 {r['delivery_p50_ms']} ms, p99 {r['delivery_p99_ms']} ms, nginx active "
              f"max {r['nginx_active_max']:,}: " + json.dumps(figures), flush=True)
        measured.append((users - 1, figures))  # held polls: all but the publisher
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if not measured:
        return 1
    print("\n| component | " + " | ".join(f"RSS at {n:,} (MiB) | per 1,000" for n, _ in measured)
          + " | " + " | ".join(f"CPU-s / 1,000 / min at {n:,}" for n, _ in measured) + " |")
    print("|---" * (1 + 3 * len(measured)) + "|")
    for kind in KINDS:
        if not all(kind in f for _, f in measured):
            continue
        cells = []
        for n, f in measured:
            cells.append(f"{f[kind]['rss_mib']:,.0f} | {f[kind]['rss_mib'] / n * 1000:.1f}")
        cpu = [f"{per_thousand(n, f)[kind]['cpu_s_per_k_per_min']:.3f}" for n, f in measured]
        print(f"| {kind} ({measured[-1][1][kind]['processes']} processes) | "
              + " | ".join(cells) + " | " + " | ".join(cpu) + " |")
    if len(measured) >= 2:
        (n1, a), (n2, b) = measured[0], measured[-1]
        print(f"\nmarginal, {n1:,} -> {n2:,} held polls (MiB per 1,000; descriptors per poll): "
              + ", ".join(f"{k} {(b[k]['rss_mib'] - a[k]['rss_mib']) / (n2 - n1) * 1000:.1f} "
                          f"/ {(b[k]['fds'] - a[k]['fds']) / (n2 - n1):.2f}"
                          for k in KINDS if k in a and k in b))
    low, high = local_port_range()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(f"\nip_local_port_range {low}-{high}: {high - low + 1:,} ports per (source address, "
          f"destination address and port) pair; open files per process: soft {soft:,}, "
          f"hard {hard:,}")
    return 0 if len(measured) == len(args.users) else 1


if __name__ == "__main__":
    sys.exit(main())
