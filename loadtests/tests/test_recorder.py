"""The interval recorder of each Locust process (loadtests/recorder.py)."""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

from loadtests.recorder import Recorder


def decoded(payload: dict, metric: str) -> HdrHistogram:
    return HdrHistogram.decode(payload["hists"][metric][1])


def test_each_interval_holds_only_its_own_values_though_histograms_are_reused():
    rec = Recorder()
    for ms in (1.0, 2.0, 3.0):
        rec.record_ms("DELIVERY", ms)
    rec.record_ms("TASK", 50.0)
    first = rec.cut()
    kept = rec.hists["DELIVERY"]
    rec.record_ms("DELIVERY", 900.0)
    second = rec.cut()
    assert rec.hists["DELIVERY"] is kept  # reused: no garbage per interval
    assert first["hists"]["DELIVERY"][0] == 3 and decoded(first, "DELIVERY").get_max_value() < 3100
    one = decoded(second, "DELIVERY")
    assert second["hists"]["DELIVERY"][0] == 1 and one.get_total_count() == 1
    assert 899_000 < one.get_min_value() <= one.get_max_value() < 901_000
    assert "TASK" not in second["hists"]  # an empty interval of a metric is not shipped
    third = rec.cut()
    assert third["hists"] == {}
