"""Benchmark: did a change to the load path move the reference target's figures?  The default
scenario (``pollbench run``: 200 users on 10 channels, 20 messages/s) from a base tree
(``--base DIR``, e.g. ``git worktree add /tmp/base 04217d0``, the head before the protocol
seam) and from this one, interleaved (ABBA BAAB ...: the order turns every round).

    python benchmarks/seam_cost.py --base /tmp/base [--rounds 4] [--seconds 60]

Printed per run: messages published and delivered, deliveries per published message, lost and
duplicates, and the CPU-seconds per 1,000 deliveries of the load generator, the backends and
nginx (run.json's ``cost``, over the measured window); then per round this tree's figure over
the base's, and the ratios' median and range.  Every run is a real ``pollbench run`` on free
ports, bounded by ``--seconds``; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pollbench.stack.net import find_free_ports  # noqa: E402

FIGURES = ("cpu_per_kdelivery_loadgen", "cpu_per_kdelivery_backends", "cpu_per_kdelivery_nginx")


def one_run(tree: Path, seconds: float, out: Path) -> dict:
    base = find_free_ports(5)
    cmd = [sys.executable, "-m", "pollbench", "-q", "run", "--duration", f"{seconds:g}s",
           "--port", str(base + 4), "--backend-port", str(base), "--out", str(out),
           "--no-report"]
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 180,
                          cwd=tree, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"run failed in {tree}: {proc.stderr[-800:]}")
    record = json.loads((out / "run.json").read_text())
    lg, figures = record["loadgen"], record["cost"]["figures"]
    counters: dict[str, int] = {}
    with open(out / "metrics" / "counters.jsonl") as f:
        for line in f:
            for k, v in json.loads(line)["counters"].items():
                counters[k] = counters.get(k, 0) + v
    return {"tree": str(tree), "published": counters.get("published", 0),
            "delivered": lg["delivered"], "lost": lg["lost"], "duplicates": lg["duplicates"],
            "per_published": lg["delivered"] / max(counters.get("published", 0), 1),
            "loadgen_saturated": record["cpu"]["loadgen_saturated"],
            **{k: figures.get(k) for k in FIGURES}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="the base tree (a worktree)")
    ap.add_argument("--this", type=Path, default=REPO,
                    help="the tree measured against it (default this checkout; a worktree of a "
                         "commit keeps edits made meanwhile out of the runs)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--log", type=Path, default=None, help="append each run's figures here")
    args = ap.parse_args()
    trees = {"base": args.base.resolve(), "this": args.this.resolve()}
    pairs: list[dict[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="pb-seam-") as tmp:
        for rnd in range(args.rounds):
            # ABBA BAAB: each side first as often as second
            order = ["base", "this"] if rnd % 4 in (0, 3) else ["this", "base"]
            pair = {}
            for side in order:
                got = one_run(trees[side], args.seconds, Path(tmp) / f"{rnd}-{side}")
                got.update(side=side, round=rnd)
                pair[side] = got
                if args.log is not None:
                    with open(args.log, "a") as f:
                        f.write(json.dumps(got) + "\n")
                print(f"round {rnd} {side:4}: published {got['published']}, delivered "
                      f"{got['delivered']} ({got['per_published']:.2f} per message), lost "
                      f"{got['lost']}, duplicates {got['duplicates']}; CPU-s/1k deliveries "
                      + ", ".join(f"{k.rsplit('_', 1)[1]} {got[k]:.4f}" for k in FIGURES)
                      + (" (load generator saturated)" if got["loadgen_saturated"] else ""),
                      flush=True)
            pairs.append(pair)
    print("\nthis tree / base, per round (median, min-max):")
    for k in ("per_published", *FIGURES):
        ratios = [p["this"][k] / p["base"][k] for p in pairs if p["base"][k]]
        print(f"  {k:28} {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
