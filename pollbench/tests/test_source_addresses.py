"""Connections beyond one source address: each (source, destination) pair has the kernel's
ephemeral range of ports, so a load host holds more connections than the range has ports by
spreading them over source addresses, on both hops (the load generator to nginx:
--source-addresses; nginx to the backends: the knob upstream_sources), chosen on loopback when
the load needs them and counted before the run.

The proof runs in a network namespace whose range is narrowed to 1,000 ports (root, as CI
is): 2,500 subscribers hold through nginx with the addresses spread and fail, named, with
one."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.limits import nginx_error_category
from loadtests.leanhttp import LeanConnection
from loadtests.options import parse_source_addresses
from pollbench.stack import capacity, netns, nginx_config
from pollbench.stack.loadgen import LoadSpec
from pollbench.stack.net import local_port_range
from pollbench.stack.preflight import with_sources, with_upstream_sources
from pollbench.stack.spec import StackSpec
from pollbench.tests.conftest import REPO, free_stack_ports, pollbench_cmd
from pollbench.tests.test_bad_input import refused

NARROW = (40000, 40999)  # 1,000 ports


def test_source_addresses_read_as_lists_and_cidr_ranges():
    assert parse_source_addresses("127.0.0.2, 127.0.0.3,127.0.0.2") == ["127.0.0.2", "127.0.0.3"]
    assert parse_source_addresses("127.0.0.0/29") == [f"127.0.0.{i}" for i in range(1, 7)]
    assert parse_source_addresses("10.0.0.5/32,10.0.0.9") == ["10.0.0.5", "10.0.0.9"]
    assert parse_source_addresses("") == []
    with pytest.raises(ValueError, match="'127.0.0.300' is not an IPv4 address or CIDR"):
        parse_source_addresses("127.0.0.1,127.0.0.300")


@pytest.mark.parametrize("given, says", [
    ("127.0.0.1,nonsense", "--source-addresses 'nonsense' is not an IPv4 address or CIDR"),
    ("192.0.2.7", "--source-addresses: 192.0.2.7 is not an address of this host"),
])
def test_bad_source_addresses_are_refused_before_anything_starts(tmp_path, given, says):
    port, backend_port = free_stack_ports()
    line = refused("run", "--source-addresses", given, "--port", str(port), "--backend-port",
                   str(backend_port), "--out", str(tmp_path / "run"))
    assert says in line
    assert not (tmp_path / "run").exists()


def test_a_workers_refuses_an_address_of_another_host():
    line = refused("worker", "--master", "127.0.0.1:5557", "--source-addresses", "192.0.2.7")
    assert "--source-addresses: 192.0.2.7 is not an address of this host" in line


def test_connections_take_the_addresses_in_turn_and_a_load_hosts_own_list_wins():
    """Each new connection the next address of the run's list; on a load host started with
    pollbench worker --source-addresses (the environment), that host's list instead."""
    script = (
        "import os, types\n"
        "import locust  # patches, as in a run\n"
        "from loadtests import users\n"
        "opts = types.SimpleNamespace(pb_source_addresses='127.0.0.2,127.0.0.3')\n"
        "print([users.next_source(opts) for _ in range(3)])\n"
        "os.environ[users.SOURCE_ENV] = '127.0.0.9'\n"
        "print([users.next_source(opts) for _ in range(2)])\n"
        "print(users.next_source(types.SimpleNamespace(pb_source_addresses='')))\n")
    env = {k: v for k, v in os.environ.items() if k != "POLLBENCH_SOURCE_ADDRESSES"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["['127.0.0.2', '127.0.0.3', '127.0.0.2']",
                                        "['127.0.0.9', '127.0.0.9']", "127.0.0.9"]


def test_a_connection_leaves_from_the_source_address_it_was_given():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        conn = LeanConnection("127.0.0.1", server.getsockname()[1], source="127.0.0.7")
        conn.sock = conn._connect()
        peer, _ = server.accept()
        with peer:
            assert peer.getpeername()[0] == "127.0.0.7"
        conn.close()


def test_the_preflight_spreads_each_hop_only_when_one_address_fills_up():
    # each address's ports kept below 40 % in use: past half, every connect() searches them
    load = LoadSpec(users=2501, channels=10)
    spread = with_sources(load, "http://127.0.0.1:8080", NARROW)
    assert spread.sources() == [f"127.0.0.{i}" for i in range(1, 8)]  # 2,517 / 400
    assert with_sources(load, "http://127.0.0.1:8080", (32768, 60999)).sources() == []
    # a target on another host: the kernel's choice, and the capacity check says what to do
    assert with_sources(load, "http://10.1.2.3:8080", NARROW).sources() == []
    # 2,500 polls on 2 backends (key hash over 10 channels): 1,250 each, 4 upstream sources
    spec = StackSpec(profile="longpoll", backends=2)
    assert with_upstream_sources(spec, load, NARROW).settings()["upstream_sources"] == 4
    assert with_upstream_sources(spec, load, (32768, 60999)).settings().get(
        "upstream_sources") is None
    settings = StackSpec(profile="longpoll", backends=2).settings()
    one = capacity.port_warnings(settings, "local", with_sources(
        LoadSpec(users=2501, channels=10, source_addresses="127.0.0.1"), "", NARROW), NARROW)
    assert len(one) == 2
    assert "from each of its 1 source address(es); ip_local_port_range 40000-40999 gives " \
           "1,000 ports" in one[0] and "--source-addresses with 3 or more" in one[0]
    assert "upstream_sources" in one[1]
    assert capacity.port_warnings(settings | {"upstream_sources": 2}, "local", spread,
                                  NARROW) == []


def test_upstream_sources_render_a_config_nginx_accepts(tmp_path):
    settings = nginx_config.validate({**nginx_config.load_profile("longpoll"),
                                      "upstream_sources": 3})
    paths = nginx_config.RenderPaths.for_prefix(tmp_path)
    text = nginx_config.render(settings, paths, 8080, [8000, 8001, 8002, 8003])
    assert "proxy_bind $pollbench_upstream_source;" in text
    assert "33.33% 127.0.0.1;" in text and "* 127.0.0.3;" in text
    for sub in ("logs", "temp"):
        (tmp_path / sub).mkdir()
    (tmp_path / "nginx.conf").write_text(text)
    proc = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(Exception, match="upstream_sources: 255 is out of range"):
        nginx_config.validate({"upstream_sources": 255})


def test_nginx_running_out_of_ports_to_a_backend_is_its_own_category():
    line = ("2026/12/04 21:40:01 [crit] 123#123: *5 connect() to 127.0.0.1:8001 failed (99: "
            "Cannot assign requested address) while connecting to upstream")
    assert nginx_error_category(line) == "upstream_ports"
    refused = ("2026/12/04 20:53:34 [error] 8396#8396: *1 connect() failed (111: Connection "
               "refused) while connecting to upstream")  # (as nginx 1.22 wrote it here)
    assert nginx_error_category(refused) == "connect_failed"


def test_the_port_range_is_read_from_the_kernel(tmp_path):
    (tmp_path / "range").write_text("40000\t40999\n")
    assert local_port_range(tmp_path / "range") == NARROW
    low, high = local_port_range()
    assert 0 < low <= high <= 65535


def _run_in(hosts, out: Path, *args: str, profile: str = "longpoll", duration: str = "20s"
            ) -> tuple[subprocess.CompletedProcess, dict]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(hosts.cmd("lab", pollbench_cmd(
        "run", "--profile", profile, "--backends", "2", "--users", "2501",
        "--channels", "10", "--publish-rate", "2", "--poll-timeout", "10", "--duration", duration,
        "--no-report", "--out", str(out), *args)), cwd=REPO, env=env, capture_output=True,
        text=True, timeout=240)
    record = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    return proc, record


def _reached(record: dict) -> set[str]:
    return {r["limit"] for r in record["limits"]["reached"]}


def _limit(record: dict, name: str) -> dict:
    """The limit ``name`` as the run named it (what ran out, when, the cure)."""
    found = [r for r in record["limits"]["reached"] if r["limit"] == name]
    assert found, record["limits"]
    return found[0]


def _peak_client_connections(run: Path) -> int:
    with open(run / "samples" / "stub_status.csv", newline="") as f:
        return max(int(row["active"]) for row in csv.DictReader(f))


@pytest.mark.slow
def test_2500_subscribers_hold_through_1000_ports_only_with_spread_addresses(tmp_path):
    """In a namespace with 1,000 ephemeral ports: 2,501 users (2,500 held polls, 1,250 on
    each of 2 backends) need more than one address on both hops.  Spread (auto): 0 failed,
    0 lost; one address: the run names the load generator's ports as what ran out;
    nginx with one address to the backends: nginx's ports to a backend.
    Where namespaces cannot be made this fails, never skips in silence."""
    why_not = netns.available()
    if why_not is not None:
        pytest.fail(f"{why_not}: run the tests as root with iproute2 installed "
                    "(scripts/bootstrap.sh --test installs it)")
    with netns.Hosts(["lab"]) as hosts:
        hosts.set_port_range("lab", *NARROW)
        proc, record = _run_in(hosts, tmp_path / "spread")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert record["status"] == "complete"
        assert len(record["parameters"]["source_addresses"]) == 7
        assert record["stack"]["nginx"]["upstream_sources"] == 4
        lg = record["loadgen"]
        assert lg["failures"] == 0 and lg["lost"] == 0 and lg["duplicates"] == 0, lg
        assert lg["delivered"] > 2500 * 2, lg  # (2 messages/s over 10 channels: 0.2/s each)
        assert _peak_client_connections(tmp_path / "spread") >= 2500  # all held at once
        # no port ran out (the machine's CPU may be named: the suite runs 2 tests at a time)
        assert not _reached(record) & {"loadgen_ports", "upstream_ports"}, record["limits"]

        proc, record = _run_in(hosts, tmp_path / "one", "--source-addresses", "127.0.0.1",
                               duration="12s")
        assert record, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "no free local port" in proc.stdout + proc.stderr  # the capacity warning
        assert record["loadgen"]["failures"] > 0
        ports = _limit(record, "loadgen_ports")  # named (first, unless the machine's CPU was)
        assert "--source-addresses" in ports["cure"]
        assert _reached(record) <= {"loadgen_ports", "cpu"}, record["limits"]

        profile = tmp_path / "one-upstream-source.toml"
        profile.write_text('extends = "longpoll"\ndescription = "one source to the backends"\n'
                           '[nginx]\nupstream_sources = 1\n')
        proc, record = _run_in(hosts, tmp_path / "upstream", profile=str(profile),
                               duration="12s")
        assert record, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "set the nginx knob upstream_sources" in proc.stdout + proc.stderr
        assert len(record["parameters"]["source_addresses"]) == 7  # (the first hop holds)
        assert "upstream_sources" in _limit(record, "upstream_ports")["cure"]
        assert "loadgen_ports" not in _reached(record), record["limits"]


@pytest.mark.slow
def test_the_busiest_backend_of_a_key_hash_gets_the_ports_it_needs(tmp_path):
    """Local state, 4 backends, 10 channels: nginx's consistent hash puts half the channels
    on one backend (1,250 of 2,500 polls), where an even share counted 625.  The preflight
    counts it from the same hash and spreads nginx's connections to the backends, so the run
    that ran nginx out of ports to a backend (2 runs of 2) now holds."""
    why_not = netns.available()
    if why_not is not None:
        pytest.fail(f"{why_not}: run the tests as root with iproute2 installed "
                    "(scripts/bootstrap.sh --test installs it)")
    load = LoadSpec(users=2501, channels=10, publish_rate=5)
    busiest = capacity.polls_per_backend(StackSpec(profile="longpoll").settings(), "local",
                                         load, 8000)
    assert busiest == 1250  # ch0, ch4, ch5, ch6 and ch8 hash to 127.0.0.1:8002
    assert with_upstream_sources(StackSpec(profile="longpoll"), load, NARROW).settings()[
        "upstream_sources"] == 4  # 1,250 / 400
    with netns.Hosts(["lab"]) as hosts:
        hosts.set_port_range("lab", *NARROW)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        out = tmp_path / "hash"
        proc = subprocess.run(hosts.cmd("lab", pollbench_cmd(
            "run", "--profile", "longpoll", "--users", "2501", "--channels", "10",
            "--publish-rate", "5", "--duration", "40s", "--no-report", "--out", str(out))),
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        record = json.loads((out / "run.json").read_text())
        assert record["status"] == "complete"
        assert record["stack"]["nginx"]["upstream_sources"] == 4
        lg = record["loadgen"]
        assert lg["failures"] == 0 and lg["lost"] == 0 and not lg.get("epoch_changes"), lg
        assert not _reached(record) & {"loadgen_ports", "upstream_ports"}, record["limits"]
