"""Reports (``pollbench report``): one run's report in ``RUN/report/``, or a comparison of
several runs (a folder of runs, a sweep) in a new folder; never over an existing report."""

from __future__ import annotations

import shutil
from pathlib import Path

from analysis.catalog import EXIT_OK
from pollbench.errors import UserError
from pollbench.records.manifest import (
    MANIFEST,
    completed_runs,
    next_report_dir,
    read_manifest,
    run_labels,
)
from pollbench.records.rundir import new_run_dir
from pollbench.stack.loadgen import check_number


def expand(paths: list[Path]) -> list[Path]:
    """Run folders as given, and the run folders inside a folder that is not one itself."""
    runs = []
    for p in paths:
        if not p.exists():
            raise UserError(f"{p} does not exist")
        if (p / "run.json").is_file():
            runs.append(p)
            continue
        if (p / MANIFEST).is_file():  # a sweep: its completed runs only
            done = completed_runs(p, read_manifest(p))
            if not done:
                raise UserError(f"the sweep in {p} has no completed run yet")
            runs.extend(done)
            continue
        inner = sorted(q.parent for q in p.glob("*/run.json"))
        if not inner:
            raise UserError(f"{p} is not a run folder (no run.json) and holds none")
        runs.extend(inner)
    seen: set[Path] = set()
    unique = []
    for run in runs:  # a run named twice (or alone and inside its folder) counts once
        if run.resolve() not in seen:
            seen.add(run.resolve())
            unique.append(run)
    return unique


def report(paths: list[Path], out: Path | None = None, warmup: float | None = None,
           quiet: bool = False) -> int:
    from analysis.load import AnalysisError

    runs = expand(paths)
    rank = {}
    if len(paths) == 1 and (paths[0] / MANIFEST).is_file():
        m = read_manifest(paths[0])  # a sweep: its ranking, warm-up, name and cell names
        rank = {"rank_by": m["rank_by"], "title": f"pollbench sweep {m['name']}",
                "rank_threshold": m["sweep"].get("rank_threshold", 0.05),
                "cost_rank_by": m["sweep"].get("cost_rank_by"),
                "labels": run_labels(m)}
        if any(c.get("rank_group") for c in m["cells"]):
            rank["rank_within"] = run_labels(m, "rank_group")
        warmup = m["warmup_s"] if warmup is None else warmup
    if warmup is not None:
        check_number("--warmup", warmup, 0)
    target = None  # the folder this call made: removed again if the report is not finished
    try:
        if len(runs) == 1:
            from analysis.report import write_run_report

            folder = out or runs[0] / "report"
            if folder.exists():
                raise UserError(f"{folder} already exists; pollbench does not overwrite a "
                                "report: pass --out or remove it")
            folder.mkdir(parents=True)
            target = folder
            paths_written = write_run_report(runs[0], target, warmup)
        else:
            from analysis.compare_report import write_comparison

            if rank and out is None:  # a sweep's report stays in the sweep folder
                out = next_report_dir(paths[0])
            target = new_run_dir("compare", out)
            paths_written = write_comparison(runs, target, warmup, **rank)
    except (AnalysisError, KeyboardInterrupt) as e:
        if target is not None and target.is_dir():
            # unfinished (bad data, or Ctrl-C): left behind, it would block the next report
            shutil.rmtree(target)
        if isinstance(e, KeyboardInterrupt):
            raise
        raise UserError(str(e)) from None
    if not quiet:
        for kind, path in paths_written.items():
            print(f"{kind:9} {path}")
    return EXIT_OK
