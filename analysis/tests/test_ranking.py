"""Ranking the cells of a sweep: order, direction, and which differences are within noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.ranking import (
    BEST,
    UNDECIDED,
    UNMEASURED,
    WITHIN_NOISE,
    WORSE,
    rank,
    ranking_markdown,
)

RNG = np.random.default_rng(7)


@dataclass
class Fig:
    summary: dict


@dataclass
class FakeCell:
    label: str
    figures: list


def cell(label: str, metric: str, values, windows=None) -> FakeCell:
    figs = []
    for i, v in enumerate(values):
        series = {metric: list(windows[i])} if windows else {}
        figs.append(Fig({"metrics": {metric: {"value": float(v)}}, "loadgen_saturated": False,
                         "windows": {"series": series}}))
    return FakeCell(label, figs)


def noisy(center, n=5, spread=0.02):
    return center * (1 + RNG.normal(0, spread, n))


def test_latency_ranks_lowest_first_and_separates_noise_from_real_differences():
    m = "delivery_latency_p99"
    cells = [cell("slow", m, noisy(150)), cell("fast", m, noisy(100)),
             cell("fast-too", m, noisy(101)), cell("unmeasured", m, [])]
    rows = rank(cells, m, threshold=0.05)
    assert [r.label for r in rows][:3] in (["fast", "fast-too", "slow"],
                                            ["fast-too", "fast", "slow"])
    verdicts = {r.label: r.verdict for r in rows}
    assert BEST in (verdicts["fast"], verdicts["fast-too"])
    assert WITHIN_NOISE in (verdicts["fast"], verdicts["fast-too"])
    assert verdicts["slow"] == WORSE and verdicts["unmeasured"] == UNMEASURED
    slow = next(r for r in rows if r.label == "slow")
    assert 0.4 < slow.change_vs_best < 0.6 and slow.p_value < 0.05
    assert slow.method == "repetitions"
    md = ranking_markdown(rows, m)
    assert "| 3 | slow | 5 |" in md and "worse (significant)" in md


def test_throughput_ranks_highest_first():
    m = "throughput_requests"
    rows = rank([cell("low", m, noisy(800)), cell("high", m, noisy(1000))], m)
    assert rows[0].label == "high" and rows[0].verdict == BEST and rows[1].verdict == WORSE


def test_few_repetitions_use_pooled_windows_and_never_guess():
    m = "delivery_latency_p95"
    # two repetitions each: too few per repetition, but 4 windows per run pooled are enough
    a = cell("a", m, [100, 101], windows=[noisy(100, 4), noisy(100, 4)])
    b = cell("b", m, [140, 141], windows=[noisy(140, 4), noisy(140, 4)])
    rows = rank([a, b], m)
    assert rows[1].label == "b" and rows[1].verdict == WORSE
    assert rows[1].method == "10-s windows, pooled"
    # throughput has no windows: two repetitions cannot decide a 40 % difference
    t = "throughput_deliveries"
    rows = rank([cell("x", t, [1000, 1010]), cell("y", t, [600, 610])], t)
    assert rows[1].verdict == UNDECIDED


def test_notes_name_errors_and_a_saturated_machine():
    m = "delivery_latency_p99"
    failing = cell("failing", m, noisy(90))
    for f in failing.figures:
        f.summary["metrics"]["error_rate"] = {"value": 0.05}
        f.summary["machine_saturated"] = True
    rows = rank([cell("fine", m, noisy(100)), failing], m)
    # the failing cell has the better figure, but a cell that fails cannot be the best
    assert [r.label for r in rows] == ["fine", "failing"] and rows[0].verdict == BEST
    assert rows[1].verdict == "excluded: error rate 5.0% over the 0.1% cap"
    assert rows[1].note == "error rate up to 5.0%; machine CPU saturated in 5 of 5 runs"
    assert rows[0].note == ""


def test_cells_at_different_load_levels_are_ranked_apart():
    from analysis.ranking import rank_groups

    m = "delivery_latency_p99"
    cells = [cell("epoll 300", m, noisy(20)), cell("poll 300", m, noisy(30)),
             cell("epoll 1500", m, noisy(80)), cell("poll 1500", m, noisy(120))]
    groups = {"epoll 300": "users=300", "poll 300": "users=300", "epoll 1500": "users=1500",
              "poll 1500": "users=1500"}
    rows = rank_groups(cells, groups, m)
    assert [(r.group, r.rank, r.label, r.verdict) for r in rows] == [
        ("users=300", 1, "epoll 300", BEST), ("users=300", 2, "poll 300", WORSE),
        ("users=1500", 1, "epoll 1500", BEST), ("users=1500", 2, "poll 1500", WORSE)]
    md = ranking_markdown(rows, m)
    assert "| **users=1500** |" in md and "against the best of its group:" in md


def test_a_failing_cell_is_explained_by_what_ran_out_first_in_its_runs():
    m = "delivery_latency_p99"
    failing = cell("worker_connections 1024", m, noisy(90))
    for k, f in enumerate(failing.figures):
        f.summary["metrics"]["error_rate"] = {"value": 0.8}
        f.summary["limits"] = {"first": None if k == 0 else {
            "what": "nginx's connections (worker_processes x worker_connections)",
            "at_s": 3.0}}
    rows = rank([cell("base", m, noisy(100)), failing], m)
    assert rows[1].note == ("error rate up to 80.0%; ran out first: nginx's connections "
                            "(worker_processes x worker_connections) (in 4 of 5 runs)")
