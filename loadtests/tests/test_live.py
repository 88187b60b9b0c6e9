"""The web UI's "Long polling" tab: figures from the lossless data, and the start form's checks."""

from __future__ import annotations

import json
import time

import pytest
from werkzeug.datastructures import MultiDict

from analysis.hdr_format import new_histogram, percentiles_ms
from loadtests.live import WINDOW_S, LiveView, sparkline
from loadtests.webui import form_problem
from pollbench.errors import UserError
from pollbench.stack.loadgen import LoadSpec


def payload(t1: float, delivery_us: list[int], **counters: int) -> tuple[dict, object]:
    hist = new_histogram()
    for v in delivery_us:
        hist.record_value(v)
    return ({"t0": t1 - 1, "t1": t1, "hists": {"DELIVERY": (len(delivery_us),
                                                          hist.encode().decode())},
             "counters": counters}, hist)


def test_percentiles_are_those_of_the_merged_lossless_intervals():
    clock = [1_800_000_000.5]
    view = LiveView(None, clock=lambda: clock[0])
    merged = new_histogram()
    # two processes, 30 s of intervals arriving as they do: the tab's "this test" is their
    # exact merge
    for i in range(1, 31):
        clock[0] += 1
        for worker in range(2):
            values = [500 + 37 * ((i * 7 + j * 13 + worker) % 101) for j in range(50)]
            p, h = payload(clock[0] - 0.1 * (worker + 1), values, delivered=50, requests=60)
            view.add(p)
            merged.add(h)
    # an interval that arrives 5 s late counts for the test, not for an already drawn point
    late, h = payload(clock[0] - 5, [1000], delivered=1)
    view.add(late)
    merged.add(h)
    snap = view.snapshot()
    expected = percentiles_ms(merged, [50, 95, 99])
    test = snap["delivery"]["test"]
    assert test["count"] == 3001
    assert (test["p50"], test["p95"], test["p99"]) == (expected[50], expected[95], expected[99])
    assert test["max"] == merged.get_max_value() / 1000
    # "now" is the last WINDOW_S seconds only, and the rates are per second of it
    assert snap["delivery"]["now"]["count"] == 100 * WINDOW_S
    assert snap["rates"]["now"]["deliveries_per_s"] == 100.0
    assert snap["rates"]["test"]["deliveries_per_s"] == pytest.approx(3001 / 30, rel=0.01)
    # one point per second, each with both processes' intervals, drawn once
    seconds = [p[0] for p in snap["series"]]
    assert seconds == sorted(set(seconds)) and len(seconds) == 27
    assert {p[5] for p in snap["series"]} == {100}


def test_losses_duplicates_and_errors_reach_the_table():
    view = LiveView(None)
    p, _ = payload(time.time(), [1000], delivered=1, lost_dropped=2, lost_silent=3, duplicate=4,
                   epoch_changes=1, **{"error:GET /channels/[name]: HTTP 503": 5})
    view.add(p)
    view.lost_epoch = 6
    table = {r["figure"]: r for r in view.rows("/pollbench/reports")}
    assert table["lost: dropped by the server (slow reader)"]["test"] == "2"
    assert table["lost: never delivered (gap in seq)"]["test"] == "3"
    assert table["lost: channel state lost (backend restart)"]["test"] == "6"
    assert table["duplicate messages"]["test"] == "4"
    assert table["epoch changes"]["test"] == "1"
    assert table["errors: GET /channels/[name]: HTTP 503"]["test"] == "5"
    assert table["reports of finished tests"]["now"] == "/pollbench/reports"
    # Locust sorts the rows by "name": it keeps the tab's order
    names = [r["name"] for r in view.rows()]
    assert names == sorted(names)


def test_target_side_figures_and_the_saturation_warning(tmp_path):
    live = tmp_path / "live.json"

    def sample(seq, handled, requests, b_conns, b_reqs, saturated=()):
        live.write_text(json.dumps({
            "time": time.time(), "seq": seq,
            "cpu": {"loadgen": 97.0, "nginx": 10.0, "backend-0": 5.0, "backend-1": 7.0,
                    "system": 60.0},
            "stub_status": {"active": 11, "accepts": handled, "handled": handled,
                            "requests": requests, "reading": 0, "writing": 10, "waiting": 1},
            "backends": [{"backend": 0, "long_polls_waiting": 4, "connections_accepted": b_conns,
                          "requests": b_reqs},
                         {"backend": 1, "long_polls_waiting": 6, "connections_accepted": b_conns,
                          "requests": b_reqs}],
            "saturated": list(saturated)}))

    sample(seq=10, handled=100, requests=1000, b_conns=50, b_reqs=500)
    view = LiveView(live)  # the sample before the test is the baseline
    # 10 samples later: the sampler's own 10 requests on 10 connections (per hop) are not
    # the load's; the load made 20 connections and 400 requests to nginx
    sample(seq=20, handled=100 + 20 + 10, requests=1000 + 400 + 10, b_conns=50 + 4 + 10,
           b_reqs=500 + 400 + 10, saturated=["loadgen"])
    target = view.target()
    assert target["requests_per_connection"]["client"] == pytest.approx(20.0)
    assert target["requests_per_connection"]["upstream"] == pytest.approx(800 / 8)
    assert target["held_polls"] == {"backend-0": 4, "backend-1": 6}
    assert target["nginx"] == {"active": 11, "reading": 0, "writing": 10, "waiting": 1}
    assert target["cpu_percent"]["backends"] == 12.0
    table = {r["figure"]: r for r in view.rows()}
    assert "load generator CPU-saturated (loadgen" in table["WARNING"]["now"]
    assert view.rows()[0]["figure"] == "WARNING"  # first, where it is seen


def test_the_tab_says_what_ran_out_first_and_fits_the_saturation_advice_to_it(tmp_path):
    from analysis.limits import LimitWatch

    watch = LimitWatch({"nginx_connections": 1024}, start=time.time() - 30)
    watch.nginx_errors(time.time() - 25, {"worker_connections": 40})
    live = tmp_path / "live.json"
    live.write_text(json.dumps({
        "time": time.time(), "seq": 1, "cpu": {"loadgen": 99.0, "system": 100.0},
        "stub_status": None, "backends": [], "saturated": ["loadgen"],
        "nginx_errors": {"worker_connections": 40}, "limits": watch.summary()}))
    view = LiveView(live)
    p, _ = payload(time.time(), [1000], requests=100,
                   **{"error:GET /channels/[name]: connection reset": 60})
    view.add(p)
    table = {r["figure"]: r for r in view.rows()}
    assert table["what ran out first (this session)"]["now"].startswith(
        "nginx's connections (worker_processes x worker_connections) ran out first, at 5 s")
    assert table["nginx error log: worker_connections are not enough (last second)"]["now"] \
        == "40"
    # 60 % of the requests failed after nginx ran out: more workers is not the cure
    assert "add --workers" not in table["WARNING"]["now"]
    assert "raise worker_connections" in table["WARNING"]["now"]


def test_sparkline():
    assert sparkline([]) == ""
    assert sparkline([1, None, 3]) == "▁ █"
    assert sparkline([2, 2]) == "▁▁"


@pytest.mark.parametrize("field,value", [
    ("user_count", "1"), ("pb_poll_timeout", "500"), ("pb_channels", "0"),
    ("pb_connection", "every:0"), ("pb_publish_rate", "nan"), ("spawn_rate", "1e9"),
    ("pb_task_duration_ms", "700000"), ("pb_retry_backoff", "5:1"),
])
def test_the_start_form_refuses_what_pollbench_run_refuses_in_the_same_words(field, value):
    form = {"user_count": "200", "spawn_rate": "40", "pb_channels": "10",
            "pb_publish_rate": "20", "pb_poll_timeout": "20", "pb_task_duration_ms": "500",
            "pb_message_bytes": "64", "pb_task_payload_bytes": "64", "pb_connection": "keepalive",
            "pb_retry_backoff": "0.1:5"}
    classes = ["ChannelSubscriber", "Publisher"]
    opts = type("Opts", (), {k: v for k, v in form.items() if k.startswith("pb_")})
    good = MultiDict([*form.items(), *(("user_classes", c) for c in classes)])
    assert form_problem(good, opts, classes, 120.0) is None
    form[field] = value
    bad = MultiDict([*form.items(), *(("user_classes", c) for c in classes)])
    problem = form_problem(bad, opts, classes, 120.0)
    assert problem
    spec = LoadSpec(users=int(form["user_count"]), spawn_rate=float(form["spawn_rate"]),
                    channels=int(form["pb_channels"]), publish_rate=float(form["pb_publish_rate"]),
                    poll_timeout_s=float(form["pb_poll_timeout"]),
                    task_duration_ms=int(form["pb_task_duration_ms"]),
                    connection=form["pb_connection"], retry_backoff=form["pb_retry_backoff"])
    with pytest.raises(UserError) as refused:
        spec.validate(120.0)
    assert str(refused.value) == problem


def test_shared_state_shows_redis_and_a_redis_that_stops_answering(tmp_path):
    live = tmp_path / "live.json"

    def sample(seq, redis):
        live.write_text(json.dumps({
            "time": time.time(), "seq": seq, "cpu": {"loadgen": 20.0, "redis": 3.5,
                                                     "system": 30.0},
            "stub_status": None, "backends": [], "redis": redis, "saturated": []}))

    sample(1, {"instantaneous_ops_per_sec": 1234, "connected_clients": 9, "pubsub_channels": 1,
               "used_memory": 3 * 2**20, "keys": 12})
    view = LiveView(live)
    table = {r["figure"]: r["now"] for r in view.rows()}
    assert table["Redis ops/s, clients, pub/sub channels"] == "1,234 / 9 / 1"
    assert table["Redis memory (MiB), keys"] == "3.0 / 12"
    assert table["CPU % redis (one core = 100)"] == "4"
    sample(2, {"error": "TimeoutError: Timeout reading from socket"})
    table = {r["figure"]: r["now"] for r in view.rows()}
    assert table["Redis (shared state)"] == "not answering: TimeoutError: Timeout reading from socket"


def test_the_live_view_leaves_no_histogram_garbage_over_a_long_session():
    """A web-UI session lasts hours: each interval's histograms must be freed as they go,
    not left as 188-KiB reference cycles for a collector that runs rarely under Locust's
    GC thresholds."""
    import gc

    from hdrh.histogram import HdrHistogram

    clock = [1_800_000_000.5]
    view = LiveView(None, clock=lambda: clock[0])
    encoded = [payload(0, [800 + i])[0]["hists"] for i in range(4)]
    gc.collect()
    gc.disable()
    try:
        for i in range(120):  # two minutes of one process, with the tab open
            clock[0] += 1
            view.add({"t0": clock[0] - 1, "t1": clock[0], "hists": encoded[i % 4],
                      "counters": {"delivered": 1}})
            if i % 2:
                view.snapshot()
        garbage = [o for o in gc.get_objects() if isinstance(o, HdrHistogram)]
        alive = len(view.seconds) + 1  # the window's seconds and the test's total
        assert len(garbage) <= alive + 8, (len(garbage), alive)
    finally:
        gc.enable()


def test_the_tab_prices_this_tests_deliveries_in_each_components_cpu(tmp_path):
    live = tmp_path / "live.json"
    sample = {"time": time.time(), "seq": 1, "cpu": {"system": 50.0}, "stub_status": None,
              "backends": [], "cpu_time_s": {"backend-0": 10.0, "backend-1": 4.0,
                                             "nginx": 3.0, "loadgen": 7.0}}
    live.write_text(json.dumps(sample))
    view = LiveView(live)  # the test begins: this sample is its base
    # then 2,000 deliveries while the backends spent 1.2 + 0.4 CPU-s, nginx 0.2, Locust 0.6
    sample.update(seq=5, cpu_time_s={"backend-0": 11.2, "backend-1": 4.4, "nginx": 3.2,
                                     "loadgen": 7.6})
    live.write_text(json.dumps(sample))
    p, _ = payload(time.time(), [1000] * 10, delivered=2000, requests=2100)
    view.add(p)
    table = {r["figure"]: r["test"] for r in view.rows()}
    assert table["cost per 1,000 deliveries, backends (CPU-s)"] == "0.800"
    assert table["cost per 1,000 deliveries, nginx (CPU-s)"] == "0.100"
    assert table["cost per 1,000 deliveries, stack (CPU-s)"] == "0.900"
    assert table["cost per 1,000 deliveries, load generator (CPU-s)"] == "0.300"
