"""Sweep files: expansion into cells, refusals that name the cell, run order, the TIME_WAIT wait."""

from __future__ import annotations

import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from pollbench.actions.sweep import cool_down, fresh_ports, make_plan, port_sets, time_wait_count
from pollbench.actions.sweepfile import SWEEPS_DIR, check_cells, load_sweep
from pollbench.errors import UserError
from pollbench.stack.processes import wait_until
from pollbench.tests.conftest import REPO, free_stack_ports, pollbench_cmd

BASE = """
profile = "seed"
repetitions = 2
warmup = "1s"
cooldown = "1s"
[load]
users = 20
duration = "5s"
"""


def write(tmp_path: Path, body: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(BASE + body)
    return path


def test_grid_expands_to_every_combination_in_order(tmp_path):
    s = load_sweep(str(write(tmp_path, """
[grid]
upstream_keepalive = [0, 16]
users = [20, 40]
""")))
    assert [c.params for c in s.cells] == [
        {"upstream_keepalive": 0, "users": 20}, {"upstream_keepalive": 0, "users": 40},
        {"upstream_keepalive": 16, "users": 20}, {"upstream_keepalive": 16, "users": 40}]
    c = s.cells[3]
    assert c.stack.settings()["upstream_keepalive"] == 16 and c.load.users == 40
    assert c.name == "upstream_keepalive=16, users=40"
    assert c.folder == "c04-upstream_keepalive-16-users-40"


def test_explicit_cells_are_crossed_with_the_grid_and_keep_their_names(tmp_path):
    s = load_sweep(str(write(tmp_path, """
[grid]
users = [20, 40]
[[cells]]
name = "epoll"
use = "epoll"
loop = "uvloop"
[[cells]]
name = "close"
connection = "close"
publish_rate = 5
""")))
    assert [c.name for c in s.cells] == ["epoll, users=20", "epoll, users=40",
                                         "close, users=20", "close, users=40"]
    assert s.cells[0].stack.loop == "uvloop" and s.cells[0].stack.settings()["use"] == "epoll"
    assert s.cells[3].load.connection == "close" and s.cells[3].load.publish_rate == 5.0
    assert s.cells[3].load.users == 40 and s.cells[3].load.duration_s == 5.0


@pytest.mark.parametrize("body,words", [
    ("[grid]\nupstream_keepalive = [0, 200000]\n",
     ["cell 2 (upstream_keepalive=200000)", "upstream_keepalive", "out of range"]),
    ("[grid]\nworker_connections = [1024, \"1024; include /etc/passwd\"]\n",
     ["cell 2", "worker_connections", "not allowed"]),
    ("[grid]\nfrobnicate = [1, 2]\n", ["cell 1", "unknown parameter 'frobnicate'"]),
    ("[grid]\nloop = [\"asyncio\", \"kqueue\"]\n", ["cell 2 (loop=kqueue)", "--loop"]),
    ("[grid]\nusers = [20, 0]\n", ["cell 2 (users=0)", "--users must be 1 or more"]),
    ("[grid]\nusers = [20, 20]\n", ["grid.users lists a value twice"]),
    ("[grid]\nusers = []\n", ["grid.users must be a non-empty list"]),
    ("[grid]\nusers = [20]\n", ["at least two cells"]),
    ("", ["nothing to vary"]),
    ("colour = 1\n[grid]\nusers = [20, 40]\n", ["[load] has unknown setting(s) colour"]),
    ("[[cells]]\nusers = 20\n[[cells]]\nusers = 20\n", ["cell 2", "same configuration as cell 1"]),
    ("[[cells]]\nuse = \"select\"\nworker_connections = 4096\n[[cells]]\nuse = \"epoll\"\n",
     ["cell 1", "1024"]),
])
def test_invalid_sweeps_are_refused_naming_the_cell(tmp_path, body, words):
    with pytest.raises(UserError) as e:
        s = load_sweep(str(write(tmp_path, body)))
        port, backend_port = free_stack_ports()
        check_cells(s, port, backend_port)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("top,words", [
    ("repetitions = 0", "repetitions must be a whole number from 1"),
    ("order = \"random\"", "order 'random' is not one of"),
    ("rank_by = \"speed\"", "rank_by 'speed' is not one of"),
    ("cost_rank_by = \"delivery_latency_p99\"",
     "cost_rank_by 'delivery_latency_p99' is not one of cpu_per_kdelivery_stack"),
    ("warmup = \"10s\"", "the warm-up (10 s) leaves nothing"),
    ("cooldown = \"soon\"", "duration 'soon' does not parse"),
    ("colour = 1", "unknown key(s) colour"),
])
def test_invalid_settings_are_refused(tmp_path, top, words):
    body = BASE.replace("repetitions = 2\n", "").replace('warmup = "1s"\n', "")
    body = body.replace('cooldown = "1s"\n', "")
    path = tmp_path / "s.toml"
    path.write_text(top + "\n" + body + "[grid]\nusers = [20, 40]\n")
    with pytest.raises(UserError) as e:
        load_sweep(str(path))
    assert words in str(e.value)


def test_debian_nginx_with_use_poll_is_refused_naming_cell_and_binary(tmp_path):
    s = load_sweep(str(write(tmp_path, "[grid]\nuse = [\"epoll\", \"poll\"]\n")))
    with pytest.raises(UserError) as e:
        check_cells(s, *free_stack_ports())
    msg = str(e.value)
    assert "cell 2 (use=poll)" in msg and "not supported by" in msg and "nginx" in msg
    assert "pollbench nginx build" in msg


def test_a_bad_sweep_starts_nothing_and_creates_no_folder(tmp_path):
    path = write(tmp_path, "[grid]\nupstream_keepalive = [0, -1]\n")
    out = tmp_path / "sweep-out"
    port, backend_port = free_stack_ports()
    started = time.monotonic()
    proc = subprocess.run(pollbench_cmd("sweep", str(path), "--out", str(out), "--port",
                                        str(port), "--backend-port", str(backend_port)),
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "cell 2" in proc.stderr
    assert not out.exists() and time.monotonic() - started < 20


def test_every_shipped_sweep_parses_and_passes_nginx_t():
    names = sorted(p.stem for p in SWEEPS_DIR.glob("*.toml"))
    assert {"upstream-keepalive", "event-loop", "epoll-tuning", "client-keepalive",
            "nginx-event-method", "example"} <= set(names)
    port, backend_port = free_stack_ports()
    for name in names:
        s = load_sweep(name)
        if s.data.get("nginx_binary") == "built":
            continue  # checked with the built nginx in test_nginx_build.py
        check_cells(s, port, backend_port)
        assert s.description


def test_plan_orders(tmp_path):
    s = load_sweep(str(write(tmp_path, "[grid]\nusers = [20, 30, 40, 50]\n")))
    s.repetitions = 3
    s.order = "interleaved"
    assert [(e["cell"], e["repetition"]) for e in make_plan(s, 0)][:5] == [
        (1, 1), (2, 1), (3, 1), (4, 1), (1, 2)]
    s.order = "sequential"
    assert [e["cell"] for e in make_plan(s, 0)][:4] == [1, 1, 1, 2]
    s.order = "shuffled"
    plans = [make_plan(s, seed) for seed in range(6)]
    for plan in plans:  # every round holds every cell once: drift hits all cells alike
        for r in (1, 2, 3):
            assert sorted(e["cell"] for e in plan if e["repetition"] == r) == [1, 2, 3, 4]
    assert make_plan(s, 3) == make_plan(s, 3)
    assert len({tuple(e["cell"] for e in p) for p in plans}) > 1
    assert Counter(e["run"] for e in plans[0]).most_common(1)[0][1] == 1


def leave_time_wait(port: int = 0) -> int:
    """A closed connection to ``port`` (0: any free one) left in TIME_WAIT; its port."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    client.close()  # the side that closes first keeps the TIME_WAIT
    conn.close()
    server.close()
    assert wait_until(lambda: time_wait_count({port}) >= 1, 5)
    return port


def test_time_wait_sockets_are_counted_and_waited_for(tmp_path, monkeypatch):
    port = leave_time_wait()
    s = load_sweep(str(write(tmp_path, "[grid]\nusers = [20, 40]\n")))
    s.cooldown, s.cooldown_max_s = "time-wait", 0.6
    notes = []
    waited = cool_down(s, {port}, log=notes.append)
    assert waited["time_wait_at_start"] >= 1 and waited["time_wait_left"] >= 1
    assert 0.5 <= waited["waited_s"] < 5 and "TIME_WAIT" in notes[-1]
    # nothing to wait for: no wait at all.  Asked of the sleeps, not of the clock: counting
    # the sockets alone took 0.95 s or more on a slow machine full of them (waited_s 1.0)
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    nothing = cool_down(s, {1}, log=notes.append)
    assert nothing["time_wait_at_start"] == 0 and nothing["time_wait_left"] == 0
    assert sleeps == []


def without_cooldown(tmp_path: Path) -> Path:
    path = write(tmp_path, "[grid]\nusers = [20, 40]\n")
    path.write_text(path.read_text().replace('cooldown = "1s"\n', ""))
    return path


def test_fresh_ports_skip_the_port_sets_that_time_wait_sockets_hold(tmp_path, monkeypatch):
    import pollbench.actions.sweep as sweep_module

    monkeypatch.setattr(sweep_module, "FRESH_PORTS_SETTLE_S", 0.0)
    # what was waited for, by the sleeps themselves (counting sockets takes longer on a busy
    # machine: a duration would make this test pass or fail by the machine's load)
    sleeps: list[float] = []
    real_sleep = time.sleep
    monkeypatch.setattr(sweep_module.time, "sleep",
                        lambda seconds: (sleeps.append(seconds), real_sleep(seconds)))
    s = load_sweep(str(without_cooldown(tmp_path)))
    assert s.cooldown == "fresh-ports" and s.repetitions == 2  # this file says 2
    port, backend = free_stack_ports()
    sets = port_sets(s, port + 10, backend + 20)
    assert sets == [(port + 10 + i, backend + 20 + 4 * i) for i in range(4)]
    leave_time_wait(sets[1][1] + 2)  # a backend port of set 1 still holds a socket
    notes: list[str] = []
    choice, note = fresh_ports(s, sets, 0, log=notes.append)
    assert choice == 2 and note["ports"] == list(sets[2]) and note["time_wait_left"] == 0
    assert note["time_wait_on_port_sets"] >= 1 and not notes
    assert sleeps == [0.0]  # only the settle: nothing was waited for
    # every set held: wait for the one used longest ago, at most cooldown_max
    for n, _ in sets:
        leave_time_wait(n)
    s.cooldown_max_s = 0.5
    sleeps.clear()
    choice, note = fresh_ports(s, sets, 3, log=notes.append)
    assert choice == 0 and note["time_wait_left"] >= 1 and note["waited_s"] >= 0.4
    # at most one 1-s wait (none when counting the sockets alone outlasted cooldown_max),
    # then the settle: cooldown_max (0.5 s) ends the wait
    assert sleeps[-1] == 0.0 and sleeps[:-1] in ([], [1.0])
    assert "cooldown_max" in notes[-1]


def test_fresh_port_sets_that_overlap_are_refused(tmp_path):
    s = load_sweep(str(without_cooldown(tmp_path)))
    with pytest.raises(UserError, match="rotates over 4 port sets .* overlap"):
        port_sets(s, 8080, 8078)
    s.cooldown = "time-wait"
    assert port_sets(s, 8080, 8072) == [(8080, 8072)]


def test_shipped_sweeps_repeat_every_cell_at_least_four_times():
    for path in sorted(SWEEPS_DIR.glob("*.toml")):
        s = load_sweep(str(path))
        assert s.repetitions >= 4 and s.cooldown == "fresh-ports", path.name


def test_cells_are_ranked_within_their_load_level(tmp_path):
    s = load_sweep(str(write(tmp_path, """
[grid]
users = [20, 40]
[[cells]]
use = "epoll"
upstream_keepalive = 0
[[cells]]
use = "epoll"
upstream_keepalive = 16
""")))
    assert s.rank_within == ["users"]  # users is a load level; the nginx knob is what is compared
    assert [c.rank_group(s.rank_within) for c in s.cells] == [
        "users=20", "users=40", "users=20", "users=40"]
    bad = tmp_path / "bad.toml"
    bad.write_text('rank_within = ["use"]\n' + BASE + "[grid]\nusers = [20, 40]\n")
    with pytest.raises(UserError, match="rank_within must list parameters the cells vary"):
        load_sweep(str(bad))


def test_the_shipped_tuning_sweeps_rank_on_the_cost_their_settings_change():
    from pollbench.paths import SWEEPS_DIR

    nginx = load_sweep(str(SWEEPS_DIR / "epoll-tuning.toml"))
    loops = load_sweep(str(SWEEPS_DIR / "event-loop.toml"))
    assert (nginx.rank_by, nginx.cost_rank_by) == ("delivery_latency_p99",
                                                   "cpu_per_krequest_nginx")
    assert loops.cost_rank_by == "cpu_per_krequest_backends"
