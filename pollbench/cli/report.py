"""``pollbench report RUN [RUN ...]``: charts and a self-contained report, for one run or a comparison.

One run: ``RUN/report/`` gets report.html (images embedded, opens from disk),
summary.md, summary.json and charts/*.png.  Several runs (or a folder holding
run folders, such as a sweep): a comparison report in ``results/compare-<time>/``.
Reports are never written over an existing one: choose ``--out`` or remove it.
"""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="charts and an HTML report of one run, or a comparison",
                       description=__doc__)
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                   help="run folder(s), or a folder of run folders")
    p.add_argument("--out", type=Path, default=None, help="report folder (must not exist)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds excluded at the start (default: the users' spawn time)")
    p.set_defaults(func=handle)


def handle(a) -> int:
    from pollbench.actions.report import report

    return report(a.runs, a.out, a.warmup)
