"""Verdicts (``pollbench compare``): each side's run summaries, compared by
:mod:`analysis.verdict`; the exit code is the verdict's."""

from __future__ import annotations

import sys
from pathlib import Path

from pollbench.errors import UserError
from pollbench.records.inputs import check_output_file, check_summary, read_json
from pollbench.records.rundir import write_atomic


def baseline_runs(data: dict, path: Path) -> list[dict]:
    """The repetitions' summaries a baseline file holds, each checked."""
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        raise UserError(f"{path}: a baseline needs a non-empty \"runs\" list of run summaries "
                        "(record one with pollbench check --update-baseline)")
    return [check_summary(r, f"{path}, runs[{i}]") for i, r in enumerate(runs)]


def summaries_of(path: Path) -> list[dict]:
    """The run summaries one side holds (one per repetition)."""
    from analysis.figures import compute
    from analysis.load import AnalysisError, load_run

    if not path.exists():
        raise UserError(f"{path} does not exist")
    try:
        if path.is_file():
            data = read_json(path, str(path))
            if not isinstance(data, dict) or data.get("schema_version") != 1:
                raise UserError(f"{path}: not a pollbench summary or baseline (schema_version 1)")
            if data.get("kind") == "baseline":
                return baseline_runs(data, path)
            if data.get("kind") == "comparison":
                raise UserError(f"{path} is a comparison report, not a run summary or baseline")
            return [check_summary(data, str(path))]
        if (path / "run.json").is_file():
            return [compute(load_run(path)).summary]
        runs = sorted(q.parent for q in path.glob("*/run.json"))
        if not runs:
            raise UserError(f"{path} holds no run folders (no */run.json) and is not one")
        return [compute(load_run(r)).summary for r in runs]
    except AnalysisError as e:
        raise UserError(str(e)) from None


def compare(baseline: Path, candidate: Path, thresholds: Path | None, fmt: str,
                output: Path | None = None) -> int:
    from analysis.verdict import ThresholdsError, exit_code, read_thresholds
    from analysis.verdict import compare as judge_all
    from analysis.verdict_format import FORMATS

    check_output_file(output, "--output")
    try:
        limits = read_thresholds(thresholds)
    except ThresholdsError as e:
        raise UserError(str(e)) from None
    base, cand = summaries_of(baseline), summaries_of(candidate)
    verdicts = judge_all(base, cand, limits)
    text = FORMATS[fmt](verdicts, str(baseline), str(candidate))
    if output:
        write_atomic(output, text)
    else:
        sys.stdout.write(text)
    return exit_code(verdicts)
