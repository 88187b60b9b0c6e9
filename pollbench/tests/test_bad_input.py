"""Bad input a user may hand pollbench: one line on stderr that says what to fix, exit 2,
no traceback, and nothing created."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from pollbench.stack.net import answers
from pollbench.stack.processes import wait_until
from pollbench.tests.children import Child
from pollbench.tests.conftest import REPO, free_stack_ports, pollbench_cmd


def refused(*args: str, cwd=REPO) -> str:
    proc = subprocess.run(pollbench_cmd(*args), capture_output=True, text=True, cwd=cwd,
                          timeout=60)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("content, says", [
    ("extends = \"{self}\"\n", "extends loops back on itself"),
    ("extends = 5\n", "extends must be a profile name or a .toml path"),
    (b"description = \"caf\xe9\"\n", "not UTF-8 text"),
])
def test_broken_profiles_are_refused_before_anything_starts(tmp_path, content, says):
    profile = tmp_path / "mine.toml"
    if isinstance(content, bytes):
        profile.write_bytes(content)
    else:
        profile.write_text(content.format(self=profile))
    line = refused("up", "--profile", str(profile), "--out", str(tmp_path / "x"))
    assert says in line and str(profile) in line
    assert not (tmp_path / "x").exists()


def test_two_profiles_extending_each_other_are_refused(tmp_path):
    (tmp_path / "a.toml").write_text(f'extends = "{tmp_path / "b.toml"}"\n')
    (tmp_path / "b.toml").write_text(f'extends = "{tmp_path / "a.toml"}"\n[nginx]\ngzip = false\n')
    assert "loops back" in refused("up", "--profile", str(tmp_path / "a.toml"))


def test_an_out_folder_that_cannot_be_created_is_one_line(tmp_path):
    port, backend_port = free_stack_ports()
    line = refused("run", "--out", "/dev/null/x", "--port", str(port), "--backend-port",
                   str(backend_port), "--duration", "1s")
    assert "cannot create the folder /dev/null/x" in line


def summary(value=1.0) -> dict:
    return {"schema_version": 1, "metrics": {"delivery_latency_p50": {"value": value}}}


@pytest.mark.parametrize("side, says", [
    ({"schema_version": 1, "kind": "baseline"}, 'a baseline needs a non-empty "runs" list'),
    ({"schema_version": 1, "kind": "baseline", "runs": [1, 2]},
     'runs[0]: a run summary must be an object with a "metrics" object'),
    ({"schema_version": 1, "metrics": "x"}, 'must be an object with a "metrics" object'),
    ({"schema_version": 1, "metrics": {"delivery_latency_p50": {"value": "fast"}}},
     "metric 'delivery_latency_p50' must be an object with a numeric"),
])
def test_compare_refuses_malformed_summaries_and_baselines(tmp_path, side, says):
    (tmp_path / "bad.json").write_text(json.dumps(side))
    (tmp_path / "good.json").write_text(json.dumps(summary()))
    assert says in refused("compare", str(tmp_path / "bad.json"), str(tmp_path / "good.json"))


def test_compare_output_into_a_missing_folder_is_refused_before_comparing(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(summary()))
    line = refused("compare", str(tmp_path / "a.json"), str(tmp_path / "a.json"), "--output",
                   str(tmp_path / "missing" / "verdict.txt"))
    assert f"the folder {tmp_path / 'missing'} does not exist" in line


def test_check_refuses_a_baseline_that_is_not_an_object(tmp_path):
    (tmp_path / "b.json").write_text("[1, 2]")
    port, backend_port = free_stack_ports()
    line = refused("check", "--baseline", str(tmp_path / "b.json"), "--port", str(port),
                   "--backend-port", str(backend_port))
    assert "is not a pollbench baseline" in line
    assert not list((tmp_path).glob("*check*"))


@pytest.mark.parametrize("field, value", [("started_at", "yesterday"), ("parameters", [1]),
                                          ("status", 3), ("warnings", "none")])
def test_report_refuses_a_run_json_with_wrong_types(tmp_path, field, value):
    run = tmp_path / "run"
    run.mkdir()
    info = {"schema_version": 1, "kind": "run", "status": "complete", "complete": True,
            "started_at": 1.0, "ended_at": 2.0, "parameters": {}, "stack": {}, "warnings": []}
    info[field] = value
    (run / "run.json").write_text(json.dumps(info))
    line = refused("report", str(run))
    assert f"'{field}' must be" in line and "damaged" in line
    assert not (run / "report").exists()


def test_a_sweep_with_an_infinite_duration_is_refused(tmp_path):
    sweep = tmp_path / "s.toml"
    sweep.write_text("profile = \"seed\"\n[load]\nduration = inf\n[grid]\nusers = [10, 20]\n")
    line = refused("sweep", str(sweep), "--check")
    assert "duration must be a finite number" in line


def test_two_runs_on_the_same_ports_at_the_same_instant_one_is_refused(tmp_path):
    port, backend_port = free_stack_ports()
    cmds = [pollbench_cmd("up", "--port", str(port), "--backend-port", str(backend_port),
                          "--out", str(tmp_path / f"up{i}")) for i in range(2)]
    procs = [Child(c, cwd=REPO) for c in cmds]
    try:
        assert wait_until(lambda: any(p.poll() is not None for p in procs), 40), \
            "neither was refused"
        refused_one = next(p for p in procs if p.poll() is not None)
        err = refused_one.output.wait_closed(10)
        assert refused_one.returncode == 2, err
        assert "claimed by another pollbench run" in err or "already in use" in err, err
        other = procs[1 - procs.index(refused_one)]
        assert other.poll() is None  # the first one runs on, healthy
        assert wait_until(lambda: answers(f"http://127.0.0.1:{port}/healthz"), 30)
    finally:
        for p in procs:
            p.stop(signal.SIGINT, 30)


def test_a_thresholds_file_that_is_not_utf8_is_one_line(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(summary()))
    (tmp_path / "t.toml").write_bytes(b"[defaults]\nthreshold = 0.1 # \xff\n")
    line = refused("compare", str(tmp_path / "a.json"), str(tmp_path / "a.json"),
                   "--thresholds", str(tmp_path / "t.toml"))
    assert "is not UTF-8 text" in line


def test_a_postgresql_history_without_its_driver_is_one_line(tmp_path):
    """Without psycopg installed (hidden here), --history postgresql://... is refused in one
    line naming the extra to install, not a ModuleNotFoundError traceback."""
    code = ("import sys; sys.modules['psycopg'] = None; from pollbench.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "run", "--history",
                           "postgresql://bench@127.0.0.1:5432/results", "--out",
                           str(tmp_path / "x")],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "pip install 'pollbench[postgresql]'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_an_address_this_host_does_not_have_is_named_as_such():
    port, backend_port = free_stack_ports()
    line = refused("up", "--bind", "192.0.2.7", "--port", str(port), "--backend-port",
                   str(backend_port))  # TEST-NET-1: never an address of this host
    assert "is not an address of this host" in line and "already in use" not in line


def test_a_master_name_that_does_not_resolve_is_said_at_once():
    started = time.monotonic()
    line = refused("worker", "--master", "no-such-host.invalid:5557", "--once")
    assert "does not resolve" in line and time.monotonic() - started < 30


@pytest.mark.parametrize("command", ["run", "ui", "sweep"])
def test_more_channels_than_the_target_holds_is_refused_by_every_command(tmp_path, command):
    """One preflight: the same check, the same line, whichever command starts the stack."""
    port, backend_port = free_stack_ports()
    ports = ["--port", str(port), "--backend-port", str(backend_port)]
    if command == "sweep":
        sweep = tmp_path / "s.toml"
        sweep.write_text("profile = \"seed\"\n[load]\nduration = \"20s\"\nusers = 10\n"
                         "[grid]\nchannels = [5, 100000]\n")
        line = refused("sweep", str(sweep), *ports, "--out", str(tmp_path / "r"))
        assert "channels=100000" in line
    else:
        line = refused(command, "--channels", "100000", "--users", "10", *ports,
                       "--out", str(tmp_path / "r"))
    assert "--channels 100000 is more than the target holds (40,000" in line
    assert not (tmp_path / "r").exists()


def test_probable_mistakes_are_warned_about_before_the_start(capsys):
    from pollbench.stack.loadgen import LoadSpec
    from pollbench.stack.preflight import preflight
    from pollbench.stack.spec import StackSpec

    port, backend_port = free_stack_ports()
    spec = StackSpec(port=port, backend_port=backend_port)
    warnings = preflight(spec, LoadSpec(users=11, channels=50, workers=64)).warnings
    assert any("40 channels have no subscriber" in w for w in warnings)
    assert any("--workers 64 on a machine with" in w for w in warnings)
    assert capsys.readouterr().err.count("WARNING:") == 2
    assert preflight(spec, LoadSpec(users=200, channels=10)).warnings == []


@pytest.mark.parametrize("args, says", [
    (["--state", "redis", "--redis", "redis://127.0.0.1:1/0"], "Redis does not answer"),
    (["--state", "redis", "--redis", "http://127.0.0.1:6379"], "is not a Redis URL"),
    (["--redis", "redis://127.0.0.1:6379/0"], "--redis URL needs --state redis"),
    (["--state", "redis", "--redis-port", "80"], "--redis-port 80 must be from 1024"),
])
def test_redis_that_cannot_serve_the_run_is_refused_before_anything_starts(tmp_path, args,
                                                                           says):
    port, backend_port = free_stack_ports()
    line = refused("run", *args, "--port", str(port), "--backend-port", str(backend_port),
                   "--out", str(tmp_path / "r"))
    assert says in line and not (tmp_path / "r").exists()


def test_a_redis_knob_out_of_range_names_the_profile_and_the_knob(tmp_path):
    profile = tmp_path / "mine.toml"
    profile.write_text('extends = "shared"\n[redis]\nio_threads = 99\n')
    line = refused("up", "--profile", str(profile), "--out", str(tmp_path / "x"))
    assert "redis knob io_threads: 99 is out of range" in line and str(profile) in line
