"""Benchmark: what does the target's OpenMetrics counting cost the backends?  A tree without
it (``--without DIR``, e.g. ``git worktree add /tmp/nometrics 373c953``) against this one,
same load, runs interleaved (ABAB, the order flipped every round).

    python benchmarks/metrics_cost.py --without /tmp/nometrics [--rounds 4] [--scrape]

Each run is a real ``pollbench run --profile longpoll`` (1,000 subscribers on 10 channels,
40 messages/s by default: ~4,000 deliveries/s) on free ports; ``benchmarks/state_cost.py``'s
``measure`` gives the backends' CPU-seconds per 1,000 deliveries over the steady window.
``--scrape`` also scrapes every backend's ``/metrics`` once a second during this tree's runs
(what a Prometheus at a 1-s interval costs on top).  Printed: per round both figures and
their ratio, then the ratios' median and range.  Traffic goes to 127.0.0.1 only; every run
is bounded by ``--seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from state_cost import measure  # noqa: E402

from pollbench.stack.net import find_free_ports  # noqa: E402

BACKENDS = 4


def scrape_loop(base: int, stop: threading.Event, counts: list[int]) -> None:
    while not stop.wait(1.0):
        for i in range(BACKENDS):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{base + i}/metrics",
                                            timeout=2) as resp:
                    resp.read()
                counts[0] += 1
            except OSError:
                pass  # not up yet, or stopping


def one_run(tree: Path, args, out: Path, scrape: bool) -> dict:
    base = find_free_ports(5)
    cmd = [sys.executable, "-m", "pollbench", "run", "--profile", "longpoll",
           "--users", str(args.users + 1), "--channels", str(args.channels),
           "--publish-rate", f"{args.publish_rate:g}", "--duration", f"{args.seconds:g}s",
           "--port", str(base + 4), "--backend-port", str(base), "--out", str(out),
           "--no-report"]
    env = dict(os.environ, PYTHONPATH=str(tree))
    stop, scraped = threading.Event(), [0]
    thread = threading.Thread(target=scrape_loop, args=(base, stop, scraped), daemon=True)
    if scrape:
        thread.start()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True,
                              timeout=args.seconds + 180)
    finally:
        stop.set()
    if proc.returncode != 0:
        raise RuntimeError(f"run failed ({tree}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return measure(out, args.warmup) | {"scrapes": scraped[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--without", type=Path, required=True,
                    help="a tree of pollbench without /metrics counting")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--users", type=int, default=1000, help="subscribers (one publisher more)")
    ap.add_argument("--channels", type=int, default=10)
    ap.add_argument("--publish-rate", type=float, default=40.0)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--warmup", type=float, default=12.0)
    ap.add_argument("--scrape", action="store_true", help="scrape /metrics at 1 s in B runs")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not (args.without / "pollbench").is_dir():
        ap.error(f"--without {args.without}: no pollbench tree there")
    work = Path(tempfile.mkdtemp(prefix="pollbench-metrics-cost-"))
    trees = {"without": args.without.resolve(), "with": REPO}
    rows = []
    for k in range(args.rounds):
        order = ["without", "with"] if k % 2 == 0 else ["with", "without"]
        got = {}
        for name in order:
            got[name] = one_run(trees[name], args, work / f"{name}-{k}",
                                args.scrape and name == "with")
        a = got["without"]["cpu_per_1k"]["backends"]
        b = got["with"]["cpu_per_1k"]["backends"]
        rows.append({"round": k, **{n: got[n] for n in got}, "ratio": b / a})
        print(f"round {k + 1}: backends CPU-s per 1,000 deliveries without {a:.4f}, with "
              f"{b:.4f} (ratio {b / a:.3f}; {got['with']['scrapes']} scrapes); delivered "
              f"{got['without']['delivered']} / {got['with']['delivered']}; saturated load "
              f"generator {got['without']['loadgen_saturated']} / "
              f"{got['with']['loadgen_saturated']}", flush=True)
    ratios = [r["ratio"] for r in rows]
    print(f"with / without, backends' CPU per delivery: median {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} interleaved pairs)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
