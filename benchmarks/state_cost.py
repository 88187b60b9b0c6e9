"""Benchmark: what does sharing the state in Redis cost?  Local state (key-hash routing)
against shared state (the seed's round-robin), same load, runs interleaved (ABAB, the order
flipped every round).

    python benchmarks/state_cost.py [--rounds 3] [--users 200] [--publish-rate 20]
    python benchmarks/state_cost.py --profiles longpoll --users 1000
    python benchmarks/state_cost.py --profiles scale --users 10000 --channels 1 \
        --publish-rate 0.2 --seconds 60 --warmup 25 --extra --spawn-rate 700   # a broadcast

Each run is a real ``pollbench run`` (the default load shape: subscribers on ``--channels``
channels and one publisher) on free ports; its run.json gives the CPU seconds of every
component (psutil, once a second) and its lossless histograms the delivery latency.  Prints
per run, then the medians with their min-max: delivery p50 / p99, deliveries, and CPU-seconds
per 1,000 deliveries of the backends, nginx, Redis, the whole stack and the load generator,
all over the same steady window (after ``--warmup``, until the load's last interval);
then the shared / local ratio of the stack's CPU per delivery per round.  ``--json FILE``
keeps every figure.  Traffic goes to 127.0.0.1 only; every run is bounded by ``--seconds``.
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

from analysis.hdr import merged  # noqa: E402
from analysis.hdr_format import percentiles_ms  # noqa: E402
from pollbench.stack.net import find_free_ports  # noqa: E402

PROFILES = {  # --profiles NAME -> (local state's profile, shared state's profile)
    "seed": ("seed", "shared"),            # the seed: key-hash vs its round-robin as written
    "longpoll": ("longpoll", "longpoll-shared"),  # room for thousands of held polls
    "scale": ("scale", "scale-shared"),   # 4 nginx workers: 10,000+ held polls
}
MODES = ("local", "shared")


def one_run(mode: str, args, work: Path, k: int) -> dict:
    out = work / f"{mode}-{k}"
    base = find_free_ports(5)
    profile = PROFILES[args.profiles][MODES.index(mode)]
    cmd = [sys.executable, "-m", "pollbench", "run", "--profile", profile, "--state",
           "local" if mode == "local" else "redis", *args.extra,
           "--users", str(args.users + 1), "--channels", str(args.channels),
           "--publish-rate", str(args.publish_rate), "--duration", f"{args.seconds:g}s",
           "--port", str(base + 4), "--backend-port", str(base), "--out", str(out),
           "--no-report"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          timeout=args.seconds + 180)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} run failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return measure(out, args.warmup) | {"mode": mode}


def measure(out: Path, warmup_s: float) -> dict:
    """One run's figures over its steady window: from ``warmup_s`` after the start to the
    last interval of load (start-up and teardown left out of CPU and deliveries alike)."""
    from analysis.figures import measured_cpu
    from analysis.load import load_run

    run = load_run(out)
    info = run.info
    cpu = measured_cpu(run, warmup_s)  # mean % of one core over the window, per group
    start, end = run.start + warmup_s, float(run.hdr["t1"].max())
    c = run.counters
    delivered = int(c[(c["counter"] == "delivered") & (c["t0"] >= start)]["value"].sum())
    hist = merged(run.hdr, "DELIVERY", t_from=start)
    p = percentiles_ms(hist, (50, 99))
    per_k = (end - start) / 100 * 1000 / max(delivered, 1)  # % of a core -> CPU-s per 1,000
    parts = {part: cpu.get(part, 0.0) * per_k for part in ("backends", "nginx", "redis",
                                                            "loadgen")}
    parts["stack"] = parts["backends"] + parts["nginx"] + parts["redis"]
    return {
        "run": str(out), "delivered": delivered, "window_s": round(end - start, 1),
        "lost": info["loadgen"].get("lost"), "failures": info["loadgen"].get("failures"),
        "p50_ms": p[50], "p99_ms": p[99], "cpu_per_1k": parts,
        "backend_busiest_percent": cpu.get("backend_busiest"),
        "backend_quietest_percent": cpu.get("backend_quietest"),
        "machine_saturated": info["cpu"]["machine_saturated"],
        "loadgen_saturated": info["cpu"]["loadgen_saturated"],
    }


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profiles", choices=sorted(PROFILES), default="seed",
                    help="seed (seed vs shared; the seed's 1,024 connections hold ~500 "
                         "polls) or longpoll (longpoll vs longpoll-shared)")
    ap.add_argument("--users", type=int, default=200, help="subscribers (plus one publisher)")
    ap.add_argument("--channels", type=int, default=10)
    ap.add_argument("--publish-rate", type=float, default=20)
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--warmup", type=float, default=10, help="s left out of the latencies")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                    help="more pollbench run options for both modes (last on the line)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--reanalyse", type=Path, default=None, metavar="DIR",
                    help="measure the run folders an earlier call left in DIR (runs nothing)")
    args = ap.parse_args()
    work = args.reanalyse or Path(tempfile.mkdtemp(prefix="pollbench-state-cost-"))
    print(f"runs in {work}; {args.users} subscribers, {args.publish_rate:g} msg/s over "
          f"{args.channels} channels, {args.seconds:g}-s runs", flush=True)
    results: list[dict] = []
    for k in range(args.rounds):
        order = ["local", "shared"] if k % 2 == 0 else ["shared", "local"]
        for mode in order:
            if args.reanalyse:
                r = measure(work / f"{mode}-{k}", args.warmup) | {"mode": mode}
            else:
                r = one_run(mode, args, work, k)
            results.append(r)
            c = r["cpu_per_1k"]
            print(f"round {k + 1} {mode:6}  p50 {r['p50_ms']:7.2f}  p99 {r['p99_ms']:7.2f} ms  "
                  f"delivered {r['delivered']:>7}  lost {r['lost']}  CPU-s/1k: backends "
                  f"{c['backends']:.3f} nginx {c['nginx']:.3f} redis {c['redis']:.3f} stack "
                  f"{c['stack']:.3f} loadgen {c['loadgen']:.3f}"
                  + ("  (machine saturated)" if r["machine_saturated"] else ""), flush=True)
    print()
    for mode in MODES:
        rs = [r for r in results if r["mode"] == mode]
        print(f"{mode:6} medians (min-max): p50 {spread([r['p50_ms'] for r in rs])} ms, p99 "
              f"{spread([r['p99_ms'] for r in rs])} ms; CPU-s per 1,000 deliveries: "
              + ", ".join(f"{part} {spread([r['cpu_per_1k'][part] for r in rs])}"
                          for part in ("backends", "nginx", "redis", "stack", "loadgen")))
    ratios = [s["cpu_per_1k"]["stack"] / loc["cpu_per_1k"]["stack"]
              for loc, s in zip([r for r in results if r["mode"] == "local"],
                                [r for r in results if r["mode"] == "shared"], strict=True)]
    p99 = [s["p99_ms"] / loc["p99_ms"]
           for loc, s in zip([r for r in results if r["mode"] == "local"],
                             [r for r in results if r["mode"] == "shared"], strict=True)]
    print(f"shared / local per round: stack CPU per delivery {spread(ratios)}, delivery p99 "
          f"{spread(p99)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
