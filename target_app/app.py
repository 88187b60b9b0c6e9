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
from typing import TYPE_CHECKING

import tornado.httputil
import tornado.web

from target_app.connections import ConnectionStats, PollHTTPServer
from target_app.local import LocalState
from target_app.metrics import AnswerTimes
from target_app.state import Answer, Task
from target_app.store import CursorAhead, LimitExceeded, Position, State, TaskLost, Unavailable

__all__ = ["AppConfig", "PollHTTPServer", "Service", "Stats", "make_app"]

STATES = ("local", "redis")

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

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
    """Everything one process knows: its state (channels and tasks), waiters and counters."""

    def __init__(self, config: AppConfig):
        self.config = config
        self.stats = Stats()
        self.waiting = 0
        self.shutting_down = False
        # /metrics' prometheus_client registry, made at the first scrape
        self.registry: CollectorRegistry | None = None
        self.state = make_state(config, self._task_done)

    def _task_done(self) -> None:
        self.stats.tasks_done += 1

    def wake_everyone(self) -> None:
        """On shutdown: answer every held poll (they return 204 and the client polls again)."""
        self.shutting_down = True
        self.state.wake_everyone()

    def snapshot(self) -> dict:
        s = self.stats
        details = self.state.details()
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
            "channels": self.state.channels.count(),
            "messages_published": s.messages_published,
            "messages_delivered": s.messages_delivered,
            "messages_dropped": s.messages_dropped,
            "polls_answered_with_messages": s.polls_answered_with_messages,
            "polls_timed_out": s.polls_timed_out,
            "tasks_submitted": s.tasks_submitted,
            "tasks_done": s.tasks_done,
            "tasks_running": self.state.tasks.running(),
            "gc": {
                "collections": {str(k): v for k, v in s.gc_collections.items()},
                "pause_max_ms": round(s.gc_pause_max_ms, 3),
                "pause_total_ms": round(s.gc_pause_total_ms, 3),
                "frozen_objects": gc.get_freeze_count(),
                "thresholds": list(gc.get_threshold()),
            },
            # (the Redis URL without a password)
            "config": {**asdict(self.config), "redis_url": self.state.where()},
            **({"shared": details} if details is not None else {}),
        }


def make_state(config: AppConfig, on_task_done) -> State:
    """The configured store (``config.state``) of one process."""
    if config.state == "redis":
        from target_app.shared import RedisState

        return RedisState(config.redis_url, config.redis_prefix, config.channel_buffer_len,
                          config.max_channels, config.max_running_tasks, config.result_ttl_s,
                          config.backend_index, on_task_done)
    return LocalState(config.channel_buffer_len, config.max_channels, config.max_running_tasks,
                      config.max_results, config.result_ttl_s, on_task_done)


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


SERVER_HEADER = f"TornadoServer/{tornado.version}"


class BaseHandler(tornado.web.RequestHandler):
    service: Service
    ROUTE = "other"  # the route label of /metrics' http_requests_total

    def initialize(self, service: Service) -> None:
        self.service = service
        self._waiter = None
        self.client_gone = False

    def clear(self) -> None:
        # Tornado's clear() formats Server and Date into every request's header map as it
        # starts, and a held poll keeps them for minutes; flush() adds them as the answer
        # leaves (Date then says when it was made).  Content-Type stays: a 204 clears it.
        self._headers = tornado.httputil.HTTPHeaders(
            {"Content-Type": "text/html; charset=UTF-8"})
        self.set_default_headers()
        self._write_buffer = []
        self._status_code = 200
        self._reason = tornado.httputil.responses[200]

    def flush(self, include_footers: bool = False):
        if not self._headers_written:
            headers = self._headers
            if "Server" not in headers:
                headers["Server"] = SERVER_HEADER
            if "Date" not in headers:
                headers["Date"] = tornado.httputil.format_timestamp(time.time())
        return super().flush(include_footers)

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

    async def wait_more(self, waiters, deadline: float) -> str:
        """After a read that had nothing to answer: "read" once woken (read again),
        "timeout" when the hold is over (its deadline passed, or the server is shutting
        down: the caller answers "nothing yet"), "gone" when the client left meanwhile.

        One coroutine (not two nested): a held poll keeps every frame it waits in."""
        service = self.service
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0 or service.shutting_down:
            return "timeout"
        if service.waiting >= service.config.max_waiters:
            raise JsonError(503, f"too many waiting polls (limit {service.config.max_waiters})")
        self._waiter = fut = waiters.add()
        # A bare timer is cheaper than asyncio.wait_for (no extra task per held poll).
        timer = loop.call_later(remaining, _expire, fut)
        service.waiting += 1
        try:
            await fut
        except asyncio.CancelledError:
            pass
        finally:
            service.waiting -= 1
            timer.cancel()
            waiters.discard(fut)
            self._waiter = None
        return "gone" if self.client_gone else "read"


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

    async def post(self) -> None:
        task_id, duration_ms, payload_bytes = self.task_request()
        try:
            task_id = await self.service.state.tasks.submit(task_id, duration_ms, payload_bytes)
        except (LimitExceeded, Unavailable) as e:
            raise JsonError(503, str(e)) from None
        self.service.stats.tasks_submitted += 1
        self.write_json({"id": task_id, "poll": f"/tasks/{task_id}"}, status=202)


class TaskHandler(BaseHandler):
    ROUTE = "task"

    def not_yet(self) -> None:
        self.service.stats.polls_timed_out += 1
        self.set_status(204)
        self.finish()

    def result(self, task: Task) -> None:
        self.write_json({
            "id": task.id,
            "result": {"payload": "x" * task.payload_bytes, "duration_ms": task.duration_ms},
            "submitted_at": task.submitted_at,
            "finished_at": task.finished_at,
        })

    async def get(self, task_id: str) -> None:
        service = self.service
        tasks = service.state.tasks
        timeout = self.hold_timeout()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        handle = tasks.acquire(task_id)  # before the read: the task's end wakes us from now
        try:
            while True:
                try:
                    task = await tasks.read(task_id, handle)
                except Unavailable as e:
                    raise JsonError(503, str(e)) from None
                except TaskLost as e:
                    raise JsonError(500, str(e)) from None
                if self.client_gone:
                    return
                if task is None:
                    raise JsonError(404, f"unknown or expired task {task_id!r}")
                if task.done:
                    self.result(task)
                    return
                after = await self.wait_more(handle.waiters, deadline)
                if after != "read":
                    if after == "timeout":
                        self.not_yet()
                    return
        finally:
            tasks.release(task_id, handle)


class ChannelHandler(BaseHandler):
    ROUTE = "channel"

    def prepare(self) -> None:
        super().prepare()
        if self.path_args[0] in (".", ".."):
            # nginx routes by the normalised URI, in which these segments vanish: their
            # publishes and polls would hash to different backends and lose messages.
            raise JsonError(400, f"channel name {self.path_args[0]!r} is refused: nginx "
                                 "normalises '.' and '..' away before routing; choose another")

    async def post(self, name: str) -> None:
        data = self.request.body
        self.json_body()  # validates size and syntax; the bytes are kept verbatim
        try:
            seq, ts, epoch = await self.service.state.channels.publish(
                name, data.strip() or b"null")
        except (LimitExceeded, Unavailable) as e:
            raise JsonError(503, str(e)) from None
        self.service.stats.messages_published += 1
        self.write_json({"seq": seq, "ts": ts, "epoch": epoch}, status=201)

    def client_position(self) -> Position:
        """The poll's ``cursor`` (None: "from now on") and ``epoch``, validated."""
        raw_cursor = self.get_query_argument("cursor", None)
        epoch = self.get_query_argument("epoch", None)
        if raw_cursor is None or raw_cursor == "":
            return Position(None, epoch)
        try:
            cursor = int(raw_cursor)
        except ValueError:
            raise JsonError(400, f"cursor must be a whole number, not {raw_cursor!r}") from None
        if cursor < 0:
            raise JsonError(400, "cursor must be 0 or more")
        return Position(cursor, epoch)

    def timed_out(self, position: Position) -> None:
        self.service.stats.polls_timed_out += 1
        self.set_status(204)
        # A 204 has no body: the cursor and epoch travel in headers so that a first poll
        # "from now on" that times out still tells the client where "now" is.
        self.set_header("X-Cursor", str(position.cursor))
        self.set_header("X-Epoch", position.epoch or "")
        self.finish()

    async def delivered(self, answer: Answer) -> None:
        config = self.service.config
        if config.delivery_delay_ms > 0:
            # the known latency regression of --delivery-delay-ms (0 in every real benchmark)
            await precise_sleep(config.delivery_delay_ms / 1000.0)
        if config.burn_us > 0:
            burn_cpu(config.burn_us)
        stats = self.service.stats
        stats.messages_delivered += answer.delivered
        stats.messages_dropped += answer.dropped
        stats.polls_answered_with_messages += 1
        stats.answer_times.observe(self.request.request_time())
        self.set_header("Content-Type", "application/json")
        self.finish(answer.body)

    async def get(self, name: str) -> None:
        service = self.service
        channels = service.state.channels
        timeout = self.hold_timeout()
        position = self.client_position()
        limit = service.config.max_messages_per_poll
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            handle = channels.acquire(name)  # before any read: wakes from now on count
        except LimitExceeded as e:
            raise JsonError(503, str(e)) from None
        try:
            while True:
                try:
                    answer = await channels.read(handle, position, limit)
                except CursorAhead as e:
                    raise JsonError(400, str(e)) from None
                except Unavailable as e:
                    raise JsonError(503, str(e)) from None
                if self.client_gone:
                    return
                if answer is not None:
                    await self.delivered(answer)
                    return
                after = await self.wait_more(handle.waiters, deadline)
                if after != "read":
                    if after == "timeout":
                        self.timed_out(position)
                    return
        finally:
            channels.release(handle)


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
    app = tornado.web.Application(
        [
            (r"/tasks", TasksHandler, args),
            (r"/tasks/([0-9a-f]{1,64})", TaskHandler, args),
            (rf"/channels/({_CHANNEL_NAME})", ChannelHandler, args),
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
