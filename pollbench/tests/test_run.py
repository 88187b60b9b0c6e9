"""``pollbench run`` for real: short runs of each scenario, connection reuse, interrupts, bad input."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pandas as pd
import psutil
import pytest

from analysis.catalog import RUN_FILES as FILES
from analysis.hdr import merged, read_hdr_log
from pollbench.records.runinfo import validate_run_json
from pollbench.stack.processes import wait_until
from pollbench.tests.children import interrupt
from pollbench.tests.conftest import REPO, free_stack_ports, pollbench_cmd

# runs whole stacks (or reports on them): left out of the quick subset (-m 'not slow')
pytestmark = pytest.mark.slow

POLL_TIMEOUT_S = 2.0


def run_pollbench(out, *args, timeout=120):
    port, backend_port = free_stack_ports()
    proc = subprocess.run(
        pollbench_cmd("run", "--port", str(port), "--backend-port", str(backend_port),
                      "--out", str(out), "--poll-timeout", str(POLL_TIMEOUT_S), *args),
        capture_output=True, text=True, cwd=REPO, timeout=timeout)
    return proc


def access_log(run_dir) -> pd.DataFrame:
    df = pd.read_json(run_dir / FILES["nginx_access_log"], lines=True, dtype=False)
    df["connection_requests"] = df["connection_requests"].astype(int)
    return df


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One short real run per scenario (shared by the tests that read them)."""
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for scenario in ("channels", "tasks", "mixed"):
        # one of the three writes its report as a plain run does (a report costs ~5 s)
        report = [] if scenario == "channels" else ["--no-report"]
        proc = run_pollbench(base / scenario, "--scenario", scenario, "--users", "30",
                             "--duration", "8s", "--publish-rate", "40", "--channels", "4",
                             "--task-duration-ms", "200", *report)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out[scenario] = (base / scenario, proc)
    return out


@pytest.mark.parametrize("scenario", ["channels", "tasks", "mixed"])
def test_short_run_leaves_every_file_and_a_valid_run_json(runs, scenario):
    run_dir, proc = runs[scenario]
    record = json.loads((run_dir / "run.json").read_text())
    validate_run_json(record)
    assert record["status"] == "complete" and record["complete"] is True
    for key, rel in FILES.items():
        assert (run_dir / rel).is_file(), f"{key}: {rel} missing"
    assert record["software"]["nginx"].startswith("nginx version")
    assert set(record["cpu"]["cpu_seconds"]) >= {"loadgen", "nginx", "backend-0", "backend-3"}
    assert proc.stdout.strip().splitlines()[-1] == str(run_dir)
    for log in ("backend-0.log", "nginx.log", "locust.log"):
        assert (run_dir / "logs" / log).exists()
    if scenario == "channels":  # a run without --no-report ends with its report
        assert (run_dir / "report" / "report.html").is_file()
        assert f"report: {run_dir / 'report' / 'report.html'}" in proc.stdout


@pytest.mark.parametrize("scenario", ["channels", "mixed"])
def test_deliveries_counted_none_lost_or_duplicated_latency_sane(runs, scenario):
    run_dir, _ = runs[scenario]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["loadgen"]["delivered"] > 100
    assert record["loadgen"]["lost"] == 0 and record["loadgen"]["duplicates"] == 0
    hist = merged(read_hdr_log(run_dir / FILES["latency_hdr"]), "DELIVERY")
    assert hist.get_total_count() == record["loadgen"]["delivered"]
    assert hist.get_min_value() > 0
    assert hist.get_max_value() / 1000 < POLL_TIMEOUT_S * 1000


def test_receipt_clock_and_separate_rates_are_on_the_record(runs):
    run_dir, proc = runs["channels"]
    record = json.loads((run_dir / "run.json").read_text())
    # receipt times came from the kernel (SO_TIMESTAMPNS), and run.json says so
    assert record["loadgen"]["clock_source"] == "kernel (SO_TIMESTAMPNS)"
    # HTTP requests are counted apart from deliveries (Locust's total mixes both)
    lg = record["loadgen"]
    assert 0 < lg["requests"] < 1.5 * lg["delivered"] + 200
    assert "HTTP requests " in proc.stdout and f"delivered {lg['delivered']}" in proc.stdout


def test_every_run_prices_its_work_in_each_components_cpu(runs):
    # channels: per delivery and per request, each component, printed when the run ends
    run_dir, proc = runs["channels"]
    cost = json.loads((run_dir / "run.json").read_text())["cost"]
    figures = cost["figures"]
    for comp in ("backends", "nginx", "loadgen", "stack"):
        assert figures[f"cpu_per_kdelivery_{comp}"] > 0, figures
        assert figures[f"cpu_per_krequest_{comp}"] > 0, figures
    assert figures["cpu_per_kdelivery_stack"] == pytest.approx(
        figures["cpu_per_kdelivery_backends"] + figures["cpu_per_kdelivery_nginx"], rel=1e-3)
    # the window's CPU is each process's own time, summed: the backends spent what their
    # samples say they did (1-s CPU percentages agree within a sample's worth)
    samples = pd.read_csv(run_dir / FILES["processes"])
    assert samples["cpu_time_s"].notna().any() and samples["wait_time_s"].notna().any()
    assert cost["deliveries"] > 0 and 0 < cost["window"][1] - cost["window"][0] <= 8
    assert f"cost per 1,000 deliveries (CPU-s): stack {figures['cpu_per_kdelivery_stack']:.3g}" \
        in proc.stderr + proc.stdout
    # the summary's figures are the same (report of the channels run)
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary["metrics"]["cpu_per_kdelivery_backends"]["value"] == pytest.approx(
        figures["cpu_per_kdelivery_backends"], rel=1e-4)
    assert (run_dir / "report" / "charts" / "cost.png").stat().st_size > 10_000
    # the backends' CPU per CPU-second of nginx and the load generator, and what that
    # yardstick was (the check judges the ratio only between runs of one yardstick)
    cpu = cost["cpu_s"]
    assert summary["metrics"]["cpu_relative_backends"]["value"] == pytest.approx(
        cpu["backends"] / (cpu["nginx"] + cpu["loadgen"]), rel=1e-3)
    record = json.loads((run_dir / "run.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{16}", record["yardstick"])
    assert summary["yardstick"] == record["yardstick"]
    # tasks: nothing delivered, so per request only
    tasks = json.loads((runs["tasks"][0] / "run.json").read_text())["cost"]["figures"]
    assert "cpu_per_krequest_stack" in tasks and "cpu_per_kdelivery_stack" not in tasks


@pytest.mark.parametrize("scenario", ["tasks", "mixed"])
def test_task_turnaround_is_recorded_and_at_least_the_task_duration(runs, scenario):
    run_dir, _ = runs[scenario]
    hist = merged(read_hdr_log(run_dir / FILES["latency_hdr"]), "TASK")
    assert hist.get_total_count() > 10
    assert hist.get_min_value() / 1000 >= 200


def test_keepalive_reuses_client_connections(runs):
    df = access_log(runs["channels"][0])
    assert df["connection_requests"].max() >= 10
    assert df.groupby("connection")["connection_requests"].max().mean() > 5


def test_a_broadcast_every_5_s_shows_in_every_progress_line(tmp_path):
    # one message every 5 s to 100 subscribers: the lines' rates are of their own 5 s, and
    # they add up to what the run counted (progress.json's 1-s rates read 0.0 in every line)
    import re

    out = tmp_path / "bursty"
    proc = run_pollbench(out, "--profile", "longpoll", "--users", "101", "--channels", "1",
                         "--publish-rate", "0.2", "--spawn-rate", "101", "--duration", "16s",
                         "--no-report")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = re.findall(r"\[\s*(\d+)s/16s\].*HTTP req/s\s+([\d.]+)\s+deliveries/s\s+([\d.]+)",
                       proc.stderr + proc.stdout)
    assert len(lines) >= 3, proc.stderr
    elapsed = [0.0] + [float(t) for t, _, _ in lines]
    rates = [float(d) for _, _, d in lines]
    assert all(float(r) > 0 for _, r, _ in lines[1:]), lines  # re-polls flow in every line
    assert sum(1 for r in rates if r > 0) >= 2, lines
    delivered = json.loads((out / "run.json").read_text())["loadgen"]["delivered"]
    printed = sum(r * (b - a) for r, a, b in zip(rates, elapsed, elapsed[1:], strict=False))
    # the last broadcast may land after the last line; the printed seconds are rounded
    assert delivered - 100 - 0.1 * delivered <= printed <= delivered * 1.1 + 10, \
        (printed, delivered, lines)


def test_connection_close_makes_exactly_one_request_per_connection(tmp_path):
    proc = run_pollbench(tmp_path / "close", "--scenario", "mixed", "--users", "12",
                         "--duration", "6s", "--connection", "close", "--no-report")
    assert proc.returncode == 0, proc.stderr
    df = access_log(tmp_path / "close")
    assert len(df) > 50
    assert (df["connection_requests"] == 1).all()


def start_run_until_progress(out, users: int) -> subprocess.Popen:
    """A 60-s ``pollbench run`` in the background, returned once Locust reports progress."""
    port, backend_port = free_stack_ports()
    proc = subprocess.Popen(
        pollbench_cmd("run", "--port", str(port), "--backend-port", str(backend_port),
                      "--out", str(out), "--users", str(users), "--duration", "60s"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    assert wait_until(lambda: (out / "metrics" / "progress.json").exists(), 40)
    return proc


def test_sigint_mid_run_stops_everything_and_marks_incomplete(tmp_path):
    out = tmp_path / "interrupted"
    proc = start_run_until_progress(out, users=20)
    output, _ = interrupt(proc)
    assert proc.returncode == 130, output
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "incomplete" and record["complete"] is False
    validate_run_json(record)
    assert record["pids"] and not [p for p in record["pids"].values() if psutil.pid_exists(p)]
    assert (out / "logs" / "locust.log").exists() and (out / "logs" / "backend-0.log").exists()


def test_killed_run_reads_as_crashed_not_running(tmp_path):
    out = tmp_path / "killed"
    proc = start_run_until_progress(out, users=10)
    proc.kill()  # kill -9: pollbench cannot record its end
    proc.communicate(timeout=10)
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "running"  # what it wrote last
    rep = subprocess.run(pollbench_cmd("report", str(out)), capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert rep.returncode == 0, rep.stderr
    summary = (out / "report" / "summary.md").read_text()
    assert "status: **crashed**" in summary and "running" not in summary


@pytest.mark.parametrize("args,words", [
    (["--scenario", "nope"], "invalid choice: 'nope'"),
    (["--profile", "nope"], "unknown profile 'nope'"),
    (["--users", "0"], "--users must be 1 or more"),
    (["--users", "-5"], "--users must be 1 or more"),
    (["--duration", "soon"], "duration 'soon' does not parse"),
    (["--duration", "0s"], "must be more than 0"),
    (["--connection", "sometimes"], "--connection"),
    (["--mix", "subscriber:x"], "--mix"),
    (["--cpus", "0"], "--cpus '0': give LOADGEN/STACK"),
    (["--cpus", "0/0"], "share CPU 0"),
    (["--cpus", "0/4096"], "CPU 4096 is not available"),
    (["--cpus", "a/1"], "not a CPU list"),
    (["--publish-rate", "nan"], "--publish-rate must be a finite number from 0 to 100000 (it is nan)"),
    (["--spawn-rate", "inf"], "--spawn-rate must be a finite number above 0"),
    (["--spawn-rate", "nan"], "--spawn-rate must be a finite number above 0"),
    (["--users", "1000000000"], "--users must be a finite number from 1 to 1000000"),
    (["--max-hold", "nan"], "--max-hold must be a finite number above 0"),
    (["--max-hold", "-1"], "--max-hold must be a finite number above 0"),
    (["--poll-timeout", "nan"], "--poll-timeout must be a finite number"),
])
def test_bad_arguments_fail_at_once_and_start_nothing(tmp_path, args, words):
    t0 = time.monotonic()
    proc = run_pollbench(tmp_path / "x", *args, timeout=30)
    assert proc.returncode == 2
    assert words in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 3  # a clear message, not a traceback
    assert not (tmp_path / "x").exists()
    assert time.monotonic() - t0 < 10


def test_existing_run_folder_is_never_overwritten(tmp_path):
    (tmp_path / "taken").mkdir()
    proc = run_pollbench(tmp_path / "taken", "--duration", "5s")
    assert proc.returncode == 2 and "never overwrites" in proc.stderr


def test_workers_add_up_across_processes_and_a_shape_drives_the_users(tmp_path):
    out = tmp_path / "workers"
    proc = run_pollbench(out, "--scenario", "channels", "--users", "40", "--duration", "10s",
                         "--workers", "2", "--shape", "steps", "--publish-rate", "40",
                         "--channels", "4", "--no-report")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["loadgen"]["delivered"] > 50
    assert record["loadgen"]["lost"] == 0 and record["loadgen"]["duplicates"] == 0
    log = read_hdr_log(out / FILES["latency_hdr"])
    sources = set(log[log["metric"] == "DELIVERY"]["source"])
    assert len(sources) >= 1 and all(s.startswith("worker-") for s in sources)
    # lossless deliveries from the workers equal the count Locust summed in its own stats
    stats = pd.read_csv(out / FILES["locust_stats"])
    locust_deliveries = int(stats[(stats["Type"] == "DELIVERY") &
                                  (stats["Name"] == "publish -> receive")]["Request Count"].sum())
    assert merged(log, "DELIVERY").get_total_count() == record["loadgen"]["delivered"]
    assert abs(locust_deliveries - record["loadgen"]["delivered"]) <= 0.02 * locust_deliveries
    # the "steps" shape: a quarter of the users first, all of them at the end
    hist = pd.read_csv(out / FILES["locust_history"])
    users = hist[hist["Name"] == "Aggregated"]["User Count"]
    assert users.iloc[2] <= 12 and users.max() == 40


def test_quiet_prints_only_the_run_folder_and_verbose_adds_what_it_starts(tmp_path):
    port, backend_port = free_stack_ports()
    common = ["run", "--users", "6", "--duration", "3s", "--port", str(port), "--backend-port",
              str(backend_port), "--no-report"]
    quiet = subprocess.run(pollbench_cmd("-q", *common, "--out", str(tmp_path / "q")),
                           capture_output=True, text=True, cwd=REPO, timeout=120)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.splitlines() == [str(tmp_path / "q")]  # a script reads this line
    verbose = subprocess.run(pollbench_cmd("-v", *common, "--out", str(tmp_path / "v")),
                             capture_output=True, text=True, cwd=REPO, timeout=120)
    assert verbose.returncode == 0, verbose.stderr
    assert "starting backend-0:" in verbose.stdout and "starting nginx:" in verbose.stdout
    assert verbose.stdout.splitlines()[-1] == str(tmp_path / "v")
