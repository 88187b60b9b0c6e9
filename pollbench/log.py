"""What pollbench says while it works, by level, through :mod:`logging`:

* results (a run's folder, a verdict, a table) are printed on stdout by the commands
  themselves, whatever the level;
* progress (``log.info``: a run's start, its lines every 5 s, its summary) goes to stdout,
  silenced by ``pollbench -q``;
* warnings and problems (``log.warning``) go to stderr, as ``WARNING: ...``;
* detail (``log.debug``: the commands pollbench starts, what it waited for) joins the
  progress on stdout with ``pollbench -v``.

    from pollbench.log import log
    log.info("run 3 of 8 ...")
    log.warning("the load generator was saturated")
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("pollbench")

QUIET, NORMAL, VERBOSE = -1, 0, 1


class _Below(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


class _Stream(logging.StreamHandler):
    """A handler that writes to whatever sys.stdout / sys.stderr is when it writes (tests
    capture them by replacing the objects)."""

    def __init__(self, which: str):
        super().__init__()
        self.which = which

    @property
    def stream(self):
        return getattr(sys, self.which)

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup(verbosity: int = NORMAL) -> None:
    """Route pollbench's messages for one command (called once by the CLI)."""
    for h in list(log.handlers):
        log.removeHandler(h)
    progress = _Stream("stdout")
    progress.setLevel(logging.DEBUG if verbosity >= VERBOSE else logging.INFO)
    progress.addFilter(_Below(logging.WARNING))
    progress.setFormatter(logging.Formatter("%(message)s"))
    problems = _Stream("stderr")
    problems.setLevel(logging.WARNING)
    problems.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    if verbosity > QUIET:
        log.addHandler(progress)
    log.addHandler(problems)
    log.setLevel(logging.DEBUG if verbosity >= VERBOSE else logging.INFO)
    log.propagate = False


setup()  # library use (tests, benchmarks) says what the CLI says by default
