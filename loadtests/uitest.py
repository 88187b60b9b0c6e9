"""Tests started from the web UI: each gets its own metrics folder and ``test.json``.

The orchestrator (``pollbench ui``) turns each stopped test into a run folder with a
report (:mod:`pollbench.actions.uitests`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import gevent

from analysis.atomic import write_atomic
from analysis.catalog import METRICS_DIR, UI_TEST_FILE
from loadtests.recorder import Sink

# A master ends a web UI test this long after it stopped: the workers' last intervals
# travel after the stop.
TEST_END_GRACE_S = 2.0


class UiTest:
    """One test started from the web UI: its own metrics folder and ``test.json``.

    The orchestrator (``pollbench ui``) turns each stopped test into a run folder with a
    report; ``test.json`` says what was started (users, spawn rate, classes, options) and
    when it started and stopped."""

    def __init__(self, tests_dir: Path, environment, workers: int) -> None:
        tests_dir.mkdir(parents=True, exist_ok=True)
        number = 1 + max((int(p.name) for p in tests_dir.iterdir() if p.name.isdigit()),
                         default=0)
        self.dir = tests_dir / f"{number:03d}"
        self.dir.mkdir()
        self.sink = Sink(self.dir / METRICS_DIR)
        opts = environment.parsed_options
        self.info = {
            "number": number, "status": "running", "started_at": time.time(), "ended_at": None,
            "users": getattr(opts, "num_users", None), "spawn_rate": getattr(opts, "spawn_rate",
                                                                            None),
            "user_classes": sorted(c.__name__ for c in environment.user_classes),
            "host": environment.host,
            "workers": workers,
            "options": {k: v for k, v in sorted(vars(opts).items())
                        if k.startswith("pb_") and k not in ("pb_out", "pb_tests", "pb_live")},
        }
        self.write()

    def write(self) -> None:
        write_atomic(self.dir / UI_TEST_FILE, json.dumps(self.info, indent=1))

    def end(self, reason: str) -> None:
        self.info.update(status="stopped", ended_at=self.info["ended_at"] or time.time(),
                         stop_reason=reason)
        self.sink.close()
        self.write()


class UiTests:
    """A web-UI session's tests, one at a time: a new test ends the one before; a stopped
    test ends at once in a local runner, and :data:`TEST_END_GRACE_S` later in a master
    (its workers' last intervals are on their way)."""

    def __init__(self, tests_dir: Path, environment, is_master: bool) -> None:
        self.dir, self.env, self.is_master = tests_dir, environment, is_master
        self.current: UiTest | None = None

    def start(self, workers: int) -> None:
        self.end("a new test started")
        self.current = UiTest(self.dir, self.env, workers)

    def stopped(self, reason: str, write_progress) -> None:
        """The users stopped; ``write_progress`` writes the test's last progress."""
        test = self.current
        if test is None:
            return
        test.info["ended_at"] = time.time()
        if self.is_master:
            gevent.spawn_later(TEST_END_GRACE_S, self._end_after_grace, test, reason,
                               write_progress)
        else:
            write_progress()
            self.end(reason)

    def _end_after_grace(self, test: UiTest, reason: str, write_progress) -> None:
        if self.current is test:
            write_progress()
            self.end(reason)

    def end(self, reason: str) -> None:
        test, self.current = self.current, None
        if test is not None:
            test.end(reason)
