"""``pollbench report`` as a user runs it: one run, a folder of runs, and refusals."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from analysis.synthetic import make_run
from pollbench.tests.conftest import REPO, pollbench_cmd

# runs whole stacks (or reports on them): left out of the quick subset (-m 'not slow')
pytestmark = pytest.mark.slow


def report(*args):
    return subprocess.run(pollbench_cmd("report", *map(str, args)), capture_output=True,
                          text=True, cwd=REPO, timeout=120)


def test_one_run_then_refuses_to_overwrite(tmp_path):
    run = make_run(tmp_path / "run", delivery_ms=np.arange(1, 1001) / 10)
    first = report(run)
    assert first.returncode == 0, first.stderr
    assert (run / "report" / "report.html").is_file()
    assert "report.html" in first.stdout
    second = report(run)
    assert second.returncode == 2 and "does not overwrite" in second.stderr


def test_folder_of_runs_gives_a_comparison(tmp_path):
    for users in (50, 100):
        make_run(tmp_path / "sweep" / f"u{users}", delivery_ms=np.arange(1, 1001) / users,
                 parameters={"users": users})
    proc = report(tmp_path / "sweep", "--out", tmp_path / "cmp")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert [c["label"] for c in summary["cells"]] == ["users=50", "users=100"]


def test_not_a_run_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = report(tmp_path / "empty")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no run.json" in proc.stderr


def test_warmup_that_is_not_a_finite_number_is_refused_and_writes_nothing(tmp_path):
    run = make_run(tmp_path / "run", delivery_ms=np.arange(1, 101) / 10)
    for bad in ("nan", "inf", "-1"):
        proc = report(run, "--warmup", bad)
        assert proc.returncode == 2 and "--warmup must be a finite number, 0 or more" in \
            proc.stderr, proc.stderr
        assert proc.stderr.strip().count("\n") == 0
    assert not (run / "report").exists()  # a refused report leaves no folder to block the next


def test_a_run_named_twice_counts_once(tmp_path):
    run = make_run(tmp_path / "run", delivery_ms=np.arange(1, 101) / 10)
    proc = report(run, run, "--out", tmp_path / "twice")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "twice" / "summary.json").read_text())
    assert "cells" not in summary and "metrics" in summary  # one run's report, not a comparison


def test_corrupt_run_json_leaves_no_report_folder_to_block_the_next(tmp_path):
    run = make_run(tmp_path / "run", delivery_ms=np.arange(1, 101) / 10)
    good = (run / "run.json").read_text()
    (run / "run.json").write_text("{not json")
    proc = report(run)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not (run / "report").exists()
    (run / "run.json").write_text(good)  # mended: the next report is not blocked
    assert report(run).returncode == 0


def test_ctrl_c_while_the_charts_are_drawn_stops_their_processes_and_blocks_nothing(tmp_path):
    """Ctrl-C reaches the whole process group (the chart processes too): one line, exit 130,
    no chart process left, and no half-written report folder to block the next report."""
    import os
    import signal

    import psutil

    from analysis.report import chart_processes
    from pollbench.stack.processes import wait_until

    if chart_processes() < 2:
        pytest.skip("one CPU: the charts are drawn in this process, none is forked")
    run = make_run(tmp_path / "run", delivery_ms=np.arange(1, 1001) / 10)
    proc = subprocess.Popen(pollbench_cmd("report", str(run)), cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        parent = psutil.Process(proc.pid)
        assert wait_until(lambda: proc.poll() is not None or len(parent.children()) >= 2, 60)
        drawing = parent.children()
        assert len(drawing) >= 2, "no chart processes were seen"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130 and err.strip().count("\n") == 0, err
    assert psutil.wait_procs(drawing, timeout=10)[1] == []  # every chart process ended
    assert not (run / "report").exists()
    assert report(run).returncode == 0  # the next report is not blocked
