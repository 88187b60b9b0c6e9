"""Shared state (``--state redis``) with a real redis-server and real backend processes: any
backend answers any request, a dead task owner is reported, and losing Redis is a 503 and
then a new epoch, never a hang or wrong data."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pollbench.stack.net import find_free_ports
from pollbench.tests.children import Child

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server missing: scripts/bootstrap.sh installs it")


class Redis:
    def __init__(self, folder: Path):
        self.port = find_free_ports(1)
        self.folder = folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Child | None = None

    def start(self) -> None:
        self.proc = Child(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)])
        # the server says when it accepts connections
        self.proc.wait_for("Ready to accept connections", 30)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path) -> Iterator[Redis]:
    server = Redis(tmp_path)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()


def backend(redis: Redis, index: int) -> tuple[Child, str]:
    port = find_free_ports(1)
    proc = Child([sys.executable, "-m", "target_app", "--processes", "1", "--port", str(port),
                  "--index", str(index), "--state", "redis", "--redis-url", redis.url,
                  "--redis-prefix", "test:"])
    proc.wait_for("ready ", 30)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture
def backends(redis_server) -> Iterator[list[str]]:
    procs = [backend(redis_server, i) for i in range(2)]
    yield [url for _, url in procs]
    for proc, _ in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)


def call(url: str, data: bytes | None = None) -> tuple[int, dict | None, dict]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = resp.read()
            return resp.status, json.loads(body) if body else None, dict(resp.headers)
    except urllib.error.HTTPError as e:
        body = e.read()
        return e.code, json.loads(body) if body else None, dict(e.headers)


def stats(url: str) -> dict:
    return call(f"{url}/stats")[1] or {}


def in_background(url: str) -> tuple[threading.Thread, dict]:
    """A request (a held poll) in a thread; its (code, body, headers) land in the dict."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(
        zip(("code", "body", "headers"), call(url), strict=True)))
    thread.start()
    return thread, result


def wait_for(predicate, timeout: float = 10.0) -> bool:
    """Poll a condition the server reports (bounded); the tests wait on these, not on sleeps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)  # polls the predicate (bounded by the deadline)
    return False


def test_any_backend_answers_for_a_channel_another_published_to(backends):
    a, b = backends
    code, pub, _ = call(f"{a}/channels/news", b'{"n": 1}')
    assert code == 201 and pub["seq"] == 1
    code, got, _ = call(f"{b}/channels/news?cursor=0&timeout=5")
    assert code == 200 and [m["seq"] for m in got["messages"]] == [1]
    assert got["epoch"] == pub["epoch"] and got["messages"][0]["data"] == {"n": 1}
    # a poll held on b is answered by a publish through a
    poller, result = in_background(f"{b}/channels/news?cursor=1&timeout=20")
    assert wait_for(lambda: stats(b)["long_polls_waiting"] == 1)
    assert call(f"{a}/channels/news", b'"two"')[0] == 201
    poller.join(20)
    assert result["code"] == 200
    assert [(m["seq"], m["data"]) for m in result["body"]["messages"]] == [(2, "two")]
    # 1,001 messages later the first two fell out of the shared buffer: said, never silent
    for i in range(1001):
        call(f"{a}/channels/news", b"%d" % i)
    code, got, _ = call(f"{b}/channels/news?cursor=0&timeout=0&epoch={pub['epoch']}")
    assert code == 200 and got["dropped"] == [1, 3]
    assert got["messages"][0]["seq"] == 4 and got["cursor"] == 1003
    # a cursor truly ahead of the channel is still the documented 400
    code, got, _ = call(f"{b}/channels/news?cursor=5000&timeout=0")
    assert code == 400 and "ahead of channel" in got["error"]


def test_a_first_poll_that_times_out_says_where_now_is_and_polls_create_nothing(backends):
    a, b = backends
    call(f"{a}/channels/c1", b"1")
    code, _, headers = call(f"{b}/channels/c1?timeout=0")
    assert code == 204 and headers["X-Cursor"] == "1" and headers["X-Epoch"]
    for i in range(20):
        assert call(f"{b}/channels/only-polled-{i}?timeout=0")[0] == 204
    code, pub, _ = call(f"{a}/channels/c2", b"2")
    assert pub["seq"] == 1  # a polled-only channel was never made in Redis either


def test_a_task_runs_on_one_backend_and_its_result_is_polled_from_another(backends):
    a, b = backends
    code, sub, _ = call(f"{a}/tasks", json.dumps({"duration_ms": 200,
                                                 "payload_bytes": 3}).encode())
    assert code == 202
    code, got, _ = call(f"{b}/tasks/{sub['id']}?timeout=10")
    assert code == 200 and got["result"] == {"payload": "xxx", "duration_ms": 200}
    assert got["finished_at"] - got["submitted_at"] >= 0.2
    assert call(f"{b}/tasks/{'0' * 32}?timeout=0")[0] == 404


def test_a_task_whose_backend_dies_is_answered_with_an_error_not_a_timeout(redis_server):
    owner, owner_url = backend(redis_server, 0)
    other, other_url = backend(redis_server, 1)
    try:
        code, sub, _ = call(f"{owner_url}/tasks", b'{"duration_ms": 60000}')
        assert code == 202
        result: dict = {}

        def poll() -> None:
            t0 = time.monotonic()
            code, body, _ = call(f"{other_url}/tasks/{sub['id']}?timeout=60")
            result.update(code=code, body=body, took=time.monotonic() - t0)

        poller = threading.Thread(target=poll)
        poller.start()
        assert wait_for(lambda: stats(other_url)["long_polls_waiting"] == 1)
        owner.kill()
        owner.wait(10)
        poller.join(30)
        assert result["code"] == 500 and "was lost" in result["body"]["error"]
        assert result["took"] < 10  # the heartbeat's 3 s, not the poll's 60 s
    finally:
        for p in (owner, other):
            if p.poll() is None:
                p.kill()
                p.wait(10)


def test_losing_redis_is_a_503_then_a_new_epoch_and_nothing_hangs(redis_server):
    proc, url = backend(redis_server, 0)
    try:
        _, first, _ = call(f"{url}/channels/r", b"1")
        poller, result = in_background(f"{url}/channels/r?cursor=1&timeout=60")
        assert wait_for(lambda: stats(url)["long_polls_waiting"] == 1)
        redis_server.kill()
        poller.join(20)
        assert result["code"] == 503 and "redis" in result["body"]["error"]
        assert call(f"{url}/channels/r", b"2")[0] == 503
        redis_server.start()  # same port, no data: a new lifetime of the shared state
        assert wait_for(lambda: stats(url)["shared"]["subscribed"], 15)
        code, pub, _ = call(f"{url}/channels/r", b"3")
        assert code == 201 and pub["seq"] == 1 and pub["epoch"] != first["epoch"]
        code, got, _ = call(f"{url}/channels/r?cursor=1&epoch={first['epoch']}&timeout=5")
        assert code == 200 and got["epoch"] == pub["epoch"]
        assert [m["data"] for m in got["messages"]] == [3]
    finally:
        proc.kill()
        proc.wait(10)


def test_unreachable_redis_is_one_line_and_exit_2():
    port = find_free_ports(1)
    proc = subprocess.run([sys.executable, "-m", "target_app", "--processes", "1", "--port",
                           str(find_free_ports(1)), "--state", "redis", "--redis-url",
                           f"redis://127.0.0.1:{port}/0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "cannot reach redis" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
