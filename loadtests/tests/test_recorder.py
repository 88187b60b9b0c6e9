"""The interval recorder of each Locust process (loadtests/recorder.py)."""

from __future__ import annotations

import pytest
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


@pytest.mark.serial  # imports locust here: gevent patches this process's threads
def test_locust_bookkeeping_stays_bounded_over_a_day_and_the_report_still_covers_it(monkeypatch):
    # A day of Locust's own per-second counts and 5-s history, trimmed as the run goes:
    # what a soak's memory depends on.  Locust's real classes, its real clock patched.
    from locust import stats as lstats

    from loadtests.recorder import LocustTrim

    stats = lstats.RequestStats()
    row = stats.get("/channels/[name]", "GET")
    trim = LocustTrim(stats)
    start = 1_800_000_000
    now = [float(start)]
    monkeypatch.setattr(lstats.time, "time", lambda: now[0])
    day = 24 * 3600
    for t in range(start, start + day, 5):  # a request every 5 s, one failure a minute
        now[0] = t + 0.5
        row.log(100, 10)
        stats.total.log(100, 10)
        if t % 60 == 0:
            row.log_error(RuntimeError("x"))
        stats.history.append({"time": t, "current_rps": [t, 0.2]})
        if t % 30 == 0:
            trim.trim(now[0])
    assert row.num_requests == stats.total.num_requests == day // 5  # totals untouched
    for entry in (row, stats.total):
        # at most KEEP_S, plus the 30 s since the last trim, of per-second counts
        assert len(entry.num_reqs_per_sec) <= (LocustTrim.KEEP_S + 30) // 5 + 1
        assert min(entry.num_reqs_per_sec) >= now[0] - LocustTrim.KEEP_S - 31
    assert len(row.num_fail_per_sec) <= (LocustTrim.KEEP_S + 30) // 60 + 1
    assert row.current_rps == 0.2  # what Locust shows as the current rate is unchanged
    # the history: the last hour every 5 s, the 23 hours before it thinned, nothing out of order
    times = [h["time"] for h in stats.history]
    assert len(stats.history) < LocustTrim.HISTORY_FULL + day // 60 + 2 * LocustTrim.HISTORY_EVERY * 10
    assert times == sorted(times) and times[0] == start and times[-1] == start + day - 5
    assert times[-LocustTrim.HISTORY_FULL:] == list(range(start + day - 3600, start + day, 5))
    assert max(b - a for a, b in zip(times[:-1], times[1:], strict=True)) == 60
    # a new test (web UI): Locust starts a new history list; thinning starts again on it
    stats.history = [{"time": 0}]
    trim.trim(now[0])
    assert stats.history == [{"time": 0}]


def test_encoding_an_interval_is_hdrhs_own_encoding_and_makes_no_new_types():
    # hdrh's encode() makes a ctypes array type per distinct length: cyclic garbage that a
    # soak's load generator piled up (tens of MiB an hour under Locust's GC thresholds)
    import ctypes
    import gc

    from analysis.hdr_format import encode_histogram, new_histogram

    array_type = type(ctypes.c_byte * 1)

    def array_types() -> int:
        return sum(1 for o in gc.get_objects() if type(o) is array_type)

    hists = []
    for k in range(300):  # 300 intervals, each with another highest value
        h = new_histogram()
        if k:
            h.record_value(1 + k * 997)
            h.record_value(50, k)
        hists.append(h)
    gc.collect()
    gc.disable()
    try:
        before = array_types()
        ours = [encode_histogram(h) for h in hists]
        after_ours = array_types()
        theirs = [h.encode() for h in hists]
        after_theirs = array_types()
    finally:
        gc.enable()
    assert ours == theirs  # byte for byte: every reader decodes it as before
    assert HdrHistogram.decode(ours[5]).get_total_count() == 6
    assert after_ours - before <= 1  # at most the one buffer of this layout
    assert after_theirs - after_ours > 200  # what hdrh's own encoder leaves behind


def test_a_recorded_interval_encodes_as_hdrhs_own_record_value_would():
    """The recorder finds each value's counter itself (hdrh's record_value is the load
    generator's costliest call per delivery): the same values give the same bytes, from
    below the lowest value to past the highest, across every bucket boundary."""
    import random

    from analysis.hdr_format import HDR_HIGHEST_US, encode_histogram, new_histogram

    rng = random.Random(7)
    values_us = [0, 1, 2, 1023, 1024, 2047, 2048, 2049, 4095, 4096, 99_999, 10**6,
                 HDR_HIGHEST_US - 1, HDR_HIGHEST_US, HDR_HIGHEST_US * 3]
    values_us += [int(2 ** rng.uniform(0, 32)) for _ in range(20_000)]
    rec = Recorder()
    reference = new_histogram()
    for us in values_us:
        ms = us / 1000
        rec.record_ms("DELIVERY", ms)
        reference.record_value(min(max(int(ms * 1000), 1), HDR_HIGHEST_US))
    count, encoded = rec.cut()["hists"]["DELIVERY"]
    assert count == len(values_us) == reference.get_total_count()
    assert encoded == encode_histogram(reference).decode()
    got = HdrHistogram.decode(encoded)
    assert got.get_min_value() == reference.get_min_value() == 1
    assert got.get_value_at_percentile(50) == reference.get_value_at_percentile(50)
