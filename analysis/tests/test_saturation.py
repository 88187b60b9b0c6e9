"""The one saturation rule: a run's sampler, a web-UI test's slice of samples, a remote
run's pulled samples and a remote worker's own CPU count must judge the same CPU alike."""

from analysis.saturation import (
    STARTUP_GRACE_S,
    Counter,
    counts_from_intervals,
    counts_from_rows,
    cpu_summary,
)


def loadgen_rows(cpus):
    return [[1000.0 + i, "loadgen", 42, cpu] for i, cpu in enumerate(cpus)]


def test_start_up_is_not_saturation_but_steady_load_is():
    spawning = [100.0] * int(STARTUP_GRACE_S) + [30.0] * 10  # imports at 100 %, then light
    counts, _ = counts_from_rows(loadgen_rows(spawning))
    assert cpu_summary(counts, {})[0]["loadgen_saturated"] is False
    busy = [100.0] * int(STARTUP_GRACE_S) + [30.0] * 7 + [95.0] * 3  # 30 % of counted samples
    summary, warnings = cpu_summary(*counts_from_rows(loadgen_rows(busy)))
    assert summary["loadgen_saturated"] and "90% of a core in >= 20%" in warnings[0]


def test_the_sampler_the_rows_and_a_workers_intervals_agree():
    cpus = [100.0, 100.0, 100.0, 20.0, 95.0, 91.0, 50.0, 89.9, 90.0, 10.0]
    live = Counter()
    for age, cpu in enumerate(cpus):  # as the sampler sees them: one a second, with its age
        live.add("loadgen", cpu, float(age))
    rows, _ = counts_from_rows(loadgen_rows(cpus))
    intervals = [{"source": "loadgen", "t0": 1000.0 + i, "t1": 1001.0 + i,
                  "counters": {"cpu_ms": cpu * 10}} for i, cpu in enumerate(cpus)]
    worker, seconds, span = counts_from_intervals(intervals)
    assert live.counts["loadgen"] == rows["loadgen"] == worker["loadgen"] == [7, 3]
    assert span["loadgen"] == 10.0 and abs(seconds["loadgen"] - sum(cpus) / 100) < 1e-9


def test_the_machine_is_judged_on_all_its_cores_and_named_once():
    rows = [[1000.0 + i, "system", 0, 94.0] for i in range(5)]
    assert cpu_summary(*counts_from_rows(rows))[0]["machine_saturated"] is False
    rows = [[1000.0 + i, "controller-system", 0, 96.0] for i in range(5)]
    summary, warnings = cpu_summary(*counts_from_rows(rows))
    assert summary["machine_saturated"] and warnings == [warnings[0]]
    assert "machine's CPU was saturated" in warnings[0]


def test_a_live_flag_forgets_what_is_older_than_its_window():
    c = Counter(window=5)
    for cpu in [99.0] * 10 + [10.0] * 5:
        c.add("loadgen", cpu)
    assert c.saturated("loadgen") == ["loadgen"] and c.recent() == []
