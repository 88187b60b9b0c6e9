"""Rank the cells of a sweep on one figure, and say which differences are within noise.

The best cell is the valid one (error rate within 0.1 %, load generator not saturated;
the others are ranked last, "excluded") with the best median figure; every other cell
is compared with it by the same rule as a regression check
(:func:`analysis.verdict.judge`): it is "worse" only when its median is beyond
``threshold`` of the best AND a Mann-Whitney U test finds the difference
significant; otherwise it is "within noise" of the best.  Samples are one value
per repetition when every cell has at least ``MIN_SAMPLES`` repetitions, else
(latency percentiles only) the 10-s windows of all repetitions pooled; with too
few samples the answer is "undecided", never a guess.

    rows = rank(cells, "delivery_latency_p99", threshold=0.05)
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

from analysis import catalog
from analysis.verdict import (
    COMPARED_METRICS,
    DEFAULT_ALPHA,
    DEFAULT_ERROR_RATE_CAP,
    IMPROVEMENT,
    INSUFFICIENT,
    MIN_SAMPLES,
    NOT_MEASURED,
    OK,
    judge,
    samples,
)

BEST, WITHIN_NOISE, WORSE, UNDECIDED, UNMEASURED, EXCLUDED = (
    "best", "within noise of the best", "worse (significant)", "undecided (too few samples)",
    "not measured", "excluded")


@dataclass
class RankRow:
    rank: int | None
    label: str
    runs: int
    value: float | None        # median of the repetitions' headline figures
    change_vs_best: float | None
    verdict: str
    p_value: float | None
    method: str
    explanation: str
    void: bool                 # a run of this cell had a CPU-saturated load generator
    note: str = ""             # e.g. the machine's CPU was saturated in some runs
    group: str = ""            # cells are ranked within their group (e.g. one load level)

    def as_dict(self) -> dict:
        return asdict(self)


def _excluded(summaries: list[dict]) -> str | None:
    """Why this cell's figures may not compete, or None."""
    rates = [s["metrics"].get("error_rate", {}).get("value") or 0 for s in summaries]
    if max(rates, default=0) > DEFAULT_ERROR_RATE_CAP:
        return f"error rate {max(rates):.1%} over the {DEFAULT_ERROR_RATE_CAP:.1%} cap"
    if any(s.get("loadgen_saturated") for s in summaries):
        return "load generator CPU-saturated (void)"
    return None


def _note(summaries: list[dict]) -> str:
    """What a reader must know besides the figure: errors and what ran out first (in the
    words of the runs' reports), a saturated machine."""
    n = len(summaries)
    notes = []
    rates = [s["metrics"].get("error_rate", {}).get("value") or 0 for s in summaries]
    if max(rates, default=0) > DEFAULT_ERROR_RATE_CAP:
        notes.append(f"error rate up to {max(rates):.1%}")
        firsts = [(s.get("limits") or {}).get("first") for s in summaries]
        named = sorted({f["what"] for f in firsts if f})
        if named:
            notes.append(f"ran out first: {'; '.join(named)} (in "
                         f"{sum(1 for f in firsts if f)} of {n} runs)")
    busy = sum(bool(s.get("machine_saturated")) for s in summaries)
    if busy:
        notes.append(f"machine CPU saturated in {busy} of {n} runs")
    return "; ".join(notes)


def direction(metric: str) -> str:
    return catalog.better(metric)


def rank(cells, metric: str, threshold: float = 0.05, alpha: float = DEFAULT_ALPHA
         ) -> list[RankRow]:
    """``cells``: objects with ``label`` and ``figures`` (analysis.compare_report.RunGroup)."""
    better = direction(metric)
    series = COMPARED_METRICS.get(metric, (better, None))[1]
    summaries = {c.label: [f.summary for f in c.figures] for c in cells}
    headline = {label: samples(s, metric, None, False) for label, s in summaries.items()}
    # how the competing cells are sampled: a cell excluded (failing, or its load generator
    # saturated) is ranked last whatever its samples, and must not decide it (one such run
    # without a p99 put every cell of an epoll-tuning sweep on pooled windows)
    present = [v for label, v in headline.items() if v and _excluded(summaries[label]) is None]
    per_rep = bool(present) and all(len(v) >= MIN_SAMPLES for v in present)
    windows = {label: samples(s, metric, series, True) for label, s in summaries.items()}
    use_windows = not per_rep and series is not None and all(
        windows[label] for label, v in headline.items() if v)
    method = "10-s windows, pooled" if use_windows else "repetitions"
    sample = windows if use_windows else headline
    measured = [c.label for c in cells if sample[c.label] and headline[c.label]]
    sign = 1 if better == "lower" else -1
    # ordered by the figure shown (median of the repetitions' headline values)
    measured.sort(key=lambda lb: sign * statistics.median(headline[lb]))
    # a cell that failed (error rate over the cap) or whose load generator was saturated
    # cannot be the best: it is ranked after every valid cell, marked excluded
    measured.sort(key=lambda lb: _excluded(summaries[lb]) is not None)
    rows: list[RankRow] = []
    valid = [lb for lb in measured if _excluded(summaries[lb]) is None]
    best = valid[0] if valid else None
    for position, label in enumerate(measured, start=1):
        void = any(s.get("loadgen_saturated") for s in summaries[label])
        note = _note(summaries[label])
        value = statistics.median(headline[label])
        why = _excluded(summaries[label])
        if why is not None or best is None:
            rows.append(RankRow(position, label, len(summaries[label]), value, None,
                                f"{EXCLUDED}: {why or 'no valid cell to compare with'}", None,
                                method, why or "", void, note))
            continue
        if label == best:
            rows.append(RankRow(position, label, len(summaries[label]), value, 0.0, BEST, None,
                                method, f"best median {metric}", void, note))
            continue
        v = judge(metric, sample[best], sample[label], better, threshold, alpha, method)
        best_value = statistics.median(headline[best])
        change = (value - best_value) / abs(best_value) if best_value else None
        # IMPROVEMENT: better than the best by its samples though not by the shown figure
        verdict = {OK: WITHIN_NOISE, INSUFFICIENT: UNDECIDED, NOT_MEASURED: UNMEASURED,
                   IMPROVEMENT: WITHIN_NOISE}.get(v.status, WORSE)
        rows.append(RankRow(position, label, len(summaries[label]), value, change, verdict,
                            v.p_value, method, v.explanation, void, note))
    for c in cells:
        if c.label not in measured:
            rows.append(RankRow(None, c.label, len(summaries[c.label]), None, None, UNMEASURED,
                                None, method, f"{metric} was not measured in this cell", False))
    return rows


def rank_groups(cells, groups: dict[str, str], metric: str, threshold: float = 0.05,
                alpha: float = DEFAULT_ALPHA) -> list[RankRow]:
    """Rank the cells of each group (label -> group text) separately, groups in first-seen
    order: cells at different load levels are not compared with each other."""
    order = list(dict.fromkeys(groups.get(c.label, "") for c in cells))
    rows = []
    for g in order:
        part = rank([c for c in cells if groups.get(c.label, "") == g], metric, threshold, alpha)
        for r in part:
            r.group = g
        rows += part
    return rows


def ranking_markdown(rows: list[RankRow], metric: str, unit: str = "") -> str:
    grouped = any(r.group for r in rows)
    lines = [f"Ranked by {metric} ({direction(metric)} is better); each cell against the best"
             + (" of its group:" if grouped else ":"),
             "", "| rank | configuration | runs | value | vs best | verdict | p | samples | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        value = "n/a" if r.value is None else f"{r.value:.4g}{(' ' + unit) if unit else ''}"
        change = "" if r.change_vs_best is None else f"{r.change_vs_best:+.1%}"
        p = "" if r.p_value is None else f"{r.p_value:.3g}"
        verdict = r.verdict + (" (load generator saturated: void)" if r.void else "")
        if grouped and (len(lines) == 4 or r.rank == 1):
            lines.append(f"| **{r.group}** | | | | | | | | |")
        lines.append(f"| {r.rank or '-'} | {r.label.replace('|', '/')} | {r.runs} | {value} | "
                     f"{change} | {verdict} | {p} | {r.method} | {r.note} |")
    return "\n".join(lines)
