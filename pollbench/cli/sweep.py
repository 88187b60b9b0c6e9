"""``pollbench sweep FILE``: run every cell of a sweep, repeated, then a ranked side-by-side report.

    pollbench sweep upstream-keepalive          # a shipped sweep (sweeps/*.toml) or a file
    pollbench sweep my.toml --resume            # continue the newest unfinished sweep of my.toml

The whole sweep is checked before anything starts: every cell's values, its
stack and load, and ``nginx -t`` on its rendered config; an error names the
cell.  Runs go to ``results/<time>-sweep-<name>/<cell>/rep-<k>`` (each a normal
run folder) beside ``manifest.json`` (the plan, each run's status, timings) and
a copy of the sweep file; the comparison report, with the ranking, goes to
``report/``.  Repetitions are interleaved (or shuffled) across cells so that
drift of the machine is not mistaken for an effect, and between runs the sweep
waits until the previous run's sockets have left TIME_WAIT.

Ctrl-C stops the running cell's processes and marks it interrupted; ``--resume``
skips completed runs and reruns the rest (an interrupted run's folder is moved
to ``aborted/``, never counted, never deleted).
"""

from __future__ import annotations

from pathlib import Path

from pollbench.cli.history import add_history_argument
from pollbench.cli.options import add_remote_arguments, remote_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a matrix of settings, repeated, and rank them in a "
                       "side-by-side report", description=__doc__)
    p.add_argument("sweep", metavar="FILE", help="a sweep .toml file, or the name of a shipped "
                   "one in sweeps/")
    p.add_argument("--resume", action="store_true",
                   help="continue the newest unfinished sweep of FILE (or --out DIR)")
    p.add_argument("--out", type=Path, default=None,
                   help="sweep folder (new: must not exist; with --resume: the one to continue)")
    p.add_argument("--check", action="store_true",
                   help="only check the sweep (every cell, nginx -t) and print its plan")
    p.add_argument("--port", type=int, default=8080, help="nginx port (default 8080)")
    p.add_argument("--backend-port", type=int, default=8000, help="first backend port")
    add_history_argument(p)
    add_remote_arguments(p)
    p.set_defaults(func=handle)


def handle(a) -> int:
    from pollbench.actions.sweep import sweep_command

    project = None
    if a.project_file is not None:
        from pollbench.stack.project import read

        project = read(a.project_file)
    return sweep_command(a.sweep, a.resume, a.out, a.check, a.port, a.backend_port,
                         remote_from_args(a), project)
