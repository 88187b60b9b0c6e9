"""Benchmark: one Locust worker process against two, on hosts of their own (network
namespaces), and what the Locust master costs.  Root only.

    python benchmarks/scale_out.py [--subscribers 1000] [--channels 10] [--rate 20]
                                   [--seconds 20] [--rounds 2] [--json FILE]

Four "hosts" joined by a bridge (:mod:`pollbench.stack.netns`): the target (``pollbench up
--bind``, profile longpoll, 4 backends), the controller (``pollbench run --target --agent
--expect-workers N``: the Locust master) and two load hosts (``pollbench worker``).  Each
round runs, in rotated order: the load on 1 worker process (on w1), the same load on 2
(w1 and w2, one each), and the lean reference client (``benchmarks/reference_client.py``,
on w1) as the yardstick of fidelity.  Prints per run and as medians over rounds:
deliveries per second, delivery p50 / p99 (harness: after the 5-s warm-up, lossless log;
reference: its kernel-stamped window), their ratio to the reference's, the master's CPU
(% of one core, mean over the run), each worker's mean CPU (its own count, each second) and the
target's.  The namespaces share this machine's 2 cores: the figures say what the split
costs and buys here, not what separate machines would give.  Every run is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.figures import compute  # noqa: E402
from analysis.load import load_run  # noqa: E402
from pollbench.stack import netns  # noqa: E402

TOKEN = "scale-out-" + "k" * 20
PY = sys.executable


def pb(*args: str) -> list[str]:
    return [PY, "-m", "pollbench", *args]


def start(hosts, host: str, cmd: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(hosts.cmd(host, cmd), cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, POLLBENCH_HISTORY="off"))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def harness_run(hosts, a, root: Path, name: str, workers: list[str]) -> dict:
    t, c = hosts.address("target"), hosts.address("controller")
    procs = [start(hosts, w, pb("worker", "--master", f"{c}:5557", "--once"),
                   root / f"{name}-{w}.log") for w in workers]
    out = root / name
    try:
        proc = subprocess.run(hosts.cmd("controller", pb(
            "run", "--target", f"http://{t}:8080", "--agent", f"http://{t}:9100",
            "--agent-token", TOKEN, "--expect-workers", str(len(workers)), "--master-bind", c,
            "--users", str(a.subscribers + 1), "--spawn-rate", str(max(a.subscribers / 3, 1)),
            "--duration", f"{a.seconds}s", "--channels", str(a.channels),
            "--publish-rate", str(a.rate), "--poll-timeout", "20", "--no-report",
            "--out", str(out))), cwd=REPO, capture_output=True, text=True,
            timeout=a.seconds + 300, env=dict(os.environ, POLLBENCH_HISTORY="off"))
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed: {proc.stderr[-600:]}")
    finally:
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                stop(p)
    info = json.loads((out / "run.json").read_text())
    m = compute(load_run(out), 5.0).summary["metrics"]
    cpu = info["cpu"]["cpu_seconds"]
    run_s = info["duration_s"] or a.seconds
    return {
        "deliveries_per_s": round(info["loadgen"]["delivered"] / a.seconds, 1),
        "p50": m["delivery_latency_p50"]["value"], "p99": m["delivery_latency_p99"]["value"],
        "master_cpu": round(cpu.get("loadgen", 0.0) / run_s * 100, 1),
        "workers_cpu": info["distributed"].get("workers_cpu_percent", {}),
        "target_cpu": round(sum(v for k, v in cpu.items() if not k.startswith("loadgen"))
                            / run_s * 100, 1),
        "lost": info["loadgen"]["lost"], "duplicates": info["loadgen"]["duplicates"],
        "warnings": info["warnings"],
    }


def reference_run(hosts, a) -> dict:
    t = hosts.address("target")
    warmup = a.subscribers / max(a.subscribers / 3, 1) + 5
    proc = subprocess.run(hosts.cmd("w1", [
        PY, str(REPO / "benchmarks" / "reference_client.py"), "--url", f"http://{t}:8080",
        "--namespace-target",
        "--users", str(a.subscribers), "--channels", str(a.channels),
        "--publish-rate", str(a.rate), "--spawn-seconds", "3", "--warmup", f"{warmup:g}",
        "--seconds", str(a.seconds)]), capture_output=True, text=True,
        timeout=a.seconds + warmup + 120)
    if proc.returncode != 0:
        raise SystemExit(f"reference failed: {proc.stderr[-600:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"deliveries_per_s": round(r["delivered"] / a.seconds, 1), "p50": r["p50_ms"],
            "p99": r["p99_ms"], "cpu": round(r["cpu_s"] / a.seconds * 100, 1),
            "lost": r["lost"], "duplicates": r["duplicates"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--channels", type=int, default=10)
    ap.add_argument("--rate", type=float, default=20.0, help="messages per second, in all")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    why = netns.available()
    if why:
        raise SystemExit(f"scale_out: {why}")
    root = Path(tempfile.mkdtemp(prefix="scale-out-"))
    results: dict[str, list[dict]] = {"1 worker": [], "2 workers": [], "reference": []}
    with netns.Hosts(["target", "controller", "w1", "w2"]) as hosts:
        up = start(hosts, "target", pb("up", "--profile", "longpoll", "--bind",
                                       hosts.address("target"), "--port", "8080",
                                       "--backend-port", "8000", "--agent-port", "9100",
                                       "--agent-token", TOKEN, "--out", str(root / "up")),
                   root / "up.log")
        try:
            deadline = time.monotonic() + 60
            while "Ctrl-C stops" not in (root / "up.log").read_text():
                if time.monotonic() > deadline or up.poll() is not None:
                    raise SystemExit(f"up did not start: {(root / 'up.log').read_text()}")
                time.sleep(0.2)
            order = list(results)
            for r in range(a.rounds):
                for name in order[r % 3:] + order[:r % 3]:
                    if name == "reference":
                        got = reference_run(hosts, a)
                    else:
                        got = harness_run(hosts, a, root, f"r{r}-{name.split()[0]}w",
                                          ["w1"] if name == "1 worker" else ["w1", "w2"])
                    results[name].append(got)
                    print(f"round {r + 1} {name:9}: {json.dumps(got)}", flush=True)
        finally:
            stop(up)
    ref_p50 = statistics.median(x["p50"] for x in results["reference"])
    ref_p99 = statistics.median(x["p99"] for x in results["reference"])
    print(f"\n{a.subscribers} subscribers, {a.rate:g} msg/s over {a.channels} channels, "
          f"{a.seconds}-s runs, {a.rounds} rounds; medians (min-max):")
    for name in ("1 worker", "2 workers"):
        rows = results[name]

        def span(key: str, rows=rows) -> str:
            vals = [x[key] for x in rows]
            return f"{statistics.median(vals):.2f} ({min(vals):.2f}-{max(vals):.2f})"

        wcpu = [sum(x["workers_cpu"].values()) for x in rows]
        print(f"  {name:9}: deliveries/s {span('deliveries_per_s')}  p50 {span('p50')} ms "
              f"(x{statistics.median(x['p50'] for x in rows) / ref_p50:.2f} of the "
              f"reference)  p99 {span('p99')} ms (x"
              f"{statistics.median(x['p99'] for x in rows) / ref_p99:.2f})  master CPU "
              f"{span('master_cpu')} %  workers' CPU together {statistics.median(wcpu):.1f} %"
              f"  target CPU {span('target_cpu')} %")
    print(f"  reference: deliveries/s "
          f"{statistics.median(x['deliveries_per_s'] for x in results['reference']):.1f}  "
          f"p50 {ref_p50:.2f} ms  p99 {ref_p99:.2f} ms  CPU "
          f"{statistics.median(x['cpu'] for x in results['reference']):.1f} %")
    if a.json:
        a.json.write_text(json.dumps({"args": vars(a) | {"json": str(a.json)},
                                      "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
