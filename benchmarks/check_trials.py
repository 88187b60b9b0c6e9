"""Prove the CI gate: A/A checks must pass, an injected +20 % p95 regression must be caught.

    python benchmarks/check_trials.py --trials 20

Each trial is one real ``pollbench check`` against the committed baseline
(results/baselines/ci.json): A/A trials run the unchanged stack; injected
trials add a fixed delay to every delivery (target_app --delivery-delay-ms),
sized to 20 % of the baseline's median p95 delivery latency.  Prints the pass
rate of A/A, the detection rate of the injection, and the time per check.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_check(delay_ms: float, port: int, backend_port: int,
              baseline_ref: str | None) -> tuple[int, float, str]:
    t = time.perf_counter()
    extra = ["--baseline-ref", baseline_ref] if baseline_ref else []
    proc = subprocess.run([sys.executable, "-m", "pollbench", "check", "--format", "json",
                           "--delivery-delay-ms", f"{delay_ms:g}", "--port", str(port),
                           "--backend-port", str(backend_port), *extra],
                          capture_output=True, text=True, cwd=REPO)
    elapsed = time.perf_counter() - t
    flagged = ""
    try:
        out = json.loads(proc.stdout[proc.stdout.index("{"):])
        flagged = ", ".join(f"{m['metric']} {m['change']:+.0%} p={m['p_value']:.3g}"
                            for m in out["metrics"] if m["status"] in ("regression",))
    except (ValueError, KeyError, TypeError):
        flagged = proc.stderr.strip()[-200:]
    return proc.returncode, elapsed, flagged


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=20, help="trials of each kind")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--backend-port", type=int, default=8000)
    ap.add_argument("--baseline-ref", default=None,
                    help="interleave with reruns of this revision instead of the baseline file")
    args = ap.parse_args()
    baseline = json.loads((REPO / "results" / "baselines" / "ci.json").read_text())
    p95 = statistics.median(r["metrics"]["delivery_latency_p95"]["value"]
                            for r in baseline["runs"])
    delay = round(0.2 * p95, 2)
    print(f"baseline median p95 delivery latency {p95:.2f} ms -> injected delay {delay} ms")
    results: dict[str, list] = {"A/A": [], "injected": []}
    for i in range(args.trials):
        for kind, d in (("A/A", 0.0), ("injected", delay)):  # interleaved: drift hits both
            code, elapsed, flagged = one_check(d, args.port, args.backend_port,
                                               args.baseline_ref)
            results[kind].append((code, elapsed))
            print(f"trial {i + 1:2d} {kind:8}: exit {code} in {elapsed:.0f} s  {flagged}",
                  flush=True)
    aa = [c for c, _ in results["A/A"]]
    inj = [c for c, _ in results["injected"]]
    times = [t for v in results.values() for _, t in v]
    print(f"A/A: {aa.count(0)} of {len(aa)} passed (exit 0); exits {aa}")
    print(f"injected +{delay} ms: {inj.count(1)} of {len(inj)} flagged (exit 1); exits {inj}")
    print(f"time per check: median {statistics.median(times):.0f} s, max {max(times):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
