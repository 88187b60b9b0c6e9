"""``pollbench compare BASELINE CANDIDATE``: did the candidate get worse?  Exit 0 / 1 / 2.

Each side is a run folder, a folder of run folders (repetitions, a sweep cell),
a run's ``summary.json``, or a baseline file written by ``pollbench check
--update-baseline``.  The rule (threshold AND Mann-Whitney significance), the
absolute gates and the exit codes are defined in :mod:`analysis.verdict`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pollbench.errors import UserError


def add_parser(sub) -> None:
    from analysis.verdict_format import FORMATS

    p = sub.add_parser("compare", help="compare a candidate with a baseline: exit 0 pass, "
                       "1 regression, 2 broken/void", description=__doc__)
    p.add_argument("baseline", type=Path)
    p.add_argument("candidate", type=Path)
    p.add_argument("--thresholds", type=Path, default=None,
                   help="TOML: [defaults] threshold/alpha/error_rate_cap, [metrics.NAME] "
                        "threshold (default 10 %% for every metric)")
    p.add_argument("--format", choices=sorted(FORMATS), default="text")
    p.add_argument("--output", type=Path, default=None, help="write here instead of stdout")
    p.set_defaults(func=lambda a: compare_cmd(a.baseline, a.candidate, a.thresholds, a.format,
                                              a.output))


def summaries_of(path: Path) -> list[dict]:
    """The run summaries one side holds (one per repetition)."""
    from analysis.figures import compute
    from analysis.load import AnalysisError, load_run

    if not path.exists():
        raise UserError(f"{path} does not exist")
    try:
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except ValueError as e:
                raise UserError(f"{path} is not valid JSON ({e})") from None
            if not isinstance(data, dict) or data.get("schema_version") != 1:
                raise UserError(f"{path}: not a pollbench summary or baseline (schema_version 1)")
            if data.get("kind") == "baseline":
                return list(data["runs"])
            if "metrics" in data and data.get("kind") != "comparison":
                return [data]
            raise UserError(f"{path} is a comparison report, not a run summary or baseline")
        if (path / "run.json").is_file():
            return [compute(load_run(path)).summary]
        runs = sorted(q.parent for q in path.glob("*/run.json"))
        if not runs:
            raise UserError(f"{path} holds no run folders (no */run.json) and is not one")
        return [compute(load_run(r)).summary for r in runs]
    except AnalysisError as e:
        raise UserError(str(e)) from None


def compare_cmd(baseline: Path, candidate: Path, thresholds: Path | None, fmt: str,
                output: Path | None = None) -> int:
    from analysis.verdict import ThresholdsError, compare, exit_code, read_thresholds
    from analysis.verdict_format import FORMATS

    try:
        limits = read_thresholds(thresholds)
    except ThresholdsError as e:
        raise UserError(str(e)) from None
    base, cand = summaries_of(baseline), summaries_of(candidate)
    verdicts = compare(base, cand, limits)
    text = FORMATS[fmt](verdicts, str(baseline), str(candidate))
    if output:
        from pollbench.rundir import write_atomic

        write_atomic(output, text)
    else:
        sys.stdout.write(text)
    return exit_code(verdicts)
