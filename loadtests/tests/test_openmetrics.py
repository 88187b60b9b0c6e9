"""The load generator's Prometheus endpoint: the run's exact counts, and latency buckets
counted from the lossless HDR data."""

from __future__ import annotations

import json

import pytest
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from analysis.hdr_format import encode_histogram, new_histogram
from loadtests.openmetrics import LoadgenMetrics
from loadtests.recorder import DELIVERY


def interval(values_ms: dict[float, int], counters: dict[str, int]) -> dict:
    h = new_histogram()
    for ms, n in values_ms.items():
        h.record_value(round(ms * 1000), n)
    return {"hists": {DELIVERY: (h.get_total_count(), encode_histogram(h).decode())},
            "counters": counters}


def scrape(metrics: LoadgenMetrics) -> dict[tuple, float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_two_intervals_add_up_exactly_with_latency_buckets_from_the_hdr_data():
    metrics = LoadgenMetrics(epoch_lost=lambda: 4)
    metrics.add(interval({1.5: 10, 30: 5}, {"delivered": 15, "requests": 20,
                                            "error:GET /channels/[name]: connection reset": 2,
                                            "lost_dropped": 1, "duplicate": 0}))
    metrics.add(interval({700: 2, 3000: 1}, {"delivered": 3, "requests": 5, "lost_silent": 2}))
    m = scrape(metrics)
    assert m[("pollbench_loadgen_deliveries_total", ())] == 18
    assert m[("pollbench_loadgen_http_requests_total", (("outcome", "ok"),))] == 23
    assert m[("pollbench_loadgen_http_requests_total", (("outcome", "failed"),))] == 2
    assert m[("pollbench_loadgen_http_failures_total",
              (("cause", "connection reset"), ("request", "GET /channels/[name]")))] == 2
    for kind, n in (("dropped", 1), ("silent", 2), ("epoch", 4)):
        assert m[("pollbench_loadgen_lost_messages_total", (("kind", kind),))] == n
    bucket = {dict(labels)["le"]: v for (name, labels), v in m.items()
              if name == "pollbench_loadgen_delivery_latency_seconds_bucket"}
    assert (bucket["0.001"], bucket["0.002"], bucket["0.02"], bucket["0.05"]) == (0, 10, 10, 15)
    assert (bucket["0.5"], bucket["1.0"], bucket["2.0"], bucket["5.0"]) == (15, 17, 17, 18)
    assert bucket["+Inf"] == m[("pollbench_loadgen_delivery_latency_seconds_count", ())] == 18
    expected_sum = (10 * 1.5 + 5 * 30 + 2 * 700 + 3000) / 1000
    assert abs(m[("pollbench_loadgen_delivery_latency_seconds_sum", ())] - expected_sum) \
        < expected_sum * 0.002  # HDR: 3 significant digits


def test_cost_per_delivery_counts_cpu_and_deliveries_from_the_first_interval(tmp_path):
    live = tmp_path / "live.json"

    def sample(cpu: dict[str, float]) -> None:
        live.write_text(json.dumps({"time": 1.0, "cpu_time_s": cpu}))

    metrics = LoadgenMetrics(live_path=live)
    assert not any(name.startswith("pollbench_loadgen_co") for name, _ in scrape(metrics)), \
        "no sample yet: no CPU figure"
    sample({"backend-0": 10.0, "backend-1": 20.0, "nginx": 5.0, "loadgen": 8.0})
    metrics.add(interval({2: 100}, {"delivered": 100, "requests": 100}))  # the origin
    sample({"backend-0": 10.6, "backend-1": 20.4, "nginx": 5.2, "loadgen": 8.5})
    metrics.add(interval({2: 1000}, {"delivered": 1000, "requests": 1000}))
    m = scrape(metrics)
    assert m[("pollbench_loadgen_component_cpu_seconds_total",
              (("component", "backend-1"),))] == 20.4
    cost = {dict(labels)["component"]: v for (name, labels), v in m.items()
            if name == "pollbench_loadgen_cost_per_kdelivery_seconds"}
    # 1,000 deliveries since the first interval; backends 1.0 CPU-s, nginx 0.2, loadgen 0.5
    assert cost == pytest.approx({"stack": 1.2, "backends": 1.0, "nginx": 0.2, "loadgen": 0.5})
    sample({"backend-0": 0.3, "backend-1": 20.9, "nginx": 5.2, "loadgen": 8.5})  # 0 restarted
    metrics.add(interval({2: 1000}, {"delivered": 1000}))
    cost = {dict(labels)["component"]: v for (name, labels), v in scrape(metrics).items()
            if name == "pollbench_loadgen_cost_per_kdelivery_seconds"}
    assert cost["backends"] == pytest.approx((0.3 + 0.9) / 2)  # its new life counts from 0


def test_no_sample_file_no_cost_and_the_rest_still_served(tmp_path):
    metrics = LoadgenMetrics(live_path=tmp_path / "missing.json")
    metrics.add(interval({2: 10}, {"delivered": 10}))
    m = scrape(metrics)
    assert m[("pollbench_loadgen_deliveries_total", ())] == 10
    assert not any(name.startswith("pollbench_loadgen_co") for name, _ in m)
