"""``pollbench history``: every complete run (run, check repetitions, sweep runs, web UI
tests) is appended to a results history; this lists it, draws trends and backfills.

    pollbench history [--scenario S] [--profile P] [--param K=V] [--branch B]
                      [--since DATE] [--until DATE] [--metric M ...] [--html OUT]
    pollbench history import RUN|FOLDER ...      # backfill; a run is stored once

The history is ``results/history.sqlite`` unless ``--history URL`` or $POLLBENCH_HISTORY
names another (``sqlite:///PATH`` or ``postgresql://USER@HOST:PORT/DB``; ``off``: none).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from analysis.catalog import TREND_DETECTORS as DETECTORS
from analysis.tracker_format import TRACKER_FORMATS


def add_history_argument(p, default=None) -> None:
    p.add_argument("--history", default=default, metavar="URL",
                   help="results history: sqlite:///PATH or postgresql://USER@HOST:PORT/DB, "
                        "or off (default: $POLLBENCH_HISTORY, else results/history.sqlite)")


def use_history(a) -> None:
    """``--history URL``: checked in one line, then used by this command and every process
    it starts."""
    if getattr(a, "history", None):
        from pollbench.records.history import HISTORY_ENV, check_url

        check_url(a.history)
        os.environ[HISTORY_ENV] = a.history


def add_parser(sub) -> None:
    p = sub.add_parser("history", help="the results history: a table, trends, backfill",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_history_argument(p)
    p.add_argument("--scenario", default=None, help="only runs of this scenario")
    p.add_argument("--profile", default=None, help="only runs of this nginx profile")
    p.add_argument("--branch", default=None, help="only runs made on this git branch")
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="only runs with this parameter value (repeatable), e.g. users=200")
    p.add_argument("--since", default=None, metavar="DATE", help="runs started from DATE")
    p.add_argument("--until", default=None, metavar="DATE", help="runs started before DATE")
    p.add_argument("--metric", action="append", metavar="NAME",
                   help="figures to show (repeatable; default delivery p50, p99, throughput "
                        "and the stack's cost per 1,000 deliveries)")
    p.add_argument("--detector", default="pelt", choices=DETECTORS,
                   help="how --html finds steps: pelt (default; PELT with a noise penalty) "
                        "or edivisive (E-Divisive means with Student's t-test, p <= 0.001, "
                        "as Apache Otava)")
    p.add_argument("--format", default="table", choices=["table", *TRACKER_FORMATS],
                   help="table (default), or the latest selected run's figures for a CI "
                        "tracker: github-action-benchmark-smaller / -bigger (its "
                        "customSmallerIsBetter / customBiggerIsBetter JSON), bmf (Bencher)")
    p.add_argument("--html", default=None, metavar="OUT",
                   help="write a self-contained trend page (charts and detected steps)")
    p.set_defaults(func=handle_show)
    sub2 = p.add_subparsers(dest="history_command", required=False, metavar="import")
    imp = sub2.add_parser("import", help="backfill run folders (a run is stored once)")
    add_history_argument(imp, default=argparse.SUPPRESS)  # before or after "import"
    imp.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                     help="run folders, or folders of runs (a sweep, a check)")
    imp.set_defaults(func=handle_import)


def handle_show(a) -> int:
    from pollbench.actions.history import show

    use_history(a)
    return show(a)


def handle_import(a) -> int:
    from pollbench.actions.history import import_runs

    use_history(a)
    return import_runs(a.runs, a.history)
