"""A test stopped in the web UI -> its own run folder: the session's records cut to its span."""

from __future__ import annotations

import json

from pollbench.actions.uitests import finish_test, unwritten_tests


def session_record() -> dict:
    return {"schema_version": 1, "kind": "ui", "status": "running", "complete": False,
            "started_at": 900.0, "ended_at": None, "duration_s": None,
            "parameters": {"scenario": "channels", "users": 200, "workers": 0},
            "stack": {"profile": "seed"}, "software": {}, "host": {}, "warnings": [],
            "files": {}, "exit": {"code": None, "reason": "running"}, "pids": {"nginx": 1}}


def test_a_session_without_tests_has_nothing_to_write(tmp_path):
    assert unwritten_tests(tmp_path, set()) == []
    assert unwritten_tests(tmp_path, set(), stopped_only=False) == []


def test_a_stopped_test_gets_the_session_records_of_its_span(tmp_path):
    session = tmp_path
    (session / "samples").mkdir()
    (session / "samples" / "processes.csv").write_text(
        "time,component,pid,cpu_percent,rss_bytes,num_fds\n"
        "990,loadgen,5,50,1,1\n"         # before the test (beyond the 1-s margin)
        "1001,loadgen,5,95,1,1\n1002,loadgen,5,96,1,1\n1003,loadgen,5,97,1,1\n"
        "1004,loadgen,5,95,1,1\n1005,loadgen,5,96,1,1\n1006,loadgen,5,97,1,1\n"
        "1002,system,0,40,1,0\n"
        "1030,loadgen,5,10,1,1\n")       # after it
    (session / "samples" / "stub_status.csv").write_text(
        "time,active,accepts,handled,requests,reading,writing,waiting\n"
        "995,1,1,1,1,0,1,0\n1002,2,2,2,9,0,1,1\n")
    (session / "samples" / "backend_stats.jsonl").write_text(
        json.dumps({"time": 1002, "backend": 0, "stats": {}}) + "\n"
        + json.dumps({"time": 1050, "backend": 0, "stats": {}}) + "\n")
    (session / "nginx" / "logs").mkdir(parents=True)
    (session / "nginx" / "logs" / "access.jsonl").write_text(
        '{"msec":"1001.500","connection":"1"}\n{"msec":"1100.000","connection":"2"}\n')
    test = session / "tests" / "001"
    (test / "metrics").mkdir(parents=True)
    (test / "metrics" / "progress.json").write_text(json.dumps(
        {"time": 1010, "delivered": 10, "lost": 1, "duplicates": 0}))
    (test / "test.json").write_text(json.dumps({
        "number": 1, "status": "stopped", "started_at": 1000.0, "ended_at": 1010.0,
        "users": 30, "spawn_rate": 30.0, "user_classes": ["ChannelSubscriber", "Publisher"],
        "workers": 2, "stop_reason": "stopped",
        "options": {"pb_channels": 5, "pb_connection": "close"}}))
    assert unwritten_tests(session, set()) == [test]

    finish_test(test, session, session_record(), make_report=False, history_source=None)
    record = json.loads((test / "run.json").read_text())  # (schema: test_ui, on real runs)
    assert record["kind"] == "ui-test" and record["complete"] and "pids" not in record
    assert (record["started_at"], record["ended_at"], record["duration_s"]) == (1000, 1010, 10)
    p = record["parameters"]
    assert (p["users"], p["workers"], p["channels"], p["connection"]) == (30, 2, 5, "close")
    assert p["scenario"] == "ui:ChannelSubscriber+Publisher"
    assert record["exit"]["reason"] == "stopped in the web UI"
    # only the rows of the test's span (and a second's margin) are in its folder
    times = [line.split(",")[0] for line in
             (test / "samples" / "processes.csv").read_text().splitlines()[1:]]
    assert times == ["1001", "1002", "1003", "1004", "1005", "1006", "1002"]
    assert len((test / "samples" / "stub_status.csv").read_text().splitlines()) == 2
    assert len((test / "samples" / "backend_stats.jsonl").read_text().splitlines()) == 1
    assert "1001.500" in (test / "nginx" / "logs" / "access.jsonl").read_text()
    assert "1100.000" not in (test / "nginx" / "logs" / "access.jsonl").read_text()
    # the load generator was saturated past its first 3 s (spawning): flagged for this test
    assert record["cpu"]["loadgen_saturated"] and record["cpu"]["cpu_seconds"]["loadgen"] == 5.76
    assert any("CPU-saturated" in w for w in record["warnings"])
    assert any("1 messages lost" in w for w in record["warnings"])
    assert record["files"]["processes"] == "samples/processes.csv"


def test_a_short_test_spawning_its_users_is_not_called_saturated():
    """The load generator is busy while a test spawns its users (its first seconds): a 6-s
    test must not be flagged saturated for that, as a run is not (the sampler's grace)."""
    from pollbench.actions.uitests import cpu_of

    t0 = 1_800_000_000.0
    rows = []
    for i in range(6):
        busy = 100.0 if i < 2 else 30.0  # spawning, then the steady load
        rows += [{"time": t0 + i, "component": "loadgen", "pid": 7, "cpu_percent": busy},
                 {"time": t0 + i, "component": "system", "pid": 0, "cpu_percent": 40.0}]
    cpu, warnings = cpu_of(rows)
    assert not cpu["loadgen_saturated"] and warnings == []
    # saturated in the steady part, it is flagged
    rows = [dict(r, cpu_percent=99.0) if r["component"] == "loadgen" else r for r in rows]
    cpu, warnings = cpu_of(rows)
    assert cpu["loadgen_saturated"] and "saturated" in warnings[0]
