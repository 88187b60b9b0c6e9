"""``pollbench run``: start the stack, run Locust headless, stop everything, keep a complete record.

The run folder (never an existing one) holds: ``run.json`` (parameters, versions,
host, CPU per component, warnings, exit status), the rendered nginx config and
every process's log, Locust's CSVs / HTML / JSON, the lossless latency data
(``metrics/``), and samples of CPU/memory, stub_status and backend /stats
(``samples/``).  Ctrl-C or a failure still writes run.json, marked incomplete.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import psutil

from pollbench import nginx_config
from pollbench.errors import RunFailed, UserError
from pollbench.loadgen import SCENARIOS, SHAPES, LoadSpec, parse_duration
from pollbench.processes import parse_cpu_placement, spawn
from pollbench.rundir import new_run_dir, write_json_atomic
from pollbench.runinfo import (
    SCHEMA_VERSION,
    STATUS_COMPLETE,
    STATUS_FAILED,
    STATUS_INCOMPLETE,
    STATUS_RUNNING,
    host_info,
    software_versions,
)
from pollbench.sampler import Sampler
from pollbench.stack import Stack, StackSpec
from pollbench.stack_args import add_stack_arguments, spec_from_args

# Locust needs a moment past -t to stop users and write its reports.
LOCUST_GRACE_S = 60


def add_load_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("load")
    g.add_argument("--scenario", default="channels", choices=sorted(SCENARIOS),
                   help="channels (subscribers + a publisher), tasks (task pollers), or mixed")
    g.add_argument("--mix", default=None,
                   help="weights instead of --scenario, e.g. subscriber:9,tasks:1")
    g.add_argument("--users", type=int, default=200, help="simulated clients (default 200)")
    g.add_argument("--spawn-rate", type=float, default=None,
                   help="users started per second (default: all within 5 s)")
    g.add_argument("--duration", default="60s", help="run time: 60, 60s, 2m, 1h30m (default 60s)")
    g.add_argument("--shape", default="constant", choices=SHAPES, help="load shape over the run")
    g.add_argument("--workers", type=int, default=0,
                   help="Locust worker processes (0: one local process)")
    g.add_argument("--connection", default="keepalive",
                   help="client connections: keepalive, close (new one per request), every:K")
    g.add_argument("--channels", type=int, default=10, help="channels to spread subscribers over")
    g.add_argument("--publish-rate", type=float, default=20.0,
                   help="messages/s over all channels, on a fixed schedule (default 20)")
    g.add_argument("--poll-timeout", type=float, default=20.0,
                   help="seconds the server may hold each poll (default 20)")
    g.add_argument("--task-duration-ms", type=int, default=500, help="each task's duration")
    g.add_argument("--cpus", default=None, metavar="LOADGEN/STACK",
                   help="CPU placement, e.g. 0/1: the load generator on CPU 0, nginx and the "
                        "backends on CPU 1 (default: no placement; see README)")


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run one benchmark end to end and record it in results/",
                       description=__doc__)
    add_stack_arguments(p)
    add_load_arguments(p)
    p.add_argument("--out", type=Path, default=None, help="run folder (must not exist)")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="skip the HTML report at the end (pollbench report RUN makes it later)")
    p.set_defaults(func=lambda a: run(*place_cpus(spec_from_args(a), load_from_args(a), a.cpus),
                                      out=a.out, report=a.report))


def place_cpus(spec: StackSpec, load: LoadSpec, text: str | None) -> tuple[StackSpec, LoadSpec]:
    """``--cpus LOADGEN/STACK`` into both specs (refused in one line before anything starts)."""
    if text is None:
        return spec, load
    try:
        load.cpus, spec.cpus = parse_cpu_placement(text)
    except ValueError as e:
        raise UserError(f"--cpus {e}") from None
    return spec, load


def load_from_args(args: argparse.Namespace) -> LoadSpec:
    return LoadSpec(scenario=args.scenario, mix=args.mix, users=args.users,
                    spawn_rate=args.spawn_rate, duration_s=parse_duration(args.duration),
                    shape=args.shape, workers=args.workers, connection=args.connection,
                    channels=args.channels, publish_rate=args.publish_rate,
                    poll_timeout_s=args.poll_timeout, task_duration_ms=args.task_duration_ms)


class Progress:
    """One line per interval: elapsed / total, users, HTTP requests/s, deliveries/s, errors.

    The two rates are kept apart: Locust's own total also counts its synthetic rows
    (DELIVERY, TASK ...), which are not requests."""

    def __init__(self, path: Path, total_s: float, stream=sys.stdout, every_s: float = 5.0):
        self.path, self.total_s, self.stream, self.every_s = path, total_s, stream, every_s
        self._next = time.monotonic() + every_s
        self.last: dict = {}

    def poll(self) -> None:
        if time.monotonic() < self._next:
            return
        self._next += self.every_s
        try:
            self.last = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        p = self.last
        print(f"[{p['elapsed_s']:6.0f}s/{self.total_s:.0f}s] users {p['users']:>6}  "
              f"HTTP req/s {p['requests_per_s']:>8.1f}  deliveries/s {p['deliveries_per_s']:>8.1f}  "
              f"failures {p['failures']}  lost {p['lost']}  duplicates {p['duplicates']}",
              file=self.stream, flush=True)


def base_record(kind: str, spec: StackSpec, load: LoadSpec, settings: dict) -> dict:
    return {
        "schema_version": SCHEMA_VERSION, "kind": kind, "status": STATUS_RUNNING,
        # who writes the end: a reader finding "running" with this process gone says "crashed"
        "writer": {"pid": os.getpid(), "started_at": psutil.Process().create_time()},
        "complete": False, "started_at": time.time(), "ended_at": None, "duration_s": None,
        "parameters": {
            "scenario": load.mix and f"mix:{load.mix}" or load.scenario,
            "user_classes": load.user_classes(), "users": load.users,
            "spawn_rate": load.effective_spawn_rate(), "duration_s": load.duration_s,
            "shape": load.shape, "workers": load.workers, "connection": load.connection,
            "channels": load.channels, "publish_rate": load.publish_rate,
            "poll_timeout_s": load.poll_timeout_s, "task_duration_ms": load.task_duration_ms,
            "cpus_loadgen": list(load.cpus) if load.cpus else None,
        },
        "stack": {"profile": spec.profile, "nginx": settings, "backends": settings["backends"],
                  "loop": spec.loop, "port": spec.port, "backend_ports": spec.backend_ports(),
                  "max_hold_s": spec.max_hold_s, "delivery_delay_ms": spec.delivery_delay_ms,
                  "nginx_binary": spec.nginx_name(),
                  "cpus": list(spec.cpus) if spec.cpus else None},
        "software": software_versions(spec.nginx_path()),
        "host": host_info(),
        "warnings": [],
        "files": {},
        "exit": {"code": None, "reason": "running"},
    }


FILES = {
    "nginx_conf": "nginx/nginx.conf", "nginx_access_log": "nginx/logs/access.jsonl",
    "nginx_error_log": "nginx/logs/error.log", "locust_log": "logs/locust.log",
    "locust_stats": "locust/locust_stats.csv", "locust_history": "locust/locust_stats_history.csv",
    "locust_failures": "locust/locust_failures.csv", "locust_html": "locust/report.html",
    "locust_json": "locust/stats.json", "latency_hdr": "metrics/latency.hdr.jsonl",
    "counters": "metrics/counters.jsonl", "processes": "samples/processes.csv",
    "stub_status": "samples/stub_status.csv", "backend_stats": "samples/backend_stats.jsonl",
}


def cpu_summary(sampler: Sampler, load: LoadSpec) -> tuple[dict, list[str]]:
    warnings = []
    saturated = sampler.saturated("loadgen")
    if saturated:
        warnings.append(
            f"load generator CPU-saturated ({', '.join(saturated)} at >= 90% of a core in >= 20% "
            "of samples): its latencies and rates are not to be trusted; add --workers or "
            "lower --users")
    machine = sampler.saturated("system")
    if machine:
        warnings.append(
            "the machine's CPU was saturated (all cores >= 95% busy in >= 20% of samples): the "
            "load generator, nginx and the backends share it, so latencies include CPU queueing")
    summary = {
        "machine_saturated": bool(machine),
        "cpu_seconds": {k: round(v, 2) for k, v in sampler.cpu_seconds.items()},
        "saturated_share": {k: round(s / n, 3) for k, (n, s) in sampler.saturation.items() if n},
        "loadgen_saturated": bool(saturated),
    }
    return summary, warnings


def run(spec: StackSpec, load: LoadSpec, out: Path | None = None, report: bool = True) -> int:
    settings = spec.validate()
    load.validate(spec.max_hold_s)
    label = f"{load.mix and 'mix' or load.scenario}-{spec.profile}-{load.users}u"
    if out is not None:
        nginx_config.safe_path(Path(out).resolve() / "nginx")  # refused before it is created
    run_dir = new_run_dir(label, out)
    record = base_record("run", spec, load, settings)
    write_json_atomic(run_dir / "run.json", record)
    print(f"pollbench run: {label}, {load.duration_s:g} s -> {run_dir}", flush=True)

    sampler: Sampler | None = None
    status, reason, code = STATUS_FAILED, "failed", 3
    stack = Stack(spec, run_dir)
    locust = None
    try:
        stack.start()
        (run_dir / "locust").mkdir()
        cmd = load.headless_cmd(stack.url, run_dir / "metrics", run_dir / "locust" / "locust",
                                run_dir / "locust" / "report.html",
                                run_dir / "locust" / "stats")  # Locust adds .json
        record["locust_command"] = cmd
        locust = stack.group.add(spawn("loadgen", cmd, run_dir / "logs" / "locust.log",
                                       stop_signal=signal.SIGTERM, cpus=load.cpus))
        record["pids"] = stack.pids()
        sampler = Sampler(run_dir / "samples", stack.pids, stack.url, stack.backend_urls)
        sampler.start()
        progress = Progress(run_dir / "metrics" / "progress.json", load.duration_s)
        deadline = time.monotonic() + load.duration_s + LOCUST_GRACE_S
        while locust.alive():
            if time.monotonic() > deadline:
                raise RunFailed(f"Locust did not finish within {LOCUST_GRACE_S} s of the run "
                                f"time; see {locust.log_path}")
            stack.check_alive()
            progress.poll()
            time.sleep(0.2)
        rc = locust.popen.returncode
        if rc not in (0, 1):
            raise RunFailed(f"Locust exited with code {rc}; last lines of {locust.log_path}:\n"
                            f"{locust.log_tail()}")
        status, reason, code = STATUS_COMPLETE, "complete", 0
    except KeyboardInterrupt:
        status, reason, code = STATUS_INCOMPLETE, "interrupted (Ctrl-C or SIGTERM)", 130
        raise
    except RunFailed as e:
        reason = f"failed: {str(e).splitlines()[0]}"
        raise
    except UserError as e:
        reason = f"failed: {e}"
        raise
    finally:
        # Ctrl-C again while stopping must not leave processes: ignore it until all are down.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            stack.stop()
            if sampler is not None:
                sampler.stop()
            finish_record(record, run_dir, status, reason, code, sampler, load, stack,
                          report and status == STATUS_COMPLETE)
        finally:
            signal.signal(signal.SIGINT, previous)
    return code


def latency_lines(hdr_log: Path) -> list[str]:
    """Headline latencies from the lossless log (not Locust's rounded percentiles)."""
    from analysis.hdr import merged, read_hdr_log, summary_ms

    try:
        log = read_hdr_log(hdr_log)
    except ValueError:
        return [f"(latency log {hdr_log} is unreadable)"]
    lines = []
    for metric, label in (("DELIVERY", "delivery latency"), ("TASK", "task turnaround")):
        s = summary_ms(merged(log, metric))
        if s["count"]:
            lines.append(f"{label:17} n={s['count']}  p50 {s['p50']:.2f} ms  p99 {s['p99']:.2f} ms"
                         f"  max {s['max']:.2f} ms")
    return lines


def finish_record(record: dict, run_dir: Path, status: str, reason: str, code: int,
                  sampler: Sampler | None, load: LoadSpec, stack: Stack,
                  make_report: bool = False) -> None:
    record["ended_at"] = time.time()
    record["duration_s"] = round(record["ended_at"] - record["started_at"], 3)
    record["status"] = status
    record["complete"] = status == STATUS_COMPLETE
    record["exit"] = {"code": code, "reason": reason, "processes": stack.exit_codes}
    record["files"] = {k: v for k, v in FILES.items() if (run_dir / v).exists()}
    missing = sorted(set(FILES) - set(record["files"]))
    if missing and status == STATUS_COMPLETE:
        record["warnings"].append(f"files missing from a complete run: {', '.join(missing)}")
    if sampler is not None:
        record["cpu"], warnings = cpu_summary(sampler, load)
        record["warnings"] += warnings
    try:
        record["loadgen"] = json.loads((run_dir / "metrics" / "progress.json").read_text())
    except (OSError, ValueError):
        record["loadgen"] = {}
    lg = record["loadgen"]
    if lg.get("lost") or lg.get("duplicates"):
        record["warnings"].append(f"{lg.get('lost', 0)} messages lost and "
                                  f"{lg.get('duplicates', 0)} duplicated")
    write_json_atomic(run_dir / "run.json", record)
    for w in record["warnings"]:
        print(f"WARNING: {w}", file=sys.stderr, flush=True)
    if lg:
        print(f"HTTP requests {lg.get('requests')}  failures {lg.get('failures')}  delivered "
              f"{lg.get('delivered')}  lost {lg.get('lost')}  duplicates {lg.get('duplicates')}",
              flush=True)
    for line in latency_lines(run_dir / FILES["latency_hdr"]):
        print(line, flush=True)
    if make_report:
        from pollbench.cmd_report import report

        try:
            report([run_dir], quiet=True)
            print(f"report: {run_dir / 'report' / 'report.html'}", flush=True)
        except Exception as e:  # the run's record matters more than its report
            print(f"WARNING: the report could not be written ({e}); "
                  f"try: pollbench report {run_dir}", file=sys.stderr, flush=True)
    print(f"status: {status}" + ("" if status == STATUS_COMPLETE else f" ({reason})"), flush=True)
    print(run_dir, flush=True)
