"""``pollbench report RUN [RUN ...]``: charts and a self-contained report, for one run or a comparison.

One run: ``RUN/report/`` gets report.html (images embedded, opens from disk),
summary.md, summary.json and charts/*.png.  Several runs (or a folder holding
run folders, such as a sweep): a comparison report in ``results/compare-<time>/``.
Reports are never written over an existing one: choose ``--out`` or remove it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pollbench.errors import UserError, check_number
from pollbench.rundir import new_run_dir


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="charts and an HTML report of one run, or a comparison",
                       description=__doc__)
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                   help="run folder(s), or a folder of run folders")
    p.add_argument("--out", type=Path, default=None, help="report folder (must not exist)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds excluded at the start (default: the users' spawn time)")
    p.set_defaults(func=lambda a: report(a.runs, a.out, a.warmup))


def expand(paths: list[Path]) -> list[Path]:
    """Run folders as given, and the run folders inside a folder that is not one itself."""
    runs = []
    for p in paths:
        if not p.exists():
            raise UserError(f"{p} does not exist")
        if (p / "run.json").is_file():
            runs.append(p)
            continue
        if (p / "manifest.json").is_file():  # a sweep: its completed runs only
            from pollbench.cmd_sweep import completed_runs, read_manifest

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
    if len(paths) == 1 and (paths[0] / "manifest.json").is_file():
        from pollbench.cmd_sweep import read_manifest, run_labels

        m = read_manifest(paths[0])  # a sweep: its ranking, warm-up, name and cell names
        rank = {"rank_by": m["rank_by"], "title": f"pollbench sweep {m['name']}",
                "rank_threshold": m["sweep"].get("rank_threshold", 0.05),
                "labels": run_labels(m)}
        if any(c.get("rank_group") for c in m["cells"]):
            rank["rank_within"] = run_labels(m, "rank_group")
        warmup = m["warmup_s"] if warmup is None else warmup
    if warmup is not None:
        check_number("--warmup", warmup, 0)
    target = None
    try:
        if len(runs) == 1:
            from analysis.report import write_run_report

            target = out or runs[0] / "report"
            if target.exists():
                raise UserError(f"{target} already exists; pollbench does not overwrite a "
                                "report: pass --out or remove it")
            target.mkdir(parents=True)
            paths_written = write_run_report(runs[0], target, warmup)
        else:
            from analysis.compare_report import write_comparison

            if rank and out is None:  # a sweep's report stays in the sweep folder
                from pollbench.cmd_sweep import next_report_dir

                out = next_report_dir(paths[0])
            target = new_run_dir("compare", out)
            paths_written = write_comparison(runs, target, warmup, **rank)
    except AnalysisError as e:
        if target is not None and target.is_dir():
            # nothing usable was written; left behind, the folder would block the next report
            shutil.rmtree(target)
        raise UserError(str(e)) from None
    if not quiet:
        for kind, path in paths_written.items():
            print(f"{kind:9} {path}")
    return 0
