"""Benchmark: the same deliveries on three targets, side by side.  The reference Tornado target
with local state (``--profile longpoll``: 4 backends, key-hash routing), with shared state
(``--profile longpoll-shared``: Redis, round-robin), and Nchan (``--protocol nchan``: nginx
alone, the polls held in nginx itself), at the same loads, repetitions interleaved (each round
runs every load on every target, the targets' order turned each round).

    python benchmarks/targets.py [--rounds 4] [--seconds 40] [--log FILE.jsonl]

Loads (subscribers, channels, messages/s over all channels): 1,000 on 10 at 20/s; 3,000 on
10 at 10/s; a 5,000-subscriber broadcast on one channel at 0.2/s.  Printed per target and
load: delivery p50 / p99 (median over rounds, min-max), the stack's CPU-seconds per 1,000
deliveries by component, lost and duplicate messages over all rounds, and the load
generator's CPU (a saturated one makes a latency untrustworthy).  Every run is a real
``pollbench run`` on free ports, bounded by ``--seconds``; traffic goes to 127.0.0.1 only.
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
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from state_cost import measure  # noqa: E402

from pollbench.stack.net import find_free_ports  # noqa: E402

TARGETS = {
    "local": ["--profile", "longpoll"],
    "shared": ["--profile", "longpoll-shared"],
    "nchan": ["--protocol", "nchan"],
}
LOADS = {  # name -> (subscribers, channels, messages/s)
    "1000x10-20": (1000, 10, 20.0),
    "3000x10-10": (3000, 10, 10.0),
    "5000x1-0.2": (5000, 1, 0.2),
}
WARMUP_S = 10.0  # spawning (5 s) and the first polls left out


def one_run(target: str, load: str, seconds: float, out: Path) -> dict:
    users, channels, rate = LOADS[load]
    base = find_free_ports(5)
    cmd = [sys.executable, "-m", "pollbench", "-q", "run", *TARGETS[target],
           "--users", str(users + 1), "--channels", str(channels),
           "--publish-rate", f"{rate:g}", "--duration", f"{seconds:g}s",
           "--port", str(base + 4), "--backend-port", str(base), "--out", str(out),
           "--no-report"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 240, cwd=REPO)
    if proc.returncode != 0:
        return {"target": target, "load": load, "error": proc.stderr.strip()[-400:]}
    got = measure(out, WARMUP_S)
    record = json.loads((out / "run.json").read_text())
    # the load generator's mean CPU over the window, % of one core
    loadgen_percent = got["cpu_per_1k"]["loadgen"] * got["delivered"] / 1000 \
        / max(got["window_s"], 1e-9) * 100
    got.update(target=target, load=load, duplicates=record["loadgen"].get("duplicates"),
               loadgen_cpu_percent=round(loadgen_percent, 1),
               accounting=record.get("accounting"))
    return got


def spread(values: list[float], fmt: str = ".3g") -> str:
    if not values:
        return "-"
    return (f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"
            if len(values) > 1 else f"{values[0]:{fmt}}")


def table(rows: list[dict]) -> list[str]:
    """Median (min-max) over the rounds; a component the target does not have (Nchan's
    backends, local state's Redis) reads "-", never 0."""
    lines = ["| load | target | delivery p50 ms | delivery p99 ms | stack CPU-s / 1k deliveries "
             "| nginx | backends | Redis | load generator CPU-s / 1k | lost | duplicates | "
             "load generator CPU % |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for load in LOADS:
        for target in TARGETS:
            runs = [r for r in rows if r["load"] == load and r["target"] == target
                    and "error" not in r]
            failed = [r for r in rows if r["load"] == load and r["target"] == target
                      and "error" in r]
            if not runs:
                why = failed[0]["error"][:80] if failed else "not run"
                lines.append(f"| {load} | {target} | {why} |" + " |" * 10)
                continue
            parts = [f"{statistics.median(vals):.3g}" if any(vals) else "-"
                     for p in ("nginx", "backends", "redis")
                     for vals in [[r["cpu_per_1k"][p] for r in runs]]]
            lines.append(
                f"| {load} | {target} | {spread([r['p50_ms'] for r in runs])} | "
                f"{spread([r['p99_ms'] for r in runs])} | "
                f"{spread([r['cpu_per_1k']['stack'] for r in runs])} | {' | '.join(parts)} | "
                f"{spread([r['cpu_per_1k']['loadgen'] for r in runs])} | "
                f"{sum(r['lost'] or 0 for r in runs)} | {sum(r['duplicates'] or 0 for r in runs)} | "
                f"{spread([r['loadgen_cpu_percent'] for r in runs], '.0f')}"
                + (" saturated" if any(r["loadgen_saturated"] for r in runs) else "")
                + (f"; {len(failed)} run(s) failed" if failed else "") + " |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--loads", default=",".join(LOADS), help="which loads, comma-separated")
    ap.add_argument("--targets", default=",".join(TARGETS), help="which targets")
    ap.add_argument("--log", type=Path, default=None, help="append each run's figures here")
    ap.add_argument("--table-from", type=Path, default=None, metavar="LOG",
                    help="print the table of a --log file, running nothing")
    args = ap.parse_args()
    if args.table_from is not None:
        logged = [json.loads(line) for line in args.table_from.read_text().splitlines() if line]
        print("\n".join(table(logged)))
        return 0
    loads, targets = args.loads.split(","), args.targets.split(",")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pb-targets-") as tmp:
        for rnd in range(args.rounds):
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            for load in loads:
                for target in order:
                    t0 = time.time()
                    got = one_run(target, load, args.seconds,
                                  Path(tmp) / f"{rnd}-{load}-{target}")
                    got["round"] = rnd
                    rows.append(got)
                    if args.log is not None:
                        with open(args.log, "a") as f:
                            f.write(json.dumps(got) + "\n")
                    print(f"round {rnd} {load:11} {target:6} "
                          + (f"p50 {got['p50_ms']:.2f} p99 {got['p99_ms']:.2f} ms, stack "
                             f"{got['cpu_per_1k']['stack']:.3f}, lost {got['lost']} "
                             if "error" not in got else f"FAILED {got['error'][-200:]}")
                          + f" ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
