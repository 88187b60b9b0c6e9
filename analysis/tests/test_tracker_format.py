"""The CI trackers' formats: what github-action-benchmark and Bencher would read from
``compare`` / ``check`` / ``history``, validated against each format's published schema."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import jsonschema
import pytest

from analysis.tracker_format import BMF, GAB_BIGGER, GAB_SMALLER, TRACKER_FORMATS, measure_slug
from analysis.verdict import Thresholds, compare
from analysis.verdict_format import FORMATS

SCHEMAS = Path(__file__).with_name("schemas")


def schema(fmt: str) -> dict:
    name = "bmf.json" if fmt == BMF else "github-action-benchmark.json"
    return json.loads((SCHEMAS / name).read_text())


def summary(p99: float, throughput: float, lost: int = 0) -> dict:
    metrics = {"delivery_latency_p99": {"value": p99}, "lost_messages": {"value": lost},
               "duplicate_messages": {"value": 0}, "error_rate": {"value": 0.001},
               "throughput_requests": {"value": throughput}}
    return {"schema_version": 1, "run": f"r{p99}", "loadgen_saturated": False,
            "metrics": metrics, "windows": {"series": {}}}


BASE = [summary(p, t) for p, t in [(100, 1000), (103, 990), (98, 1010), (101, 1003), (99, 995)]]
CAND = [summary(p, t) for p, t in [(130, 900), (128, 905), (135, 890), (131, 899), (126, 910)]]
CAND[2]["metrics"]["lost_messages"]["value"] = 3


@pytest.mark.parametrize("fmt", TRACKER_FORMATS)
def test_each_tracker_format_validates_against_its_published_schema(fmt):
    out = FORMATS[fmt](compare(BASE, CAND, Thresholds()), "base", "cand")
    jsonschema.Draft7Validator(schema(fmt)).validate(json.loads(out))


def test_the_candidates_median_and_measured_spread_reach_the_trackers():
    verdicts = compare(BASE, CAND, Thresholds())
    p99s = [s["metrics"]["delivery_latency_p99"]["value"] for s in CAND]
    bmf = json.loads(FORMATS[BMF](verdicts, "base", "cand"))
    assert bmf["pollbench/delivery_latency_p99"] == {"ms": {
        "value": statistics.median(p99s), "lower_value": min(p99s), "upper_value": max(p99s)}}
    assert bmf["pollbench/throughput_requests"]["requests-per-s"]["value"] == 900
    assert bmf["pollbench/lost_messages"]["count"]["value"] == 3  # the gate's total
    # the void check and the error-rate cap are verdicts, not figures: not charted
    assert not any("load_generator" in k or "error_rate_cap" in k for k in bmf)

    smaller = {r["name"]: r for r in json.loads(FORMATS[GAB_SMALLER](verdicts, "b", "c"))}
    bigger = {r["name"]: r for r in json.loads(FORMATS[GAB_BIGGER](verdicts, "b", "c"))}
    # each metric lands in the file of its direction only: a rise alerts the right way
    assert {"delivery_latency_p99", "error_rate", "lost_messages"} <= set(smaller)
    assert set(bigger) == {"throughput_requests"} and not set(smaller) & set(bigger)
    p99 = smaller["delivery_latency_p99"]
    assert p99["unit"] == "ms" and p99["value"] == statistics.median(p99s)
    assert p99["range"] == f"± {(max(p99s) - min(p99s)) / 2:g}"
    assert p99["extra"].startswith(f"5 runs: {min(p99s)} .. {max(p99s)}")
    assert "regression" in p99["extra"] and "baseline 100" in p99["extra"]
    assert bigger["throughput_requests"]["unit"] == "requests/s"


def test_measure_slugs_fit_bencher():
    assert measure_slug("ms") == "ms"
    assert measure_slug("% of a core") == "percent-of-a-core"
    assert measure_slug("requests/connection") == "requests-per-connection"
    assert len(measure_slug("x" * 100)) == 64 and measure_slug("") == "value"


def test_the_example_workflow_feeds_both_trackers_every_format():
    import re

    text = (Path(__file__).resolve().parents[2] / ".github" / "workflows" / "perf.yml").read_text()
    loop = re.search(r"for f in (.+); do", text)
    assert loop and set(loop.group(1).split()) == set(TRACKER_FORMATS)  # what compare writes
    for fmt, tool in ((GAB_SMALLER, "customSmallerIsBetter"), (GAB_BIGGER, "customBiggerIsBetter")):
        assert f"tool: {tool}\n          output-file-path: perf-{fmt}.json" in text
    assert "--adapter json --file perf-bmf.json" in text
