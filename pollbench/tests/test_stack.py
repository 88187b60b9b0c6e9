"""The real stack: nginx + 4 backends started by ``pollbench up``, exercised through nginx."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

import psutil
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from pollbench.errors import RunFailed, UserError
from pollbench.stack.net import get_json, http_get
from pollbench.stack.processes import spawn
from pollbench.stack.spec import StackSpec
from pollbench.stack.stack import Stack
from pollbench.tests.conftest import REPO, free_stack_ports, pollbench_cmd

# runs whole stacks (or reports on them): left out of the quick subset (-m 'not slow')
pytestmark = pytest.mark.slow

SUBSCRIBERS = 200
MESSAGES_PER_CHANNEL = 40


async def fetch(client, url, **kw):
    try:
        return await client.fetch(url, request_timeout=30, **kw)
    except HTTPClientError as e:
        if e.response is None:
            raise
        return e.response


async def pick_channels_on_every_backend(client, up) -> dict[str, int]:
    """Create channels until each backend owns two (hash routing decides where each lands)."""
    owned: dict[str, int] = {}
    per_backend = [0] * len(up.backend_urls)
    for i in range(200):
        before = [get_json(f"{u}/stats")["channels"] for u in up.backend_urls]
        name = f"room{i}"
        resp = await fetch(client, f"{up.url}/channels/{name}", method="POST", body="0")
        assert resp.code == 201
        after = [get_json(f"{u}/stats")["channels"] for u in up.backend_urls]
        owner = next(b for b in range(len(before)) if after[b] > before[b])
        if per_backend[owner] < 2:
            owned[name] = owner
            per_backend[owner] += 1
        if min(per_backend) >= 2:
            return owned
    raise AssertionError(f"hash routing never reached every backend: {per_backend}")


async def subscriber(client, url: str, cursor: int, want: int, received: list):
    epoch = None
    while len(received) < want:
        q = f"cursor={cursor}&timeout=10" + (f"&epoch={epoch}" if epoch else "")
        resp = await fetch(client, f"{url}?{q}")
        if resp.code == 204:
            continue
        assert resp.code == 200, resp.body
        data = json.loads(resp.body)
        assert data["dropped"] is None
        assert epoch in (None, data["epoch"])
        epoch = data["epoch"]
        received.extend(m["seq"] for m in data["messages"])
        cursor = data["cursor"]


async def broadcast_through_nginx(up):
    client = AsyncHTTPClient(force_instance=True, max_clients=SUBSCRIBERS + 20)
    channels = await pick_channels_on_every_backend(client, up)
    names = list(channels)
    received = [[] for _ in range(SUBSCRIBERS)]
    subs = [asyncio.ensure_future(subscriber(client, f"{up.url}/channels/{names[i % len(names)]}",
                                             1, MESSAGES_PER_CHANNEL, received[i]))
            for i in range(SUBSCRIBERS)]
    # publish once every subscriber's first poll is held (the backends count them)
    held = 0
    for _ in range(600):  # bounded: 30 s
        held = sum(get_json(f"{u}/stats")["long_polls_waiting"] for u in up.backend_urls)
        if held >= SUBSCRIBERS:
            break
        await asyncio.sleep(0.05)  # polls the count above (bounded: 600 times)
    assert held >= SUBSCRIBERS, f"only {held} of {SUBSCRIBERS} polls held after 30 s"
    for n in range(MESSAGES_PER_CHANNEL):
        for name in names:
            resp = await fetch(client, f"{up.url}/channels/{name}", method="POST",
                               body=json.dumps({"n": n}))
            assert resp.code == 201
        await asyncio.sleep(0.01)  # creates the condition: publishes spread out, not a burst
    await asyncio.wait_for(asyncio.gather(*subs), 60)

    tasks = []
    for _ in range(12):
        resp = await fetch(client, f"{up.url}/tasks", method="POST", body='{"duration_ms": 100}')
        assert resp.code == 202
        tasks.append(json.loads(resp.body)["id"])
    results = [await fetch(client, f"{up.url}/tasks/{t}?timeout=10") for t in tasks]
    client.close()
    return channels, received, tasks, results


def test_broadcast_and_tasks_through_nginx_exactly_once_in_order(stack_up):
    up = stack_up()
    channels, received, tasks, results = asyncio.run(broadcast_through_nginx(up))
    expected = list(range(2, MESSAGES_PER_CHANNEL + 2))
    bad = [i for i, seqs in enumerate(received) if seqs != expected]
    assert not bad, f"{len(bad)} subscribers lost, duplicated or reordered messages"
    assert sorted(set(channels.values())) == [0, 1, 2, 3]

    stats = [get_json(f"{u}/stats") for u in up.backend_urls]
    # every backend delivered messages: the polls really landed on all four
    assert all(s["messages_delivered"] > 0 for s in stats), [s["messages_delivered"] for s in stats]
    assert all(r.code == 200 and json.loads(r.body)["id"] == t for r, t in zip(results, tasks, strict=True))
    assert sum(s["tasks_done"] for s in stats) == len(tasks)

    status, body = http_get(f"{up.url}/nginx_status")
    assert status == 200 and b"Active connections" in body
    access = up.out / "nginx" / "logs" / "access.jsonl"
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(20) == 130
    lines = [json.loads(x) for x in access.read_text().splitlines()]
    upstreams = {e["upstream_addr"] for e in lines if e["uri"].startswith("/channels/")}
    assert len(upstreams) == 4, upstreams
    assert all("connection_requests" in e and "upstream_response_time" in e for e in lines)

    # after SIGTERM nothing of the stack is left
    pids = [s["pid"] for s in stats]
    nginx_pid_file = up.out / "nginx" / "nginx.pid"
    left = [p for p in pids if psutil.pid_exists(p)]
    assert not left, f"backend processes left running: {left}"
    assert not nginx_pid_file.exists() or not psutil.pid_exists(int(nginx_pid_file.read_text()))
    assert (up.out / "logs" / "backend-0.log").read_text()


def test_curl_shows_a_long_poll_held_then_answered(stack_up):
    up = stack_up("--backends", "2", backends=2)
    code = (
        "import time, urllib.request, threading\n"
        f"u='{up.url}/channels/held'\n"
        "threading.Timer(0.8, lambda: urllib.request.urlopen(urllib.request.Request(u, data=b'1',"
        " method='POST'))).start()\n"
        "t=time.monotonic(); r=urllib.request.urlopen(u+'?timeout=20');"
        " print(r.status, round(time.monotonic()-t, 1))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    status, held = proc.stdout.split()
    assert status == "200" and 0.7 <= float(held) < 5


def test_port_in_use_is_named_before_anything_starts(tmp_path):
    import socket

    port, backend_port = free_stack_ports()
    with socket.socket() as s:
        s.bind(("127.0.0.1", backend_port + 2))
        s.listen()
        proc = subprocess.run(
            pollbench_cmd("up", "--port", str(port), "--backend-port", str(backend_port),
                          "--out", str(tmp_path / "x")),
            capture_output=True, text=True, cwd=REPO, timeout=30)
    assert proc.returncode == 2
    assert f"port {backend_port + 2} is already in use" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_missing_nginx_says_how_to_install_it(tmp_path):
    proc = subprocess.run(pollbench_cmd("up", "--nginx", "/nonexistent/nginx", "--out",
                                        str(tmp_path / "x")),
                          capture_output=True, text=True, cwd=REPO, timeout=30)
    assert proc.returncode == 2 and "apt-get install -y nginx-light" in proc.stderr


def test_unknown_profile_and_bad_hold_are_refused():
    with pytest.raises(UserError, match="unknown profile"):
        StackSpec(profile="fast").resolve()
    with pytest.raises(UserError, match="proxy_read_timeout"):
        StackSpec(max_hold_s=250).resolve(check_ports=False)


def test_backend_that_dies_at_start_reports_its_log_tail(tmp_path):
    stack = Stack(StackSpec().resolve(check_ports=False), tmp_path)
    child = spawn("backend-0", [sys.executable, "-c", "print('boom: cannot start'); exit(3)"],
                  tmp_path / "b.log")
    with pytest.raises(RunFailed) as e:
        stack._wait_healthy(child, "http://127.0.0.1:1/healthz", 5)
    assert "backend-0 exited at start with code 3" in str(e.value)
    assert "boom: cannot start" in str(e.value)


def test_a_faulted_process_that_cannot_be_reaped_is_not_left_expected_down(tmp_path):
    """A kill fault marks the process "expected down" until its replacement is in; if it
    cannot be reaped, the mark goes (a later real death must still end the run) and the
    fault says why (it used to stay marked for good)."""
    import threading

    from pollbench.stack.faults import Fault
    from pollbench.stack.processes import Child

    class Unkillable(subprocess.Popen):
        def wait(self, timeout=None):  # a process in uninterruptible sleep
            raise subprocess.TimeoutExpired(self.args, timeout or 0)

    stack = object.__new__(Stack)  # only the fault-handling state, no processes of a stack
    stack.expected_down = set()
    stack._children_lock = threading.Lock()
    popen = Unkillable([sys.executable, "-c", "import time; time.sleep(60)"],
                       start_new_session=True)
    try:
        child = Child("backend-1", popen, tmp_path / "b.log")
        with pytest.raises(RuntimeError, match="did not exit after SIGKILL"):
            stack._take_down(child, Fault(1.0, "kill", 0.0, "backend-1"), threading.Event())
        assert stack.expected_down == set()
    finally:
        subprocess.Popen.wait(popen, 10)  # SIGKILL did reach it: reap it for real


def test_locust_ending_at_its_time_limit_is_not_a_crash_but_a_backend_dying_is(tmp_path):
    """The run loop looks at Locust, then asks the side whether the stack is alive; Locust
    reaching its time limit between the two looks was reported as "loadgen exited
    unexpectedly with code 0" and failed a complete run (a fresh-clone CI run, test_faults)."""
    from pollbench.actions.run import LocalSide

    stack = Stack(StackSpec().resolve(check_ports=False), tmp_path)
    loadgen = stack.group.add(spawn("loadgen", [sys.executable, "-c", "pass"],
                                    tmp_path / "locust.log"))
    backend = stack.group.add(spawn("backend-0", [sys.executable, "-c", "import signal; "
                                                  "signal.pause()"], tmp_path / "b.log"))
    try:
        loadgen.popen.wait(10)  # Locust has ended, as at its time limit
        side = LocalSide(stack, [])
        side.check()  # the loop handles Locust's exit itself: no failure here
        with pytest.raises(RunFailed, match="loadgen exited unexpectedly"):
            stack.check_alive()  # (without the loop, as in `pollbench ui`, it is one)
        backend.stop()
        with pytest.raises(RunFailed, match="backend-0 exited unexpectedly"):
            side.check()
    finally:
        stack.group.stop_all()
