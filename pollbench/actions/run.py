"""One benchmark end to end (``pollbench run``): resolve, start the stack, run Locust headless,
sample, stop everything, and write the run folder (:data:`analysis.catalog.RUN_FILES`).

    code = run(StackSpec(profile="keepalive"), LoadSpec(users=200, duration_s=30))

run.json is written first (status running) and again at the end, whatever happened.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

from analysis.saturation import LOADGEN
from pollbench.actions.runloop import Side, base_parameters, drive, run_label
from pollbench.errors import UserError
from pollbench.log import log
from pollbench.paths import CHECKOUT, results_dir
from pollbench.records.rundir import new_run_dir, write_json_atomic
from pollbench.records.runinfo import git_info, host_info, machine_fingerprint, software_versions
from pollbench.records.runrecord import record_start
from pollbench.stack import capacity, disk, nginx_config, redis_server
from pollbench.stack.faults import BACKEND_ACTIONS, Fault, FaultInjector
from pollbench.stack.loadgen import LoadSpec
from pollbench.stack.sampler import Sampler
from pollbench.stack.spec import ResolvedStack, StackSpec
from pollbench.stack.stack import Stack


def target_record(resolved: ResolvedStack) -> dict:
    """What run.json says of the stack and the host it runs on (the agent serves it too)."""
    spec, settings = resolved.spec, resolved.settings
    return {
        "stack": {"profile": spec.profile, "nginx": settings, "backends": settings["backends"],
                  "loop": spec.loop, "port": spec.port, "backend_ports": list(resolved.backend_ports),
                  "max_hold_s": spec.max_hold_s, "delivery_delay_ms": spec.delivery_delay_ms,
                  "burn_us": spec.burn_us,
                  # each backend's bounds, against which "what ran out first" is judged
                  "target_limits": {"max_waiters": resolved.app_config.max_waiters,
                                    "max_connections": resolved.app_config.max_connections},
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


def base_record(kind: str, resolved: ResolvedStack, load: LoadSpec) -> dict:
    """run.json as first written, for a stack on this host."""
    return record_start(kind, base_parameters(load), target_record(resolved))


def run(spec: StackSpec, load: LoadSpec, out: Path | None = None, report: bool = True,
        history_source: str = "run", warmup_s: float | None = None,
        max_error_rate: float | None = None, min_free_disk: int = disk.DEFAULT_FLOOR) -> int:
    """``history_source``: what the results history records as the run's origin (run,
    check, sweep); the history is $POLLBENCH_HISTORY, else results/history.sqlite.
    ``warmup_s``: the warm-up the caller judges the run by (a check's, a sweep's), recorded
    in run.json so that the report and the history use the same (default: the spawn time).
    ``max_error_rate``: a complete run above it exits 1 (for scripts; None: never).
    ``min_free_disk``: bytes the run folder's disk must keep free (refused before the start
    when the estimate passes it; stopped, incomplete, when reached)."""
    spec = with_access_log(spec, load)
    resolved = spec.resolve(claim=True)  # ports held until the run ends
    try:
        return _run(resolved, load, out, report, history_source, warmup_s, max_error_rate,
                    min_free_disk)
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
    app = resolved.app_config
    if "ChannelSubscriber" in load.user_classes():
        # with local state each backend holds its own channels; shared state holds them all once
        holds = app.max_channels * (resolved.settings["backends"]
                                    if resolved.state == "local" else 1)
        if load.channels > holds:
            raise UserError(f"--channels {load.channels} is more than the target holds "
                            f"({holds:,}: {app.max_channels:,} per "
                            f"{'backend' if resolved.state == 'local' else 'shared state'}); "
                            "publishes past it would be refused with 503")
        subscribers = load.users - 1
        if load.channels > subscribers:
            warnings.append(f"--channels {load.channels} with {subscribers} subscribers: "
                            f"{load.channels - subscribers} channels have no subscriber (their "
                            "messages reach nobody)")
    started_redis = resolved.redis_port is not None  # (a server of the user's: its own limit)
    warnings += capacity.warnings_for(resolved.settings, resolved.spec.profile, resolved.state,
                                      load, app.max_waiters, app.max_connections,
                                      resolved.redis_settings.get("maxclients")
                                      if started_redis else None)
    cores = os.cpu_count() or 1
    if load.workers > cores:
        warnings.append(f"--workers {load.workers} on a machine with {cores} cores: the "
                        "Locust processes queue behind each other (and the stack) for CPU")
    for w in warnings:
        log.warning(w)
    return warnings


class LocalSide(Side):
    """The stack on this host: started and stopped with the run, checked every loop, its
    faults injected on schedule."""

    def __init__(self, stack: Stack, faults: list[Fault]):
        self.stack, self.faults = stack, faults
        self.group = stack.group
        self.injector: FaultInjector | None = None

    @property
    def url(self) -> str:  # type: ignore[override]
        return self.stack.url

    def start(self) -> None:
        self.stack.start()

    def loadgen_metrics_port(self) -> int | None:
        return self.stack.loadgen_metrics_port

    def prometheus_url(self) -> str | None:
        return self.stack.prometheus_url

    def pids(self) -> dict[str, int]:
        return self.stack.pids()

    def sampler(self, samples: Path) -> Sampler:
        s = self.stack
        return Sampler(samples, s.pids, s.url, s.backend_urls, redis_url=s.redis_url)

    def load_started(self) -> None:
        if self.faults:
            self.injector = FaultInjector(self.stack, self.faults, time.monotonic())
            self.injector.start()

    def check(self) -> None:
        # the loop watches Locust itself: it exits at its time limit, and may do so between
        # the loop's look at it and this one (a false "loadgen exited unexpectedly, code 0")
        self.stack.check_alive(watched_elsewhere={LOADGEN})  # the run loop watches Locust

    def halt(self) -> None:
        if self.injector is not None:
            self.injector.halt()  # no fault starts while the stack stops

    def stop(self, record: dict) -> dict[str, int | None]:
        exit_codes = self.stack.stop()
        if self.injector is not None:
            self.injector.stop()
            record["faults"] = self.injector.records
        return exit_codes


def with_access_log(spec: StackSpec, load: LoadSpec) -> StackSpec:
    """The spec with nginx's access-log mode fixed: the user's or the profile's, else the one
    that fits the run (:func:`pollbench.stack.disk.choose_access_log`)."""
    settings = spec.settings()
    if settings.get("access_log") is not None:
        return spec
    chosen = disk.choose_access_log(load, settings["backends"])
    if chosen == "full":  # nginx's own default: the settings (and run.json) stay as they were
        return spec
    return replace(spec, nginx_overrides={**spec.nginx_overrides, "access_log": chosen})


def check_disk(resolved: ResolvedStack, load: LoadSpec, out: Path | None,
               floor: int) -> None:
    """Refuse a run whose estimated bytes would bring its disk under ``floor``."""
    per_hour = disk.estimate(load, resolved.settings["backends"],
                             resolved.settings.get("access_log"))
    total = sum(per_hour.values()) * load.duration_s / 3600
    disk.check_fits(Path(out) if out is not None else results_dir(), total, per_hour, floor)


def _run(resolved: ResolvedStack, load: LoadSpec, out: Path | None, report: bool,
         history_source: str, warmup_s: float | None = None,
         max_error_rate: float | None = None, min_free_disk: int = disk.DEFAULT_FLOOR) -> int:
    spec = resolved.spec
    load.validate(spec.max_hold_s)
    early_warnings = check_load_fits(resolved, load)
    faults = load.fault_schedule()
    check_fault_targets(resolved, faults)
    check_disk(resolved, load, out, min_free_disk)
    label = run_label(load, spec.profile)
    if out is not None:
        nginx_config.safe_path(Path(out).resolve() / "nginx")  # refused before it is created
    run_dir = new_run_dir(label, out)
    record = base_record("run", resolved, load)
    record["warnings"] += early_warnings
    if warmup_s is not None:
        record["warmup_s"] = warmup_s
    write_json_atomic(run_dir / "run.json", record)
    log.info(f"pollbench run: {label}, {load.duration_s:g} s -> {run_dir}")
    stack = Stack(resolved, run_dir, detach_nginx=any(f.action == "upgrade" for f in faults))
    return drive(LocalSide(stack, faults), load, run_dir, record, report, history_source,
                 max_error_rate, disk.DiskWatch(run_dir, min_free_disk))
