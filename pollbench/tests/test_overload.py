"""Overloads diagnosed for real: each run reaches one limit on purpose, and run.json, the
summary line, the report and the exit code of ``--max-error-rate`` must name that limit, the
failures it caused and a cure that fits it."""

from __future__ import annotations

import json
import subprocess

import pytest

from pollbench.tests.conftest import REPO, run_cmd

pytestmark = [pytest.mark.slow, pytest.mark.serial]

# the seed's nginx with fewer connections: 60 held polls need ~120, it allows 64
TIGHT_NGINX = """description = "the seed, 64 worker_connections"
[nginx]
backends = 2
worker_processes = 1
worker_connections = 64
keepalive_timeout = 65
proxy_read_timeout = 200
proxy_next_upstream = ["error"]
balance = "key-hash"
"""


def run(out, *args, duration="10s"):
    return subprocess.run(run_cmd(out, "--poll-timeout", "2", "--duration", duration, *args),
                          capture_output=True, text=True, cwd=REPO, timeout=180)


def test_nginx_out_of_worker_connections_is_named_first_with_its_cure(tmp_path):
    profile = tmp_path / "tight.toml"
    profile.write_text(TIGHT_NGINX)
    out = tmp_path / "run"
    proc = run(out, "--profile", str(profile), "--users", "60", "--channels", "4",
               "--max-error-rate", "0.01")
    record = json.loads((out / "run.json").read_text())
    # complete, and yet exit 1: more than 1 % of the requests failed
    assert record["status"] == "complete", proc.stderr
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "--max-error-rate" in record["exit"]["reason"]
    # warned before the start
    assert any("allows 64 (1 worker(s) x 64 worker_connections)" in w
               for w in record["warnings"])
    first = record["limits"]["first"]
    assert first["limit"] == "nginx_connections", record["limits"]
    assert "raise worker_connections" in first["cure"]
    # the failures table is led by nginx's limit, though the sockets alone name no one
    lead = record["failures"][0]
    assert lead["source"] == "nginx (worker_connections are not enough)", record["failures"]
    assert not any("add --workers" in w for w in record["warnings"])
    # attempted and succeeded side by side, and the last word: the rate and the cause
    assert "attempted" in proc.stdout and "succeeded" in proc.stdout
    assert "of HTTP requests failed; nginx's connections" in proc.stderr
    summary = (out / "report" / "summary.md").read_text()
    assert "## What ran out first" in summary
    assert "nginx's connections (worker_processes x worker_connections) ran out first" in summary
    assert (out / "samples" / "nginx_errors.jsonl").stat().st_size > 0


def test_a_backend_at_its_connection_limit_is_named_by_its_refusals(tmp_path):
    out = tmp_path / "run"
    # upstream keep-alive: each held poll holds one connection to its backend; 60 polls on
    # 4 channels over 4 backends put ~15 on each, and each accepts 8
    proc = run(out, "--profile", "longpoll", "--backend-max-connections", "8", "--users", "60",
               "--channels", "4", "--no-report")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((out / "run.json").read_text())
    first = record["limits"]["first"]
    assert first["limit"] == "backend_connections", record["limits"]
    # the backend's own count of refusals, or the 503s it answered them with
    assert "refused" in first["evidence"] or "too many open connections" in first["evidence"]
    assert "--backend-max-connections" in first["cure"]
    causes = {e["cause"]: e for e in record["failures"]}
    assert any(c.startswith("HTTP 503 from backend: too many open connections") or
               c.startswith("HTTP 503 from backend: too many waiting polls") for c in causes), \
        causes


def test_a_load_generator_out_of_descriptors_is_told_to_add_workers(tmp_path):
    import resource

    from pollbench.stack.processes import wait_until

    out = tmp_path / "run"
    proc = subprocess.Popen(
        run_cmd(out, "--poll-timeout", "2", "--duration", "14s", "--profile", "longpoll",
                "--users", "500", "--spawn-rate", "50", "--channels", "20",
                "--publish-rate", "20", "--no-report"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        # the sampler names the Locust process as soon as it runs: from then on it may hold
        # 400 descriptors (whether or not Locust has raised its own limit yet: it cannot
        # raise it past this hard limit), while its users open 500 sockets over 10 s
        limits = out / "samples" / "process_limits.jsonl"

        def loadgen_pid() -> int | None:
            try:
                rows = [json.loads(line) for line in limits.read_text().splitlines()]
            except (OSError, ValueError):
                return None
            return next((r["pid"] for r in rows if r["component"] == "loadgen"), None)

        assert wait_until(lambda: loadgen_pid() is not None, 30), "Locust never started"
        resource.prlimit(loadgen_pid(), resource.RLIMIT_NOFILE, (400, 400))
        # Locust, out of descriptors, may fail before its time is up (it did here, writing
        # its own report): then the run is incomplete and says so; either way the limit
        # is named
        assert proc.wait(180) in (0, 3)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    record = json.loads((out / "run.json").read_text())
    if record["status"] != "complete":
        assert record["exit"]["code"] == 3 and "the load generator" in record["exit"]["reason"]
    first = record["limits"]["first"]
    assert (first["limit"], first["component"]) == ("descriptors", "loadgen"), \
        record["limits"]
    assert "--workers" in first["cure"] and "loadgen" in first["what"]
    causes = [e["cause"] for e in record["failures"]]
    assert causes[0] == "too many open files in the load generator", record["failures"]


def test_a_load_the_machine_cannot_carry_names_a_cpu_and_no_connection_limit(tmp_path):
    out = tmp_path / "run"
    # 600 subscribers on one channel, 100 messages/s: ~60,000 deliveries/s asked of 2 cores
    proc = run(out, "--profile", "longpoll", "--users", "600", "--channels", "1",
               "--publish-rate", "100", "--no-report", duration="14s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((out / "run.json").read_text())
    first = record["limits"]["first"]
    assert first is not None and first["limit"] == "cpu", record["limits"]
    assert not [r for r in record["limits"]["reached"] if r["limit"] != "cpu"], \
        record["limits"]
    if first["component"] == "the machine":
        # more Locust processes on a machine with no core to spare is not the cure
        assert not any(w.endswith("add --workers or lower --users")
                       for w in record["warnings"]), record["warnings"]
