"""``pollbench check``: the CI performance gate.  Rerun a base revision of this checkout and
this checkout in alternation, compare, exit 0 (pass), 1 (regression) or 2 (broken / void).

    pollbench check                        # base: the merge-base with the default branch
    pollbench check --baseline-ref v1.2    # base: that revision
    pollbench check --baseline FILE        # base: a baseline recorded on this machine
    pollbench check --update-baseline      # record one (refuses to overwrite)

Each repetition is a normal run folder under ``results/<time>-check-interleaved/``.  A
metric regresses when it is worse by more than its threshold and Mann-Whitney, Holm-adjusted
over the compared metrics, finds it significant; every metric also says how large a change
the check could have missed.
"""

from __future__ import annotations

from pathlib import Path

from analysis.catalog import COMPARED
from analysis.verdict import DEFAULT_ALPHA, min_samples
from analysis.verdict_format import FORMATS
from pollbench.cli.history import add_history_argument


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="CI gate: rerun a base revision and this checkout in alternation and "
                       "compare (exit 0/1/2)", description=__doc__)
    p.add_argument("--baseline", type=Path, default=None,
                   help="compare with this baseline file, recorded on this machine, instead of "
                        "rerunning a revision (with --update-baseline: where to write it; "
                        "default results/baselines/ci.json)")
    family = len(COMPARED)
    paired, unpaired = (min_samples(DEFAULT_ALPHA / family, paired=x) for x in (True, False))
    p.add_argument("--repeat", type=int, default=None,
                   help="repetitions a side (default 22 rounds of 4-s runs, about 4 minutes; "
                        f"at least {paired} interleaved, or {unpaired} against a --baseline "
                        f"file: Holm over {family} metrics at alpha {DEFAULT_ALPHA:g} needs "
                        "them)")
    p.add_argument("--thresholds", type=Path, default=None)
    p.add_argument("--format", choices=sorted(FORMATS), default="text")
    p.add_argument("--output", type=Path, default=None, help="verdict file (default stdout)")
    p.add_argument("--update-baseline", action="store_true", help="record a new baseline")
    p.add_argument("--force", action="store_true", help="with --update-baseline: overwrite")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--backend-port", type=int, default=8000)
    p.add_argument("--delivery-delay-ms", type=float, default=0.0,
                   help="inject a fixed delay into every delivery (to prove the gate works)")
    p.add_argument("--burn-us", type=float, default=0.0, metavar="US",
                   help="the candidate's backends spend this many microseconds of CPU on each "
                        "poll they answer with messages (a known cost regression, to prove "
                        "the gate catches it)")
    p.add_argument("--baseline-ref", default=None, metavar="GIT_REF",
                   help="the revision rerun as the baseline, alternating with this checkout "
                        "(default: the merge-base with the default branch; on that branch, "
                        "HEAD^)")
    add_history_argument(p)
    p.set_defaults(func=handle)


def handle(a) -> int:
    from pollbench.actions.check import check

    return check(a.baseline, a.repeat, a.thresholds, a.format, a.output,
                 a.update_baseline, a.force, a.port, a.backend_port, a.delivery_delay_ms,
                 a.baseline_ref, a.burn_us)
