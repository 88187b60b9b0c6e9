"""``pollbench check``: the CI performance gate.  Rerun a base revision of this checkout and
this checkout in alternation, compare, exit 0 (pass), 1 (regression) or 2 (broken / void).
In a project (a pollbench.toml or [tool.pollbench] naming your backends), the revisions are
your repository's and the load is the project's (docs/your-service.md).

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

    if a.project_backend is not None:  # your service, in your repository
        return _handle_project(a)
    return check(a.baseline, a.repeat, a.thresholds, a.format, a.output,
                 a.update_baseline, a.force, a.port, a.backend_port, a.delivery_delay_ms,
                 a.baseline_ref, a.burn_us)


def _handle_project(a) -> int:
    """``check`` where a project file names the user's backends: the project's load (as
    ``pollbench run`` there would run it), each repetition [check] duration long."""
    from dataclasses import replace

    from pollbench.actions.check import CI_LOAD, CI_WARMUP_S, check_project
    from pollbench.cli.options import load_from_args, project_run_args, spec_from_args
    from pollbench.errors import UserError
    from pollbench.stack.project import read

    given = [o for o, v in (("--baseline", a.baseline), ("--update-baseline", a.update_baseline),
                            ("--delivery-delay-ms", a.delivery_delay_ms),
                            ("--burn-us", a.burn_us)) if v]
    if given:
        raise UserError(f"{', '.join(given)} belong(s) to the check of pollbench's own target; "
                        f"in your project ({a.project_file}) the check reruns a revision of "
                        "your repository: --baseline-ref REF")
    r = project_run_args(read(a.project_file), ["--port", str(a.port), "--backend-port",
                                                 str(a.backend_port)])
    own = a.project_check
    load = replace(load_from_args(r), duration_s=own.get("duration_s", CI_LOAD["duration_s"]))
    return check_project(spec_from_args(r), load, own.get("warmup_s", CI_WARMUP_S),
                         a.repeat if a.repeat is not None else own.get("repeat"),
                         a.thresholds, a.format, a.output, a.baseline_ref)
