"""``pollbench run --prometheus``: a real Prometheus scrapes every component during the run;
its HTTP API is asked what a dashboard would ask (docs/grafana/pollbench.json)."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
import urllib.request

import pytest

from analysis.hdr import merged, read_hdr_log
from analysis.hdr_format import percentiles_ms
from loadtests.openmetrics import LATENCY_BUCKETS_S
from pollbench.stack.processes import wait_until
from pollbench.tests.children import Output
from pollbench.tests.conftest import REPO, run_cmd

pytestmark = pytest.mark.slow
DASHBOARD = REPO / "docs" / "grafana" / "pollbench.json"


def query(url: str, expr: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}), timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def bucket_index(seconds: float) -> int:
    """Which of the endpoint's buckets holds ``seconds`` (len = above the last bound)."""
    return next((i for i, b in enumerate(LATENCY_BUCKETS_S) if seconds <= b),
                len(LATENCY_BUCKETS_S))


def test_prometheus_scrapes_every_component_and_the_dashboard_queries_answer(tmp_path):
    from pollbench.stack.prometheus import find_binaries

    find_binaries()  # fails (not skips) with what to install: bootstrap --test installs it
    out = tmp_path / "run"
    proc = subprocess.Popen(
        run_cmd(out, "--prometheus", "--users", "41", "--channels", "4", "--publish-rate",
                "20", "--poll-timeout", "2", "--duration", "18s", "--no-report"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    output = Output(proc)
    try:
        assert output.wait_for("Prometheus: http://", 60), output.text()
        url = re.search(r"Prometheus: (http://127\.0\.0\.1:\d+)", output.text()).group(1)

        def all_up() -> bool:
            try:
                up = query(url, "up")
            except OSError:
                return False
            jobs = [r["metric"]["job"] for r in up if r["value"][1] == "1"]
            return sorted(jobs) == ["backend"] * 4 + ["loadgen", "nginx"]

        assert wait_until(all_up, 20), query(url, "up")

        def delivered() -> bool:  # two scrapes with deliveries: rates can be taken
            got = query(url, "sum(increase(pollbench_loadgen_deliveries_total[10s]))")
            return bool(got) and float(got[0]["value"][1]) > 100

        assert wait_until(delivered, 20), query(url, "pollbench_loadgen_deliveries_total")
        # each target is scraped at its own offset in the interval: a rate over the
        # backends may still lack its second sample when the load generator's has it
        dashboard = json.loads(DASHBOARD.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                assert wait_until(lambda e=expr: bool(query(url, e)), 10), \
                    f"{panel['title']}: {expr} returned no series in 10 s"
        # the latency histogram agrees with the run's lossless data, within one bucket
        result = query(url, "histogram_quantile(0.5, sum by (le) "
                            "(pollbench_loadgen_delivery_latency_seconds_bucket))")
        at, prom_p50 = float(result[0]["value"][0]), float(result[0]["value"][1])
        scraped = query(url, "timestamp(pollbench_loadgen_deliveries_total)")
        last_scrape = float(scraped[0]["value"][1])
        # the endpoint prices the work: every component's CPU, the cost so far
        components = {r["metric"]["component"] for r in
                      query(url, "pollbench_loadgen_component_cpu_seconds_total")}
        assert {"backend-0", "backend-3", "nginx", "loadgen"} <= components, components
        gauge = {r["metric"]["component"]: float(r["value"][1]) for r in
                 query(url, "pollbench_loadgen_cost_per_kdelivery_seconds")}
    finally:
        proc.wait(120)
    assert proc.returncode == 0, output.text()[-3000:]
    record = json.loads((out / "run.json").read_text())
    assert record["prometheus"]["url"] == url and (out / "prometheus" / "data").is_dir()
    assert (out / "prometheus" / "prometheus.yml").read_text().count("127.0.0.1:") == 6
    hdr = read_hdr_log(out / "metrics" / "latency.hdr.jsonl")
    hdr_p50 = percentiles_ms(merged(hdr, "DELIVERY", t_to=last_scrape), (50,))[50] / 1000
    assert abs(bucket_index(prom_p50) - bucket_index(hdr_p50)) <= 1, (prom_p50, hdr_p50, at)
    # the live cost (from the load's start) reads as the run's (after its warm-up) does
    cost = record["cost"]["figures"]
    for component in ("stack", "backends", "nginx", "loadgen"):
        ratio = gauge[component] / cost[f"cpu_per_kdelivery_{component}"]
        assert 0.5 < ratio < 2, (component, gauge, cost)
    # stopped with the stack: nothing listens on its port any more
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/-/ready", timeout=2)
