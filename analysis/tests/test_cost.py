"""Cost per delivery: the CPU each component spent in the measured window, from each process's
own CPU time at the window's edges, over the deliveries and requests counted in it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.cost import cpu_at, run_cost, window_cpu
from analysis.figures import compute
from analysis.load import load_run
from analysis.synthetic import make_run


def test_the_summary_and_run_json_price_each_component_per_delivery_and_request(tmp_path):
    # 10 s of 1,000 deliveries and 1,200 requests a second; after a 2-s warm-up the window is
    # the last 8 intervals: the backend's 20 % of a core is 1.6 CPU-s over 8,000 deliveries
    run = make_run(tmp_path / "run", delivery_ms=[2.0] * 5000, duration_s=10,
                   counters={"delivered": 10_000, "requests": 12_000})
    metrics = compute(load_run(run), warmup_s=2.0).summary["metrics"]
    expected = {"backend-0": 0.20, "backends": 0.20, "nginx": 0.15, "stack": 0.35,
                "loadgen": 0.40}
    for comp, cpu_share in expected.items():
        got = metrics[f"cpu_per_kdelivery_{comp}"]
        assert got["value"] == pytest.approx(cpu_share * 8 / 8000 * 1000)
        assert got["unit"] == "cpu-s/1k deliveries" and got["better"] == "lower"
        assert metrics[f"cpu_per_krequest_{comp}"]["value"] == \
            pytest.approx(cpu_share * 8 / 9600 * 1000)
    # the backends' CPU per CPU-second of nginx and the load generator in the same window
    assert metrics["cpu_relative_backends"]["value"] == pytest.approx(0.20 / (0.15 + 0.40))
    assert metrics["cpu_relative_backends"]["unit"] == "cpu-s/cpu-s"
    # run.json's cost, worked out without pandas when the run ends, is the same
    info = json.loads((run / "run.json").read_text())
    info["warmup_s"] = 2.0
    cost = run_cost(run, info, "metrics/counters.jsonl", "samples/processes.csv")
    assert cost is not None and cost["deliveries"] == 8000 and cost["requests"] == 9600
    for name, value in cost["figures"].items():
        assert metrics[name]["value"] == pytest.approx(value, abs=1e-6)


def test_a_run_without_cpu_times_has_no_cost_rather_than_a_wrong_one(tmp_path):
    run = make_run(tmp_path / "run", delivery_ms=[2.0] * 100, counters={"delivered": 100})
    csv = run / "samples" / "processes.csv"
    csv.write_text("\n".join(",".join(line.split(",")[:6])
                             for line in csv.read_text().splitlines()) + "\n")
    metrics = compute(load_run(run)).summary["metrics"]
    assert not [m for m in metrics if m.startswith("cpu_per_k")]
    assert "cpu_percent_backends" in metrics  # the 1-s percentages are still there


def test_a_backend_restarted_inside_the_window_counts_with_both_its_lives():
    # backend-0 burns half a core: its first life sampled at 0..4 s and killed at 4.5 s, its
    # second born at 4.5 s and sampled from 5 s; the window is 0.5-8.5 s: 4 CPU-s in truth
    rows = [(float(t), "backend-0", 13, 0.5 * t) for t in range(5)]
    rows += [(float(t), "backend-0", 14, 0.5 * (t - 4.5)) for t in range(5, 10)]
    rows += [(float(t), "nginx/20", 20, 0.1 * t) for t in range(10)]
    rows += [(float(t), "system", 0, 0.0) for t in range(10)]
    cpu = window_cpu(rows, (0.5, 8.5))
    # the first life's end is extrapolated for at most one sampling interval (+0.25 here)
    assert cpu["backend-0"] == pytest.approx(4.25)
    assert cpu["backends"] == cpu["backend-0"] and cpu["nginx"] == pytest.approx(0.8)
    assert cpu["stack"] == pytest.approx(5.05) and "system" not in cpu


def test_cpu_between_and_beyond_samples():
    samples = [(10.0, 1.0), (11.0, 1.5), (12.0, 2.5)]
    assert cpu_at(samples, 11.5) == pytest.approx(2.0)
    assert cpu_at(samples, 9.0) == pytest.approx(0.5)    # back along the first rate
    assert cpu_at(samples, 5.0) == 0.0                   # not below 0: born inside the window
    assert cpu_at(samples, 12.5) == pytest.approx(3.0)   # on along the last rate ...
    assert cpu_at(samples, 20.0) == pytest.approx(3.5)   # ... for one interval at most


def test_load_hosts_workers_count_their_own_cpu_in_a_run_across_hosts(tmp_path):
    # a run across hosts: the workers' cpu_ms (300 ms a second each interval) is the load
    # generator's too; in a local run the same counter is its sampled children's, not added
    counters = {"delivered": 10_000, "requests": 12_000, "cpu_ms": 3_000}
    local = make_run(tmp_path / "local", delivery_ms=[2.0] * 100, counters=counters)
    info = json.loads((local / "run.json").read_text())
    info["distributed"] = {"workers": 1}
    remote = make_run(tmp_path / "remote", delivery_ms=[2.0] * 100, counters=counters,
                      info=info)
    loadgen = {name: compute(load_run(run), warmup_s=2.0).summary["metrics"][
        "cpu_per_kdelivery_loadgen"]["value"] for name, run in (("local", local),
                                                               ("remote", remote))}
    assert loadgen["local"] == pytest.approx(0.40 * 8 / 8000 * 1000)
    assert loadgen["remote"] == pytest.approx((0.40 + 0.30) * 8 / 8000 * 1000)
    # across hosts the yardstick (nginx, the load generator) ran on other machines: no ratio
    assert "cpu_relative_backends" not in compute(load_run(remote)).summary["metrics"]
    info["warmup_s"] = 2.0
    cost = run_cost(remote, info, "metrics/counters.jsonl", "samples/processes.csv")
    assert cost is not None
    assert cost["figures"]["cpu_per_kdelivery_loadgen"] == pytest.approx(loadgen["remote"])


def test_a_ranked_comparison_ranks_on_cost_too_and_finds_the_costlier_cell(tmp_path):
    from analysis.compare_report import write_comparison

    rng = np.random.default_rng(5)
    runs, labels = [], []
    for cell, scale in (("lean", 1.0), ("heavy", 1.25)):
        for rep in range(4):
            runs.append(make_run(tmp_path / f"{cell}-{rep}",
                                 delivery_ms=list(rng.normal(5.0, 0.5, 2000).clip(0.1)),
                                 counters={"delivered": 10_000, "requests": 12_000},
                                 cpu_scale=scale * (1 + 0.01 * rep)))
            labels.append(cell)
    paths = write_comparison(runs, tmp_path / "report", warmup_s=2.0,
                             rank_by="delivery_latency_p99", labels=labels,
                             cost_rank_by="cpu_per_krequest_nginx")
    summary = json.loads(paths["json"].read_text())
    cost = summary["cost_ranking"]
    assert cost["metric"] == "cpu_per_krequest_nginx"
    verdicts = {r["label"]: r["verdict"] for r in cost["rows"]}
    assert verdicts["lean"] == "best" and verdicts["heavy"].startswith("worse"), verdicts
    assert summary["ranking"]["metric"] == "delivery_latency_p99"
    text = paths["markdown"].read_text()
    assert "Ranked by delivery_latency_p99" in text and "Ranked by cpu_per_krequest_nginx" in text
    # without a cost figure named: the stack's per delivery
    again = write_comparison(runs, tmp_path / "report2", warmup_s=2.0,
                             rank_by="delivery_latency_p99", labels=labels)
    assert json.loads(again["json"].read_text())["cost_ranking"]["metric"] == \
        "cpu_per_kdelivery_stack"


def test_a_failing_cell_missing_a_figure_does_not_pool_the_other_cells_windows(tmp_path):
    """Four repetitions a cell are ranked on repetitions; a cell excluded for its errors, one
    of whose runs measured no p99, is ranked last and must not send the rest to pooled 10-s
    windows (not independent: they made p = 7e-05 of four runs a side)."""
    from analysis.compare_report import write_comparison

    rng = np.random.default_rng(6)
    runs, labels = [], []
    for cell, center in (("a", 5.0), ("b", 6.0), ("failing", 5.0)):
        for rep in range(4):
            delivered = None if (cell == "failing" and rep == 0) else \
                list(rng.normal(center, 0.5, 2000).clip(0.1))
            errors = {"error:GET /channels/[name]: connection reset": 5000} \
                if cell == "failing" else {}
            runs.append(make_run(tmp_path / f"{cell}-{rep}", delivery_ms=delivered,
                                 request_ms=[3.0] * 100,
                                 counters={"delivered": 10_000, "requests": 12_000, **errors}))
            labels.append(cell)
    paths = write_comparison(runs, tmp_path / "report", warmup_s=2.0,
                             rank_by="delivery_latency_p99", labels=labels)
    rows = {r["label"]: r for r in json.loads(paths["json"].read_text())["ranking"]["rows"]}
    assert rows["failing"]["verdict"].startswith("excluded")
    assert rows["a"]["method"] == rows["b"]["method"] == "repetitions"
    assert rows["b"]["verdict"].startswith("worse") and rows["b"]["p_value"] >= 0.028
