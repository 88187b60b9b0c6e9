"""A test started and stopped in the web UI -> a run folder of its own, with a report.

The load generator writes ``tests/NNN/metrics/`` and ``tests/NNN/test.json`` (what
was started, when it started and stopped; :class:`loadtests.uitest.UiTest`).  This
module adds what the orchestrator recorded for the whole session, cut to the test's
time span (process samples, stub_status, backend stats, the nginx access log,
Locust's history), writes the test's run.json (kind "ui-test") and its report.
"""

from __future__ import annotations

import copy
import csv
import json
import time
from pathlib import Path

from analysis.atomic import atomic_open, write_atomic
from analysis.catalog import (
    EXIT_OK,
    METRICS_DIR,
    PROGRESS_FILE,
    REDIS_INFO_FILE,
    RUN_FILES,
    UI_TEST_FILE,
    UI_TESTS_DIR,
)
from analysis.limits import NGINX_ERRORS_FILE, PROCESS_LIMITS_FILE
from analysis.saturation import counts_from_rows, cpu_summary
from pollbench.records.rundir import write_json_atomic
from pollbench.records.runinfo import STATUS_COMPLETE
from pollbench.records.runrecord import explain, lost_warning, store_in_history

MARGIN_S = 1.0  # samples this close outside a test's span still belong to it


def unwritten_tests(session_dir: Path, done: set[str], stopped_only: bool = True) -> list[Path]:
    """Test folders without a run.json yet: those the load generator has stopped, or at the
    session's end (``stopped_only=False``) every one, whatever its state."""
    tests = session_dir / UI_TESTS_DIR
    if not tests.is_dir():  # a session in which no test was started
        return []
    found = []
    for test in sorted(tests.iterdir()):
        if test.name in done or not test.name.isdigit():
            continue
        try:
            info = json.loads((test / UI_TEST_FILE).read_text())
        except (OSError, ValueError):
            continue
        if info.get("status") == "stopped" or not stopped_only:
            found.append(test)
    return found


def _slice_csv(src: Path, dst: Path, t0: float, t1: float, column: str) -> list[dict]:
    rows: list[dict] = []
    if not src.exists():
        return rows
    with open(src, newline="") as f, atomic_open(dst, "w", newline="") as out:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(out, fieldnames=reader.fieldnames or [])
        writer.writeheader()
        for row in reader:
            try:
                t = float(row[column])
            except (KeyError, TypeError, ValueError):
                continue
            if t0 - MARGIN_S <= t <= t1 + MARGIN_S:
                writer.writerow(row)
                rows.append(row)
    return rows


def _slice_lines(src: Path, dst: Path, t0: float, t1: float, time_of) -> None:
    if not src.exists():
        return
    with open(src) as f, atomic_open(dst, "w") as out:
        for line in f:
            try:
                t = time_of(line)
            except (ValueError, KeyError):
                continue
            if t0 - MARGIN_S <= t <= t1 + MARGIN_S:
                out.write(line)


def _access_time(line: str) -> float:
    # nginx's pollbench log_format starts every line with {"msec":"<epoch s>", ...
    return float(line[9:line.index('"', 9)])


def cpu_of(rows: list[dict]) -> tuple[dict, list[str]]:
    """run.json's "cpu" and its warnings for a test, from its 1-s process samples, by the
    one saturation rule (:mod:`analysis.saturation`, start-up grace included: a test's first
    seconds are its users being spawned)."""
    saturation, seconds = counts_from_rows(
        [[row["time"], row["component"], row["pid"], row["cpu_percent"]] for row in rows])
    return cpu_summary(saturation, seconds)


def finish_test(test_dir: Path, session_dir: Path, session: dict, make_report: bool = True,
                history_source: str | None = "ui") -> Path:
    """Write the test's run.json (and its report), and append it to the results history;
    returns the run folder."""
    info = json.loads((test_dir / UI_TEST_FILE).read_text())
    try:
        progress = json.loads((test_dir / METRICS_DIR / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        progress = {}
    started = float(info["started_at"])
    ended = float(info.get("ended_at") or progress.get("time") or time.time())
    _slice_csv(session_dir / RUN_FILES["stub_status"], test_dir / RUN_FILES["stub_status"],
               started, ended, "time")
    rows = _slice_csv(session_dir / RUN_FILES["processes"], test_dir / RUN_FILES["processes"],
                      started, ended, "time")
    for name in (RUN_FILES["backend_stats"], REDIS_INFO_FILE,  # (Redis: shared state only)
                 NGINX_ERRORS_FILE):
        _slice_lines(session_dir / name, test_dir / name, started, ended,
                     lambda line: float(json.loads(line)["time"]))
    if (session_dir / PROCESS_LIMITS_FILE).exists():  # once per process: kept whole
        write_atomic(test_dir / PROCESS_LIMITS_FILE,
                     (session_dir / PROCESS_LIMITS_FILE).read_bytes())
    _slice_lines(session_dir / RUN_FILES["nginx_access_log"],
                 test_dir / RUN_FILES["nginx_access_log"], started, ended, _access_time)
    _slice_csv(session_dir / RUN_FILES["locust_history"], test_dir / RUN_FILES["locust_history"],
               started, ended, "Timestamp")

    opts = info.get("options", {})
    record = copy.deepcopy(session)
    record.pop("pids", None)
    record.pop("tests", None)
    stopped_in_ui = info.get("stop_reason") == "stopped"
    record.update(kind="ui-test", started_at=started, ended_at=ended,
                  duration_s=round(ended - started, 3), status=STATUS_COMPLETE, complete=True,
                  session=str(session_dir), test=info,
                  exit={"code": EXIT_OK, "reason": "stopped in the web UI" if stopped_in_ui else
                        f"ended: {info.get('stop_reason') or 'the session ended'}"},
                  loadgen=progress)
    record["cpu"], record["warnings"] = cpu_of(rows)
    p = record["parameters"]
    classes = info.get("user_classes", [])
    p.update(users=info.get("users"), spawn_rate=info.get("spawn_rate"), user_classes=classes,
             scenario="ui:" + "+".join(classes), duration_s=round(ended - started, 3),
             workers=info.get("workers", 0), faults=[])
    for key, opt in (("connection", "pb_connection"), ("channels", "pb_channels"),
                     ("publish_rate", "pb_publish_rate"), ("poll_timeout_s", "pb_poll_timeout"),
                     ("task_duration_ms", "pb_task_duration_ms")):
        if opt in opts:
            p[key] = opts[opt]
    if (lost := lost_warning(progress)) is not None:
        record["warnings"].append(lost)
    explain(record, test_dir, (started, ended))
    record["files"] = {k: v for k, v in RUN_FILES.items() if (test_dir / v).exists()}
    write_json_atomic(test_dir / "run.json", record)
    if make_report:
        from pollbench.actions.report import report

        report([test_dir], quiet=True)
    if history_source is not None:
        store_in_history(record, test_dir, history_source)
    return test_dir
