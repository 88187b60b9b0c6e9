"""Figures in the formats CI benchmark trackers read.

* ``github-action-benchmark-smaller`` / ``github-action-benchmark-bigger``: the JSON arrays
  github-action-benchmark reads with ``tool: customSmallerIsBetter`` / ``customBiggerIsBetter``
  (``[{"name", "unit", "value", "range", "extra"}]``).  The action takes one direction a step,
  so each format holds the metrics of its direction only: a workflow has two steps.
* ``bmf``: the Bencher Metric Format, ``{benchmark: {measure: {value, lower_value,
  upper_value}}}``; one benchmark a metric (``pollbench/<metric>``), its measure named by
  its unit (Bencher creates a measure it does not know on the first upload).

The value is the candidate's median (compare, check) or the run's figure (history); the
range is the measured spread: the lowest and highest figure of the candidate's runs.  A
metric that was not measured, or has no figure, is left out; the trackers chart what is.
Standard library only.  The tests validate each output against the format's published
schema (Bencher's ``bmf.json``; the action's ``BenchmarkResult`` type as a JSON schema).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from analysis.catalog import HIGHER, LOWER, describe

GAB_SMALLER = "github-action-benchmark-smaller"
GAB_BIGGER = "github-action-benchmark-bigger"
BMF = "bmf"
TRACKER_FORMATS = (GAB_SMALLER, GAB_BIGGER, BMF)
BENCHMARK_PREFIX = "pollbench/"


@dataclass
class Figure:
    """One metric for a tracker: its value and the spread it was measured with."""

    metric: str
    value: float
    low: float | None = None   # the lowest of the runs (None: one run)
    high: float | None = None  # the highest
    runs: int = 1
    note: str = ""             # shown in the tracker's tooltip (github-action-benchmark)

    @property
    def unit(self) -> str:
        return _describe(self.metric)[0]

    @property
    def better(self) -> str:
        return _describe(self.metric)[1]


def _describe(metric: str) -> tuple[str, str]:
    try:
        unit, better, _text = describe(metric)
    except KeyError:
        unit, better = "", LOWER
    return unit, better


def figures_from_verdicts(verdicts: Iterable) -> list[Figure]:
    """The candidate's side of compare / check verdicts (``analysis.verdict.Verdict``)."""
    out = []
    for v in verdicts:
        if v.candidate is None or not _finite(v.candidate):
            continue
        if v.method == "validity" or not _known(v.metric):
            continue  # the void check; the error-rate cap (error_rate is its figure)
        note = f"{v.status}: {v.explanation}"
        if v.baseline is not None:
            note = f"baseline {v.baseline:.6g}; " + note
        out.append(Figure(v.metric, float(v.candidate), v.candidate_low, v.candidate_high,
                          v.n_candidate or 1, note))
    return out


def figures_from_run(figures: dict[str, float | None], metrics: Iterable[str],
                     run: str = "") -> list[Figure]:
    """One run's figures (a history row), in the order of ``metrics``."""
    out = []
    for m in metrics:
        value = figures.get(m)
        if value is None or not _finite(value):
            continue
        out.append(Figure(m, float(value), note=run))
    return out


def _known(metric: str) -> bool:
    try:
        describe(metric)
    except KeyError:
        return False
    return True


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() and abs(x) < 2 ** 53 else round(float(x), 6)


def format_gab(figures: list[Figure], better: str) -> str:
    """github-action-benchmark's custom JSON: the metrics where ``better`` ("lower" for
    customSmallerIsBetter, "higher" for customBiggerIsBetter) is their direction."""
    rows = []
    for f in figures:
        if f.better != better:
            continue
        row: dict = {"name": f.metric, "unit": f.unit or "value", "value": _num(f.value)}
        if f.low is not None and f.high is not None and f.runs > 1:
            row["range"] = f"± {_num((f.high - f.low) / 2)}"
            spread = f"{f.runs} runs: {_num(f.low)} .. {_num(f.high)}"
            row["extra"] = f"{spread}\n{f.note}" if f.note else spread
        elif f.note:
            row["extra"] = f.note
        rows.append(row)
    return json.dumps(rows, indent=2) + "\n"


def measure_slug(unit: str) -> str:
    """Bencher's measure for a unit: a slug of at most 64 characters ("ms" -> "ms",
    "requests/s" -> "requests-per-s", "% of a core" -> "percent-of-a-core")."""
    text = unit.replace("%", "percent").replace("/", " per ")
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (slug or "value")[:64]


def format_bmf(figures: list[Figure]) -> str:
    doc: dict = {}
    for f in figures:
        metric: dict = {"value": _num(f.value)}
        if f.low is not None and f.high is not None:
            metric["lower_value"], metric["upper_value"] = _num(f.low), _num(f.high)
        doc[BENCHMARK_PREFIX + f.metric] = {measure_slug(f.unit): metric}
    return json.dumps(doc, indent=2) + "\n"


def format_figures(figures: list[Figure], fmt: str) -> str:
    if fmt == GAB_SMALLER:
        return format_gab(figures, LOWER)
    if fmt == GAB_BIGGER:
        return format_gab(figures, HIGHER)
    if fmt == BMF:
        return format_bmf(figures)
    raise ValueError(f"unknown tracker format {fmt!r}: one of {', '.join(TRACKER_FORMATS)}")
