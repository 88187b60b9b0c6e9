"""Benchmark: what one held long poll costs each component in memory and descriptors, so that
a user can compute how many subscribers a host of a given size holds.

    python benchmarks/ceilings.py --users 2000 8000 [--seconds 30] [--profile scale]

For each count, ``pollbench run --scenario channels`` holds that many subscribers (through
:mod:`scale_subscribers`' run: it checks that every one was held, nothing failed or was
lost); over the hold (after spawning) it takes the median of each component's RSS and open
descriptors, summed over its processes (nginx's master and workers, the backends, the load
generator's processes).  Between two counts the difference per 1,000 held polls is the
marginal cost; the lowest count's figure less that is the fixed part.  Also prints this host's
other ceilings: the ephemeral port range (per source/destination pair), the open-files
limits.  Load goes to 127.0.0.1 only and every run is bounded in time.
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
from scale_subscribers import add_run_arguments, run_count  # noqa: E402

from pollbench.stack.net import local_port_range  # noqa: E402

KINDS = ("nginx", "backend", "loadgen")


def kind_of(component: str) -> str | None:
    for kind in KINDS:
        if component.startswith(kind):
            return kind
    return None


def steady(run: Path, after_s: float) -> dict[str, dict[str, float]]:
    """Per kind: the median over the hold of (RSS MiB, fds) summed over its processes, and
    its process count."""
    per_time: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    pids: dict[str, set] = defaultdict(set)
    with open(run / "samples" / "processes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    t0 = min(float(r["time"]) for r in rows)
    for r in rows:
        kind = kind_of(r["component"])
        if kind is None or float(r["time"]) - t0 < after_s or not r["rss_bytes"]:
            continue
        at = per_time[(kind, r["time"][:10])]  # one sample round per second
        at["rss"] += float(r["rss_bytes"]) / 2**20
        at["fds"] += float(r["num_fds"] or 0)
        pids[kind].add(r["pid"])
    out = {}
    for kind in KINDS:
        samples = [v for (k, _), v in per_time.items() if k == kind]
        if samples:
            out[kind] = {"rss_mib": statistics.median(s["rss"] for s in samples),
                         "fds": statistics.median(s["fds"] for s in samples),
                         "processes": len(pids[kind])}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, nargs="+", default=[2000, 8000],
                    help="subscriber counts, at least two (default 2000 8000)")
    add_run_arguments(ap, seconds=30, publish_rate=1.0)
    args = ap.parse_args()
    if len(args.users) < 2:
        ap.error("--users needs at least two counts (the cost per poll is a difference)")
    out_root = args.keep or Path(tempfile.mkdtemp(prefix="pollbench-ceilings-"))
    out_root.mkdir(parents=True, exist_ok=True)
    measured: list[tuple[int, dict]] = []
    for users in sorted(args.users):
        r = run_count(users, args, out_root)
        if not r["held"]:
            print(f"== {users} subscribers did not hold: {'; '.join(r['why']) or r}")
            break
        figures = steady(Path(r["run"]), args.spawn_seconds + 2)
        print(f"== {users} subscribers held: " + json.dumps(figures), flush=True)
        measured.append((users - 1, figures))  # held polls: all but the publisher
    if len(measured) < 2:
        print("fewer than two counts held: no cost per poll")
        return 1
    (n1, a), (n2, b) = measured[0], measured[-1]
    print(f"\n| component | RSS at {n1:,} polls (MiB) | at {n2:,} | per 1,000 held polls "
          f"(MiB) | fixed (MiB) | descriptors per held poll |")
    print("|---|---|---|---|---|---|")
    for kind in KINDS:
        if kind not in a or kind not in b:
            continue
        per_k = (b[kind]["rss_mib"] - a[kind]["rss_mib"]) / (n2 - n1) * 1000
        fixed = a[kind]["rss_mib"] - per_k * n1 / 1000
        fds = (b[kind]["fds"] - a[kind]["fds"]) / (n2 - n1)
        print(f"| {kind} ({b[kind]['processes']} processes) | {a[kind]['rss_mib']:.0f} | "
              f"{b[kind]['rss_mib']:.0f} | {per_k:.1f} | {fixed:.0f} | {fds:.2f} |")
    low, high = local_port_range()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(f"\nip_local_port_range {low}-{high}: {high - low + 1:,} ports per (source address, "
          f"destination address and port) pair; open files per process: soft {soft:,}, "
          f"hard {hard:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
