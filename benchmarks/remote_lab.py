"""Benchmark: a shipped sweep against a target host of its own, driven through its agent.
Root only.

    python benchmarks/remote_lab.py --sweep upstream-keepalive [--out DIR] [--json FILE]
    python benchmarks/remote_lab.py --sweep upstream-keepalive --kill-controller-after 20 \\
        --lease 30

Four "hosts" joined by a bridge (:mod:`pollbench.stack.netns`): the target (``pollbench
agent``), the controller (``pollbench sweep FILE --target --agent --expect-workers 2``) and
two load hosts (``pollbench worker``).  The sweep file runs unchanged; each cell's stack is
started on the target through the agent.  Prints each cell's figures (means over its
repetitions, from the sweep's comparison report) and the ranking.

With ``--kill-controller-after S`` the controller is SIGKILLed S seconds into the sweep's
first run: the script prints how long the target took to be idle (its agent's log says the
lease ran out and the stack stopped), then starts new workers and a new controller with
``--resume``, which finishes the sweep.  The namespaces share this machine's 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pollbench.stack import netns  # noqa: E402

PY = sys.executable
FIGURES = ("delivery_latency_p50", "delivery_latency_p99", "error_rate",
           "requests_per_connection_upstream", "cpu_percent_nginx", "cpu_percent_backends",
           "cpu_per_kdelivery_stack", "cpu_per_kdelivery_nginx", "cpu_per_kdelivery_backends",
           "cpu_per_kdelivery_loadgen")


def pb(*args: str) -> list[str]:
    return [PY, "-m", "pollbench", *args]


class Lab:
    def __init__(self, hosts, root: Path, token: str):
        self.hosts, self.root, self.token = hosts, root, token
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ, POLLBENCH_HISTORY="off", POLLBENCH_AGENT_TOKEN=token)

    def start(self, host: str, cmd: list[str], name: str) -> tuple[subprocess.Popen, Path]:
        log = self.root / f"{name}.log"
        with log.open("w") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(self.hosts.cmd(host, cmd), cwd=REPO, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env=self.env)
        self.procs.append(proc)
        return proc, log

    def workers(self, tag: str) -> list[subprocess.Popen]:
        c = self.hosts.address("controller")
        return [self.start(w, pb("worker", "--master", f"{c}:5557"), f"{w}{tag}")[0]
                for w in ("w1", "w2")]

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def wait_for(path: Path, text: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return time.monotonic()
        time.sleep(0.05)
    raise SystemExit(f"no {text!r} in {path} within {timeout:g} s")


def figures(out: Path) -> dict:
    summary = json.loads((out / "report" / "summary.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    cells = {}
    for cell in summary["cells"]:
        runs = [json.loads((Path(r) / "run.json").read_text()) for r in cell["runs"]]
        cells[cell["label"]] = {
            **{k: cell["metrics"].get(k, {}) for k in FIGURES},
            "failed_requests": [r["loadgen"]["failures"] for r in runs],
            "lost": [r["loadgen"]["lost"] for r in runs],
            "workers_cpu": [r["distributed"].get("workers_cpu_percent") for r in runs],
            "stack_reused": [r["distributed"].get("stack_reused") for r in runs],
            "ran_out_first": cell.get("ran_out_first"),
        }
    return {"cells": cells, "ranking": manifest.get("ranking"),
            "cost_ranking": manifest.get("cost_ranking"),
            "plan": [{k: e.get(k) for k in ("run", "status", "attempts", "cooldown")}
                     for e in manifest["plan"]]}


def fmt(m: dict) -> str:
    if m.get("mean") is None:
        return "n/a"
    ci = m.get("ci95_half_width")
    return f"{m['mean']:.3g}" + (f" ± {ci:.2g}" if ci else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sweep", required=True, help="a shipped sweep's name or a .toml file")
    ap.add_argument("--out", type=Path, default=None, help="folder of everything (new)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--kill-controller-after", type=float, default=None, metavar="S")
    ap.add_argument("--lease", type=float, default=30.0)
    a = ap.parse_args()
    why = netns.available()
    if why:
        raise SystemExit(f"remote_lab: {why}")

    def interrupt(signum, frame):
        raise KeyboardInterrupt  # SIGTERM too: everything started is stopped below

    signal.signal(signal.SIGTERM, interrupt)
    root = a.out or Path(f"/tmp/remote-lab-{time.strftime('%Y%m%d-%H%M%S')}")
    root.mkdir(parents=True)
    out = root / "sweep"
    started = time.monotonic()
    result: dict = {"sweep": a.sweep, "lease_s": a.lease}
    with netns.Hosts(["target", "controller", "w1", "w2"]) as hosts:
        lab = Lab(hosts, root, secrets.token_hex(32))
        t, c = hosts.address("target"), hosts.address("controller")
        try:
            agent, agent_log = lab.start("target", pb(
                "agent", "--bind", t, "--port", "8080", "--backend-port", "8000",
                "--agent-port", "9100", "--out", str(root / "agent")), "agent")
            wait_for(agent_log, "Ctrl-C stops everything", 60)
            lab.workers("")
            sweep = pb("sweep", a.sweep, "--target", f"http://{t}:8080", "--agent",
                       f"http://{t}:9100", "--expect-workers", "2", "--master-bind", c,
                       "--agent-lease", f"{a.lease:g}", "--out", str(out))
            if a.kill_controller_after is not None:
                ctl, _ = lab.start("controller", sweep, "controller-killed")
                wait_for(next_progress(out), '"users"', 300)
                time.sleep(a.kill_controller_after)  # the condition: a controller mid-run
                os.killpg(ctl.pid, signal.SIGKILL)
                killed = time.monotonic()
                print(f"controller killed {a.kill_controller_after:g} s into its first run")
                ran_out = wait_for(agent_log, "ran out", a.lease + 30)
                idle = wait_for(agent_log, "ran out); idle", 60)
                result["lease_ran_out_after_s"] = round(ran_out - killed, 2)
                result["idle_after_s"] = round(idle - killed, 2)
                print(f"target idle {idle - killed:.1f} s after the kill (lease {a.lease:g} s; "
                      f"the lease ran out at {ran_out - killed:.1f} s)")
                for p in list(lab.procs):
                    if list(p.args)[-1:] == [f"{c}:5557"]:  # type: ignore[arg-type]
                        os.killpg(p.pid, signal.SIGKILL)
                lab.workers("-again")
                sweep = [*sweep[:-2], "--resume", "--out", str(out)]
            t_sweep = time.monotonic()
            proc = subprocess.run(hosts.cmd("controller", sweep), cwd=REPO, env=lab.env,
                                  capture_output=True, text=True, timeout=4 * 3600)
            (root / "controller.log").write_text(proc.stdout + proc.stderr)
            if proc.returncode != 0:
                raise SystemExit(f"the sweep failed ({proc.returncode}): {proc.stderr[-1500:]}")
            result["sweep_s"] = round(time.monotonic() - t_sweep, 1)
        finally:
            lab.stop_all()
    result.update(figures(out))
    result["total_s"] = round(time.monotonic() - started, 1)
    print(f"\nsweep {a.sweep} on a target host of its own (2 worker hosts): "
          f"{result['sweep_s']:.0f} s; folder {out}")
    print("| cell | " + " | ".join(FIGURES) + " | failed requests | workers' CPU % |")
    print("|---" * (len(FIGURES) + 3) + "|")
    for label, cell in result["cells"].items():
        cpu = [round(sum(w.values()), 1) for w in cell["workers_cpu"] if w]
        print(f"| {label} | " + " | ".join(fmt(cell[k]) for k in FIGURES)
              + f" | {cell['failed_requests']} | {cpu} |")
    for ranking in (result.get("ranking") or {}, result.get("cost_ranking") or {}):
        if not ranking:
            continue
        print(f"\nranking by {ranking.get('metric')}:")
        for r in ranking.get("rows", []):
            pv = "" if r["p_value"] is None else f", p={r['p_value']:.3g}"
            change = "" if r["change_vs_best"] is None else f" ({r['change_vs_best']:+.1%})"
            print(f"  {r['rank']}. {r['label']}: {r['value']}{change} {r['verdict']}{pv}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


def next_progress(out: Path) -> Path:
    """The first run's progress file, once the sweep has planned it."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            first = json.loads((out / "manifest.json").read_text())["plan"][0]["run"]
            return out / first / "metrics" / "progress.json"
        except (OSError, ValueError, KeyError, IndexError):
            time.sleep(0.2)
    raise SystemExit(f"no manifest in {out} within 120 s")


if __name__ == "__main__":
    raise SystemExit(main())
