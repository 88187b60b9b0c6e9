"""run.json over a run's life: written first with status "running" (:func:`record_start`),
again at the end whatever happened (:func:`finish_record`), and the complete run appended to
the results history (:func:`store_in_history`).

Every kind of run writes it through here: a local or remote ``pollbench run``, a web-UI
session and each of its tests, and a check's base revision.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil

from analysis.catalog import METRICS_DIR, PROGRESS_FILE, RUN_FILES, RUN_SCHEMA_VERSION
from analysis.cost import run_cost
from analysis.limits import (
    NGINX_ERRORS_FILE,
    diagnose,
    failing_line,
    failure_table,
    fit_warnings,
    http_failures,
    load_ends_at,
    read_jsonl,
)
from analysis.saturation import Counts, cpu_summary
from pollbench.log import log
from pollbench.records.rundir import write_json_atomic
from pollbench.records.runinfo import STATUS_COMPLETE, STATUS_RUNNING


def record_start(kind: str, parameters: dict, target: dict) -> dict:
    """run.json as first written (status running): the load as asked (``parameters``) and
    ``target``, what is known of the stack and its host (this host's, or a remote target's
    agent's)."""
    return {
        "schema_version": RUN_SCHEMA_VERSION, "kind": kind, "status": STATUS_RUNNING,
        # who writes the end: a reader finding "running" with this process gone says "crashed"
        "writer": {"pid": os.getpid(), "started_at": psutil.Process().create_time()},
        "complete": False, "started_at": time.time(), "ended_at": None, "duration_s": None,
        "parameters": parameters,
        **target,
        "warnings": [],
        "files": {},
        "exit": {"code": None, "reason": "running"},
    }


def lost_text(progress: dict) -> str:
    """Lost messages as the summary says them: a count, with what a restart cost named as
    such (``12 (3 to 2 epoch changes)``), or "unknown" with the subscribers affected when a
    channel's state was lost and nobody can count what went with it: never a bare 0."""
    lost = progress.get("lost")
    changes, unknown = progress.get("epoch_changes") or 0, progress.get("lost_epoch_unknown") or 0
    if not changes:
        return f"{lost}"
    text = f"{lost} ({progress.get('lost_epoch', 0)} to {changes} epoch change(s): a channel's " \
        "state lost"
    if unknown:
        text += f"; unknown for {unknown} subscriber(s): no publish told where it ended"
    return text + ")"


def lost_warning(progress: dict) -> str | None:
    """The warning of a run (or a web-UI test) that lost or duplicated messages."""
    if progress.get("lost") or progress.get("duplicates") or progress.get("epoch_changes"):
        return (f"{lost_text(progress)} messages lost and {progress.get('duplicates', 0)} "
                "duplicated")
    return None


def finish_record(record: dict, run_dir: Path, status: str, reason: str, code: int,
                  cpu: tuple[Counts, dict[str, float]] | None,
                  exit_codes: dict[str, int | None]) -> None:
    """Complete run.json and write it; say its warnings (stderr) and headline figures.
    ``cpu``: saturation counts and CPU seconds per component (None: nothing was sampled)."""
    record["ended_at"] = time.time()
    record["duration_s"] = round(record["ended_at"] - record["started_at"], 3)
    record["status"] = status
    record["complete"] = status == STATUS_COMPLETE
    record["exit"] = {"code": code, "reason": reason, "processes": exit_codes}
    record["files"] = {k: v for k, v in RUN_FILES.items() if (run_dir / v).exists()}
    missing = sorted(set(RUN_FILES) - set(record["files"]) - not_written(record))
    if missing and status == STATUS_COMPLETE:
        record["warnings"].append(f"files missing from a complete run: {', '.join(missing)}")
    if cpu is not None:
        record["cpu"], warnings = cpu_summary(*cpu)
        record["warnings"] += warnings
    try:
        record["loadgen"] = json.loads((run_dir / METRICS_DIR / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        record["loadgen"] = {}
    lg = record["loadgen"]
    if (lost := lost_warning(lg)) is not None:
        record["warnings"].append(lost)
    try:
        record["cost"] = run_cost(run_dir, record, RUN_FILES["counters"], RUN_FILES["processes"])
    except (OSError, ValueError, TypeError, KeyError) as e:  # run.json matters more
        record["warnings"].append(f"the cost per delivery could not be worked out ({e!r})")
    logged = nginx_error_totals(run_dir)
    if logged:
        record["nginx_error_log"] = logged
        if (crashed := worker_crash_warning(run_dir, record)) is not None:
            record["warnings"].append(crashed)
    try:
        explain(record, run_dir)
    except (OSError, ValueError, TypeError, KeyError) as e:  # run.json matters more
        record["warnings"].append(f"what ran out first could not be worked out ({e!r}); "
                                  f"pollbench report {run_dir} tries again")
    write_json_atomic(run_dir / "run.json", record)
    for w in record["warnings"]:
        log.warning(w)
    for line in summary_lines(record):
        log.info(line)
    for line in latency_lines(run_dir / RUN_FILES["latency_hdr"]):
        log.info(line)
    for line in cost_lines(record.get("cost"), record.get("stack")):
        log.info(line)
    failing = failing_line(error_rate(record), (record.get("limits") or {}).get("first"))
    if failing is not None:  # the summary's last word: how much failed, and why
        log.warning(failing)


def worker_crash_warning(run_dir: Path, record: dict) -> str | None:
    """nginx workers that exited on a signal while the load ran.  (nginx's own fast shutdown
    SIGKILLs a worker still closing its connections a second after the stop: 3 of 6 Nchan
    workers holding 100,000 polls logged "exited on signal 9" once the load was over; that
    is not a crash of the run.)"""
    crashed = nginx_error_totals(run_dir, until=load_ends_at(run_dir, record)).get(
        "worker_crashed")
    if not crashed:
        return None
    return (f"{crashed} nginx worker(s) exited on a signal (a crash: every poll it held was "
            "dropped); see nginx/logs/error.log")


def nginx_error_totals(run_dir: Path, until: float | None = None) -> dict[str, int]:
    """nginx's error log over the whole run (``until``: up to that time), by category
    (analysis.limits.NGINX_ERRORS)."""
    totals: dict[str, int] = {}
    for row in read_jsonl(run_dir / NGINX_ERRORS_FILE):
        if until is not None and float(row.get("time") or 0) > until:
            continue
        for category, n in (row.get("counts") or {}).items():
            totals[category] = totals.get(category, 0) + int(n)
    return totals


def not_written(record: dict) -> set[str]:
    """The run files this run's settings do not write (nginx's access log when it is off)."""
    stack = record.get("stack") or {}
    if stack.get("external"):  # nothing of the stack is pollbench's to write
        return {"nginx_conf", "nginx_access_log", "nginx_error_log", "stub_status",
                "backend_stats"}
    nginx = stack.get("nginx") or {}
    return {"nginx_access_log"} if nginx.get("access_log") == "off" else set()


def explain(record: dict, run_dir: Path, span: tuple[float, float] | None = None) -> None:
    """run.json's ``limits`` (every limit reached, when, the evidence and the cure, and the
    one reached first) and ``failures`` (failed requests by cause and who answered), from
    the run folder (:mod:`analysis.limits`); the load generator's saturation warning made to
    fit the cause.  ``span``: a web UI test's slice of its session."""
    record["limits"] = diagnose(run_dir, record, span)
    rows = [r for r in read_jsonl(run_dir / RUN_FILES["counters"])
            if span is None or span[0] <= float(r.get("t1", 0)) <= span[1]]
    logged = [r for r in read_jsonl(run_dir / NGINX_ERRORS_FILE)
              if span is None or span[0] <= float(r.get("time", 0)) <= span[1]]
    record["failures"] = failure_table(rows, logged)
    requests = sum((r.get("counters") or {}).get("requests", 0) for r in rows)
    failed = http_failures(record["failures"])
    record["loadgen"]["http_failures"] = failed
    record["loadgen"]["error_rate"] = round(failed / requests, 6) if requests else 0.0
    record["warnings"] = fit_warnings(record["warnings"], record["limits"]["first"],
                                      record["loadgen"]["error_rate"])


def void_reason(record: dict) -> str | None:
    """Why a run that ran its course measured nothing (None: it measured something): no HTTP
    request succeeded, or a channels run with publishers delivered no message."""
    lg = record.get("loadgen") or {}
    requests, failed = lg.get("requests") or 0, lg.get("http_failures") or 0
    if requests == 0:
        return ("no HTTP request was made: the users were still starting when the run time "
                "ran out; lengthen --duration, raise --spawn-rate or use fewer --workers")
    if requests - failed <= 0:
        return f"none of its {requests:,} HTTP requests succeeded"
    params = record.get("parameters") or {}
    if params.get("scenario") == "channels" and (params.get("publish_rate") or 0) > 0 \
            and not lg.get("delivered"):
        return (f"no message was delivered ({requests:,} HTTP requests): nothing to measure "
                "a delivery latency on")
    return None


def error_rate(record: dict) -> float:
    """Failed HTTP requests / HTTP requests attempted (:func:`explain` counts them)."""
    return float((record.get("loadgen") or {}).get("error_rate") or 0.0)


def summary_lines(record: dict) -> list[str]:
    """What a finished run says of its requests: attempted and successful side by side (a
    retry storm is not hidden behind a low success rate), then the causes."""
    lg = record.get("loadgen") or {}
    if not lg:
        return []
    requests, failed = lg.get("requests") or 0, lg.get("http_failures") or 0
    seconds = max(float(lg.get("elapsed_s") or 0), 1e-9)
    lines = [f"HTTP requests {requests:,} attempted ({requests / seconds:,.1f}/s), "
             f"{requests - failed:,} succeeded ({(requests - failed) / seconds:,.1f}/s), "
             f"{failed:,} failed ({error_rate(record):.2%})  delivered {lg.get('delivered')}  "
             f"lost {lost_text(lg)}  duplicates {lg.get('duplicates')}"
             + (f"  out of order {lg['reordered']}" if lg.get("reordered") else "")]
    for entry in (record.get("failures") or [])[:3]:
        lines.append(f"  failed: {entry['count']:,} x {entry['cause']}")
    missed = (record.get("nginx_error_log") or {}).get("nchan_missed")
    if missed:
        lines.append(f"  Nchan's error log: {missed:,} x \"Missed message for longpoll "
                     "subscriber\" (a cursor past the buffer; the skipped messages are in "
                     "lost)")
    return lines



def cost_lines(cost: dict | None, stack: dict | None = None) -> list[str]:
    """What the work cost, per 1,000 deliveries (a channels run) or requests (else); the
    stack's "not measured" (with the reason) for a service pollbench did not start."""
    figures = (cost or {}).get("figures") or {}
    stack = stack or {}
    if stack.get("external"):
        for unit, what in (("kdelivery", "deliveries"), ("krequest", "requests")):
            if f"cpu_per_{unit}_loadgen" in figures:
                return [f"cost per 1,000 {what} (CPU-s): stack not measured ({stack['not_measured']})"
                        f"; load generator {figures[f'cpu_per_{unit}_loadgen']:.3g}"]
        return []
    for unit, what in (("kdelivery", "deliveries"), ("krequest", "requests")):
        got = {k.split("_", 3)[3]: v for k, v in figures.items()
               if k.startswith(f"cpu_per_{unit}_")}
        if "stack" in got:
            parts = ", ".join(f"{name} {got[name]:.3g}" for name in ("backends", "nginx", "redis")
                              if name in got)
            loadgen = f"; load generator {got['loadgen']:.3g}" if "loadgen" in got else ""
            return [f"cost per 1,000 {what} (CPU-s): stack {got['stack']:.3g} ({parts}){loadgen}"]
    return []


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
        hdr = read_hdr_log(hdr_log)
    except ValueError:
        return [f"(latency log {hdr_log} is unreadable)"]
    lines = []
    for metric, label in (("DELIVERY", "delivery latency"), ("TASK", "task turnaround")):
        s = summary_ms(merged(hdr, metric))
        if s["count"]:
            lines.append(f"{label:17} n={s['count']}  p50 {s['p50']:.2f} ms  p99 {s['p99']:.2f} ms"
                         f"  max {s['max']:.2f} ms")
    return lines
