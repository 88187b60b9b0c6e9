"""One benchmark end to end (``pollbench run``): resolve, start the stack, run Locust headless,
sample, stop everything, and write the run folder (:data:`analysis.catalog.RUN_FILES`).

    code = run(StackSpec(profile="keepalive"), LoadSpec(users=200, duration_s=30))

run.json is written first (status running) and again at the end, whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from analysis.catalog import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RUN_FAILED,
    LOADGEN_SATURATED,
    METRICS_DIR,
    PROGRESS_FILE,
    RUN_FILES,
    RUN_SCHEMA_VERSION,
)
from pollbench.errors import RunFailed, UserError
from pollbench.log import log
from pollbench.paths import CHECKOUT
from pollbench.records.rundir import new_run_dir, write_json_atomic
from pollbench.records.runinfo import (
    STATUS_COMPLETE,
    STATUS_FAILED,
    STATUS_INCOMPLETE,
    STATUS_RUNNING,
    git_info,
    host_info,
    machine_fingerprint,
    software_versions,
)
from pollbench.stack import nginx_config, redis_server
from pollbench.stack.faults import BACKEND_ACTIONS, Fault, FaultInjector
from pollbench.stack.loadgen import LoadSpec
from pollbench.stack.processes import spawn
from pollbench.stack.sampler import Sampler, saturated
from pollbench.stack.spec import ResolvedStack, StackSpec
from pollbench.stack.stack import Stack

# Locust needs a moment past -t to stop users and write its reports.
LOCUST_GRACE_S = 60


class Progress:
    """One line per interval: elapsed / total, users, HTTP requests/s, deliveries/s, errors.

    The two rates are kept apart: Locust's own total also counts its synthetic rows
    (DELIVERY, TASK ...), which are not requests."""

    def __init__(self, path: Path, total_s: float, every_s: float = 5.0):
        self.path, self.total_s, self.every_s = path, total_s, every_s
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
        log.info(f"[{p['elapsed_s']:6.0f}s/{self.total_s:.0f}s] users {p['users']:>6}  "
                 f"HTTP req/s {p['requests_per_s']:>8.1f}  deliveries/s "
                 f"{p['deliveries_per_s']:>8.1f}  failures {p['failures']}  lost {p['lost']}  "
                 f"duplicates {p['duplicates']}")


def target_record(resolved: ResolvedStack) -> dict:
    """What run.json says of the stack and the host it runs on (the agent serves it too)."""
    spec, settings = resolved.spec, resolved.settings
    return {
        "stack": {"profile": spec.profile, "nginx": settings, "backends": settings["backends"],
                  "loop": spec.loop, "port": spec.port, "backend_ports": list(resolved.backend_ports),
                  "max_hold_s": spec.max_hold_s, "delivery_delay_ms": spec.delivery_delay_ms,
                  "nginx_binary": resolved.nginx_name, "bind": spec.bind,
                  "cpus": list(spec.cpus) if spec.cpus else None,
                  "state": resolved.state,
                  "redis": None if resolved.state != "redis" else {
                      "started": resolved.redis_port is not None,
                      "port": resolved.redis_port, "settings": resolved.redis_settings,
                      # an external server's URL may carry a password: keep only where it is
                      "external": None if spec.redis_url is None
                      else redis_server.display_url(spec.redis_url)}},
        "software": (software := software_versions(resolved.nginx_path,
                                                   resolved.redis_binary)),
        "host": host_info(),
        "machine": machine_fingerprint(software),
        "git": git_info(CHECKOUT),
    }


def base_parameters(load: LoadSpec) -> dict:
    """run.json's "parameters": the load as asked."""
    return {
        "scenario": load.mix and f"mix:{load.mix}" or load.scenario,
        "user_classes": load.user_classes(), "users": load.users,
        "spawn_rate": load.effective_spawn_rate(), "duration_s": load.duration_s,
        "shape": load.shape, "workers": load.workers, "connection": load.connection,
        "channels": load.channels, "publish_rate": load.publish_rate,
        "poll_timeout_s": load.poll_timeout_s, "task_duration_ms": load.task_duration_ms,
        "cpus_loadgen": list(load.cpus) if load.cpus else None,
        "faults": list(load.faults),
    }


def record_start(kind: str, load: LoadSpec, target: dict) -> dict:
    """run.json as first written (status running), around ``target`` (what is known of the
    stack and its host: :func:`target_record`, or a remote target's agent)."""
    return {
        "schema_version": RUN_SCHEMA_VERSION, "kind": kind, "status": STATUS_RUNNING,
        # who writes the end: a reader finding "running" with this process gone says "crashed"
        "writer": {"pid": os.getpid(), "started_at": psutil.Process().create_time()},
        "complete": False, "started_at": time.time(), "ended_at": None, "duration_s": None,
        "parameters": base_parameters(load),
        **target,
        "warnings": [],
        "files": {},
        "exit": {"code": None, "reason": "running"},
    }


def base_record(kind: str, resolved: ResolvedStack, load: LoadSpec) -> dict:
    return record_start(kind, load, target_record(resolved))


def cpu_summary(saturation: dict[str, list[int]], cpu_seconds: dict[str, float]
                ) -> tuple[dict, list[str]]:
    """run.json's "cpu" and its warnings, from the samples' saturation counts (name ->
    [samples, saturated samples]) and CPU seconds per component."""
    warnings = []
    loadgen = saturated(saturation, "loadgen")
    if loadgen:
        warnings.append(LOADGEN_SATURATED.format(names=", ".join(loadgen), span="samples"))
    machine = saturated(saturation, "system")
    if machine:
        warnings.append(
            "the machine's CPU was saturated (all cores >= 95% busy in >= 20% of samples): the "
            "load generator, nginx and the backends share it, so latencies include CPU queueing")
    summary = {
        "machine_saturated": bool(machine),
        "cpu_seconds": {k: round(v, 2) for k, v in cpu_seconds.items()},
        "saturated_share": {k: round(s / n, 3) for k, (n, s) in saturation.items() if n},
        "loadgen_saturated": bool(loadgen),
    }
    return summary, warnings


def run(spec: StackSpec, load: LoadSpec, out: Path | None = None, report: bool = True,
        history_source: str = "run", warmup_s: float | None = None) -> int:
    """``history_source``: what the results history records as the run's origin (run,
    check, sweep); the history is $POLLBENCH_HISTORY, else results/history.sqlite.
    ``warmup_s``: the warm-up the caller judges the run by (a check's, a sweep's), recorded
    in run.json so that the report and the history use the same (default: the spawn time)."""
    resolved = spec.resolve(claim=True)  # ports held until the run ends
    try:
        return _run(resolved, load, out, report, history_source, warmup_s)
    finally:
        resolved.release()


def check_fault_targets(resolved: ResolvedStack, faults: list[Fault]) -> None:
    """Backends that exist, reload profiles that load with the same backend count."""
    backends = resolved.settings["backends"]
    for f in faults:
        if f.target == "redis":
            if resolved.redis_port is None:
                raise UserError(f"--fault {f.text()}: this stack starts no Redis (it needs "
                                "--state redis, and no --redis URL)")
            continue
        if f.action in BACKEND_ACTIONS and f.backend >= backends:
            raise UserError(f"--fault {f.text()}: there is no {f.target} (the stack has "
                            f"{backends} backends: backend-0 to backend-{backends - 1})")
        if f.action == "reload" and f.target:
            other = replace(resolved.spec, profile=f.target).settings()
            if other["backends"] != backends:
                raise UserError(f"--fault {f.text()}: profile {f.target} has "
                                f"{other['backends']} backends, the stack {backends}")


def check_load_fits(resolved: ResolvedStack, load: LoadSpec) -> list[str]:
    """Refuse a load the target cannot hold as asked (one line); return warnings for what is
    probably a mistake (printed at once, kept in run.json)."""
    warnings = []
    if "ChannelSubscriber" in load.user_classes():
        app = resolved.app_config
        # with local state each backend holds its own channels; shared state holds them all once
        capacity = app.max_channels * (resolved.settings["backends"]
                                       if resolved.state == "local" else 1)
        if load.channels > capacity:
            raise UserError(f"--channels {load.channels} is more than the target holds "
                            f"({capacity:,}: {app.max_channels:,} per "
                            f"{'backend' if resolved.state == 'local' else 'shared state'}); "
                            "publishes past it would be refused with 503")
        subscribers = load.users - 1
        if load.channels > subscribers:
            warnings.append(f"--channels {load.channels} with {subscribers} subscribers: "
                            f"{load.channels - subscribers} channels have no subscriber (their "
                            "messages reach nobody)")
    cores = os.cpu_count() or 1
    if load.workers > cores:
        warnings.append(f"--workers {load.workers} on a machine with {cores} cores: the "
                        "Locust processes queue behind each other (and the stack) for CPU")
    for w in warnings:
        log.warning(w)
    return warnings


def _run(resolved: ResolvedStack, load: LoadSpec, out: Path | None, report: bool,
         history_source: str, warmup_s: float | None = None) -> int:
    spec = resolved.spec
    load.validate(spec.max_hold_s)
    early_warnings = check_load_fits(resolved, load)
    faults = load.fault_schedule()
    check_fault_targets(resolved, faults)
    label = f"{load.mix and 'mix' or load.scenario}-{spec.profile}-{load.users}u"
    if out is not None:
        nginx_config.safe_path(Path(out).resolve() / "nginx")  # refused before it is created
    run_dir = new_run_dir(label, out)
    record = base_record("run", resolved, load)
    record["warnings"] += early_warnings
    if warmup_s is not None:
        record["warmup_s"] = warmup_s
    write_json_atomic(run_dir / "run.json", record)
    log.info(f"pollbench run: {label}, {load.duration_s:g} s -> {run_dir}")

    sampler: Sampler | None = None
    injector: FaultInjector | None = None
    status, reason, code = STATUS_FAILED, "failed", EXIT_RUN_FAILED
    stack = Stack(resolved, run_dir, detach_nginx=any(f.action == "upgrade" for f in faults))
    locust = None
    try:
        stack.start()
        (run_dir / "locust").mkdir()
        cmd = load.headless_cmd(stack.url, run_dir / METRICS_DIR, run_dir / "locust" / "locust",
                                run_dir / "locust" / "report.html",
                                run_dir / "locust" / "stats")  # Locust adds .json
        record["locust_command"] = cmd
        locust = stack.group.add(spawn("loadgen", cmd, run_dir / "logs" / "locust.log",
                                       stop_signal=signal.SIGTERM, cpus=load.cpus))
        record["pids"] = stack.pids()
        sampler = Sampler(run_dir / "samples", stack.pids, stack.url, stack.backend_urls,
                          redis_url=stack.redis_url)
        sampler.start()
        if faults:
            injector = FaultInjector(stack, faults, time.monotonic())
            injector.start()
        progress = Progress(run_dir / METRICS_DIR / PROGRESS_FILE, load.duration_s)
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
        status, reason, code = STATUS_COMPLETE, "complete", EXIT_OK
    except KeyboardInterrupt:
        status, reason, code = STATUS_INCOMPLETE, "interrupted (Ctrl-C or SIGTERM)", EXIT_INTERRUPTED
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
            if injector is not None:
                injector.halt()  # no fault starts while the stack stops
            stack.stop()
            if injector is not None:
                injector.stop()
                record["faults"] = injector.records
            if sampler is not None:
                sampler.stop()
            finish_record(record, run_dir, status, reason, code, sampler, stack,
                          report and status == STATUS_COMPLETE,
                          history_source if status == STATUS_COMPLETE else None)
        finally:
            signal.signal(signal.SIGINT, previous)
    return code


def store_in_history(record: dict, run_dir: Path, source: str, git: dict | None = None) -> None:
    """Append the complete run to the results history; a failure costs the run nothing: it
    is said in one line and in run.json ("history"), and ``history import`` backfills."""
    from pollbench.records.history import record_run

    record["history"] = record_run(run_dir, source, git=git)
    write_json_atomic(run_dir / "run.json", record)
    if record["history"].get("error"):
        log.warning(record["history"]["error"])


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
                  sampler: Sampler | Any | None, stack: Stack | Any,
                  make_report: bool = False, history_source: str | None = None) -> None:
    record["ended_at"] = time.time()
    record["duration_s"] = round(record["ended_at"] - record["started_at"], 3)
    record["status"] = status
    record["complete"] = status == STATUS_COMPLETE
    record["exit"] = {"code": code, "reason": reason, "processes": stack.exit_codes}
    record["files"] = {k: v for k, v in RUN_FILES.items() if (run_dir / v).exists()}
    missing = sorted(set(RUN_FILES) - set(record["files"]))
    if missing and status == STATUS_COMPLETE:
        record["warnings"].append(f"files missing from a complete run: {', '.join(missing)}")
    if sampler is not None:
        record["cpu"], warnings = cpu_summary(sampler.saturation, sampler.cpu_seconds)
        record["warnings"] += warnings
    try:
        record["loadgen"] = json.loads((run_dir / METRICS_DIR / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        record["loadgen"] = {}
    lg = record["loadgen"]
    if lg.get("lost") or lg.get("duplicates"):
        record["warnings"].append(f"{lg.get('lost', 0)} messages lost and "
                                  f"{lg.get('duplicates', 0)} duplicated")
    write_json_atomic(run_dir / "run.json", record)
    for w in record["warnings"]:
        log.warning(w)
    if lg:
        log.info(f"HTTP requests {lg.get('requests')}  failures {lg.get('failures')}  delivered "
                 f"{lg.get('delivered')}  lost {lg.get('lost')}  duplicates "
                 f"{lg.get('duplicates')}")
    for line in latency_lines(run_dir / RUN_FILES["latency_hdr"]):
        log.info(line)
    if make_report:
        from pollbench.actions.report import report

        try:
            report([run_dir], quiet=True)
            log.info(f"report: {run_dir / 'report' / 'report.html'}")
        except Exception as e:  # the run's record matters more than its report
            log.warning(f"the report could not be written ({e}); try: pollbench report {run_dir}")
    if history_source is not None:
        store_in_history(record, run_dir, history_source)
    log.info(f"status: {status}" + ("" if status == STATUS_COMPLETE else f" ({reason})"))
    print(run_dir, flush=True)  # the result: the last line, also with -q
