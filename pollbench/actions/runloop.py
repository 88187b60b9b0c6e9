"""The one run loop, for a stack on this host (:mod:`pollbench.actions.run`) and on another
(:mod:`pollbench.actions.remote_run`).

    code = drive(side, load, run_dir, record, report=True, history_source="run")

The loop starts the target side, runs Locust headless as a child, samples CPU, prints
progress, watches both until Locust ends (or its deadline passes), then stops everything --
Ctrl-C included, a second Ctrl-C ignored until all is down -- and finishes run.json
(:func:`pollbench.records.runrecord.finish_record`), the report and the history entry.
What differs between a local and a remote target is a :class:`Side`.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from analysis.catalog import (
    EXIT_BROKEN,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REGRESSION,
    EXIT_RUN_FAILED,
    LIVE_FILE,
    METRICS_DIR,
    PROGRESS_FILE,
)
from analysis.saturation import LOADGEN, Counts
from pollbench.errors import RunFailed, UserError
from pollbench.log import log
from pollbench.records.rundir import write_json_atomic
from pollbench.records.runinfo import (
    STATUS_COMPLETE,
    STATUS_FAILED,
    STATUS_INCOMPLETE,
    STATUS_VOID,
)
from pollbench.records.runrecord import error_rate, finish_record, store_in_history, void_reason
from pollbench.stack.disk import DiskWatch
from pollbench.stack.loadgen import LoadSpec
from pollbench.stack.net import find_free_ports
from pollbench.stack.processes import Child, ChildGroup, raise_open_files, spawn
from pollbench.stack.sampler import Sampler

# Locust needs a moment past -t to stop users and write its reports.
LOCUST_GRACE_S = 60
POLL_EVERY_S = 0.2


def run_label(load: LoadSpec, profile: str) -> str:
    """A run folder's label: scenario (or "mix"), profile, users."""
    return f"{load.mix and 'mix' or load.scenario}-{profile}-{load.users}u"


def base_parameters(load: LoadSpec) -> dict:
    """run.json's "parameters": the load as asked."""
    return {
        "scenario": load.mix and f"mix:{load.mix}" or load.scenario,
        "user_classes": load.user_classes(), "users": load.users,
        "spawn_rate": load.effective_spawn_rate(), "duration_s": load.duration_s,
        "shape": load.shape, "workers": load.workers, "connection": load.connection,
        "retry_backoff": load.retry_backoff,
        "source_addresses": load.sources(),  # [] the kernel's choice (one address)
        "protocol": load.protocol,
        "channels": load.channels, "publish_rate": load.publish_rate,
        "poll_timeout_s": load.poll_timeout_s, "task_duration_ms": load.task_duration_ms,
        "cpus_loadgen": list(load.cpus) if load.cpus else None,
        "faults": list(load.faults),
    }


class Progress:
    """One line per interval: elapsed / total, users, HTTP requests/s, deliveries/s, errors.

    The rates are the line's own: the requests and deliveries counted since the previous line
    over the time between them (progress.json's cumulative counts), so that a broadcast every
    few seconds shows in every line (progress.json's own rates cover its last second only,
    which a burst every 5 s misses: 0.0 while 200 requests/s flowed).  The two rates are
    kept apart: Locust's own total also counts its synthetic rows (DELIVERY, TASK ...), which
    are not requests."""

    def __init__(self, path: Path, total_s: float, every_s: float = 5.0,
                 asked_users: int | None = None):
        self.path, self.total_s, self.every_s = path, total_s, every_s
        self.asked_users = asked_users
        self._next = time.monotonic() + every_s
        self.last: dict = {}
        self.stalled = False
        self.over: str | None = None  # said once: more users ran than were asked for

    def poll(self) -> None:
        if time.monotonic() < self._next:
            return
        self._next += self.every_s
        try:
            p = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if self.last and p.get("time") == self.last.get("time"):
            # the same figures again: the load generator wrote nothing since (out of
            # descriptors, stuck, gone): said once a stall, not repeated as if live
            if not self.stalled:
                log.warning(f"the load generator has written no figures since "
                            f"{p['elapsed_s']:.0f} s (see logs/locust.log)")
            self.stalled = True
            return
        self.stalled = False
        log.info(self.line(p, self.last))
        if self.asked_users is not None and p["users"] > self.asked_users and not self.over:
            self.over = (f"{p['users']:,} users ran at {p['elapsed_s']:.0f} s, more than the "
                         f"{self.asked_users:,} asked for: Locust's master handed the users of "
                         "a worker it thought lost to the others (see logs/locust.log); the "
                         "load measured is more than asked")
            log.warning(self.over)
        self.last = p

    def line(self, p: dict, before: dict) -> str:
        """The line for ``p`` (progress.json), its rates since ``before`` (empty: the start)."""
        span = max(p["elapsed_s"] - before.get("elapsed_s", 0.0), 1e-3)
        requests = (p["requests"] - before.get("requests", 0)) / span
        deliveries = (p["delivered"] - before.get("delivered", 0)) / span
        return (f"[{p['elapsed_s']:6.0f}s/{self.total_s:.0f}s] users {p['users']:>6}  "
                f"HTTP req/s {requests:>8.1f}  deliveries/s {deliveries:>8.1f}  failures "
                f"{p['failures']}  lost {p['lost']}  duplicates {p['duplicates']}")


class Side:
    """Where the stack is, as the run loop sees it; the defaults are a side with nothing
    to start, check or collect."""

    url: str  # what Locust's users reach (nginx)
    group: ChildGroup  # the children this host starts for the run (Locust among them)
    extra_wait_s: float = 0.0  # added to the loop's deadline (e.g. waiting for workers)

    def start(self) -> None:
        """Start (or reach) the target side; before Locust starts."""

    def locust_args(self) -> tuple[str, ...]:
        return ()

    def loadgen_metrics_port(self) -> int | None:
        """The port the load generator's Prometheus endpoint must use (None: a free one)."""
        return None

    def prometheus_url(self) -> str | None:
        """The Prometheus server started with the side (--prometheus), once it answers."""
        return None

    def shown_command(self, cmd: list[str]) -> list[str]:
        """Locust's command as run.json records it (secrets blanked)."""
        return cmd

    def pids(self) -> dict[str, int]:
        """Component -> root pid, of what this host samples."""
        raise NotImplementedError

    def sampler(self, samples: Path) -> Sampler:
        return Sampler(samples, self.pids, None, [], live=True)

    def load_started(self) -> None:
        """Locust is running (faults start their clock here)."""

    def check(self) -> None:
        """Raise RunFailed when the target side has failed; called every loop."""

    def load_ended(self, locust: Child) -> None:
        """Locust has exited: raise RunFailed for a failure only the side can name."""

    def halt(self) -> None:
        """Nothing new may start: the side is about to stop."""

    def stop(self, record: dict) -> dict[str, int | None]:
        """Stop what the side started; its processes' exit codes."""
        return self.group.stop_all()

    def collect(self, record: dict, sampler: Sampler | None
                ) -> tuple[Counts, dict[str, float]] | None:
        """After the stop: what the side adds to run.json; the CPU counts to judge it by."""
        return None if sampler is None else (sampler.saturation, sampler.cpu_seconds)


def drive(side: Side, load: LoadSpec, run_dir: Path, record: dict, report: bool,
          history_source: str, max_error_rate: float | None = None,
          disk: DiskWatch | None = None, thresholds: dict[str, float] | None = None) -> int:
    """Run the load against ``side``; run.json (``record``, already written with status
    running) is finished whatever happens.  Returns the exit code of a finished run
    (:data:`EXIT_REGRESSION` when more than ``max_error_rate`` of its HTTP requests failed);
    a failure raises (RunFailed, UserError, KeyboardInterrupt) after run.json is written.
    ``disk``: a run whose disk reaches its floor is stopped, incomplete (EXIT_RUN_FAILED).
    ``thresholds``: (pollbench.stack.project) a complete run that crosses one exits
    EXIT_REGRESSION, naming each crossed with its measured figure (run.json "thresholds")."""
    sampler: Sampler | None = None
    status, reason, code = STATUS_FAILED, "failed", EXIT_RUN_FAILED
    try:
        # how this run's deliveries are judged and timed (the protocol's own signals)
        record["accounting"] = load.accounting()
        # the open-files limit every process of the run inherits (raised as far as it goes)
        record["open_files"] = raise_open_files()
        side.start()
        (run_dir / "locust").mkdir()
        cmd = load.headless_cmd(side.url, run_dir / METRICS_DIR, run_dir / "locust" / "locust",
                                run_dir / "locust" / "report.html",
                                run_dir / "locust" / "stats",  # Locust adds .json
                                extra=side.locust_args())
        metrics_port = side.loadgen_metrics_port() or find_free_ports(1)
        # the sampler's latest sample (CPU time per component): the endpoint's cost figures
        cmd += ["--pb-metrics-port", str(metrics_port), "--pb-live", str(run_dir / LIVE_FILE)]
        record["loadgen_metrics_url"] = f"http://127.0.0.1:{metrics_port}/metrics"
        log.info(f"load generator metrics (Prometheus): {record['loadgen_metrics_url']}")
        if side.prometheus_url():
            record["prometheus"] = {"url": side.prometheus_url(),
                                    "data": "prometheus/data", "config": "prometheus/prometheus.yml"}
            log.info(f"Prometheus: {side.prometheus_url()} (data in {run_dir / 'prometheus'})")
        record["locust_command"] = side.shown_command(cmd)
        locust = side.group.add(spawn(LOADGEN, cmd, run_dir / "logs" / "locust.log",
                                      stop_signal=signal.SIGTERM, cpus=load.cpus))
        load_started = time.monotonic()
        record["pids"] = side.pids()
        sampler = side.sampler(run_dir / "samples")
        sampler.start()
        side.load_started()
        progress = Progress(run_dir / METRICS_DIR / PROGRESS_FILE, load.duration_s,
                            asked_users=load.users)
        deadline = time.monotonic() + side.extra_wait_s + load.duration_s + LOCUST_GRACE_S
        low = None
        while locust.alive():
            if time.monotonic() > deadline:
                raise RunFailed(f"Locust did not finish within {LOCUST_GRACE_S} s of the run "
                                f"time; see {locust.log_path}")
            side.check()
            progress.poll()
            if progress.over and progress.over not in record["warnings"]:
                record["warnings"].append(progress.over)
            if disk is not None and (low := disk.low()) is not None:
                break  # stopped below, as after Ctrl-C: every process, every record
            time.sleep(POLL_EVERY_S)
        if low is not None:
            log.warning(low)
            status, reason, code = STATUS_INCOMPLETE, low, EXIT_RUN_FAILED
        else:
            side.load_ended(locust)
            rc = locust.popen.returncode
            if rc not in (0, 1):
                raise RunFailed(f"Locust exited with code {rc}; last lines of "
                                f"{locust.log_path}:\n{locust.log_tail()}")
            cut_short = cut_short_reason(rc, time.monotonic() - load_started, load.duration_s,
                                         locust)
            if cut_short is not None:  # ran out of something: not a measurement of the load
                log.warning(cut_short)
                status, reason, code = STATUS_INCOMPLETE, cut_short, EXIT_RUN_FAILED
            else:
                status, reason, code = STATUS_COMPLETE, "complete", EXIT_OK
    except KeyboardInterrupt:
        status, reason, code = STATUS_INCOMPLETE, "interrupted (Ctrl-C or SIGTERM)", EXIT_INTERRUPTED
        raise
    except (RunFailed, UserError) as e:
        reason = f"failed: {str(e).splitlines()[0]}"
        raise
    finally:
        # Ctrl-C again while stopping must not leave processes: ignore it until all are down.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            side.halt()
            exit_codes = side.stop(record)
            if sampler is not None:
                sampler.stop()
            cpu = side.collect(record, sampler)
            finish_record(record, run_dir, status, reason, code, cpu, exit_codes)
            if status == STATUS_COMPLETE and (void := void_reason(record)) is not None:
                # ran its course and measured nothing: no figure of it may pass for one
                status, reason, code = STATUS_VOID, f"void: {void}", EXIT_BROKEN
                record.update(status=status, complete=False)
                record["exit"].update(code=code, reason=reason)
                write_json_atomic(run_dir / "run.json", record)
                log.warning(f"the run is void: {void}")
            if status == STATUS_COMPLETE and max_error_rate is not None \
                    and error_rate(record) > max_error_rate:
                code = EXIT_REGRESSION
                record["exit"].update(code=code, reason=(
                    f"complete, but {error_rate(record):.2%} of HTTP requests failed "
                    f"(--max-error-rate {max_error_rate:g})"))
                write_json_atomic(run_dir / "run.json", record)
                log.warning(record["exit"]["reason"])
            if status == STATUS_COMPLETE and thresholds:
                code = judge_thresholds(record, run_dir, thresholds, code)
            if status == STATUS_COMPLETE:
                if report:
                    write_report(run_dir)
                store_in_history(record, run_dir, history_source)
            log.info(f"status: {status}" + ("" if status == STATUS_COMPLETE else f" ({reason})"))
            print(run_dir, flush=True)  # the result: the last line, also with -q
        finally:
            signal.signal(signal.SIGINT, previous)
    return code


def judge_thresholds(record: dict, run_dir: Path, thresholds: dict[str, float],
                     code: int) -> int:
    """The run's figures against the thresholds (pollbench.stack.project): each crossed one is
    said in a line with its measured figure, and the run exits EXIT_REGRESSION; one this
    run could not measure is said so and crosses nothing.  In run.json: "thresholds"."""
    from analysis.figures import compute
    from analysis.load import load_run
    from pollbench.stack.project import crossed

    summary = compute(load_run(run_dir), record.get("warmup_s")).summary
    lines, unknown = crossed(summary, thresholds)
    record["thresholds"] = {"limits": thresholds, "crossed": lines, "not_measured": unknown}
    for line in unknown:
        log.warning(f"threshold {line}")
    if lines:
        code = EXIT_REGRESSION
        record["exit"].update(code=code, reason="complete, but " + "; ".join(lines))
        for line in lines:
            log.warning(f"threshold crossed: {line}")
    else:
        log.info(f"thresholds: all {len(thresholds) - len(unknown)} met")
    write_json_atomic(run_dir / "run.json", record)
    return code


def cut_short_reason(rc: int | None, ran_s: float, duration_s: float,
                     locust: Child) -> str | None:
    """Why a load generator that ended by itself did not run the load as asked (None: it
    did): it exited with an error, or stopped before its duration (Locust's own start-up
    only adds to its time, so a run shorter than the duration was cut)."""
    if rc == 0 and ran_s >= duration_s - 1.0:
        return None
    last = next((ln.strip() for ln in reversed(locust.log_tail().splitlines()) if ln.strip()),
                "(nothing)")
    what = f"exited with code {rc}" if rc else "stopped"
    return (f"incomplete: the load generator {what} after {ran_s:.0f} s of the "
            f"{duration_s:g} s asked; the last line of {locust.log_path}: {last[:200]}")


def write_report(run_dir: Path) -> None:
    """The run's report; a failure costs the run nothing (said in one line)."""
    from pollbench.actions.report import report

    try:
        report([run_dir], quiet=True)
        log.info(f"report: {run_dir / 'report' / 'report.html'}")
    except Exception as e:  # the run's record matters more than its report
        log.warning(f"the report could not be written ({e}); try: pollbench report {run_dir}")
