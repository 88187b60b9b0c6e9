"""The ``pollbench`` command: argument parsing and a short handler per command (one module
each in this package); the work itself is in :mod:`pollbench.actions`, imported only when
a command runs, so ``pollbench --help`` loads no pandas, matplotlib or scipy.

Exit codes are decided here only (their values are defined in :mod:`analysis.catalog`):
0 success, 1 regression (compare/check), 2 bad input or a void measurement (UserError),
3 a run that failed, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from analysis.catalog import EXIT_BROKEN, EXIT_INTERRUPTED, EXIT_RUN_FAILED
from pollbench import __version__
from pollbench.errors import RunFailed, UserError

_MAIN_PID = os.getpid()  # the process whose handler this is (set again when installed)


def _sigterm_as_interrupt(signum, frame):
    if os.getpid() != _MAIN_PID:
        # a forked child (a report's chart process) that has not yet put its own handlers
        # in place: it dies as SIGTERM's default would, not with a KeyboardInterrupt
        # traceback on the terminal (seen once in a CI run, after a Ctrl-C)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise KeyboardInterrupt


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad arguments: one line naming the problem and where help is, not the whole usage."""

    def error(self, message: str):
        self.exit(EXIT_BROKEN, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from pollbench.cli import (
        agent,
        check,
        compare,
        history,
        nginx,
        report,
        run,
        sweep,
        ui,
        up,
        worker,
    )

    parser = OneLineErrorParser(
        prog="pollbench", description="Benchmark long-polling services behind nginx.")
    parser.add_argument("--version", action="version", version=f"pollbench {__version__}")
    level = parser.add_mutually_exclusive_group()
    level.add_argument("-q", "--quiet", action="store_true",
                       help="only results on stdout (a run's folder, a verdict) and problems "
                            "on stderr; no progress")
    level.add_argument("-v", "--verbose", action="store_true",
                       help="more detail: the commands pollbench starts, what it waits for")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (up, agent, run, worker, ui, report, compare, check, sweep, nginx, history):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from pollbench import log

    log.setup(log.QUIET if args.quiet else log.VERBOSE if args.verbose else log.NORMAL)
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        if args.command in ("run", "check", "sweep", "ui"):
            from pollbench.cli.history import use_history

            use_history(args)
        return args.func(args)
    except UserError as e:
        print(f"pollbench: error: {e}", file=sys.stderr)
        return EXIT_BROKEN
    except RunFailed as e:
        print(f"pollbench: run failed: {e}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except KeyboardInterrupt:
        print("pollbench: interrupted; every process was stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
