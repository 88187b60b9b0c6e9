"""The reference long-poll service: background tasks and cursor-based channels.

Build it with :func:`make_app` and serve it with :class:`PollHTTPServer`
(:mod:`target_app.connections`: it counts connections so reuse on the nginx->backend hop is
measurable)::

    config = AppConfig(max_hold_s=30)
    app = make_app(config)
    server = PollHTTPServer(app, xheaders=True, stats=app.settings["stats"])
    server.listen(8000, address="127.0.0.1")

The HTTP API is documented in docs/http-api.md.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload

import tornado.web

from target_app.connections import ConnectionStats, PollHTTPServer
from target_app.metrics import AnswerTimes
from target_app.state import Channel, LimitExceeded, TaskStore

__all__ = ["AppConfig", "PollHTTPServer", "Service", "Stats", "make_app"]

STATES = ("local", "redis")

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from target_app.shared import SharedState

STATIC_PATH = Path(__file__).parent / "static"
_CHANNEL_NAME = r"[A-Za-z0-9_.\-]{1,64}"
_NGINX_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")



# asyncio's selectors round a wait up to whole milliseconds (epoll_wait takes ms), so
# asyncio.sleep(0.0003) sleeps about 1 ms on an idle loop: an injected 0.3-ms delay would
# read as +1 ms.  Below this, the last stretch is spent yielding (sleep(0)) until the
# deadline: other requests keep being served, and the delay is what was asked for.
SPIN_BELOW_S = 0.002


async def precise_sleep(seconds: float) -> None:
    """Sleep ``seconds`` to within tens of microseconds without blocking the loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    if seconds > SPIN_BELOW_S:
        await asyncio.sleep(seconds - SPIN_BELOW_S)
    while loop.time() < deadline:
        await asyncio.sleep(0)


def burn_cpu(us: float) -> None:
    """Spend ``us`` microseconds of this thread's CPU time (not wall time: a preempted spin
    still costs exactly that much): the known regression of ``--burn-us``."""
    end = time.thread_time_ns() + int(us * 1000)
    while time.thread_time_ns() < end:
        pass

@dataclass
class AppConfig:
    """Every bound of one process.  Defaults suit a 20,000-fd process behind nginx."""

    max_hold_s: float = 120.0
    """Longest a poll is held; must stay below nginx's proxy_read_timeout (200 s in the seed)."""
    default_hold_s: float = 30.0
    """Hold used when a poll names no ``timeout``."""
    max_waiters: int = 18000
    """Long polls waiting at once in this process; more get 503."""
    max_connections: int = 19000
    """Open client connections; more are answered 503 and closed."""
    max_channels: int = 10000
    channel_buffer_len: int = 1000
    """Messages kept per channel; a cursor behind them gets a ``dropped`` range."""
    max_messages_per_poll: int = 1000
    max_body_bytes: int = 65536
    """Largest request body the handlers accept (413 above)."""
    max_running_tasks: int = 100000
    max_results: int = 100000
    result_ttl_s: float = 300.0
    max_task_duration_ms: int = 600000
    max_payload_bytes: int = 1048576
    delivery_delay_ms: float = 0.0
    """Artificial delay before answering a channel poll that carries messages.
    Used to inject a known regression (CI checks); 0 in every real benchmark."""
    burn_us: float = 0.0
    """CPU time spent (busy) on every poll answered with messages: a known cost regression
    (CI checks of the cost per delivery); 0 in every real benchmark."""
    loop_name: str = "asyncio"
    backend_index: int = 0
    state: str = "local"
    """Where channels and tasks live: "local" (this process; nginx must route by key) or
    "redis" (shared by every process through ``redis_url``; any backend answers)."""
    redis_url: str = ""
    redis_prefix: str = "pb:"
    """Every key this target makes starts with this (one run never meets another's keys)."""


@dataclass
class Stats(ConnectionStats):
    """Counters served at /stats (the connection counts, and the API's).  Everything is O(1)
    to update on the hot path."""

    started_at: float = field(default_factory=time.time)
    # answers by (route, method, status): /stats sums them by status, /metrics shows them
    responses: dict[tuple[str, str, int], int] = field(default_factory=dict)
    messages_published: int = 0
    messages_delivered: int = 0
    messages_dropped: int = 0  # in answers' dropped ranges: a cursor behind the buffer
    polls_answered_with_messages: int = 0
    polls_timed_out: int = 0
    tasks_submitted: int = 0
    tasks_done: int = 0
    gc_collections: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0, 2: 0})
    gc_pause_max_ms: float = 0.0
    gc_pause_total_ms: float = 0.0
    # polls answered with data: arrival -> answer (/metrics' poll_answer_seconds)
    answer_times: AnswerTimes = field(default_factory=AnswerTimes)

    def responses_by_status(self) -> dict[str, int]:
        out: dict[int, int] = {}
        for (_route, _method, status), n in self.responses.items():
            out[status] = out.get(status, 0) + n
        return {str(k): v for k, v in sorted(out.items())}


class Service:
    """Everything one process knows: channels, tasks, waiters and counters."""

    def __init__(self, config: AppConfig):
        self.config = config
        self.stats = Stats()
        self.channels: dict[str, Channel] = {}
        self.tasks = TaskStore(config.max_running_tasks, config.max_results, config.result_ttl_s)
        self.waiting = 0
        self.shutting_down = False
        # Channel state lives as long as this process: one epoch for all its channels, so a
        # channel dropped while it had no message (below) comes back as the same state.
        self.epoch = secrets.token_hex(6)
        self.shared: SharedState | None = None
        # /metrics' prometheus_client registry, made at the first scrape
        self.registry: CollectorRegistry | None = None
        if config.state == "redis":
            from target_app.shared import SharedState

            self.shared = SharedState(config.redis_url, config.redis_prefix,
                                      config.channel_buffer_len, config.max_channels,
                                      config.result_ttl_s, config.backend_index)

    @overload
    def channel(self, name: str, create: Literal[True]) -> Channel: ...

    @overload
    def channel(self, name: str, create: bool) -> Channel | None: ...

    def channel(self, name: str, create: bool) -> Channel | None:
        """The channel named ``name``; with ``create``, made when missing (never None)."""
        ch = self.channels.get(name)
        if ch is None and create:
            if len(self.channels) >= self.config.max_channels:
                raise LimitExceeded(f"too many channels (limit {self.config.max_channels})")
            ch = self.channels[name] = Channel(name, self.config.channel_buffer_len,
                                               epoch=self.epoch)
        return ch

    def forget_if_unused(self, ch: Channel) -> None:
        """Drop a channel nobody published to and nobody waits on: polls (GETs) alone cannot
        fill the channel table.  Its state (epoch, seq 0) is exactly what re-making it gives."""
        if ch.last_seq == 0 and not len(ch.waiters) and self.channels.get(ch.name) is ch:
            del self.channels[ch.name]

    def wake_everyone(self) -> None:
        """On shutdown: answer every held poll (they return 204 and the client polls again)."""
        self.shutting_down = True
        for ch in self.channels.values():
            ch.waiters.wake_all()
        for task in list(self.tasks.running.values()):
            task.waiters.wake_all()
        if self.shared is not None:
            self.shared.wake_everyone()

    def snapshot(self) -> dict:
        s = self.stats
        return {
            "pid": os.getpid(),
            "backend_index": self.config.backend_index,
            "event_loop": describe_loop(),
            "uptime_s": round(time.time() - s.started_at, 3),
            "time": time.time(),
            **s.connection_figures(),
            "responses_by_status": s.responses_by_status(),
            "long_polls_waiting": self.waiting,
            "state": self.config.state,
            # with shared state: the channels this process follows (has a view of)
            "channels": len(self.channels) if self.shared is None else len(self.shared.views),
            "messages_published": s.messages_published,
            "messages_delivered": s.messages_delivered,
            "messages_dropped": s.messages_dropped,
            "polls_answered_with_messages": s.polls_answered_with_messages,
            "polls_timed_out": s.polls_timed_out,
            "tasks_submitted": s.tasks_submitted,
            "tasks_done": s.tasks_done,
            "tasks_running": len(self.tasks.running) if self.shared is None
            else self.shared.running_tasks,
            "gc": {
                "collections": {str(k): v for k, v in s.gc_collections.items()},
                "pause_max_ms": round(s.gc_pause_max_ms, 3),
                "pause_total_ms": round(s.gc_pause_total_ms, 3),
                "frozen_objects": gc.get_freeze_count(),
                "thresholds": list(gc.get_threshold()),
            },
            # (the Redis URL without a password)
            "config": {**asdict(self.config),
                       "redis_url": self.shared.where if self.shared is not None else ""},
            **({"shared": self.shared.snapshot()} if self.shared is not None else {}),
        }


def describe_loop() -> str:
    loop = asyncio.get_event_loop()
    selector = getattr(loop, "_selector", None)
    if selector is not None:
        return f"{type(loop).__module__}.{type(loop).__name__}/{type(selector).__name__}"
    return f"{type(loop).__module__}.{type(loop).__name__}"


class JsonError(tornado.web.HTTPError):
    def __init__(self, status: int, message: str):
        super().__init__(status, reason=None)
        self.message = message


def _refuse_constant(name: str):
    """NaN and Infinity are not JSON (RFC 8259); Python would accept them and serve them back."""
    raise ValueError(f"{name} is not a JSON value")


def _write_json_error(handler: tornado.web.RequestHandler, status_code: int, **kwargs) -> None:
    """Every error as the API's JSON body, never Tornado's HTML page."""
    exc = kwargs.get("exc_info", (None, None, None))[1]
    if isinstance(exc, JsonError):
        message = exc.message
    elif isinstance(exc, tornado.web.HTTPError) and exc.log_message:
        message = exc.log_message % exc.args if exc.args else exc.log_message
    else:
        message = handler._reason
    handler.set_header("Content-Type", "application/json")
    handler.finish(json.dumps({"error": message, "status": status_code}))


class StaticHandler(tornado.web.StaticFileHandler):
    """The static folder; its errors (403 outside the folder, 404) in JSON like the API's."""

    def write_error(self, status_code: int, **kwargs) -> None:
        _write_json_error(self, status_code, **kwargs)


class BaseHandler(tornado.web.RequestHandler):
    service: Service
    ROUTE = "other"  # the route label of /metrics' http_requests_total

    def initialize(self, service: Service) -> None:
        self.service = service
        self._waiter = None
        self.client_gone = False

    def compute_etag(self) -> None:
        # A SHA-1 of every body would cost a broadcast 10,000 hashes of the same bytes.
        return None

    def write_error(self, status_code: int, **kwargs) -> None:
        _write_json_error(self, status_code, **kwargs)

    def on_finish(self) -> None:
        counts = self.service.stats.responses
        key = (self.ROUTE, self.request.method or "", self.get_status())
        counts[key] = counts.get(key, 0) + 1

    def on_connection_close(self) -> None:
        # The client went away: release the waiter now, not at the next publish.
        self.client_gone = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(False)

    def write_json(self, obj, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj, separators=(",", ":")))

    def json_body(self) -> dict:
        body = self.request.body
        if len(body) > self.service.config.max_body_bytes:
            raise JsonError(413, f"body of {len(body)} bytes is over the limit of "
                                 f"{self.service.config.max_body_bytes}")
        if not body.strip():
            return {}
        try:
            value = json.loads(body, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as e:
            raise JsonError(400, f"body is not valid JSON: {e}") from None
        except RecursionError:  # thousands of nested brackets: Python's parser gives up
            raise JsonError(400, "body is not valid JSON: nested too deeply") from None
        return value

    def hold_timeout(self) -> float:
        raw = self.get_query_argument("timeout", None)
        if raw is None:
            return self.service.config.default_hold_s
        try:
            value = float(raw)
        except ValueError:
            raise JsonError(400, f"timeout must be a number of seconds, not {raw!r}") from None
        if not math.isfinite(value) or value < 0:
            raise JsonError(400, f"timeout must be between 0 and {self.service.config.max_hold_s}")
        # Never hold past nginx's proxy_read_timeout: that would be a 504 and a backend marked down.
        return min(value, self.service.config.max_hold_s)

    async def wait(self, waiters, timeout: float) -> bool:
        """Hold until woken (True) or timed out / disconnected (False)."""
        service = self.service
        if service.waiting >= service.config.max_waiters:
            raise JsonError(503, f"too many waiting polls (limit {service.config.max_waiters})")
        if service.shutting_down:
            return False
        self._waiter = fut = waiters.add()
        # A bare timer is cheaper than asyncio.wait_for (no extra task per held poll).
        timer = asyncio.get_running_loop().call_later(timeout, _expire, fut)
        service.waiting += 1
        try:
            return await fut
        except asyncio.CancelledError:
            return False
        finally:
            service.waiting -= 1
            timer.cancel()
            waiters.discard(fut)
            self._waiter = None


class TasksHandler(BaseHandler):
    ROUTE = "tasks"

    def task_request(self) -> tuple[str, int, int]:
        """(task id, duration_ms, payload_bytes) of a POST /tasks, validated."""
        body = self.json_body()
        if not isinstance(body, dict):
            raise JsonError(400, "body must be a JSON object like {\"duration_ms\": 100}")
        cfg = self.service.config
        duration_ms = _bounded_int(body, "duration_ms", 0, cfg.max_task_duration_ms, 0)
        payload_bytes = _bounded_int(body, "payload_bytes", 0, cfg.max_payload_bytes, 0)
        # Behind nginx the task id is nginx's $request_id: with key-hash routing nginx hashed
        # on that same value to pick this backend, so GET /tasks/<id> hashes back here.
        rid = self.request.headers.get("X-Request-Id", "")
        task_id = rid if _NGINX_REQUEST_ID.match(rid) else secrets.token_hex(16)
        return task_id, duration_ms, payload_bytes

    def accepted(self, task_id: str) -> None:
        self.service.stats.tasks_submitted += 1
        self.write_json({"id": task_id, "poll": f"/tasks/{task_id}"}, status=202)

    def post(self) -> None:
        task_id, duration_ms, payload_bytes = self.task_request()
        try:
            task = self.service.tasks.submit(task_id, duration_ms, payload_bytes)
        except LimitExceeded as e:
            raise JsonError(503, str(e)) from None
        asyncio.get_running_loop().call_later(duration_ms / 1000.0, self._finish, task)
        self.accepted(task.id)

    def _finish(self, task) -> None:
        self.service.tasks.finish(task)
        self.service.stats.tasks_done += 1


class TaskHandler(BaseHandler):
    ROUTE = "task"

    def not_yet(self) -> None:
        self.service.stats.polls_timed_out += 1
        self.set_status(204)
        self.finish()

    def result(self, task_id: str, payload_bytes: int, duration_ms: int, submitted_at: float,
               finished_at: float | None) -> None:
        self.write_json({
            "id": task_id,
            "result": {"payload": "x" * payload_bytes, "duration_ms": duration_ms},
            "submitted_at": submitted_at,
            "finished_at": finished_at,
        })

    async def get(self, task_id: str) -> None:
        timeout = self.hold_timeout()
        task = self.service.tasks.get(task_id)
        if task is None:
            raise JsonError(404, f"unknown or expired task {task_id!r}")
        if not task.done and timeout > 0:
            await self.wait(task.waiters, timeout)
        if self.client_gone:
            return
        if not task.done:
            self.not_yet()
            return
        self.result(task.id, task.payload_bytes, task.duration_ms, task.submitted_at,
                    task.finished_at)


class ChannelHandler(BaseHandler):
    ROUTE = "channel"

    def prepare(self) -> None:
        super().prepare()
        if self.path_args[0] in (".", ".."):
            # nginx routes by the normalised URI, in which these segments vanish: their
            # publishes and polls would hash to different backends and lose messages.
            raise JsonError(400, f"channel name {self.path_args[0]!r} is refused: nginx "
                                 "normalises '.' and '..' away before routing; choose another")

    def message_body(self) -> bytes:
        body = self.request.body
        self.json_body()  # validates size and syntax; the bytes are kept verbatim
        return body.strip() or b"null"

    def published(self, seq: int, ts: float, epoch: str) -> None:
        self.service.stats.messages_published += 1
        self.write_json({"seq": seq, "ts": ts, "epoch": epoch}, status=201)

    def post(self, name: str) -> None:
        data = self.message_body()
        try:
            ch = self.service.channel(name, create=True)
        except LimitExceeded as e:
            raise JsonError(503, str(e)) from None
        msg = ch.publish(data)
        ch.waiters.wake_all()
        self.published(msg.seq, msg.ts, ch.epoch)

    def client_position(self) -> tuple[int | None, str | None]:
        """The poll's ``cursor`` (None: "from now on") and ``epoch``, validated."""
        raw_cursor = self.get_query_argument("cursor", None)
        epoch = self.get_query_argument("epoch", None)
        if raw_cursor is None or raw_cursor == "":
            return None, epoch
        try:
            cursor = int(raw_cursor)
        except ValueError:
            raise JsonError(400, f"cursor must be a whole number, not {raw_cursor!r}") from None
        if cursor < 0:
            raise JsonError(400, "cursor must be 0 or more")
        return cursor, epoch

    @staticmethod
    def resolve_cursor(name: str, cursor: int | None, epoch: str | None, last_seq: int,
                       current_epoch: str) -> int:
        """Where the poll reads from, against the channel's last seq and epoch."""
        if cursor is None:
            return last_seq  # "from now on"
        if epoch is not None and epoch != current_epoch:
            # The client's cursor belongs to a previous life of this channel: everything it
            # may have missed is reported through the epoch change; start from 0.
            return 0
        if cursor > last_seq:
            raise JsonError(400, f"cursor {cursor} is ahead of channel {name!r} (last seq "
                                 f"{last_seq}, epoch {current_epoch}): the channel restarted; "
                                 "poll without a cursor")
        return cursor

    def timed_out(self, cursor: int, epoch: str) -> None:
        self.service.stats.polls_timed_out += 1
        self.set_status(204)
        # A 204 has no body: the cursor and epoch travel in headers so that a first poll
        # "from now on" that times out still tells the client where "now" is.
        self.set_header("X-Cursor", str(cursor))
        self.set_header("X-Epoch", epoch)
        self.finish()

    async def injected_delay(self) -> None:
        """The known regression of --delivery-delay-ms (0 in every real benchmark)."""
        await precise_sleep(self.service.config.delivery_delay_ms / 1000.0)

    def delivered(self, body: bytes, count: int, dropped: int) -> None:
        if self.service.config.burn_us > 0:
            burn_cpu(self.service.config.burn_us)
        stats = self.service.stats
        stats.messages_delivered += count
        stats.messages_dropped += dropped
        stats.polls_answered_with_messages += 1
        stats.answer_times.observe(self.request.request_time())
        self.set_header("Content-Type", "application/json")
        self.finish(body)

    async def get(self, name: str) -> None:
        timeout = self.hold_timeout()
        service = self.service
        try:
            ch = service.channel(name, create=True)
        except LimitExceeded as e:
            raise JsonError(503, str(e)) from None
        try:
            client_cursor, epoch = self.client_position()
            cursor = self.resolve_cursor(name, client_cursor, epoch, ch.last_seq, ch.epoch)
            if cursor >= ch.last_seq and timeout > 0:
                await self.wait(ch.waiters, timeout)
            if self.client_gone:
                return
            if cursor >= ch.last_seq:
                self.timed_out(cursor, ch.epoch)
                return
            if service.config.delivery_delay_ms > 0:
                await self.injected_delay()
            self.delivered(*ch.render_after(cursor, service.config.max_messages_per_poll))
        finally:
            service.forget_if_unused(ch)


# -- shared state (--state redis): the same API, any backend answers (target_app.shared) ------

def _shared(handler: BaseHandler) -> SharedState:
    shared = handler.service.shared
    assert shared is not None  # these handlers are routed only with --state redis
    return shared


class SharedTasksHandler(TasksHandler):
    async def post(self) -> None:  # type: ignore[override]
        from target_app.shared import Unavailable

        shared = _shared(self)
        task_id, duration_ms, payload_bytes = self.task_request()
        cfg = self.service.config
        if shared.running_tasks >= cfg.max_running_tasks:
            raise JsonError(503, f"too many running tasks (limit {cfg.max_running_tasks})")
        try:
            while not await shared.submit_task(task_id, duration_ms, payload_bytes, time.time()):
                task_id = secrets.token_hex(16)  # the id was taken
        except Unavailable as e:
            raise JsonError(503, str(e)) from None
        shared.running_tasks += 1
        asyncio.get_running_loop().call_later(duration_ms / 1000.0, self._finish_shared,
                                              shared, task_id)
        self.accepted(task_id)

    def _finish_shared(self, shared: SharedState, task_id: str) -> None:
        shared.running_tasks -= 1
        self.service.stats.tasks_done += 1
        asyncio.ensure_future(shared.finish_task(task_id))


class SharedTaskHandler(TaskHandler):
    async def get(self, task_id: str) -> None:
        from target_app.shared import Unavailable

        shared = _shared(self)
        timeout = self.hold_timeout()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        view = shared.acquire_task(task_id)  # before the read: its completion wakes us
        try:
            while True:
                try:
                    rec = await shared.get_task(task_id)
                except Unavailable as e:
                    raise JsonError(503, str(e)) from None
                if self.client_gone:
                    return
                if rec is None:
                    raise JsonError(404, f"unknown or expired task {task_id!r}")
                if rec["s"] == "d":
                    self.result(task_id, int(rec["pay"]), int(rec["dur"]), float(rec["sub"]),
                                float(rec["fin"]))
                    return
                if rec["s"] == "l":
                    raise JsonError(500, f"task {task_id} was lost: the backend running it "
                                         f"({rec['o']}) stopped before it finished; submit "
                                         "it again")
                view.owner = rec["o"]
                remaining = deadline - loop.time()
                if remaining <= 0 or self.service.shutting_down:
                    self.not_yet()
                    return
                await self.wait(view.waiters, remaining)
                if self.client_gone:
                    return
        finally:
            shared.release_task(task_id, view)


class SharedChannelHandler(ChannelHandler):
    async def post(self, name: str) -> None:  # type: ignore[override]
        from target_app.shared import ChannelLimit, Unavailable

        data = self.message_body()
        try:
            seq, ts, epoch = await _shared(self).publish(name, data)
        except (ChannelLimit, Unavailable) as e:
            raise JsonError(503, str(e)) from None
        self.published(seq, ts, epoch)

    async def get(self, name: str) -> None:
        from target_app.shared import Unavailable

        shared = _shared(self)
        timeout = self.hold_timeout()
        client_cursor, client_epoch = self.client_position()
        limit = self.service.config.max_messages_per_poll
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        view = shared.acquire(name)  # before any read: the fan-out fills it from now on
        cursor: int | None = None
        refreshed = False
        try:
            while True:
                try:
                    if not view.synced:
                        await shared.sync(view)
                        refreshed = True
                        continue  # (a reconnect may have unsynced it again)
                    if cursor is None and client_cursor is not None and not refreshed and \
                            client_cursor > view.known_last and client_epoch in (None, view.epoch):
                        # The client may have read from a process whose fan-out ran ahead of
                        # this one's: ask Redis before calling the cursor ahead of the channel.
                        await shared.sync(view)
                        refreshed = True
                        continue
                    if cursor is None or client_epoch != view.epoch:
                        cursor = self.resolve_cursor(name, client_cursor, client_epoch,
                                                     view.known_last, view.epoch)
                        client_cursor, client_epoch = cursor, view.epoch
                    if cursor < view.known_last:
                        if view.covers(cursor):
                            shared.counters.polls_answered_from_view += 1
                            if self.service.config.delivery_delay_ms > 0:
                                await self.injected_delay()
                            self.delivered(*view.render_after(cursor, limit))
                            return
                        got = await shared.read(name, cursor, limit)
                        if got.epoch != view.epoch:
                            view.synced = False  # Redis restarted since the view synced
                            continue
                        if got.messages or got.dropped(cursor):
                            if self.service.config.delivery_delay_ms > 0:
                                await self.injected_delay()
                            self.delivered(*shared.render_read(got, cursor, view))
                            return
                except Unavailable as e:
                    raise JsonError(503, str(e)) from None
                remaining = deadline - loop.time()
                if remaining <= 0 or self.service.shutting_down:
                    self.timed_out(cursor, view.epoch)
                    return
                await self.wait(view.waiters, remaining)
                if self.client_gone:
                    return
        finally:
            shared.release(view)


class HealthHandler(BaseHandler):
    ROUTE = "healthz"

    def get(self) -> None:
        self.write_json({"ok": not self.service.shutting_down,
                         "backend_index": self.service.config.backend_index})


class StatsHandler(BaseHandler):
    ROUTE = "stats"

    def get(self) -> None:
        self.write_json(self.service.snapshot())


class MetricsHandler(BaseHandler):
    """Prometheus / OpenMetrics (target_app.metrics): each backend is scraped on its own port."""

    ROUTE = "metrics"

    def get(self) -> None:
        from target_app.metrics import make_registry, render

        service = self.service
        registry = service.registry
        if registry is None:
            registry = service.registry = make_registry(service)
        body, content_type = render(registry, self.request.headers.get("Accept"))
        self.set_header("Content-Type", content_type)
        self.finish(body)


class NotFoundHandler(BaseHandler):
    ROUTE = "not_found"

    def prepare(self) -> None:
        raise JsonError(404, f"no such resource: {self.request.path}")


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(False)


def _bounded_int(body: dict, key: str, lo: int, hi: int, default: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise JsonError(400, f"{key} must be a whole number from {lo} to {hi}, not {value!r}")
    return value


def _no_request_log(handler) -> None:
    # Per-request logging would cost more than the request at benchmark rates; server
    # errors are still logged, and every status is counted in /stats.
    if handler.get_status() >= 500:
        tornado.web.app_log.warning("%d %s", handler.get_status(), handler._request_summary())


def make_app(config: AppConfig | None = None) -> tornado.web.Application:
    config = config or AppConfig()
    service = Service(config)
    args = {"service": service}
    shared = config.state == "redis"
    app = tornado.web.Application(
        [
            (r"/tasks", SharedTasksHandler if shared else TasksHandler, args),
            (r"/tasks/([0-9a-f]{1,64})", SharedTaskHandler if shared else TaskHandler, args),
            (rf"/channels/({_CHANNEL_NAME})", SharedChannelHandler if shared else ChannelHandler,
             args),
            (r"/healthz", HealthHandler, args),
            (r"/stats", StatsHandler, args),
            (r"/metrics", MetricsHandler, args),
            (r"/(favicon\.ico|robots\.txt)", StaticHandler, {"path": STATIC_PATH}),
        ],
        static_path=str(STATIC_PATH),
        static_handler_class=StaticHandler,
        default_handler_class=NotFoundHandler,
        default_handler_args=args,
        log_function=_no_request_log,
        debug=False,
        compress_response=False,  # nginx gzips (gzip_proxied any), as in the seed
    )
    app.settings["service"] = service
    app.settings["stats"] = service.stats
    return app
