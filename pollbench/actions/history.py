"""``pollbench history``: the results history as a table, a trend page, and backfilling."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from pollbench.errors import UserError
from pollbench.records.history import History, HistoryRun, run_rows, shown_url
from pollbench.records.rundir import write_atomic

DEFAULT_METRICS = ["delivery_latency_p50", "delivery_latency_p99", "throughput_deliveries",
                   "cpu_per_kdelivery_stack"]


def run_folders(paths: list[Path]) -> list[Path]:
    """Run folders named, or found one or two levels inside a named folder (a sweep, a
    check's repetitions, a ui session's tests)."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise UserError(f"{path} is neither a run folder nor a folder of runs")
        if (path / "run.json").is_file():
            found.append(path)  # (a ui session is one too: its tests are inside)
        for depth in ("*", "*/*", "*/*/*"):
            found += sorted(p.parent for p in path.glob(f"{depth}/run.json"))
    return found


def import_runs(paths: list[Path], url: str | None) -> int:
    folders = run_folders(paths)
    if not folders:
        raise UserError(f"no run folder (with a run.json) in {', '.join(map(str, paths))}")
    store = History.open(url)
    rows, skipped = [], []
    for folder in folders:
        try:
            rows.append(run_rows(folder, "import"))
        except ValueError as e:
            skipped.append(str(e))
    new = store.add_rows(rows) if rows else 0
    store.close()
    print(f"{new} runs added, {len(rows) - new} stored already, {len(skipped)} skipped "
          f"({shown_url(store.url)})")
    for line in skipped[:20]:
        print(f"  skipped: {line}")
    return 0


def _date(text: str | None, option: str) -> float | None:
    if text is None:
        return None
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UserError(f"{option} {text!r} is not a date: use YYYY-MM-DD or "
                        "YYYY-MM-DDTHH:MM") from None


def _params(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--param {pair!r}: use NAME=VALUE, e.g. --param users=200")
        out[key] = value
    return out


def select(store: History, a) -> tuple[list[HistoryRun], list[str]]:
    metrics = a.metric or DEFAULT_METRICS
    runs = store.query(scenario=a.scenario, profile=a.profile, branch=a.branch,
                       since=_date(a.since, "--since"), until=_date(a.until, "--until"),
                       parameters=_params(a.param or []), metrics=metrics)
    if not runs:
        raise UserError("no run in the history matches these filters (pollbench history "
                        "without filters lists every run)")
    return runs, metrics


def frames(runs: list[HistoryRun], metrics: list[str]):
    import pandas as pd

    base = [{"run_key": r.run_key, "started_at": r.started_at, "commit": r.commit,
             "machine": r.machine} for r in runs]
    return {m: pd.DataFrame([{**b, "value": r.figures.get(m)} for b, r in
                             zip(base, runs, strict=True)]) for m in metrics}


def show(a) -> int:
    store = History.open(a.history)
    try:
        runs, metrics = select(store, a)
    finally:
        store.close()
    if a.html:
        from analysis.trends import trend_page

        out = Path(a.html)
        if out.exists():
            raise UserError(f"{out} exists; choose another --html file")
        page, found = trend_page(frames(runs, metrics),
                                 f"pollbench history: {len(runs)} runs ({a.detector})",
                                 a.detector)
        write_atomic(out, page.encode())
        print(f"trend page: {out} ({len(runs)} runs, {len(found)} steps)")
        for s in found:
            print(f"  step: {s.line()}")
        return 0
    if a.format != "table":
        return _tracker(runs, metrics, a.format)
    header = ["started", "commit", "branch", "scenario", "profile", "source", *metrics]
    rows = [[dt.datetime.fromtimestamp(r.started_at).strftime("%Y-%m-%d %H:%M"),
             (r.commit or "-")[:10] + ("*" if r.dirty else ""), r.branch or "-",
             r.scenario or "-", r.profile or "-", r.source or "-",
             *[_fmt(r.figures.get(m)) for m in metrics]] for r in runs]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))
    print(f"{len(runs)} runs (* = uncommitted changes)")
    return 0


def _tracker(runs: list[HistoryRun], metrics: list[str], fmt: str) -> int:
    """The latest selected run's figures in a CI tracker's format (one data point a CI
    job: the tracker keeps the series)."""
    from analysis.tracker_format import figures_from_run, format_figures

    if not runs:
        raise UserError("no run in the history matches: nothing to write (check --scenario, "
                        "--profile, --param, --since)")
    last = max(runs, key=lambda r: r.started_at)
    label = f"{last.folder or last.run_key} ({(last.commit or '-')[:10]}{'*' if last.dirty else ''})"
    figures = figures_from_run(last.figures, metrics, label)
    if not figures:
        raise UserError(f"the latest run ({label}) has none of {', '.join(metrics)}: "
                        "choose figures with --metric")
    sys.stdout.write(format_figures(figures, fmt))
    return 0


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def last_steps(metrics: list[str], scenario: str | None = None) -> dict[str, str]:
    """The last detected step of each metric in the history (best effort: {} when there is
    no history or it cannot be read)."""
    try:
        store = History.open(create=False)
    except (OSError, UserError):
        return {}
    try:
        runs = store.query(scenario=scenario, metrics=metrics)
    except Exception:
        return {}
    finally:
        store.close()
    if not runs:
        return {}
    from analysis.trends import steps

    out = {}
    for metric, table in frames(runs, metrics).items():
        found = steps(metric, table)
        if found:
            s = found[-1]
            when = dt.datetime.fromtimestamp(s.at_time).strftime("%Y-%m-%d")
            out[metric] = f"{s.line()} (from {when})"
    return out


