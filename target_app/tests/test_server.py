"""The target as a process: each event loop starts and says so; SIGTERM answers held polls."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from pollbench.stack.net import find_free_ports
from pollbench.stack.processes import wait_until
from pollbench.tests.children import Child


def start(*args: str) -> tuple[Child, str]:
    port = find_free_ports(1)
    child = Child([sys.executable, "-m", "target_app", "--processes", "1", "--port", str(port),
                   *args])
    child.wait_for("ready ", 30)
    return child, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("loop,selector", [("asyncio", "EpollSelector"),
                                           ("asyncio-poll", "PollSelector"),
                                           ("asyncio-select", "SelectSelector"),
                                           ("uvloop", "uvloop.Loop")])
def test_each_event_loop_serves_and_reports_itself(loop, selector):
    extra = ["--max-connections", "900", "--max-waiters", "800"] if loop == "asyncio-select" \
        else []
    proc, url = start("--loop", loop, *extra)
    try:
        stats = json.load(urllib.request.urlopen(f"{url}/stats", timeout=5))
        assert selector in stats["event_loop"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_select_loop_with_too_many_connections_is_refused_at_start():
    proc = subprocess.run([sys.executable, "-m", "target_app", "--processes", "1", "--loop",
                           "asyncio-select", "--port", str(find_free_ports(1))],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "FD_SETSIZE" in proc.stderr


def test_default_is_four_processes_on_consecutive_ports():
    base = find_free_ports(4)
    proc = Child([sys.executable, "-m", "target_app", "--port", str(base)])
    try:
        # log lines and a ready line per child, in any order
        assert wait_until(lambda: sum(line.startswith("ready ")
                                      for line in proc.output.text().splitlines()) >= 4, 60), \
            proc.output.text()
        ready = [line for line in proc.output.text().splitlines() if line.startswith("ready ")]
        ports = sorted(int(line.rsplit(":", 1)[1]) for line in ready)
        assert ports == [base, base + 1, base + 2, base + 3]
        indexes = {json.load(urllib.request.urlopen(f"http://127.0.0.1:{p}/stats", timeout=5))
                   ["backend_index"] for p in ports}
        assert indexes == {0, 1, 2, 3}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_sigterm_answers_held_polls_and_exits_within_seconds():
    proc, url = start()
    result = {}

    def poll():
        t = time.monotonic()
        resp = urllib.request.urlopen(f"{url}/channels/x?timeout=60", timeout=30)
        result["status"], result["held"] = resp.status, time.monotonic() - t

    import threading

    th = threading.Thread(target=poll)
    th.start()
    deadline = time.monotonic() + 10  # SIGTERM once the poll is held (the server counts it)
    while json.loads(urllib.request.urlopen(f"{url}/stats", timeout=5).read())[
            "long_polls_waiting"] < 1:
        assert time.monotonic() < deadline, "the poll was never held"
        time.sleep(0.01)  # polls the event above
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    th.join(10)
    assert time.monotonic() - t0 < 5
    assert result["status"] == 204 and result["held"] < 5


def _answer(url: str, data: bytes | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def test_what_tornado_refuses_is_answered_as_json_not_an_empty_400():
    proc, url = start()
    try:
        query = "&".join(f"p{i}=1" for i in range(1000))
        code, ctype, body = _answer(f"{url}/channels/q?timeout=0&{query}")
        assert code == 400 and ctype == "application/json"
        assert "Max number of fields" in json.loads(body)["error"]
        code, ctype, body = _answer(f"{url}/channels/big", b"x" * 2_000_000)  # 2 MB
        assert code == 413 and ctype == "application/json"
        assert "over the limit" in json.loads(body)["error"]
        assert _answer(f"{url}/healthz")[0] == 200  # the server is still fine
    finally:
        proc.terminate()
        proc.wait(10)


def test_polls_alone_cannot_fill_the_channel_table():
    proc, url = start("--max-channels", "20")
    try:
        for i in range(60):  # three times the limit, each a new name
            assert _answer(f"{url}/channels/only-polled-{i}?timeout=0")[0] == 204
        assert json.load(urllib.request.urlopen(f"{url}/stats", timeout=5))["channels"] == 0
        code, _, body = _answer(f"{url}/channels/published", b'{"hi": 1}')
        assert code == 201, body
        assert _answer(f"{url}/channels/published?cursor=0&timeout=0")[0] == 200
    finally:
        proc.terminate()
        proc.wait(10)
