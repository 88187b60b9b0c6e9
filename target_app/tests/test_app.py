"""The target's HTTP semantics, in-process (tornado.testing)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import socket
import time

from tornado.httpclient import HTTPClientError
from tornado.testing import AsyncHTTPTestCase, gen_test

from target_app.app import AppConfig, PollHTTPServer, make_app
from target_app.server import ConfigError, check_config


class TargetCase(AsyncHTTPTestCase):
    config = AppConfig(max_hold_s=5, default_hold_s=2, channel_buffer_len=5, max_waiters=3,
                       max_channels=4, max_body_bytes=1000, max_payload_bytes=5000,
                       max_results=3, result_ttl_s=60)

    def get_app(self):
        self.app = make_app(self.config)
        self.service = self.app.settings["service"]
        return self.app

    def get_http_server(self):
        return PollHTTPServer(self._app, stats=self.service.stats, max_connections=50,
                              **self.get_httpserver_options())

    async def call(self, method: str, path: str, body=None, **kw):
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        if method == "POST" and body is None:
            body = b""
        try:
            resp = await self.http_client.fetch(self.get_url(path), method=method, body=body,
                                                request_timeout=20, **kw)
        except HTTPClientError as e:
            assert e.response is not None, e
            resp = e.response
        data = json.loads(resp.body) if resp.body else None
        return resp.code, data, resp

    def stats(self) -> dict:
        return self.service.snapshot()

    async def until(self, predicate, what: str, timeout: float = 5.0) -> None:
        """Wait for an event the test cannot be told of (the server counts it), bounded."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            assert loop.time() < deadline, f"not within {timeout} s: {what}"
            await asyncio.sleep(0.005)  # polls the predicate (bounded by the deadline)


class TestDeepJson(TargetCase):
    config = AppConfig(max_body_bytes=65536)  # the default limit: room for 5,000 brackets

    @gen_test(timeout=10)
    async def test_deeply_nested_body_is_a_json_400_not_a_500(self):
        for path in ("/channels/deep", "/tasks"):
            code, data, _ = await self.call("POST", path, b"[" * 5000 + b"]" * 5000)
            assert code == 400 and "nested too deeply" in data["error"], (path, code, data)
        assert (await self.call("GET", "/healthz"))[0] == 200


class TestTasks(TargetCase):
    @gen_test(timeout=10)
    async def test_task_lifecycle_202_then_result_with_server_timestamps(self):
        code, data, _ = await self.call("POST", "/tasks", {"duration_ms": 200, "payload_bytes": 10})
        assert code == 202 and data["poll"] == f"/tasks/{data['id']}"
        t0 = time.time()
        code, result, _ = await self.call("GET", f"{data['poll']}?timeout=3")
        assert code == 200
        assert result["id"] == data["id"] and result["result"]["payload"] == "x" * 10
        assert 0.15 <= result["finished_at"] - result["submitted_at"] < 1.0
        assert time.time() - t0 < 1.0  # answered when the task finished, not at the timeout

    @gen_test(timeout=10)
    async def test_poll_times_out_with_204_then_result_on_repoll(self):
        _, data, _ = await self.call("POST", "/tasks", {"duration_ms": 700})
        t0 = time.monotonic()
        code, _, _ = await self.call("GET", f"{data['poll']}?timeout=0.2")
        assert code == 204 and 0.15 < time.monotonic() - t0 < 0.6
        code, _, _ = await self.call("GET", f"{data['poll']}?timeout=3")
        assert code == 200

    @gen_test(timeout=10)
    async def test_unknown_and_expired_ids_are_404(self):
        code, data, _ = await self.call("GET", "/tasks/abcdef?timeout=0")
        assert code == 404 and "unknown" in data["error"]
        ids = []
        for _ in range(4):  # max_results = 3: the oldest result is evicted
            _, d, _ = await self.call("POST", "/tasks", {"duration_ms": 0})
            ids.append(d["id"])
            await asyncio.sleep(0.01)  # creates the condition: results finished in order
        assert (await self.call("GET", f"/tasks/{ids[0]}?timeout=0"))[0] == 404
        assert (await self.call("GET", f"/tasks/{ids[-1]}?timeout=0"))[0] == 200

    @gen_test(timeout=10)
    async def test_nginx_request_id_becomes_the_task_id(self):
        rid = "0123456789abcdef0123456789abcdef"
        _, data, _ = await self.call("POST", "/tasks", {}, headers={"X-Request-Id": rid})
        assert data["id"] == rid
        # a forged, non-hex id is not adopted
        _, data, _ = await self.call("POST", "/tasks", {}, headers={"X-Request-Id": "../etc"})
        assert data["id"] != "../etc" and len(data["id"]) == 32


class TestChannels(TargetCase):
    @gen_test(timeout=10)
    async def test_cursor_returns_everything_after_it_in_order(self):
        for i in range(3):
            code, pub, _ = await self.call("POST", "/channels/c1", {"n": i})
            assert code == 201 and pub["seq"] == i + 1 and pub["ts"] > 0
        code, data, _ = await self.call("GET", "/channels/c1?cursor=1")
        assert code == 200
        assert [m["seq"] for m in data["messages"]] == [2, 3]
        assert [m["data"] for m in data["messages"]] == [{"n": 1}, {"n": 2}]
        assert data["cursor"] == 3 and data["dropped"] is None and data["epoch"]

    @gen_test(timeout=10)
    async def test_held_poll_is_answered_by_a_publish(self):
        await self.call("POST", "/channels/c2", {"n": 0})
        poll = asyncio.ensure_future(self.call("GET", "/channels/c2?cursor=1&timeout=4"))
        await self.until(lambda: self.stats()["long_polls_waiting"] == 1, "the poll is held")
        assert not poll.done()
        t0 = time.monotonic()
        await self.call("POST", "/channels/c2", {"n": 1})
        code, data, _ = await poll
        assert code == 200 and [m["seq"] for m in data["messages"]] == [2]
        assert time.monotonic() - t0 < 0.5

    @gen_test(timeout=10)
    async def test_no_cursor_means_from_now_on_and_204_carries_cursor(self):
        await self.call("POST", "/channels/c3", {"old": True})
        code, _, resp = await self.call("GET", "/channels/c3?timeout=0.1")
        assert code == 204
        assert resp.headers["X-Cursor"] == "1" and resp.headers["X-Epoch"]

    @gen_test(timeout=10)
    async def test_a_held_polls_answer_is_dated_when_it_leaves_and_names_the_server(self):
        # (the backend adds Server and Date as the answer leaves, not as the poll arrives:
        # a held poll does not keep them; nginx passes Server on, as the seed config says)
        started = time.time()
        code, _, resp = await self.call("GET", "/channels/c9?timeout=1.5")
        assert code == 204 and "Content-Type" not in resp.headers
        assert resp.headers["Server"].startswith("TornadoServer/")
        dated = email.utils.parsedate_to_datetime(resp.headers["Date"]).timestamp()
        assert dated >= int(started) + 1  # whole seconds: made at least 1.5 s after it came
        code, _, resp = await self.call("GET", "/healthz")
        assert resp.headers["Server"].startswith("TornadoServer/") and resp.headers["Date"]
        code, _, resp = await self.call("GET", "/no/such/page")
        assert code == 404 and resp.headers["Server"] and resp.headers["Date"]

    @gen_test(timeout=10)
    async def test_overflow_names_the_dropped_range_never_silent(self):
        for i in range(8):  # buffer holds 5: seqs 1-3 fall out
            await self.call("POST", "/channels/c4", {"n": i})
        code, data, _ = await self.call("GET", "/channels/c4?cursor=1")
        assert data["dropped"] == [2, 3]
        assert [m["seq"] for m in data["messages"]] == [4, 5, 6, 7, 8]

    @gen_test(timeout=10)
    async def test_epoch_differs_per_channel_lifetime_and_old_epoch_restarts_cursor(self):
        await self.call("POST", "/channels/e1", 1)
        _, data, _ = await self.call("GET", "/channels/e1?cursor=0")
        epoch = data["epoch"]
        # what a process restart does to state: no channel, and a new epoch for the process
        local = self.service.state.channels
        local.channels.clear()
        local.epoch = "restarted"
        await self.call("POST", "/channels/e1", 2)
        _, data, _ = await self.call("GET", f"/channels/e1?cursor=5&epoch={epoch}")
        assert data["epoch"] != epoch
        assert [m["data"] for m in data["messages"]] == [2]
        code, err, _ = await self.call("GET", "/channels/e1?cursor=5")
        assert code == 400 and "ahead" in err["error"]

    @gen_test(timeout=10)
    async def test_disconnected_waiter_is_released_at_once(self):
        port = self.get_http_port()
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /channels/d1?timeout=5 HTTP/1.1\r\nHost: x\r\n\r\n")
        await self.until(lambda: self.stats()["long_polls_waiting"] == 1, "the poll is held")
        sock.close()
        await self.until(lambda: self.stats()["long_polls_waiting"] == 0,
                         "the disconnected poll is released", timeout=1.0)
        ch = self.service.state.channels.channels.get("d1")  # forgotten: nothing was ever published to it
        assert ch is None or len(ch.waiters) == 0

    @gen_test(timeout=10)
    async def test_hold_is_capped_at_max_hold(self):
        self.service.config.max_hold_s = 0.3
        try:
            t0 = time.monotonic()
            code, _, _ = await self.call("GET", "/channels/cap?timeout=100")
            assert code == 204 and time.monotonic() - t0 < 1.0
        finally:
            self.service.config.max_hold_s = 5


class TestLimitsAndBadInput(TargetCase):
    @gen_test(timeout=10)
    async def test_every_bad_input_gets_a_json_4xx_and_service_keeps_serving(self):
        cases = [
            ("POST", "/tasks", b"{not json", 400, "not valid JSON"),
            ("POST", "/tasks", b"[1,2]", 400, "JSON object"),
            ("POST", "/tasks", {"duration_ms": -1}, 400, "duration_ms"),
            ("POST", "/tasks", {"duration_ms": 10**12}, 400, "duration_ms"),
            ("POST", "/tasks", {"duration_ms": "5"}, 400, "duration_ms"),
            ("POST", "/tasks", {"payload_bytes": 10**9}, 400, "payload_bytes"),
            ("POST", "/tasks", b"x" * 2000, 413, "over the limit"),
            ("POST", "/channels/ok", b"{bad", 400, "not valid JSON"),
            ("POST", "/channels/ok", b"[" * 1500, 413, "over the limit"),
            ("POST", "/channels/ok", b'{"v": NaN}', 400, "NaN is not a JSON value"),
            ("POST", "/tasks", b'{"duration_ms": Infinity}', 400, "Infinity is not a JSON"),
            ("GET", "/channels/ok?cursor=abc", None, 400, "cursor"),
            ("GET", "/channels/ok?cursor=-3", None, 400, "cursor"),
            ("GET", "/channels/ok?timeout=-1", None, 400, "timeout"),
            ("GET", "/channels/ok?timeout=nan", None, 400, "timeout"),
            ("GET", "/channels/ok?timeout=soon", None, 400, "timeout"),
            ("GET", "/channels/bad%20name", None, 404, "no such resource"),
            ("GET", "/static/..%2fapp.py", None, 403, "not in root static directory"),
            ("GET", "/static/nope.css", None, 404, "Not Found"),
            ("GET", "/tasks/zz", None, 404, "no such resource"),
            ("DELETE", "/tasks", None, 405, ""),
        ]
        for method, path, body, status, words in cases:
            code, data, resp = await self.call(method, path, body)
            assert code == status, (method, path, code)
            assert resp.headers["Content-Type"].startswith("application/json"), path
            assert words in data["error"], (path, data)
        assert (await self.call("GET", "/healthz"))[0] == 200

    @gen_test(timeout=10)
    async def test_names_nginx_would_normalise_away_are_refused(self):
        for method, path in (("GET", "/channels/..?timeout=0"), ("GET", "/channels/.?timeout=0"),
                             ("POST", "/channels/.."), ("POST", "/channels/.")):
            code, data, _ = await self.call(method, path, {"x": 1} if method == "POST" else None)
            assert code == 400 and "normalises" in data["error"], (method, path, code, data)
        code, data, _ = await self.call("POST", "/channels/a..b", {"x": 1})
        assert code == 201  # dots inside a name are fine

    @gen_test(timeout=10)
    async def test_waiter_limit_gives_503(self):
        polls = [asyncio.ensure_future(self.call("GET", "/channels/w?timeout=2&cursor=0"))
                 for _ in range(3)]
        await self.until(lambda: self.stats()["long_polls_waiting"] == 3, "3 polls held")
        code, data, _ = await self.call("GET", "/channels/w?timeout=2&cursor=0")
        assert code == 503 and "waiting polls" in data["error"]
        await self.call("POST", "/channels/w", 1)
        assert [(await p)[0] for p in polls] == [200, 200, 200]

    @gen_test(timeout=10)
    async def test_channel_limit_gives_503(self):
        for i in range(4):
            assert (await self.call("POST", f"/channels/ch{i}", 1))[0] == 201
        code, data, _ = await self.call("POST", "/channels/one-too-many", 1)
        assert code == 503 and "too many channels" in data["error"]


class TestStats(TargetCase):
    @gen_test(timeout=10)
    async def test_stats_counts_requests_per_connection(self):
        # Tornado's simple client opens a connection per request: reuse is exactly 1.
        for _ in range(3):
            await self.call("GET", "/healthz")
        await self.until(lambda: self.service.stats.connections_closed >= 3,
                         "the 3 connections closed")
        # now two requests on one raw keep-alive connection
        reader, writer = await asyncio.open_connection("127.0.0.1", self.get_http_port())
        for _ in range(2):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            await reader.readuntil(b'"backend_index":0}')
        writer.close()
        await self.until(lambda: self.service.stats.connections_closed >= 4,
                         "the keep-alive connection closed")
        _, stats, _ = await self.call("GET", "/stats")
        hist = stats["requests_per_connection"]["closed_histogram"]
        assert hist.get("1") == 3 and hist.get("2") == 1
        assert stats["connections"]["accepted"] == 5
        assert stats["event_loop"].endswith("EpollSelector")
        assert stats["responses_by_status"]["200"] == 5


def test_select_loop_refuses_limits_it_cannot_watch():
    cfg = AppConfig(loop_name="asyncio-select", max_connections=5000, max_waiters=100)
    try:
        check_config(cfg)
    except ConfigError as e:
        assert "FD_SETSIZE" in str(e) and "--max-connections" in str(e)
    else:
        raise AssertionError("select with 5000 connections was accepted")
    check_config(AppConfig(loop_name="asyncio-select", max_connections=900, max_waiters=800))


def test_channel_read_after_handles_limit_and_dropped():
    from target_app.state import Channel

    ch = Channel("x", buffer_len=4, now=lambda: 1.0)
    for i in range(6):
        ch.publish(str(i).encode())
    res = ch.read_after(0, limit=2)
    assert res.dropped == (1, 2) and [m.seq for m in res.messages] == [3, 4] and res.cursor == 4
    body, count, dropped = ch.render_after(5, 10)
    assert count == 1 and dropped == 0 and json.loads(body)["messages"][0]["data"] == 5
    body, count, dropped = ch.render_after(0, 10)  # seqs 1 and 2 fell out of the buffer
    assert count == 4 and dropped == 2 and json.loads(body)["dropped"] == [1, 2]


def test_an_injected_delivery_delay_below_a_millisecond_is_what_was_asked():
    # asyncio.sleep rounds a wait up to ~1 ms: an injected +0.3 ms must not read as +1 ms
    import asyncio
    import statistics
    import time

    from target_app.app import precise_sleep

    async def timed(seconds: float) -> list[float]:
        out = []
        for _ in range(30):
            t = time.perf_counter()
            await precise_sleep(seconds)
            out.append(time.perf_counter() - t)
        return out

    short = statistics.median(asyncio.run(timed(0.0003)))
    assert 0.0003 <= short < 0.0006, short
    long = statistics.median(asyncio.run(timed(0.005)))
    assert 0.005 <= long < 0.0065, long


class TestBurn(TargetCase):
    """--burn-us, the known cost regression: each poll answered with messages costs that
    much CPU more, and a poll answered with none (204) costs nothing more."""

    config = AppConfig(max_hold_s=5, default_hold_s=2, burn_us=20_000)

    @gen_test(timeout=20)
    async def test_every_answered_poll_spends_the_cpu_it_is_told_to(self):
        await self.call("POST", "/channels/c", {"n": 0})
        before = time.thread_time()  # the server runs in this thread (tornado.testing)
        for _ in range(5):
            code, body, _ = await self.call("GET", "/channels/c?cursor=0&timeout=1")
            assert code == 200 and body["messages"]
        spent = time.thread_time() - before
        assert spent >= 5 * 0.020, spent  # five answers, 20 ms of CPU each
        before = time.thread_time()
        code, _, _ = await self.call("GET", "/channels/c?timeout=0")  # nothing new: 204
        assert code == 204 and time.thread_time() - before < 0.020
