"""Prove the CI gate: A/A checks must pass, an injected regression must be caught.

    python benchmarks/check_trials.py --trials 20 --log results/check-trials.jsonl
    python benchmarks/check_trials.py --kind cost --trials 20 --log results/cost-trials.jsonl

Each trial is one real ``pollbench check --baseline-ref HEAD`` (interleaved: the committed
HEAD rerun as the baseline, alternating with this checkout, which is the same code).  A/A
trials change nothing; injected trials add a known regression to the candidate only:

* ``--kind latency``: a fixed delay on every delivery (``--delivery-delay-ms``), sized to
  20 % of the median p95 delivery latency that the first A/A trial measured; watched metric
  ``delivery_latency_p95``;
* ``--kind cost``: every backend spends ``--burn-us`` microseconds of CPU on each poll it
  answers with messages, sized (unless given) to 5 % of the backends' CPU per delivery that
  the first A/A trial measured (the CI scenario's answered polls carry one message each, so
  N us per answered poll is N us per delivery); watched metric ``cpu_per_kdelivery_backends``,
  and beside it ``cpu_relative_backends`` (the same CPU per CPU-second of nginx and the load
  generator: the machine's speed of the moment divided out).

A/A and injected trials alternate, so drift hits both kinds.  Every trial is appended to
``--log`` (JSON lines) as it ends, so the trials can run in parts: each part adds to the log,
and the counts printed at the end are over the whole log (of this kind).  Bounds (issues 11
and 38): at most 1 false alarm in 20 A/A trials, at least 19 of 20 injected regressions
caught, each check at most 5 minutes.
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
# kind -> (the check's option that injects it, the metric it moves)
KINDS = {"latency": ("--delivery-delay-ms", "delivery_latency_p95"),
         "cost": ("--burn-us", "cpu_per_kdelivery_backends")}
# kind -> the other metrics it should move, reported beside (the backends' cost against the
# yardstick: nginx's and the load generator's CPU in the same window)
ALSO = {"latency": (), "cost": ("cpu_relative_backends",)}


def one_check(kind: str, amount: float, port: int, backend_port: int, ref: str) -> dict:
    option, watched = KINDS[kind]
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pollbench", "check", "--format", "json",
                           option, f"{amount:g}", "--port", str(port),
                           "--backend-port", str(backend_port), "--baseline-ref", ref],
                          capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, POLLBENCH_HISTORY="off"))
    elapsed = time.perf_counter() - t
    record: dict[str, Any] = {"exit": proc.returncode, "seconds": round(elapsed, 1),
                              "test": kind, "amount": amount, "metric": watched}
    try:
        out = json.loads(proc.stdout[proc.stdout.index("{"):])
        metrics = {m["metric"]: m for m in out["metrics"]}
        record["flagged"] = [f"{m['metric']} {m['change']:+.0%} p_holm={m['p_adjusted']:.3g}"
                             for m in out["metrics"] if m["status"] == "regression"]
        m = metrics[watched]
        record.update(base=m["baseline"], change=m["change"], caught_from=m["detectable"],
                      status=m["status"])
        record["also"] = {name: {"change": metrics[name]["change"],
                                 "caught_from": metrics[name]["detectable"],
                                 "status": metrics[name]["status"],
                                 "explanation": metrics[name]["explanation"]}
                          for name in ALSO[kind] if name in metrics}
        record["other"] = [f"{m['metric']}: {m['status']}" for m in out["metrics"]
                           if m["status"] not in ("ok", "regression", "improvement", "shown",
                                                  "not measured")]
    except (ValueError, KeyError, TypeError):
        record["error"] = proc.stderr.strip()[-300:]
    return record


def sized(kind: str, base: float) -> float:
    """The injected amount for a baseline figure: +20 % p95 latency, +5 % backends' cost."""
    if kind == "latency":
        amount = round(0.2 * base, 3)
        print(f"A/A p95 delivery latency {base:.3f} ms -> injected delay {amount} ms (+20 %)",
              flush=True)
    else:
        # base is CPU-s per 1,000 deliveries: base * 1000 us per delivery, 5 % of it
        amount = round(0.05 * base * 1000, 1)
        print(f"A/A backends' CPU per delivery {base * 1000:.0f} us -> --burn-us {amount:g} "
              f"(+5 %)", flush=True)
    return amount


def report(rows: list[dict], log: Path) -> None:
    aa = [r for r in rows if r["kind"] == "A/A"]
    inj = [r for r in rows if r["kind"] == "injected"]
    times = [r["seconds"] for r in rows]
    print(f"\nover {log} ({len(rows)} checks):")
    print(f"A/A: {sum(r['exit'] == 0 for r in aa)} of {len(aa)} passed; false alarms "
          f"(exit 1) {sum(r['exit'] == 1 for r in aa)}; exits {[r['exit'] for r in aa]}")
    amounts = ", ".join(sorted({f"{r['amount']:g}" for r in inj if r.get("amount") is not None}))
    print(f"injected ({amounts}): {sum(r['exit'] == 1 for r in inj)} of {len(inj)} caught "
          f"(exit 1); exits {[r['exit'] for r in inj]}")
    watched: set[str] = {r["metric"] for r in rows if r.get("metric")}
    watched |= {m for r in rows for m in r.get("also", {})}

    def of(r: dict, metric: str) -> dict:
        return r if r.get("metric") == metric else r.get("also", {}).get(metric, {})

    for metric in sorted(watched):
        self_flagged = sum(any(f.startswith(metric + " ") for f in r.get("flagged", []))
                           for r in inj)
        changes = sorted(of(r, metric)["change"] for r in inj
                         if of(r, metric).get("change") is not None)
        aa_changes = sorted(of(r, metric)["change"] for r in aa
                            if of(r, metric).get("change") is not None)
        aa_flagged = sum(any(f.startswith(metric + " ") for f in r.get("flagged", []))
                         for r in aa)
        print(f"{metric}: flagged in {aa_flagged} of {len(aa)} A/A checks")
        if changes:
            print(f"injected: {metric} itself flagged in {self_flagged} of {len(inj)}; its "
                  f"measured change median {statistics.median(changes):+.1%} (min "
                  f"{changes[0]:+.1%}, max {changes[-1]:+.1%})")
        if aa_changes:
            print(f"A/A: {metric} change median {statistics.median(aa_changes):+.1%} (min "
                  f"{aa_changes[0]:+.1%}, max {aa_changes[-1]:+.1%})")
        caught = sorted(of(r, metric)["caught_from"] for r in rows
                        if of(r, metric).get("caught_from") is not None)
        if caught:
            print(f"{metric} 'caught from' (80 % power): median {statistics.median(caught):.1%}"
                  f", range {caught[0]:.1%}..{caught[-1]:.1%}")
    print(f"time per check: median {statistics.median(times):.0f} s, max {max(times):.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", choices=sorted(KINDS), default="latency",
                    help="the regression injected: a delivery delay (latency) or CPU per "
                         "answered poll (cost)")
    ap.add_argument("--trials", type=int, default=20, help="trials of each kind in this part")
    ap.add_argument("--log", type=Path, default=None,
                    help="JSON lines, appended; the counts are over all of it (default "
                         "results/check-trials.jsonl, results/cost-trials.jsonl for cost)")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--backend-port", type=int, default=8000)
    ap.add_argument("--baseline-ref", default="HEAD", help="the revision both sides run")
    ap.add_argument("--delay-ms", type=float, default=None,
                    help="latency: injected delay (default: 20 %% of the first A/A trial's p95)")
    ap.add_argument("--burn-us", type=float, default=None,
                    help="cost: CPU per answered poll in the candidate's backends (default: 5 %% "
                         "of the first A/A trial's backends' CPU per delivery)")
    args = ap.parse_args()
    log = args.log or REPO / "results" / ("cost-trials.jsonl" if args.kind == "cost"
                                          else "check-trials.jsonl")
    old = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] \
        if log.exists() else []
    amount = args.burn_us if args.kind == "cost" else args.delay_ms
    if amount is None:
        amount = next((r["amount"] for r in old if r["kind"] == "injected"), None)
    for i in range(args.trials):
        for kind in ("A/A", "injected"):
            if kind == "injected" and amount is None:
                raise SystemExit("the first A/A trial measured no baseline figure: see its "
                                 "error above")
            r = one_check(args.kind, 0.0 if kind == "A/A" else amount, args.port,
                          args.backend_port, args.baseline_ref)
            r.update(kind=kind, at=time.time())
            if amount is None and r.get("base"):
                amount = sized(args.kind, r["base"])
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as f:
                f.write(json.dumps(r) + "\n")
            change = r.get("change")
            print(f"trial {i + 1:2d} {kind:8}: exit {r['exit']} in {r['seconds']:.0f} s, "
                  f"{r['metric']} {'-' if change is None else f'{change:+.1%}'}, caught from "
                  f"{r.get('caught_from') or 0:.1%}; " + "; ".join(
                      f"{m} {a['change']:+.1%} {a['status']}, caught from "
                      f"{a['caught_from'] or 0:.1%}" for m, a in r.get("also", {}).items()
                      if a.get("change") is not None) +
                  f"  {r.get('flagged') or ''} "
                  f"{r.get('other') or ''} {r.get('error', '')}", flush=True)
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    report(rows, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
