"""Prove the CI gate: A/A checks must pass, an injected +20 % p95 regression must be caught.

    python benchmarks/check_trials.py --trials 20 --log results/check-trials.jsonl

Each trial is one real ``pollbench check --baseline-ref HEAD`` (interleaved: the committed
HEAD rerun as the baseline, alternating with this checkout, which is the same code).  A/A
trials change nothing; injected trials add a fixed delay to every delivery of the candidate
only (``--delivery-delay-ms``), sized to 20 % of the median p95 delivery latency that the
first A/A trial measured.  A/A and injected trials alternate, so drift hits both kinds.

Every trial is appended to ``--log`` (JSON lines) as it ends, so the trials can run in
parts: each part adds to the log, and the counts printed at the end are over the whole
log.  Bounds (issue 11): at most 1 false alarm in 20 A/A trials, at least 19 of 20 injected
regressions caught, each check at most 5 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def one_check(delay_ms: float, port: int, backend_port: int, ref: str) -> dict:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pollbench", "check", "--format", "json",
                           "--delivery-delay-ms", f"{delay_ms:g}", "--port", str(port),
                           "--backend-port", str(backend_port), "--baseline-ref", ref],
                          capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, POLLBENCH_HISTORY="off"))
    elapsed = time.perf_counter() - t
    record: dict[str, Any] = {"exit": proc.returncode, "seconds": round(elapsed, 1),
                              "delay_ms": delay_ms}
    try:
        out = json.loads(proc.stdout[proc.stdout.index("{"):])
        metrics = {m["metric"]: m for m in out["metrics"]}
        record["flagged"] = [f"{m['metric']} {m['change']:+.0%} p_holm={m['p_adjusted']:.3g}"
                             for m in out["metrics"] if m["status"] == "regression"]
        p95 = metrics["delivery_latency_p95"]
        record["p95_base_ms"] = p95["baseline"]
        record["p95_change"] = p95["change"]
        record["p95_caught_from"] = p95["detectable"]
        record["other"] = [f"{m['metric']}: {m['status']}" for m in out["metrics"]
                           if m["status"] not in ("ok", "regression", "improvement")]
    except (ValueError, KeyError, TypeError):
        record["error"] = proc.stderr.strip()[-300:]
    return record


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=20, help="trials of each kind in this part")
    ap.add_argument("--log", type=Path, default=REPO / "results" / "check-trials.jsonl",
                    help="JSON lines, appended; the counts are over all of it")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--backend-port", type=int, default=8000)
    ap.add_argument("--baseline-ref", default="HEAD", help="the revision both sides run")
    ap.add_argument("--delay-ms", type=float, default=None,
                    help="injected delay (default: 20 %% of the first A/A trial's p95)")
    args = ap.parse_args()
    delay = args.delay_ms
    if delay is None and args.log.exists():
        old = [json.loads(line) for line in args.log.read_text().splitlines() if line.strip()]
        delay = next((r["delay_ms"] for r in old if r["kind"] == "injected"), None)
    for i in range(args.trials):
        for kind in ("A/A", "injected"):
            if kind == "injected" and delay is None:
                raise SystemExit("the first A/A trial measured no p95: see its error above")
            r = one_check(0.0 if kind == "A/A" else delay, args.port, args.backend_port,
                          args.baseline_ref)
            r.update(kind=kind, at=time.time())
            if delay is None and r.get("p95_base_ms"):
                delay = round(0.2 * r["p95_base_ms"], 3)
                print(f"A/A p95 delivery latency {r['p95_base_ms']:.3f} ms -> injected delay "
                      f"{delay} ms (+20 %)", flush=True)
            args.log.parent.mkdir(parents=True, exist_ok=True)
            with args.log.open("a") as f:
                f.write(json.dumps(r) + "\n")
            change = r.get("p95_change")
            print(f"trial {i + 1:2d} {kind:8}: exit {r['exit']} in {r['seconds']:.0f} s, p95 "
                  f"{'-' if change is None else f'{change:+.1%}'}, caught from "
                  f"{r.get('p95_caught_from') or 0:.1%}  {r.get('flagged') or ''} "
                  f"{r.get('other') or ''} {r.get('error', '')}", flush=True)
    rows = [json.loads(line) for line in args.log.read_text().splitlines() if line.strip()]
    aa = [r for r in rows if r["kind"] == "A/A"]
    inj = [r for r in rows if r["kind"] == "injected"]
    times = [r["seconds"] for r in rows]
    print(f"\nover {args.log} ({len(rows)} checks):")
    print(f"A/A: {sum(r['exit'] == 0 for r in aa)} of {len(aa)} passed; false alarms "
          f"(exit 1) {sum(r['exit'] == 1 for r in aa)}; exits {[r['exit'] for r in aa]}")
    print(f"injected (+{', '.join(sorted({str(r['delay_ms']) for r in inj}))} ms): "
          f"{sum(r['exit'] == 1 for r in inj)} of {len(inj)} caught (exit 1); exits "
          f"{[r['exit'] for r in inj]}")
    p95_flagged = sum(any(f.startswith("delivery_latency_p95 ") for f in r.get("flagged", []))
                      for r in inj)
    changes = sorted(r["p95_change"] for r in inj if r.get("p95_change") is not None)
    if changes:
        print(f"injected: delivery p95 itself flagged in {p95_flagged} of {len(inj)}; its "
              f"measured change median {statistics.median(changes):+.1%} (min {changes[0]:+.1%},"
              f" max {changes[-1]:+.1%})")
    caught = sorted(r["p95_caught_from"] for r in rows if r.get("p95_caught_from") is not None)
    if caught:
        print(f"p95 'caught from' (80 % power): median {statistics.median(caught):.1%}, range "
              f"{caught[0]:.1%}..{caught[-1]:.1%}")
    print(f"time per check: median {statistics.median(times):.0f} s, max {max(times):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
