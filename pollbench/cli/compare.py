"""``pollbench compare BASELINE CANDIDATE``: did the candidate get worse?  Exit 0 / 1 / 2.

Each side is a run folder, a folder of run folders (repetitions, a sweep cell),
a run's ``summary.json``, or a baseline file written by ``pollbench check
--update-baseline``.  The rule (threshold AND Mann-Whitney significance), the
absolute gates and the exit codes are defined in :mod:`analysis.verdict`.
"""

from __future__ import annotations

from pathlib import Path

from analysis.verdict_format import FORMATS


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="compare a candidate with a baseline: exit 0 pass, "
                       "1 regression, 2 broken/void", description=__doc__)
    p.add_argument("baseline", type=Path)
    p.add_argument("candidate", type=Path)
    p.add_argument("--thresholds", type=Path, default=None,
                   help="TOML: [defaults] threshold/alpha/error_rate_cap, [metrics.NAME] "
                        "threshold (default 10 %% for every metric)")
    p.add_argument("--format", choices=sorted(FORMATS), default="text")
    p.add_argument("--output", type=Path, default=None, help="write here instead of stdout")
    p.set_defaults(func=handle)


def handle(a) -> int:
    from pollbench.actions.compare import compare

    return compare(a.baseline, a.candidate, a.thresholds, a.format, a.output)
