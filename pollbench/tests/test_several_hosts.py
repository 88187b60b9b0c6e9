"""Runs across hosts: the target on its own host (up --bind + agent), Locust workers on load
hosts (pollbench worker), the controller (run --target --agent --expect-workers).

The proof runs in network namespaces joined by a bridge (root, as CI is): one "host" each
for the target, the controller and two workers, each with its own address; everything is
torn down when the test ends, failed or not.  Bad input is refused in one line, before
anything starts.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pollbench.stack import netns
from pollbench.stack.agent import Agent, new_token
from pollbench.stack.net import find_free_ports
from pollbench.stack.processes import wait_until
from pollbench.tests.conftest import REPO, pollbench_cmd

TOKEN = "test-token-" + "x" * 16


def refused(*args: str, env: dict | None = None) -> str:
    """Run pollbench, expect exit 2 with one line on stderr; return that line."""
    proc = subprocess.run(pollbench_cmd(*args), capture_output=True, text=True, cwd=REPO,
                          timeout=60, env=env)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def remote_args(target: str, agent: str, *extra: str) -> list[str]:
    return ["run", "--target", target, "--agent", agent, "--agent-token", TOKEN,
            "--expect-workers", "1", "--users", "4", "--duration", "2s", *extra]


def test_bad_input_is_refused_in_one_line_before_anything_starts(tmp_path):
    free = find_free_ports(2)
    target, agent = f"http://127.0.0.1:{free}", f"http://127.0.0.1:{free + 1}"
    assert "--target, --agent and --expect-workers together" in refused(
        "run", "--target", target, "--agent", agent, "--users", "4")
    # --target alone is a service already running: asked once, refused when it is not there
    assert "does not answer GET /channels/pollbenchprobe" in refused(
        "run", "--target", target, "--users", "4")
    assert "must be http://HOST:PORT" in refused(*remote_args("127.0.0.1:80", agent))
    assert "must be http://HOST:PORT" in refused(*remote_args(target, f"{agent}/v1"))
    assert "--expect-workers must be from 1" in refused(
        *remote_args(target, agent)[:-6], "--expect-workers", "0")
    assert "--workers starts worker processes on this host" in refused(
        *remote_args(target, agent, "--workers", "2"))
    assert "is not an IPv4 address" in refused(*remote_args(target, agent, "--master-bind",
                                                             "example.com"))
    env = {k: v for k, v in os.environ.items() if k != "POLLBENCH_AGENT_TOKEN"}
    args = remote_args(target, agent)
    args.remove("--agent-token")
    args.remove(TOKEN)
    assert "needs the agent's token" in refused(*args, env=env)
    assert "does not answer" in refused(*remote_args(target, agent))
    assert "is not an IPv4 address" in refused("up", "--bind", "localhost")
    assert "at least 16 characters" in refused("up", "--bind", "127.0.0.1",
                                               "--agent-token", "short")
    assert "--master" in refused("worker", "--master", "host:notaport")
    assert not list(Path(REPO / "results").glob("*-channels-*4u*"))  # no run folder


def test_a_wrong_token_and_a_target_that_is_not_pollbench_are_refused(tmp_path):
    token = new_token()
    with Agent(tmp_path, token, {"pollbench": "0.1.0", "alive": True}) as a:
        args = remote_args(a.url, a.url)
        args[args.index(TOKEN)] = "y" * 20
        assert "refused the token" in refused(*args)
        # the agent's own port as the "target": it answers, but not as a pollbench stack
        args = remote_args(a.url, a.url)
        args[args.index(TOKEN)] = token
        assert "is not a pollbench stack" in refused(*args)


def start_in(hosts, host: str, log: Path, args, env: dict,
             procs: list[subprocess.Popen]) -> tuple[subprocess.Popen, Path]:
    """``pollbench args`` inside namespace ``host``, its output in ``log``; kept in procs."""
    with log.open("w") as out:  # the child has its own copy of the descriptor
        proc = subprocess.Popen(hosts.cmd(host, pollbench_cmd(*args)), cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    procs.append(proc)
    return proc, log


def stop_all(procs: list[subprocess.Popen], sig: int) -> None:
    """``sig`` to every process group still running, then SIGKILL after 20 s."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    def seen() -> bool:
        if path.exists() and text in path.read_text(errors="replace"):
            return True
        if proc.poll() is not None:
            pytest.fail(f"{proc.args!r} exited with {proc.returncode}:\n{path.read_text()}")
        return False

    if not wait_until(seen, timeout, interval=0.2):
        pytest.fail(f"no {text!r} in {path} within {timeout} s:\n{path.read_text()}")


@pytest.mark.slow
def test_a_run_across_four_namespaces(tmp_path):
    """Target, controller and two workers, each in its own namespace: the run delivers
    exactly once and in order, its folder holds the target's samples and access log pulled
    from the agent, and its report is drawn from them; a second run that loses a worker says so.
    Where namespaces cannot be made this fails (CI must test the distributed path; .ci/run
    installs iproute2 and runs as root), never skips in silence."""
    why_not = netns.available()
    if why_not is not None:
        pytest.fail(f"{why_not}: run the tests as root with iproute2 installed "
                    "(scripts/bootstrap.sh --test installs it)")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs: list[subprocess.Popen] = []

    def start(hosts, host: str, name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        return start_in(hosts, host, tmp_path / f"{name}.log", args, env, procs)

    with netns.Hosts(["target", "controller", "w1", "w2"]) as hosts:
        try:
            t, c = hosts.address("target"), hosts.address("controller")
            up, up_log = start(hosts, "target", "up", "up", "--bind", t, "--port", "8080",
                               "--backend-port", "8000", "--agent-port", "9100",
                               "--agent-token", TOKEN, "--out", str(tmp_path / "up"))
            # w1 binds its connections to its own address, as a host with several would
            workers = [start(hosts, w, w, "worker", "--master", f"{c}:5557", "--max-runs", "2",
                             *(["--source-addresses", hosts.address(w)] if w == "w1" else []))
                       for w in ("w1", "w2")]
            _wait_for(up_log, "Ctrl-C stops everything", up, 60)
            remote = ["--target", f"http://{t}:8080", "--agent", f"http://{t}:9100",
                      "--agent-token", TOKEN, "--expect-workers", "2", "--master-bind", c,
                      "--users", "40", "--spawn-rate", "40", "--channels", "4",
                      "--publish-rate", "20", "--poll-timeout", "2"]
            run = tmp_path / "run"
            proc = subprocess.run(hosts.cmd("controller", pollbench_cmd(
                "run", *remote, "--duration", "6s", "--out", str(run))), cwd=REPO, env=env,
                capture_output=True, text=True, timeout=180)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            info = json.loads((run / "run.json").read_text())
            assert info["status"] == "complete"
            lg = info["loadgen"]
            assert lg["delivered"] > 200
            assert (lg["lost"], lg["duplicates"], lg["failures"]) == (0, 0, 0)
            assert len(info["distributed"]["workers_joined"]) == 2
            assert sorted(w["source_addresses"] for w in info["distributed"]["workers_joined"]
                          ) == [[], [hosts.address("w1")]]  # each load host's own, recorded
            assert info["distributed"]["workers_lost"] == []
            for worker, cpu in info["distributed"]["workers_cpu_percent"].items():
                assert 1 < cpu < 100, (worker, cpu)  # each worker's own count, per second
            assert set(info["clock"]["workers"]) == {
                w["node"] for w in info["distributed"]["workers_joined"]}
            for off in info["clock"]["workers"].values():  # one machine: one clock
                assert abs(off["offset_s"]) <= off["uncertainty_s"] + 0.002
                assert off["measured"] == ["after", "before"]
            with (run / "samples" / "processes.csv").open() as f:
                components = {row["component"] for row in csv.DictReader(f)}
            assert {"nginx", "backend-0", "system", "loadgen", "controller-system"} <= components
            access = (run / "nginx" / "logs" / "access.jsonl").read_text().splitlines()
            assert len(access) > 100 and '"status"' in access[0]
            assert (run / "samples" / "stub_status.csv").read_text().count("\n") > 2
            # the run's own report, from what was pulled from the agent
            assert (run / "report" / "charts" / "resources.png").exists()
            assert (run / "report" / "charts" / "connection_reuse.png").exists()

            # the second run loses w2 mid-run: said in run.json and in the report
            run2 = tmp_path / "run2"
            ctl = subprocess.Popen(hosts.cmd("controller", pollbench_cmd(
                "run", *remote, "--duration", "12s", "--out", str(run2))), cwd=REPO, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            procs.append(ctl)
            _wait_for(run2 / "metrics" / "progress.json", '"users": 40', ctl, 90)
            w2 = workers[1][0]
            os.killpg(w2.pid, signal.SIGKILL)
            out, _ = ctl.communicate(timeout=180)
            info = json.loads((run2 / "run.json").read_text())
            assert info["status"] == "complete", out
            assert len(info["distributed"]["workers_lost"]) == 1, out
            assert any("lost mid-run" in w for w in info["warnings"])
            summary = (run2 / "report" / "summary.md").read_text()
            assert "lost mid-run" in summary
            assert workers[0][0].wait(60) == 0  # w1 served its 2 runs and left
            assert "the master ended the run" in workers[0][1].read_text()

            # no worker comes: the controller gives up after --workers-timeout, in one line
            proc = subprocess.run(hosts.cmd("controller", pollbench_cmd(
                "run", *remote, "--workers-timeout", "3", "--duration", "5s",
                "--out", str(tmp_path / "run3"))), cwd=REPO, env=env, capture_output=True,
                text=True, timeout=120)
            assert proc.returncode == 3, proc.stdout + proc.stderr
            assert (f"only 0 of 2 workers connected within 3 s: run `pollbench worker "
                    f"--master {c}:5557` on each load host") in proc.stderr
            assert json.loads((tmp_path / "run3" / "run.json").read_text())["status"] == \
                "failed"
        finally:
            stop_all(procs, signal.SIGINT)


@pytest.mark.serial  # imports Locust's runners here: gevent patches this process's threads
def test_the_master_refuses_a_worker_of_another_pollbench_version():
    """The master's side of the version check (loadtests.hosts), without a master."""
    from types import SimpleNamespace

    from loadtests.hosts import REFUSE_TYPE, MasterWorkers, pollbench_version

    sent = []
    master = MasterWorkers(SimpleNamespace(
        send_message=lambda kind, data, client_id: sent.append((kind, data, client_id))), None)
    same = SimpleNamespace(node_id="a" * 32, data={"pollbench": pollbench_version(),
                                                   "host": "load-1"})
    master.on_hello(None, same)
    assert sent == [] and master.workers["a" * 32]["host"] == "load-1"
    other = SimpleNamespace(node_id="b" * 32, data={"pollbench": "0.0.1", "host": "load-2"})
    master.on_hello(None, other)
    (kind, data, client), = sent
    assert (kind, client) == (REFUSE_TYPE, "b" * 32)
    assert "pollbench 0.0.1 on load-2" in data["reason"]
    assert f"{pollbench_version()} on the master" in data["reason"]


def test_pollbench_worker_stops_with_exit_2_when_refused(tmp_path, capsys):
    """What the worker prints and returns when its Locust says the master refused it."""
    from pollbench.actions import worker as w

    script = tmp_path / "fake_locust.py"
    script.write_text(
        "import sys\n"
        f"print('[x] INFO/pollbench: {w.CONNECTED_MARK} 10.0.0.7:5557 (pollbench 9)')\n"
        f"print('[x] ERROR/pollbench: {w.REFUSED_MARK} pollbench 9 on h but 1 on the master')\n")
    assert w._round([sys.executable, str(script)]) == "refused"
    out = capsys.readouterr().out
    assert "pollbench worker: refused by the master: pollbench 9 on h but 1" in out
    script.write_text("print('nothing')\n")
    assert w._round([sys.executable, str(script)]) == "no master"


SWEEP = """\
description = "a fault on a target host of its own"
profile = "seed"
repetitions = 1
order = "sequential"
warmup = "1s"
cooldown = "fresh-ports"
cooldown_max = "5s"
[load]
scenario = "channels"
users = 24
spawn_rate = 24
duration = "5s"
channels = 4
publish_rate = 20
poll_timeout = 2
[[cells]]
name = "no fault"
[[cells]]
name = "kill backend-1"
faults = ["2s:kill=1s:backend-1"]
"""


@pytest.mark.slow
def test_a_sweep_with_a_fault_on_a_target_host_survives_its_controllers_death(tmp_path):
    """``pollbench agent`` on the target, two worker hosts, a controller: a 2-cell sweep
    (one cell kills a backend) is started, its controller killed in its first run; the
    target is idle once the lease runs out, and ``--resume`` from a new controller
    finishes the sweep: both run folders, the fault's record, the ranking."""
    why_not = netns.available()
    if why_not is not None:
        pytest.fail(f"{why_not}: run the tests as root with iproute2 installed "
                    "(scripts/bootstrap.sh --test installs it)")
    env = dict(os.environ, PYTHONPATH=str(REPO), POLLBENCH_AGENT_TOKEN=TOKEN)
    sweep_file = tmp_path / "remote-fault.toml"
    sweep_file.write_text(SWEEP)
    procs: list[subprocess.Popen] = []

    def start(hosts, host: str, name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        return start_in(hosts, host, tmp_path / f"{name}.log", args, env, procs)

    with netns.Hosts(["target", "controller", "w1", "w2"]) as hosts:
        try:
            t, c = hosts.address("target"), hosts.address("controller")
            agent, agent_log = start(hosts, "target", "agent", "agent", "--bind", t,
                                     "--port", "8080", "--backend-port", "8000",
                                     "--agent-port", "9100", "--read-token", "r" * 24,
                                     "--out", str(tmp_path / "agent"))
            _wait_for(agent_log, "Ctrl-C stops everything", agent, 60)
            workers = [start(hosts, w, w, "worker", "--master", f"{c}:5557")
                       for w in ("w1", "w2")]
            out = tmp_path / "sweep"
            sweep = ["sweep", str(sweep_file), "--target", f"http://{t}:8080", "--agent",
                     f"http://{t}:9100", "--expect-workers", "2", "--master-bind", c,
                     "--agent-lease", "3", "--out", str(out)]
            ctl, ctl_log = start(hosts, "controller", "controller", *sweep)
            _wait_for(out / "c01-no-fault" / "rep-1" / "metrics" / "progress.json",
                      '"users": 24', ctl, 90)
            os.killpg(ctl.pid, signal.SIGKILL)  # the controller and its Locust master
            killed = time.monotonic()
            _wait_for(agent_log, "ran out", agent, 15)
            idle_after = time.monotonic() - killed
            assert idle_after < 3 + 2, idle_after  # the lease, the watchdog, the stop
            _wait_for(agent_log, "ran out); idle", agent, 15)
            left = {" ".join(psutil.Process(p).cmdline()[:3]) for p in
                    hosts.pids(hosts.ns("target")) if psutil.pid_exists(p)}
            assert not [c for c in left if "target_app" in c or "nginx" in c], left
            for w, _ in workers:  # their master is gone: new workers for the new controller
                os.killpg(w.pid, signal.SIGKILL)
            for w in ("w1", "w2"):
                start(hosts, w, f"{w}-again", "worker", "--master", f"{c}:5557")
            proc = subprocess.run(hosts.cmd("controller", pollbench_cmd(
                *sweep[:-2], "--resume", "--out", str(out))), cwd=REPO, env=env,
                capture_output=True, text=True, timeout=240)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            manifest = json.loads((out / "manifest.json").read_text())
            assert manifest["status"] == "complete"
            assert [e["status"] for e in manifest["plan"]] == ["complete", "complete"]
            assert manifest["plan"][0]["attempts"] == 2 and manifest["plan"][0]["aborted"]
            assert [r["label"] for r in manifest["ranking"]["rows"]] and manifest["report"]
            for cell in ("c01-no-fault", "c02-kill-backend-1"):
                info = json.loads((out / cell / "rep-1" / "run.json").read_text())
                assert info["status"] == "complete", cell
                assert info["distributed"]["agent_kind"] == "pollbench agent"
                assert len(info["distributed"]["workers_joined"]) == 2
                assert (out / cell / "rep-1" / "nginx" / "logs" / "access.jsonl").stat().st_size
                assert info["loadgen"]["delivered"] > 50
            faulted = json.loads((out / "c02-kill-backend-1" / "rep-1" / "run.json").read_text())
            fault, = faulted["faults"]
            assert fault["ok"] and fault["action"] == "kill" and "restarted" in fault["detail"]
            assert abs(fault["started_at"] - fault["target_started_at"]) < 0.05  # one clock
            assert 2 < fault["started_at"] - faulted["started_at"] < 30  # 2 s into the load
            assert faulted["distributed"]["stack_reused"] is True  # cell 2: the same stack
            assert "stack" in faulted and faulted["stack"]["backends"] == 4
            assert "stopped by" in agent_log.read_text().splitlines()[-1]  # idle at the end
        finally:
            stop_all(procs, signal.SIGTERM)
