"""The stack plus Locust's web UI (``pollbench ui``), recorded in a run folder of kind "ui";
Ctrl-C ends the session and stops every process."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from analysis.catalog import EXIT_OK, METRICS_DIR
from pollbench.actions.run import base_record
from pollbench.errors import RunFailed, UserError
from pollbench.paths import LOCUSTFILE
from pollbench.records.rundir import new_run_dir, write_json_atomic
from pollbench.records.runinfo import STATUS_COMPLETE, STATUS_INCOMPLETE
from pollbench.stack.loadgen import LoadSpec
from pollbench.stack.net import answers, port_free
from pollbench.stack.processes import spawn, wait_until
from pollbench.stack.sampler import Sampler
from pollbench.stack.spec import ResolvedStack, StackSpec
from pollbench.stack.stack import Stack


def ui(spec: StackSpec, web_port: int, web_host: str = "127.0.0.1", out: Path | None = None,
       max_seconds: float | None = None) -> int:
    resolved = spec.resolve(claim=True)  # ports held until the session ends
    try:
        return _ui(resolved, web_port, web_host, out, max_seconds)
    finally:
        resolved.release()


def _ui(resolved: ResolvedStack, web_port: int, web_host: str, out: Path | None,
        max_seconds: float | None) -> int:
    spec = resolved.spec
    if not 1024 <= web_port <= 65535:
        raise UserError(f"--web-port {web_port} must be from 1024 to 65535")
    if not port_free(web_port, web_host if web_host != "0.0.0.0" else "127.0.0.1"):
        raise UserError(f"port {web_port} is already in use (choose --web-port)")
    load = LoadSpec(users=10, duration_s=3600.0)
    run_dir = new_run_dir(f"ui-{spec.profile}", out)
    record = base_record("ui", resolved, load)
    write_json_atomic(run_dir / "run.json", record)
    stack = Stack(resolved, run_dir)
    sampler = None
    status = STATUS_INCOMPLETE
    try:
        stack.start()
        (run_dir / "locust").mkdir()
        cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "-H", stack.url,
               "--web-host", web_host, "--web-port", str(web_port), "--class-picker",
               "--csv", str(run_dir / "locust" / "locust"), "--csv-full-history",
               "--pb-out", str(run_dir / METRICS_DIR), *load.locust_options()]
        locust = stack.group.add(spawn("loadgen", cmd, run_dir / "logs" / "locust.log"))
        url = f"http://{web_host}:{web_port}/"
        if not wait_until(lambda: not locust.alive() or answers(url), 20) or not locust.alive():
            raise RunFailed(f"Locust's web UI did not start; last lines of {locust.log_path}:\n"
                            f"{locust.log_tail()}")
        record["pids"] = stack.pids()
        sampler = Sampler(run_dir / "samples", stack.pids, stack.url, stack.backend_urls)
        sampler.start()
        print(f"run folder: {run_dir}")
        print(f"target:     {stack.url}/")
        print(f"web UI:     {url}  (pick the user classes, start, and watch the DELIVERY / TASK "
              "rows)")
        print("Ctrl-C stops everything.", flush=True)
        started = time.monotonic()
        try:
            while max_seconds is None or time.monotonic() - started < max_seconds:
                time.sleep(0.5)
                stack.check_alive()
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a UI session ends
        status = STATUS_COMPLETE
        print("stopping; results are in", run_dir, flush=True)
        return EXIT_OK
    finally:
        stack.stop()
        if sampler is not None:
            sampler.stop()
        record.update(ended_at=time.time(), status=status, complete=status == STATUS_COMPLETE,
                      exit={"code": EXIT_OK, "reason": "stopped by the user"})
        record["duration_s"] = round(record["ended_at"] - record["started_at"], 3)
        write_json_atomic(run_dir / "run.json", record)

