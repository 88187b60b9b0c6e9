"""The stack plus Locust's web UI (``pollbench ui``), recorded in a run folder of kind "ui";
Ctrl-C ends the session and stops every process.

Each test started and stopped in the UI becomes a run folder of its own under
``tests/NNN/`` (kind "ui-test") with its report, written when it stops
(:mod:`pollbench.actions.uitests`); Ctrl-C writes the ones still pending."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from analysis.catalog import (
    EXIT_BROKEN,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RUN_FAILED,
    LIVE_FILE,
    METRICS_DIR,
    UI_TESTS_DIR,
)
from analysis.limits import capacity_of
from pollbench.actions.run import base_record
from pollbench.actions.uitests import finish_test, unwritten_tests
from pollbench.errors import RunFailed, UserError
from pollbench.paths import LOCUSTFILE
from pollbench.records.rundir import new_run_dir, write_json_atomic
from pollbench.records.runinfo import STATUS_COMPLETE, STATUS_FAILED, STATUS_INCOMPLETE
from pollbench.stack.loadgen import LOCAL_HEARTBEAT_LIVENESS_S, LoadSpec
from pollbench.stack.net import answers, find_free_ports, port_free
from pollbench.stack.preflight import preflight
from pollbench.stack.processes import spawn, wait_until
from pollbench.stack.sampler import Sampler
from pollbench.stack.spec import ResolvedStack, StackSpec
from pollbench.stack.stack import Stack


def ui(spec: StackSpec, web_port: int, web_host: str = "127.0.0.1", out: Path | None = None,
       max_seconds: float | None = None, load: LoadSpec | None = None) -> int:
    """``load``: the start form's defaults (users, spawn rate, the custom parameters) and
    the Locust worker processes; its duration is not used (a test runs until stopped)."""
    load = load or LoadSpec()
    # ports held until the session ends
    checked = preflight(spec, load, out=out, claim=True, fit_access_log=False)
    try:
        return _ui(checked.resolved, web_port, web_host, out, max_seconds, checked.load or load)
    finally:
        checked.release()


class UiTestReports:
    """Turns each test the UI stopped into a run folder with a report, as soon as it stops."""

    def __init__(self, run_dir: Path, record: dict) -> None:
        self.run_dir, self.record = run_dir, record
        self.done: set[str] = set()

    def poll(self, final: bool = False) -> None:
        for test in unwritten_tests(self.run_dir, self.done, stopped_only=not final):
            self.done.add(test.name)
            try:
                finish_test(test, self.run_dir, self.record)
                print(f"test {test.name} stopped; report: {test / 'report' / 'report.html'}",
                      flush=True)
            except Exception as e:  # one test's report must not end the session
                print(f"WARNING: test {test.name}: the report could not be written ({e}); try: "
                      f"pollbench report {test}", file=sys.stderr, flush=True)
        self.record["tests"] = sorted(f"{UI_TESTS_DIR}/{name}" for name in self.done)


def _ui(resolved: ResolvedStack, web_port: int, web_host: str, out: Path | None,
        max_seconds: float | None, load: LoadSpec) -> int:
    spec = resolved.spec
    if not 1024 <= web_port <= 65535:
        raise UserError(f"--web-port {web_port} must be from 1024 to 65535")
    if not port_free(web_port, web_host if web_host != "0.0.0.0" else "127.0.0.1"):
        raise UserError(f"port {web_port} is already in use (choose --web-port)")
    run_dir = new_run_dir(f"ui-{spec.profile}", out)
    record = base_record("ui", resolved, load)
    write_json_atomic(run_dir / "run.json", record)
    stack = Stack(resolved, run_dir)
    sampler = None
    status = STATUS_INCOMPLETE
    # what run.json says at the end: a session that fails is not "stopped by the user"
    exit_record = {"code": EXIT_INTERRUPTED, "reason": "interrupted"}
    reports = UiTestReports(run_dir, record)
    original = signal.getsignal(signal.SIGINT)
    try:
        stack.start()
        (run_dir / "locust").mkdir()
        cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "-H", stack.url,
               "--web-host", web_host, "--web-port", str(web_port), "--class-picker",
               "--csv", str(run_dir / "locust" / "locust"), "--csv-full-history",
               "--pb-out", str(run_dir / METRICS_DIR), "--pb-tests", str(run_dir / UI_TESTS_DIR),
               "--pb-live", str(run_dir / LIVE_FILE),
               "--pb-max-poll-timeout", f"{spec.max_hold_s:g}",
               # the start form opens with pollbench run's defaults
               "-u", str(load.users), "-r", f"{load.effective_spawn_rate():g}",
               *load.locust_options()]
        if load.workers:  # this host's processes: see LoadSpec.locust_cmd
            cmd += ["--processes", str(load.workers), "--pb-heartbeat-liveness",
                    str(LOCAL_HEARTBEAT_LIVENESS_S)]
        metrics_port = stack.loadgen_metrics_port or find_free_ports(1, exclude={web_port})
        cmd += ["--pb-metrics-port", str(metrics_port)]
        record["loadgen_metrics_url"] = f"http://127.0.0.1:{metrics_port}/metrics"
        locust = stack.group.add(spawn("loadgen", cmd, run_dir / "logs" / "locust.log"))
        url = f"http://{web_host}:{web_port}/"
        if not wait_until(lambda: not locust.alive() or answers(url), 20) or not locust.alive():
            raise RunFailed(f"Locust's web UI did not start; last lines of {locust.log_path}:\n"
                            f"{locust.log_tail()}")
        record["pids"] = stack.pids()
        sampler = Sampler(run_dir / "samples", stack.pids, stack.url, stack.stats_urls,
                          live=True, redis_url=stack.redis_url, capacity=capacity_of(record))
        sampler.start()
        print(f"run folder: {run_dir}")
        print(f"target:     {stack.url}/")
        path = "/metrics" if spec.backend_command is None else spec.backend_command.metrics
        backends = f"each backend serves its own {path}" if path else "your backends serve none"
        print(f"metrics:    {record['loadgen_metrics_url']}  (the load generator's, for "
              f"Prometheus; {backends})")
        if stack.prometheus_url:
            record["prometheus"] = {"url": stack.prometheus_url, "data": "prometheus/data",
                                    "config": "prometheus/prometheus.yml"}
            print(f"Prometheus: {stack.prometheus_url}")
        print(f"web UI:     {url}  (start a test, then open the \"Long polling\" tab; each "
              "test stopped in the UI gets its own run folder and report)")
        print("Ctrl-C stops everything.", flush=True)
        started = time.monotonic()
        # Ctrl-C is how a UI session ends.  It is noted, never raised: a KeyboardInterrupt
        # landing in a weakref or __del__ callback while a test's report is written is
        # printed and dropped by Python, and the session would never end.  A second one (or
        # a signal forwarded twice) must not cut the ending short either.
        quit_asked = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: quit_asked.set())
        while not quit_asked.wait(0.5) and (max_seconds is None or
                                            time.monotonic() - started < max_seconds):
            stack.check_alive()
            reports.poll()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        status = STATUS_COMPLETE
        exit_record = {"code": EXIT_OK, "reason": "stopped by the user"}
        print("stopping; results are in", run_dir, flush=True)
        return EXIT_OK
    except (RunFailed, UserError) as e:
        status = STATUS_FAILED
        exit_record = {"code": EXIT_RUN_FAILED if isinstance(e, RunFailed) else EXIT_BROKEN,
                       "reason": f"failed: {str(e).splitlines()[0]}"}
        raise
    finally:
        # Ctrl-C again while stopping and writing the pending reports is ignored
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            stack.stop()
            if sampler is not None:
                sampler.stop()
            reports.poll(final=True)  # tests stopped at quit, or never stopped
            record.update(ended_at=time.time(), status=status,
                          complete=status == STATUS_COMPLETE,
                          exit=exit_record)
            record["duration_s"] = round(record["ended_at"] - record["started_at"], 3)
            write_json_atomic(run_dir / "run.json", record)
        finally:
            signal.signal(signal.SIGINT, original)

