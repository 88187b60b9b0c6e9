"""``pollbench check``: the CI performance gate.  Run the CI scenario N times, compare with the
baseline committed in the repository, exit 0 (pass), 1 (regression) or 2 (broken / void).

    pollbench check                       # compare with results/baselines/ci.json
    pollbench check --update-baseline     # record a new baseline (refuses to overwrite)

Each repetition is a normal run folder under ``results/<time>-check/``.  The
baseline file holds the summaries of its repetitions and the configuration they
ran with; a check whose configuration differs is refused (rerun
``--update-baseline``).
"""

from __future__ import annotations

from pathlib import Path

from analysis.verdict_format import FORMATS
from pollbench.cli.history import add_history_argument


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="CI gate: run the CI scenario N times and compare with the "
                       "committed baseline (exit 0/1/2)", description=__doc__)
    p.add_argument("--baseline", type=Path, default=None,
                   help="baseline file (default results/baselines/ci.json)")
    p.add_argument("--repeat", type=int, default=4,
                   help="repetitions (4 is the fewest a Mann-Whitney test can decide on)")
    p.add_argument("--thresholds", type=Path, default=None)
    p.add_argument("--format", choices=sorted(FORMATS), default="text")
    p.add_argument("--output", type=Path, default=None, help="verdict file (default stdout)")
    p.add_argument("--update-baseline", action="store_true", help="record a new baseline")
    p.add_argument("--force", action="store_true", help="with --update-baseline: overwrite")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--backend-port", type=int, default=8000)
    p.add_argument("--delivery-delay-ms", type=float, default=0.0,
                   help="inject a fixed delay into every delivery (to prove the gate works)")
    p.add_argument("--baseline-ref", default=None, metavar="GIT_REF",
                   help="interleave: rerun this git revision as the baseline, alternating with "
                        "this checkout, and compare with those runs (cancels machine drift)")
    add_history_argument(p)
    p.set_defaults(func=handle)


def handle(a) -> int:
    from pollbench.actions.check import check, default_baseline

    return check(a.baseline or default_baseline(), a.repeat, a.thresholds, a.format, a.output,
                 a.update_baseline, a.force, a.port, a.backend_port, a.delivery_delay_ms,
                 a.baseline_ref)
