"""A pytest plugin that keeps the suite from depending on how it was started and from
holding CI when a test hangs; every test directory gets it (pyproject's addopts:
``-p pollbench.tests.guards``).

- **Ctrl-C reaches the suite's children.**  A suite started with SIGINT ignored -- by
  ``nohup``, or as ``cmd &`` in a script (a shell without job control ignores SIGINT in what
  it starts in the background) -- hands that to every child, so the tests that stop a run,
  a sweep or the web UI as a user's Ctrl-C would fail, and their runs would go on competing
  with the tests after them.  Python's own handler is put back.
- **A test that pytest-timeout cannot stop ends its process.**  pytest-timeout's alarm needs
  the main thread to run Python, and under gevent's patched threading (any process that
  imported Locust) it may never: a hung test then held CI for its 90 minutes.  Past
  pytest-timeout's limit plus ``timeout_backstop`` seconds, faulthandler's own C thread
  writes every thread's traceback to stderr and exits the process (code 1).
- **A test that patches threads in a parallel worker is named.**  tox runs the suite 2
  tests at a time (pytest-xdist), and a worker's link to pytest runs on threads: once a test
  imports Locust there (gevent patches ``threading``), the worker dies later, in another
  test, with "LoopExit: This operation would block forever".  The test that did it fails
  instead, told to be marked ``serial`` (run alone, after the rest).
- **A phase the selection leaves empty passes.**  tox runs two phases (``-m "not serial"``,
  then ``-m serial``); ``tox -e py -- -k NAME`` (or a test file) picks tests of one phase,
  and pytest ends the other with exit code 5, "no tests ran", which failed the whole tox
  run.  When the user narrowed the selection (``-k`` or paths), an empty phase exits 0; a
  run that selected nothing without being narrowed still exits 5.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
from typing import IO

import pytest

BACKSTOP_S = "60"  # the default of the ini value timeout_backstop
_stderr: IO[str] | None = None  # the terminal's stderr, not a test's captured one


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("timeout_backstop", "seconds past pytest-timeout's limit after which a "
                  "test that has not ended gets every thread's traceback dumped and its "
                  "process ended (0: never)", default=BACKSTOP_S)


def pytest_configure(config: pytest.Config) -> None:
    global _stderr
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # between the conftests' loading and the first test, fd 2 is the terminal's stderr
    _stderr = os.fdopen(os.dup(2), "w")


def pytest_unconfigure(config: pytest.Config) -> None:
    global _stderr
    faulthandler.cancel_dump_traceback_later()
    if _stderr is not None:
        _stderr.close()
        _stderr = None


def limit_s(item: pytest.Item) -> float:
    """pytest-timeout's limit for ``item``, in its own order: its marker, else --timeout,
    else $PYTEST_TIMEOUT, else the ini value; 0 when there is none."""
    marker = item.get_closest_marker("timeout")
    if marker is not None:
        value = marker.args[0] if marker.args else marker.kwargs.get("timeout")
    else:
        value = item.config.getoption("timeout", None)
        if value is None:
            value = os.environ.get("PYTEST_TIMEOUT") or None
        if value is None:
            try:
                value = item.config.getini("timeout")
            except ValueError:  # pytest-timeout is not installed
                value = None
    try:
        return max(float(value or 0), 0.0)
    except (TypeError, ValueError):
        return 0.0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    limit, backstop = limit_s(item), float(item.config.getini("timeout_backstop"))
    if limit and backstop and _stderr is not None:
        faulthandler.dump_traceback_later(limit + backstop, exit=True, file=_stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def _threads_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") and _threads_patched():
        pytest.fail(f"{item.nodeid} left gevent's patched threads in a parallel test worker "
                    "(it imported Locust here), which breaks the worker: mark it "
                    "@pytest.mark.serial", pytrace=False)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    narrowed = bool(config.option.keyword) or config.args_source == pytest.Config.ArgsSource.ARGS
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and narrowed:
        session.exitstatus = pytest.ExitCode.OK
