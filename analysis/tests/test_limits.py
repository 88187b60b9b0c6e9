"""What ran out first: failure causes a person can act on, nginx's error log by category, the
first limit reached and the advice that fits it."""

from __future__ import annotations

import errno
import json

from analysis.limits import (
    ErrorLogTail,
    LimitWatch,
    answer_cause,
    cause_source,
    diagnose,
    failure_table,
    fit_warnings,
    transport_cause,
)
from analysis.saturation import LOADGEN_SATURATED

NGINX_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
             b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.22.1</center>")


def test_a_failed_answer_names_who_answered_and_why_without_its_numbers():
    backend = answer_cause(503, b'{"error": "too many waiting polls (limit 18000)", '
                                b'"status": 503}', "TornadoServer/6.5")
    assert backend == "HTTP 503 from backend: too many waiting polls"
    # the same reason with other numbers is the same cause (one counter, not one per id)
    assert answer_cause(500, b'{"error": "task 1f3a9 was lost"}') == \
        answer_cause(500, b'{"error": "task 77b0c was lost"}')
    assert answer_cause(502, NGINX_502, "nginx/1.22.1") == \
        "HTTP 502 from nginx (bad gateway: no backend answered)"
    assert answer_cause(504, NGINX_502.replace(b"502", b"504"), None).startswith(
        "HTTP 504 from nginx (gateway timeout")
    assert answer_cause(503, b"busy") == "HTTP 503 from server"
    assert [cause_source(c) for c in (backend, "HTTP 502 from nginx", "connection reset",
                                      "too many open files in the load generator")] == \
        ["backend", "nginx", "connection", "load generator"]


def test_a_request_without_an_answer_is_named_by_its_socket_error():
    class HttpError(Exception):  # loadtests.leanhttp's, by name
        pass

    assert transport_cause(ConnectionRefusedError(111, "refused")) == "connection refused"
    assert transport_cause(ConnectionResetError(104, "reset")) == "connection reset"
    assert transport_cause(BrokenPipeError(32, "pipe")) == "connection reset"
    assert transport_cause(TimeoutError("timed out")) == "timed out"
    assert transport_cause(OSError(errno.EMFILE, "Too many open files")) == \
        "too many open files in the load generator"
    assert transport_cause(HttpError("connection closed before the answer's headers")) == \
        "connection closed before the answer"


def test_the_error_log_is_counted_by_category_once_per_line_as_it_grows(tmp_path):
    log = tmp_path / "error.log"
    tail = ErrorLogTail(log)
    assert tail.read() == {}  # not written yet
    alert = ("2026/12/01 17:30:01 [alert] 51#51: *9 1024 worker_connections are not enough "
             "while connecting to upstream\n")
    log.write_text("2026/12/01 17:30:00 [notice] 50#50: start worker processes\n" + alert * 3
                   + alert[:30])  # a line still being written
    assert tail.read() == {"worker_connections": 3}
    with log.open("a") as f:
        f.write(alert[30:] + "2026/12/01 17:30:02 [error] 51#51: *12 upstream timed out (110: "
                "Connection timed out) while reading response header from upstream\n"
                "2026/12/01 17:30:02 [crit] 51#51: accept4() failed (24: Too many open files)\n")
    assert tail.read() == {"worker_connections": 1, "upstream_timed_out": 1, "open_files": 1}
    assert tail.read() == {}


def saturated_run(watch: LimitWatch, name: str, t0: float, n: int = 6) -> None:
    for k in range(n):
        watch.cpu(t0 + k, name, 100.0, age_s=60.0)


def test_nginx_connections_ran_out_first_and_the_busy_load_generator_is_not_told_to_scale():
    watch = LimitWatch({"nginx_connections": 1024}, start=1000.0)
    saturated_run(watch, "loadgen", 1010.0)  # the retry storm kept it busy, later
    watch.nginx_errors(1004.0, {"worker_connections": 250})
    watch.nginx_active(1003.0, 300)  # 600 of 1024: not yet a limit
    first = watch.first()
    assert first["limit"] == "nginx_connections" and first["at_s"] == 4.0
    assert [r["limit"] for r in watch.ordered()] == ["nginx_connections", "cpu"]
    saturation = LOADGEN_SATURATED.format(names="loadgen", span="samples")
    fitted = fit_warnings([saturation, "something else"], first, error_rate=0.9)
    assert "add --workers" not in fitted[0]
    assert "worker_connections" in fitted[0] and "90.0% of its requests failed" in fitted[0]
    assert fitted[1] == "something else"


def test_nchan_holds_a_poll_in_one_connection_not_two():
    """Nchan's polls have no upstream: 55,876 held polls of 6 workers x 19,000 is half the
    connections, not all (a 100,000-subscriber run was told nginx's connections ran out)."""
    from analysis.limits import capacity_of

    record = {"stack": {"nginx": {"worker_processes": 6, "worker_connections": 19000,
                                  "nchan": True}}}
    watch = LimitWatch(capacity_of(record), start=0.0)
    watch.nginx_active(225.0, 55_876)
    assert watch.first() is None
    watch.nginx_active(300.0, 112_000)  # past 98 % of 114,000
    assert watch.first()["limit"] == "nginx_connections"
    assert "(Nchan: no upstreams)" in watch.first()["evidence"]
    proxied = LimitWatch(capacity_of({"stack": {"nginx": {"worker_processes": 6,
                                                          "worker_connections": 19000}}}),
                         start=0.0)
    proxied.nginx_active(225.0, 55_876)
    assert proxied.first()["limit"] == "nginx_connections"


def test_a_load_generator_that_ran_out_itself_keeps_the_advice_to_add_workers():
    watch = LimitWatch({}, start=0.0)
    saturated_run(watch, "loadgen", 5.0)
    saturated_run(watch, "backend-1", 30.0)
    first = watch.first()
    assert (first["limit"], first["component"], first["at_s"]) == ("cpu", "loadgen", 5.0)
    assert "--workers" in first["cure"]
    saturation = LOADGEN_SATURATED.format(names="loadgen", span="samples")
    assert fit_warnings([saturation], first, error_rate=0.5) == [saturation]


def test_a_short_burst_or_the_start_up_is_not_running_out_of_cpu():
    watch = LimitWatch({}, start=0.0)
    for t in range(3):
        watch.cpu(float(t), "loadgen", 100.0, age_s=float(t))  # start-up: imports, spawning
    saturated_run(watch, "nginx", 10.0, n=2)  # 2 s: a burst
    for t in (12.0, 13.0, 14.0):
        watch.cpu(t, "nginx", 20.0, age_s=60)
    saturated_run(watch, "nginx", 15.0, n=1)
    assert watch.first() is None


def test_a_machine_that_dips_below_the_line_now_and_then_still_ran_out():
    watch = LimitWatch({}, start=0.0)
    for t, cpu in enumerate([60, 96, 91, 99, 93, 100, 89, 98]):
        watch.cpu(float(t), "system", float(cpu))
    first = watch.first()
    assert (first["component"], first["at_s"]) == ("the machine", 1.0)
    assert first["evidence"] == ">= 95% of all cores in 3 of 5 s"


def test_a_process_that_waits_for_the_cpu_it_lacks_ran_out_of_it(tmp_path):
    """The hot backend of a 2-core machine (issue 39's samples): under the 90 % line on its
    own CPU, the rest of each second waiting for one, while no core was idle; a process as
    busy on its CPU whose other time is idle did not run out.  The same rule from the run
    folder's schedstat columns as from the sampler."""
    rows = ["time,component,pid,cpu_percent,rss_bytes,num_fds,cpu_time_s,wait_time_s"]
    cpu_s = {"backend-2": 0.0, "backend-0": 0.0}
    wait_s = {"backend-2": 0.0, "backend-0": 0.0}
    start = 100.0
    for k, (hot, waited) in enumerate([(0.84, 0.12), (0.86, 0.12), (0.72, 0.16), (0.79, 0.12),
                                       (0.87, 0.12), (0.84, 0.12), (0.80, 0.12)]):
        for name, pid, (c, w) in (("backend-2", 22, (hot, waited)),
                                  ("backend-0", 20, (hot, 0.02))):
            cpu_s[name] += c
            wait_s[name] += w
            rows.append(f"{start + k},{name},{pid},{c * 100:.0f},{2**26},30,"
                        f"{cpu_s[name]:.6f},{wait_s[name]:.6f}")
        rows.append(f"{start + k},system,0,88,{2**30},0,,")
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "processes.csv").write_text("\n".join(rows) + "\n")
    limits = diagnose(tmp_path, {"started_at": start - 5})
    assert [(r["limit"], r["component"]) for r in limits["reached"]] == [("cpu", "backend-2")]
    assert "waiting for it" in limits["first"]["evidence"]
    assert "add backends" in limits["first"]["cure"]
    # older run folders (no schedstat columns) are read as before: nothing reached
    old = [",".join(r.split(",")[:6]) for r in rows]
    (tmp_path / "samples" / "processes.csv").write_text("\n".join(old) + "\n")
    assert diagnose(tmp_path, {"started_at": start - 5})["first"] is None


def test_backend_and_redis_limits_come_from_their_own_counters():
    watch = LimitWatch({"max_waiters": 100, "redis_maxclients": 50}, start=0.0)
    watch.backend(2.0, 0, {"connections": {"rejected": 0}, "long_polls_waiting": 40})
    watch.backend(3.0, 1, {"connections": {"rejected": 7}, "long_polls_waiting": 10})
    watch.redis(4.0, {"connected_clients": 50, "rejected_connections": 0})
    watch.backend(5.0, 0, {"connections": {"rejected": 0}, "long_polls_waiting": 100})
    got = {r["limit"]: r["at_s"] for r in watch.ordered()}
    assert got == {"backend_connections": 3.0, "redis_clients": 4.0, "backend_waiters": 5.0}


def test_diagnose_reads_the_run_folder_and_the_failure_table_names_sources(tmp_path):
    start = 1_000.0
    (tmp_path / "samples").mkdir()
    (tmp_path / "metrics").mkdir()
    rows = ["time,component,pid,cpu_percent,rss_bytes,num_fds"]
    for k in range(20):
        t = start + k
        rows += [f"{t},system,0,60,{2**30},0", f"{t},loadgen,11,{50 + k},{2**27},"
                 f"{9_000 + 600 * k}"]
    (tmp_path / "samples" / "processes.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "samples" / "process_limits.jsonl").write_text(
        json.dumps({"component": "loadgen", "pid": 11, "nofile": 20_000}) + "\n")
    counters = [{"t0": start + 12, "t1": start + 13, "source": "local", "counters": {
        "requests": 900, "error:GET /channels/[name]: too many open files in the load "
        "generator": 40, "error:GET /channels/[name]: HTTP 502 from nginx": 2}}]
    (tmp_path / "metrics" / "counters.jsonl").write_text(
        "".join(json.dumps(c) + "\n" for c in counters))
    record = {"started_at": start, "stack": {"nginx": {"worker_processes": 1,
                                                      "worker_connections": 1024}},
              "host": {"memory_bytes": 24 * 2**30}}
    limits = diagnose(tmp_path, record)
    first = limits["first"]
    # 19,000 of 20,000 descriptors at 17 s; the failures named it at 12 s
    assert (first["limit"], first["component"], first["at_s"]) == ("descriptors", "loadgen",
                                                                   12.0)
    table = failure_table(counters)
    assert [(e["source"], e["count"]) for e in table] == [("load generator", 40), ("nginx", 2)]


def test_a_sweep_comparison_says_what_ran_out_first_in_each_cell(tmp_path):
    import numpy as np

    from analysis.compare_report import write_comparison
    from analysis.synthetic import make_run, run_json

    delivery = np.linspace(1, 20, 2000)
    ran_out = {"first": {"limit": "nginx_connections", "component": None, "at_s": 3.0,
                         "what": "nginx's connections (worker_processes x worker_connections)",
                         "evidence": "nginx's error log", "cure": "raise worker_connections"},
               "reached": []}
    tight = run_json(stack={"profile": "seed"}, limits=ran_out)
    roomy = run_json(stack={"profile": "longpoll"}, limits={"first": None, "reached": []})
    a = make_run(tmp_path / "a", delivery_ms=delivery, info=tight)
    b = make_run(tmp_path / "b", delivery_ms=delivery, info=roomy)
    paths = write_comparison([a, b], tmp_path / "cmp")
    cells = {c["label"]: c["ran_out_first"]
             for c in json.loads(paths["json"].read_text())["cells"]}
    assert cells == {"profile=seed": "nginx's connections (worker_processes x "
                                     "worker_connections) (1 of 1 runs, at 3 s)",
                     "profile=longpoll": "nothing"}
    assert "ran out first" in paths["markdown"].read_text()


def test_when_the_whole_machine_ran_out_more_workers_on_it_are_not_the_advice():
    watch = LimitWatch({}, start=0.0)
    saturated_run(watch, "loadgen", 4.0)
    for t in range(6, 12):
        watch.cpu(float(t), "system", 99.0)
    first = watch.first()
    assert (first["limit"], first["component"]) == ("cpu", "the machine")
    saturation = LOADGEN_SATURATED.format(names="loadgen", span="samples")
    [fitted] = fit_warnings([saturation], first, error_rate=0.0)
    assert "would not help" in fitted and "another host" in fitted


def test_what_an_injected_fault_causes_is_listed_but_never_ran_out_first():
    watch = LimitWatch({}, start=0.0, faults=[(20.0, 23.0, "20s:kill=3s:backend-1")])
    watch.nginx_errors(21.0, {"connect_failed": 30})   # the killed backend refuses
    watch.nginx_errors(27.0, {"no_live_upstreams": 2})  # still its doing, within the margin
    assert watch.first() is None
    [during] = watch.ordered()
    assert during["during_fault"] == "20s:kill=3s:backend-1"
    watch.nginx_errors(40.0, {"upstream_timed_out": 1})
    assert watch.first()["limit"] == "upstream_timeouts"


def test_what_fills_the_machine_once_the_load_has_ended_did_not_run_out_first(tmp_path):
    """Locust stops every user at once at the end of the duration: closing 50,000
    connections filled the 2-core machine for a few seconds (a 50,001-subscriber run said
    "the machine's CPU at 394.6 s", its load having ended at ~392 s).  That is the
    teardown's; the same spike inside the load is what the load ran out of."""
    start, duration = 1000.0, 60.0

    def folder(spike_at: float, with_event: bool = True):
        (tmp_path / "samples").mkdir(exist_ok=True)
        (tmp_path / "metrics").mkdir(exist_ok=True)
        rows = ["time,component,pid,cpu_percent,rss_bytes,num_fds,cpu_time_s,wait_time_s"]
        for k in range(80):
            t = start + k
            busy = 100 if spike_at <= t < spike_at + 6 else 40
            rows.append(f"{t},system,0,{busy},{2**30},0,,")
        (tmp_path / "samples" / "processes.csv").write_text("\n".join(rows) + "\n")
        events = [{"t": start + 2, "kind": "load_started", "source": "master"}]
        (tmp_path / "metrics" / "events.jsonl").write_text(
            "".join(json.dumps(e) + "\n" for e in events) if with_event else "")
        return {"started_at": start - 5, "parameters": {"duration_s": duration}}

    record = folder(spike_at=start + 2 + duration + 2)  # users stopping
    assert diagnose(tmp_path, record)["first"] is None
    record = folder(spike_at=start + 2 + duration - 8)  # the load's last seconds
    assert diagnose(tmp_path, record)["first"]["component"] == "the machine"
    # a folder that does not say when its load began is judged whole, as before
    record = folder(spike_at=start + 2 + duration + 2, with_event=False)
    assert diagnose(tmp_path, record)["first"]["component"] == "the machine"
