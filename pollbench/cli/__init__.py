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
from pathlib import Path

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
        init,
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
    for module in (init, up, agent, run, worker, ui, report, compare, check, sweep, nginx,
                   history):
        module.add_parser(sub)
    for name in PROJECT_COMMANDS:
        sub.choices[name].add_argument(
            "--project", type=Path, default=None, metavar="FILE",
            help="the project file (default: ./pollbench.toml, else [tool.pollbench] in "
                 "./pyproject.toml; its options are defaults, the command line wins)")
    parser.set_defaults(project_file=None, project_backend=None, project_thresholds={},
                        project_check={}, project_options={})
    parser.subcommands = sub  # type: ignore[attr-defined]  # for with_project
    return parser


# the commands that read the project file of the current directory (pollbench.stack.project)
PROJECT_COMMANDS = ("run", "ui", "sweep", "check")


def with_project(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 argv: list[str] | None) -> argparse.Namespace:
    """The arguments again, with the project file's values as the command's defaults (the
    command line wins); unchanged where there is no project file."""
    if args.command not in PROJECT_COMMANDS:
        return args
    from pollbench.stack import project

    path = args.project or project.find(Path.cwd())
    if path is None:
        return args
    proj = project.read(path)
    # your runs (and their history) in your project's results/, unless told otherwise
    os.environ.setdefault("POLLBENCH_RESULTS", str(proj.folder / "results"))
    command = parser.subcommands.choices[args.command]  # type: ignore[attr-defined]
    dests = {a.dest for a in command._actions}
    command.set_defaults(**{k: v for k, v in proj.options.items() if k in dests},
                         project_file=proj.path, project_backend=proj.backend,
                         project_thresholds=proj.thresholds, project_check=proj.check,
                         project_options=proj.options)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args = with_project(parser, args, argv)
    except UserError as e:
        print(f"pollbench: error: {e}", file=sys.stderr)
        return EXIT_BROKEN
    from pollbench import log

    log.setup(log.QUIET if args.quiet else log.VERBOSE if args.verbose else log.NORMAL)
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        if args.command in PROJECT_COMMANDS:
            from pollbench.cli.history import use_history

            use_history(args)
            if args.project_file is not None:
                from pollbench.log import log as say

                say.info(f"project file: {args.project_file}")
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
