"""Benchmark: how many concurrent long-poll subscribers hold through nginx on this machine.

    python benchmarks/scale_subscribers.py --users 5000 10000 [--seconds 60] [--workers 0]

For each count: ``pollbench run --scenario channels --profile scale`` holds
that many subscribers for ``--seconds`` after they are all spawned, publishing
on a fixed schedule.  Prints, per count: failures, lost and duplicate messages,
delivery latency p50/p99 (lossless), CPU per component, peak fds and
connections, and what ran out first when a count did not hold.  Load goes to
127.0.0.1 only and every run is bounded in time.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peak(rows, component_prefix: str, column: str) -> float:
    vals = [float(r[column]) for r in rows if r["component"].startswith(component_prefix)]
    return max(vals, default=0.0)


def limits_hit(record: dict) -> list[str]:
    """What ran out, as the run itself recorded it (run.json's ``limits``: the one rule,
    analysis.limits), the first first, with the failures it caused (run.json's
    ``failures``)."""
    limits = record.get("limits") or {}
    hit = [f"{r['what']} at {r['at_s']:g} s ({r['evidence']})" + (
        f" [during {r['during_fault']}]" if r.get("during_fault") else "")
        for r in limits.get("reached") or []]
    for entry in (record.get("failures") or [])[:3]:
        hit.append(f"failed: {entry['count']:,} x {entry['cause']}")
    return hit


def run_count(users: int, args, out_root: Path) -> dict:
    out = out_root / f"scale-{users}"
    spawn_rate = max(users / spawn_seconds(users, args), 1)
    cmd = [sys.executable, "-m", "pollbench", "run", "--scenario", "channels", "--profile",
           args.profile, "--users", str(users), "--spawn-rate", f"{spawn_rate:g}",
           "--duration", f"{args.seconds + spawn_seconds(users, args):g}s", "--channels",
           str(args.channels), "--publish-rate", f"{args.publish_rate:g}", "--poll-timeout",
           f"{args.poll_timeout:g}", "--max-hold", f"{max(args.poll_timeout + 10, 60):g}",
           "--workers", str(args.workers), "--port", str(args.port), "--backend-port",
           str(args.backend_port), "--out", str(out), "--no-report"]
    if args.backends:
        cmd += ["--backends", str(args.backends)]
    if args.protocol:
        cmd += ["--protocol", args.protocol]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode not in (0,):
        why = [f"pollbench run exited {proc.returncode}: {proc.stderr.strip()[-300:]}"]
        if (out / "run.json").exists():
            why += limits_hit(json.loads((out / "run.json").read_text()))
        return {"users": users, "held": False, "why": why}
    subprocess.run([sys.executable, "-m", "pollbench", "report", str(out), "--warmup",
                    f"{spawn_seconds(users, args):g}"], capture_output=True, cwd=REPO,
                   check=True)
    record = json.loads((out / "run.json").read_text())
    summary = json.loads((out / "report" / "summary.json").read_text())
    with open(out / "samples" / "processes.csv") as f:
        proc_rows = list(csv.DictReader(f))
    m = {k: v["value"] for k, v in summary["metrics"].items()}
    with open(out / "samples" / "stub_status.csv") as f:
        active = max((int(r["active"]) for r in csv.DictReader(f)), default=0)
    lg = record["loadgen"]
    # held: every subscriber connected at once (nginx active connections, sampled each second,
    # >= 95 %), and nothing
    # failed, lost or duplicated, with a load generator whose figures can be trusted
    held = (m["errors"] == 0 and m["lost_messages"] == 0 and m["duplicate_messages"] == 0
            and not record["cpu"]["loadgen_saturated"] and active >= 0.95 * users)
    return {
        "users": users, "held": held, "run": str(out),
        "failures": m["errors"], "lost": m["lost_messages"], "duplicates": m["duplicate_messages"],
        "delivered": lg.get("delivered"),
        "delivery_p50_ms": m.get("delivery_latency_p50"),
        "delivery_p99_ms": m.get("delivery_latency_p99"),
        "delivery_max_ms": m.get("delivery_latency_max"),
        "cpu_s": record["cpu"]["cpu_seconds"],
        "loadgen_saturated": record["cpu"]["loadgen_saturated"],
        "peak_fds": {c: peak(proc_rows, c, "num_fds") for c in ("loadgen", "nginx", "backend")},
        "peak_rss_mib": {c: round(peak(proc_rows, c, "rss_bytes") / 2**20)
                         for c in ("loadgen", "nginx", "backend")},
        "nginx_active_max": active,
        "machine_saturated": record["cpu"].get("machine_saturated"),
        "why": limits_hit(record),
    }


def spawn_seconds(users: int, args) -> float:
    """How long spawning ``users`` takes: --spawn-rate's pace when given, else --spawn-seconds."""
    return users / args.spawn_rate if args.spawn_rate else args.spawn_seconds


def add_run_arguments(ap: argparse.ArgumentParser, seconds: float = 60,
                      publish_rate: float = 2.0, poll_timeout: float = 30,
                      spawn_rate: float | None = None, backends: int | None = None) -> None:
    """The options of :func:`run_count` (also benchmarks/ceilings.py's)."""
    ap.add_argument("--seconds", type=float, default=seconds, help="hold time after spawning")
    ap.add_argument("--spawn-seconds", type=float, default=15)
    ap.add_argument("--spawn-rate", type=float, default=spawn_rate,
                    help="users started per second (wins over --spawn-seconds)")
    ap.add_argument("--poll-timeout", type=float, default=poll_timeout,
                    help="s each poll is held (the backends' --max-hold follows it)")
    ap.add_argument("--backends", type=int, default=backends,
                    help="backend processes (default: the profile's; 0 with nchan)")
    ap.add_argument("--protocol", default=None,
                    help="the target's protocol (nchan: with --profile nchan-scale --backends 0)")
    ap.add_argument("--channels", type=int, default=10)
    ap.add_argument("--publish-rate", type=float, default=publish_rate,
                    help="messages/s, all channels")
    ap.add_argument("--profile", default="scale")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--backend-port", type=int, default=8000)
    ap.add_argument("--keep", type=Path, default=None, help="keep run folders here")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, nargs="+", default=[5000])
    add_run_arguments(ap)
    args = ap.parse_args()
    out_root = args.keep or Path(tempfile.mkdtemp(prefix="pollbench-scale-"))
    out_root.mkdir(parents=True, exist_ok=True)
    best = 0
    for users in args.users:
        r = run_count(users, args, out_root)
        print(json.dumps(r, indent=1), flush=True)
        verdict = "HELD" if r["held"] else "DID NOT HOLD"
        print(f"== {users} subscribers, {args.seconds:g} s through nginx ({args.profile}): "
              f"{verdict}; failures {r.get('failures')}, lost {r.get('lost')}, duplicates "
              f"{r.get('duplicates')}, delivery p50 {r.get('delivery_p50_ms')} ms, p99 "
              f"{r.get('delivery_p99_ms')} ms; limits hit: {', '.join(r['why']) or 'none seen'}",
              flush=True)
        if r["held"]:
            best = max(best, users)
        else:
            break
    print(f"highest count that held: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
