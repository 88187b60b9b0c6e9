"""Analysis on synthetic run folders whose right answers are known."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from analysis.compare_report import write_comparison
from analysis.figures import compute
from analysis.load import AnalysisError, load_run
from analysis.report import write_run_report
from analysis.synthetic import make_run, run_json

DELIVERY = np.arange(1, 10001) / 10.0  # 0.1 .. 1000.0 ms, uniform: p50 = 500, p99 = 990


def metric(fig, name):
    return fig.summary["metrics"][name]["value"]


@pytest.fixture
def known_run(tmp_path):
    return make_run(tmp_path / "run", delivery_ms=DELIVERY, request_ms=np.full(500, 4.0),
                    task_ms=np.linspace(500, 600, 101), duration_s=10,
                    counters={"delivered": 10000, "error:GET /channels/[name]: HTTP 503": 7,
                              "error:POST /tasks: timeout": 3, "lost_dropped": 2,
                              "duplicate": 1},
                    access_connections={1: 10, 2: 10, 3: 1, 4: 3},
                    backend_histogram={1: 6, 4: 2})


def test_percentiles_rates_reuse_and_errors_equal_the_known_values(known_run):
    fig = compute(load_run(known_run), warmup_s=0)
    # HdrHistogram with 3 significant digits: within 0.1 %
    assert metric(fig, "delivery_latency_p50") == pytest.approx(500.0, rel=1e-3)
    assert metric(fig, "delivery_latency_p99") == pytest.approx(990.0, rel=1e-3)
    assert metric(fig, "delivery_latency_max") == pytest.approx(1000.0, rel=1e-3)
    assert metric(fig, "delivery_latency_count") == 10000
    assert metric(fig, "request_latency_p99") == pytest.approx(4.0, rel=1e-3)
    assert metric(fig, "task_turnaround_p50") == pytest.approx(550.0, rel=1e-3)
    assert metric(fig, "throughput_deliveries") == pytest.approx(1000.0, rel=1e-3)
    assert metric(fig, "throughput_requests") == pytest.approx(50.0, rel=1e-3)
    assert metric(fig, "errors") == 10
    assert metric(fig, "error_rate") == pytest.approx(10 / 510)
    assert fig.summary["errors_by_cause"] == {"GET /channels/[name]: HTTP 503": 7,
                                              "POST /tasks: timeout": 3}
    assert metric(fig, "lost_messages") == 2 and metric(fig, "duplicate_messages") == 1
    assert metric(fig, "requests_per_connection_client") == pytest.approx(24 / 4)
    assert metric(fig, "requests_per_connection_upstream") == pytest.approx(14 / 8)


def test_warmup_excludes_the_first_seconds(known_run):
    fig = compute(load_run(known_run), warmup_s=5)
    # only the second half of the values (500.1 .. 1000 ms) remains
    assert metric(fig, "delivery_latency_count") == 5000
    assert metric(fig, "delivery_latency_p50") == pytest.approx(750.0, rel=2e-3)


def test_every_chart_is_produced_and_the_html_is_self_contained(known_run, tmp_path):
    paths = write_run_report(known_run, tmp_path / "report")
    charts = sorted(p.name for p in (tmp_path / "report" / "charts").glob("*.png"))
    assert charts == sorted(f"{n}.png" for n in (
        "throughput", "latency_over_time", "percentile_spectrum", "delivery_cdf",
        "connection_reuse", "upstream_timing", "errors", "resources", "cost"))
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == 9
    # nothing to fetch: no external scripts, stylesheets, images or links
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)
    summary = json.loads(paths["json"].read_text())
    assert summary["metrics"]["delivery_latency_p99"]["unit"] == "ms"
    assert "| Delivery p99 |" in paths["markdown"].read_text()


def test_charts_drawn_by_several_processes_are_the_ones_one_process_draws(known_run, tmp_path):
    """The charts are shared out among forked processes (one per CPU): the same PNGs, in the
    same order, with the same notes, as one process drawing them all.  In a process of its
    own: this one may have imported Locust, where no process is forked."""
    import subprocess
    import sys
    import threading

    from analysis.report import chart_processes

    (known_run / "samples" / "processes.csv").unlink()  # a chart left out: notes compared too
    code = ("import sys; from pathlib import Path; from analysis.figures import compute; "
            "from analysis.load import load_run; from analysis.report import render_charts; "
            "fig = compute(load_run(Path(sys.argv[1]))); out = Path(sys.argv[2]); "
            "one = render_charts(fig, out / 'one', processes=1); "
            "three = render_charts(fig, out / 'three', processes=3); "
            "print(one == three, bool(one[1]), len(one[0]))")
    proc = subprocess.run([sys.executable, "-c", code, str(known_run), str(tmp_path)],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    same, noted, drawn = proc.stdout.split()
    assert same == "True" and noted == "True" and int(drawn) >= 6
    assert sorted(p.read_bytes() for p in (tmp_path / "one" / "charts").iterdir()) == \
        sorted(p.read_bytes() for p in (tmp_path / "three" / "charts").iterdir())
    # no fork while another thread runs: a lock it holds would stay held in the child
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert chart_processes() == 1
    finally:
        stop.set()
        other.join()


def test_a_report_written_where_locust_has_patched_threading_finishes(known_run, tmp_path):
    """A process that imported Locust (gevent patches threading: a test process, a user's
    notebook) draws the charts itself: a pool's result thread would be a greenlet that never
    runs, and the report would hang."""
    import subprocess
    import sys

    code = ("import locust, sys; from pathlib import Path; "
            "from analysis.report import chart_processes, write_run_report; "
            "print(chart_processes()); write_run_report(Path(sys.argv[1]), Path(sys.argv[2]))")
    proc = subprocess.run([sys.executable, "-c", code, str(known_run), str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1"]
    assert len(list((tmp_path / "r" / "charts").glob("*.png"))) == 9


def test_missing_optional_file_drops_only_its_charts(known_run, tmp_path):
    (known_run / "nginx" / "logs" / "access.jsonl").unlink()
    paths = write_run_report(known_run, tmp_path / "report")
    charts = {p.stem for p in (tmp_path / "report" / "charts").glob("*.png")}
    assert "upstream_timing" not in charts and "latency_over_time" in charts
    summary = json.loads(paths["json"].read_text())
    assert any("access.jsonl missing" in n for n in summary["notes"])
    assert "access.jsonl missing" in paths["html"].read_text()


def test_comparison_is_labelled_by_the_parameter_that_differs(tmp_path):
    a = make_run(tmp_path / "a", delivery_ms=DELIVERY, stack={"profile": "seed"})
    b = make_run(tmp_path / "b", delivery_ms=DELIVERY * 2, stack={"profile": "keepalive"})
    paths = write_comparison([a, b], tmp_path / "cmp")
    summary = json.loads(paths["json"].read_text())
    p99 = {c["label"]: c["metrics"]["delivery_latency_p99"]["mean"] for c in summary["cells"]}
    assert set(p99) == {"profile=seed", "profile=keepalive"}
    assert p99["profile=keepalive"] == pytest.approx(2 * p99["profile=seed"], rel=2e-3)
    assert "profile=keepalive" in paths["markdown"].read_text()


def test_repetitions_are_grouped_with_a_confidence_interval(tmp_path):
    runs = [make_run(tmp_path / f"r{i}", delivery_ms=DELIVERY * (1 + i / 100),
                     parameters={"users": 100 if i < 3 else 200}) for i in range(5)]
    summary = json.loads(write_comparison(runs, tmp_path / "cmp")["json"].read_text())
    cells = {c["label"]: c for c in summary["cells"]}
    assert set(cells) == {"users=100", "users=200"}
    assert len(cells["users=100"]["runs"]) == 3
    assert cells["users=100"]["metrics"]["delivery_latency_p50"]["ci95_half_width"] > 0


@pytest.mark.parametrize("damage,words", [
    (lambda p: (p / "run.json").unlink(), "run.json is missing"),
    (lambda p: (p / "run.json").write_text("{not json"), "is corrupt"),
    (lambda p: (p / "run.json").write_text(json.dumps(run_json() | {"schema_version": 99})),
     "upgrade pollbench"),
    (lambda p: (p / "run.json").write_text(json.dumps(run_json() | {"schema_version": 0})),
     "no longer read"),
    (lambda p: (p / "run.json").write_text(json.dumps({"schema_version": 1})), "damaged"),
])
def test_corrupt_and_wrong_version_inputs_are_refused_clearly(known_run, damage, words):
    damage(known_run)
    with pytest.raises(AnalysisError, match=words):
        load_run(known_run)


def test_incomplete_run_is_read_and_says_so(tmp_path):
    info = run_json(status="incomplete", complete=False,
                    exit={"code": 130, "reason": "interrupted (Ctrl-C or SIGTERM)"})
    run = make_run(tmp_path / "r", delivery_ms=DELIVERY, info=info)
    fig = compute(load_run(run))
    assert fig.summary["status"] == "incomplete"
    assert any("interrupted" in n for n in fig.summary["notes"])


def test_corrupt_latency_log_becomes_a_note_not_a_crash(known_run):
    (known_run / "metrics" / "latency.hdr.jsonl").write_text("garbage\n")
    run = load_run(known_run)
    assert any("unreadable" in n for n in run.notes)


def test_vectorised_percentiles_match_hdrhistogram_exactly():
    from analysis.hdr import new_histogram, percentiles_us

    rng = np.random.default_rng(7)
    h = new_histogram()
    for v in rng.lognormal(7, 2, 5000).astype(int) + 1:
        h.record_value(int(v))
    ps = [0, 0.1, 25, 50, 90, 99, 99.9, 99.99, 100]
    assert list(percentiles_us(h, ps)) == [h.get_value_at_percentile(p) for p in ps]


def test_the_mean_is_hdrhistograms_own_to_the_last_bit():
    from analysis.hdr import mean_us, new_histogram

    rng = np.random.default_rng(11)
    for spread in (0.5, 2, 4):  # narrow to very wide, with large counts at single values
        h = new_histogram()
        for v in rng.lognormal(7, spread, 3000).astype(int) + 1:
            h.record_value(int(min(v, 3_000_000_000)), count=int(rng.integers(1, 10**6)))
        assert mean_us(h) == h.get_mean_value()
    assert mean_us(new_histogram()) == 0.0


def test_access_log_retries_keep_the_last_attempt(tmp_path):
    from analysis.load import read_access_log

    line = ('{"msec":"1.5","connection":"3","connection_requests":"2","method":"GET",'
            '"uri":"/x","status":"200","body_bytes_sent":"1","request_time":"0.010",'
            '"upstream_addr":"a, b","upstream_status":"%s","upstream_connect_time":"%s",'
            '"upstream_header_time":"-","upstream_response_time":"%s","request_id":"r"}')
    path = tmp_path / "access.jsonl"
    path.write_text("\n".join([line % ("502, 200", "0.001, 0.002", "0.004, 0.006"),
                               line % ("200", "0.000", "0.003"),
                               line % ("", "", "")]) + "\n")
    df = read_access_log(path)
    assert df["upstream_status"].tolist()[:2] == [200, 200]
    assert df["upstream_connect_time"].tolist()[:2] == [0.002, 0.0]
    assert df["upstream_response_time"].tolist()[:2] == [0.006, 0.003]
    assert df["upstream_header_time"].isna().all() and np.isnan(df["upstream_status"][2])


def test_interval_rates_spread_counts_over_the_bins_they_overlap():
    from analysis.figures import interval_rate

    # 10 events in [0.5, 1.5), 9 in [1.5, 2.4), 11 in [2.4, 3.5): bins of 1 s
    rate = interval_rate([0.5, 1.5, 2.4], [1.5, 2.4, 3.5], [10, 9, 11], 0, 1.0)
    assert rate.round(6).tolist() == [5.0, 10.0, 10.0, 5.0]
    assert rate.sum() == pytest.approx(30)
    # an interval ending exactly on the last bin edge, and jittered 1-s intervals
    t0 = np.arange(80) + 0.999
    rate = interval_rate(t0, t0 + 1.0, np.full(80, 100), 0, 1.0)
    assert rate.sum() == pytest.approx(8000) and rate.iloc[5] == pytest.approx(100)


def test_the_analysis_reads_the_run_json_version_pollbench_writes():
    from analysis.catalog import RUN_SCHEMA_VERSION as SCHEMA_VERSION
    from analysis.load import SUPPORTED_SCHEMA_VERSIONS

    assert SCHEMA_VERSION in SUPPORTED_SCHEMA_VERSIONS


def test_the_fault_table_shows_the_specs_time_beside_the_reports_where_they_differ():
    from analysis.report import fault_rows

    fault = {"fault": "9s:stop=3s:backend-0", "lasted_s": 3.0, "failed_requests": 0,
             "epoch_changes": 0, "lost_epoch_messages": 0, "epoch_changes_loss_unknown": 0,
             "recovery_p50_s": None, "recovery_max_s": None, "detail": ""}
    # Locust was up 1.15 s before its first load interval: the report's 7.85 s is the spec's 9 s
    rows = fault_rows({"faults": [{**fault, "at_s": 7.85, "spec_at_s": 9.0}]})
    assert rows[0][0] == "7.85 s (spec 9 s)"
    assert fault_rows({"faults": [{**fault, "at_s": 9.0, "spec_at_s": 9.0}]})[0][0] == "9 s"
