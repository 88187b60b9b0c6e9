"""What run.json says of the run's nginx."""

from __future__ import annotations

import json

from pollbench.records.runrecord import worker_crash_warning


def test_an_nginx_worker_killed_by_nginx_at_the_stop_is_not_a_crash(tmp_path):
    (tmp_path / "samples").mkdir()
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "events.jsonl").write_text(
        json.dumps({"t": 1000.0, "kind": "load_started", "source": "master"}) + "\n")
    record = {"started_at": 990.0, "parameters": {"duration_s": 60.0}}
    errors = tmp_path / "samples" / "nginx_errors.jsonl"
    # 3 workers SIGKILLed by nginx's fast shutdown after the 60-s load
    errors.write_text(json.dumps({"time": 1064.0, "counts": {"worker_crashed": 3}}) + "\n")
    assert worker_crash_warning(tmp_path, record) is None
    # one that died during the load is a crash
    with errors.open("a") as f:
        f.write(json.dumps({"time": 1030.0, "counts": {"worker_crashed": 1}}) + "\n")
    assert worker_crash_warning(tmp_path, record).startswith("1 nginx worker(s) exited on a")
    # a folder that does not say when its load began counts the whole run, as before
    (tmp_path / "metrics" / "events.jsonl").write_text("")
    assert worker_crash_warning(tmp_path, record).startswith("4 nginx worker(s)")
