"""The ``pollbench`` command: one entry point, a module per subcommand.

Exit codes are decided here only: 0 success, 1 regression (compare/check),
2 bad input or a void measurement (UserError), 3 a run that failed, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys

from pollbench import __version__
from pollbench.errors import RunFailed, UserError

EXIT_OK, EXIT_REGRESSION, EXIT_USER_ERROR, EXIT_RUN_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad arguments: one line naming the problem and where help is, not the whole usage."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from pollbench import (
        cmd_check,
        cmd_compare,
        cmd_report,
        cmd_run,
        cmd_sweep,
        cmd_ui,
        cmd_up,
        nginx_build,
    )

    parser = OneLineErrorParser(
        prog="pollbench", description="Benchmark long-polling services behind nginx.")
    parser.add_argument("--version", action="version", version=f"pollbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (cmd_up, cmd_run, cmd_ui, cmd_report, cmd_compare, cmd_check, cmd_sweep,
                   nginx_build):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return args.func(args)
    except UserError as e:
        print(f"pollbench: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RunFailed as e:
        print(f"pollbench: run failed: {e}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except KeyboardInterrupt:
        print("pollbench: interrupted; every process was stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
