"""The suite's guards (pollbench.tests.guards): Ctrl-C reaches the children of a suite
started with SIGINT ignored, and a test that pytest-timeout cannot stop ends its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from pollbench.tests.children import Child
from pollbench.tests.conftest import REPO

SLEEPER = "import time; print('ready', flush=True); time.sleep(30)"


def test_ctrl_c_reaches_a_child_of_the_suite():
    with Child([sys.executable, "-c", SLEEPER]) as child:
        child.wait_for("ready", 30)
        t0 = time.monotonic()
        code = child.stop(signal.SIGINT, timeout=10)  # as a test stops a run; else killed
        assert code == -2 and time.monotonic() - t0 < 10, child.output.text()


def test_a_suite_started_with_ctrl_c_ignored_still_interrupts_its_children():
    """``nohup pytest`` or ``pytest &`` in a script starts the suite with SIGINT ignored;
    its children would inherit that, and every test that stops a run with Ctrl-C fail."""
    ignoring = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                "os.execv(sys.executable, [sys.executable, '-m', 'pytest', '-q', '-p', "
                "'no:cacheprovider', sys.argv[1]])")
    node = f"{__file__}::test_ctrl_c_reaches_a_child_of_the_suite"
    proc = subprocess.run([sys.executable, "-c", ignoring, node], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout + proc.stderr


def test_a_test_the_alarm_cannot_reach_ends_its_process_with_every_thread_shown(tmp_path):
    """pytest-timeout's alarm cannot stop a test whose main thread never runs Python (as
    under gevent): past the limit plus the backstop, the process ends with the tracebacks."""
    (tmp_path / "test_stuck.py").write_text(
        "import signal, time\n\n"
        "def test_stuck():\n"
        "    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # the alarm waits\n"
        "    time.sleep(60)  # creates the condition: a test that does not end\n")
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
         "pollbench.tests.guards", "-o", "timeout=1", "-o", "timeout_backstop=2",
         "test_stuck.py"], cwd=tmp_path, capture_output=True, text=True, timeout=45)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1 and elapsed < 30, (elapsed, proc.stdout, proc.stderr)
    assert "Timeout (0:00:03)!" in proc.stderr and 'test_stuck.py", line 5 in test_stuck' \
        in proc.stderr, proc.stderr


def test_the_backstop_follows_pytest_timeouts_own_order(monkeypatch):
    """Its marker, else --timeout, else $PYTEST_TIMEOUT, else the ini value (as pytest-timeout
    reads them): a suite given PYTEST_TIMEOUT=900 is not ended at the ini's 300 s."""
    from types import SimpleNamespace

    from pollbench.tests.guards import limit_s

    def item(marker=None, option=None):
        config = SimpleNamespace(getoption=lambda name, default=None: option,
                                 getini=lambda name: "300")
        return SimpleNamespace(get_closest_marker=lambda name: marker, config=config)

    monkeypatch.delenv("PYTEST_TIMEOUT", raising=False)
    assert limit_s(item()) == 300
    monkeypatch.setenv("PYTEST_TIMEOUT", "900")
    assert limit_s(item()) == 900
    assert limit_s(item(option=60)) == 60
    assert limit_s(item(marker=SimpleNamespace(args=(5,), kwargs={}), option=60)) == 5


def test_a_phase_the_selection_leaves_empty_passes_but_an_empty_suite_does_not(tmp_path):
    """``tox -e py -- -k NAME`` runs two phases (not serial, then serial): the one without
    NAME selects nothing, which must not fail the tox run; nothing selected by the markers
    alone (no -k, no paths) is still exit 5."""
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\ntestpaths = .\nmarkers =\n    serial\n")

    def pytest(*args: str) -> int:
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "-p", "pollbench.tests.guards", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(REPO)}
                              ).returncode

    assert pytest("-m", "serial", "-k", "test_one") == 0      # the serial phase of -k
    assert pytest("-m", "not serial", "-k", "test_one") == 0  # (the one that ran it)
    assert pytest("-m", "serial", "test_one.py") == 0         # a file given
    assert pytest("-m", "serial") == 5                        # nothing, not narrowed
