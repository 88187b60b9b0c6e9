"""One benchmark end to end (``pollbench run``): resolve, start the stack, run Locust headless,
sample, stop everything, and write the run folder (:data:`analysis.catalog.RUN_FILES`).

    code = run(StackSpec(profile="keepalive"), LoadSpec(users=200, duration_s=30))

run.json is written first (status running) and again at the end, whatever happened.
"""

from __future__ import annotations

import time
from pathlib import Path

from analysis.saturation import LOADGEN
from pollbench.actions.runloop import Side, base_parameters, drive, run_label
from pollbench.log import log
from pollbench.paths import CHECKOUT
from pollbench.records.rundir import new_run_dir, write_json_atomic
from pollbench.records.runinfo import (
    git_info,
    host_info,
    machine_fingerprint,
    software_versions,
    yardstick,
)
from pollbench.records.runrecord import record_start
from pollbench.stack import disk, redis_server
from pollbench.stack.faults import Fault, FaultInjector
from pollbench.stack.loadgen import LoadSpec
from pollbench.stack.preflight import Checked, preflight
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
                  "target_limits": None if spec.backend_command else {
                      "max_waiters": resolved.app_config.max_waiters,
                      "max_connections": resolved.app_config.max_connections},
                  # the user's own backends (None: the reference target, target_app)
                  "backend_command": spec.backend_command.record()
                  if spec.backend_command else None,
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
        # the commit measured: your repository's when the backends are your command's
        # (history and compare key on it), else pollbench's own checkout
        "git": git_info(spec.backend_command.workdir() if spec.backend_command else CHECKOUT),
        **({"pollbench_git": git_info(CHECKOUT)} if spec.backend_command else {}),
    }


def base_record(kind: str, resolved: ResolvedStack, load: LoadSpec) -> dict:
    """run.json as first written, for a stack on this host; with the digest of the
    yardstick the backends' cost is also measured against (records.runinfo.yardstick)."""
    target, parameters = target_record(resolved), base_parameters(load)
    return record_start(kind, parameters, {**target, "yardstick": yardstick(
        target["software"], target["stack"]["nginx"], parameters)})


def run(spec: StackSpec, load: LoadSpec, out: Path | None = None, report: bool = True,
        history_source: str = "run", warmup_s: float | None = None,
        max_error_rate: float | None = None, min_free_disk: int = disk.DEFAULT_FLOOR,
        thresholds: dict[str, float] | None = None) -> int:
    """``history_source``: what the results history records as the run's origin (run,
    check, sweep); the history is $POLLBENCH_HISTORY, else results/history.sqlite.
    ``warmup_s``: the warm-up the caller judges the run by (a check's, a sweep's), recorded
    in run.json so that the report and the history use the same (default: the spawn time).
    ``max_error_rate``: a complete run above it exits 1 (for scripts; None: never).
    ``min_free_disk``: bytes the run folder's disk must keep free (refused before the start
    when the estimate passes it; stopped, incomplete, when reached).
    ``thresholds``: (pollbench.stack.project.THRESHOLDS) a complete run crossing one exits 1."""
    checked = preflight(spec, load, out=out, min_free_disk=min_free_disk,
                        claim=True)  # ports held until the run ends
    try:
        return _run(checked, out, report, history_source, warmup_s, max_error_rate,
                    min_free_disk, thresholds)
    finally:
        checked.release()


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
        return Sampler(samples, s.pids, s.url, s.stats_urls, redis_url=s.redis_url, live=True)

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


def _run(checked: Checked, out: Path | None, report: bool, history_source: str,
         warmup_s: float | None, max_error_rate: float | None, min_free_disk: int,
         thresholds: dict[str, float] | None = None) -> int:
    resolved, load, faults = checked.resolved, checked.load, checked.faults
    assert load is not None
    label = run_label(load, resolved.spec.profile)
    run_dir = new_run_dir(label, out)
    record = base_record("run", resolved, load)
    record["warnings"] += checked.warnings
    if warmup_s is not None:
        record["warmup_s"] = warmup_s
    write_json_atomic(run_dir / "run.json", record)
    log.info(f"pollbench run: {label}, {load.duration_s:g} s -> {run_dir}")
    stack = Stack(resolved, run_dir, detach_nginx=any(f.action == "upgrade" for f in faults))
    return drive(LocalSide(stack, faults), load, run_dir, record, report, history_source,
                 max_error_rate, disk.DiskWatch(run_dir, min_free_disk), thresholds)
