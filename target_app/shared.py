"""Channel and task state shared by every backend process through Redis (``--state redis``).

With local state (``target_app.state``) a channel lives in one process, so nginx must route
by key.  Here any backend answers any request:

- **A publish is one Lua script** (atomic): it assigns the channel's next ``seq``, appends the
  rendered message to a capped list (the last ``channel_buffer_len``), and PUBLISHes it once
  on one fan-out channel that every backend process subscribes to.  So a publish costs
  O(backends) Redis work, never O(subscribers).
- **Each backend fans out to its own waiters.**  It keeps a *view* of every channel it has
  polls for: the tail of the channel as the fan-out delivered it (consecutive seqs), the
  last seq it knows, and its waiters.  A poll whose cursor the view covers is answered from
  memory (one rendering per message per process, as in local state); only a poll the view
  cannot answer (a new view, a cursor further back) reads Redis.  A view is *synced* once a
  read made after the view began following the fan-out has told it the channel's last
  seq: from then on the fan-out alone keeps it exact, and a poll at the head waits without
  asking Redis.
- **Epoch** names the lifetime of the data in Redis (one key, set when missing): a backend
  restart keeps it, a Redis restart (persistence off) changes it, exactly as a process
  restart changes a channel's epoch with local state.
- **Tasks**: a hash per task (state, owner, times) with a TTL; the backend that accepted the
  task runs it and publishes its completion on the fan-out.  Every backend keeps a heartbeat
  key; a poll for a running task whose owner's heartbeat is gone gets a JSON error (the task
  is marked lost) instead of waiting out its timeout.
- **Losing Redis**: every command that fails answers 503 with the reason; when the fan-out
  connection drops, every view is forgotten and every held poll is woken, so polls re-read
  the state (and meet a new epoch if Redis restarted) once Redis is back.

Redis structures were chosen by measurement (``benchmarks/redis_structures.py``): a list
trimmed to the buffer length against a stream with ``MAXLEN`` and seq-numbered ids.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from target_app.state import Channel, Message, Waiters, dropped_count, render_answer

log = logging.getLogger("target_app.shared")

# A backend's heartbeat key lives this long and is refreshed every HEARTBEAT_EVERY_S: a task
# whose owner missed it for this long is lost (a GC pause is far shorter).
# Redis connections one backend process may hold: its command pool and its fan-out
# subscription (the stack's capacity check counts them against Redis' maxclients)
REDIS_POOL_SIZE = 64
REDIS_CONNECTIONS_PER_BACKEND = REDIS_POOL_SIZE + 1
HEARTBEAT_TTL_MS = 3000
HEARTBEAT_EVERY_S = 1.0
# A view nobody has polled for this long is forgotten (it costs a Redis read to make again).
VIEW_IDLE_S = 10.0
# How long a Redis command may take before the request is answered 503.
COMMAND_TIMEOUT_S = 2.0

# KEYS: epoch, seq, log, channels.  ARGV: candidate epoch, name, ts text, data, buffer length,
# max channels, fan-out channel.  Returns {seq, epoch}; seq 0 = the channel limit was reached.
_PUBLISH = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then redis.call('SET', KEYS[1], ARGV[1]); epoch = ARGV[1] end
if redis.call('EXISTS', KEYS[2]) == 0 then
  if redis.call('SCARD', KEYS[4]) >= tonumber(ARGV[6]) then return {0, epoch} end
  redis.call('SADD', KEYS[4], ARGV[2])
end
local seq = redis.call('INCR', KEYS[2])
local msg = '{"seq":' .. seq .. ',"ts":' .. ARGV[3] .. ',"data":' .. ARGV[4] .. '}'
redis.call('RPUSH', KEYS[3], msg)
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[5]), -1)
redis.call('PUBLISH', ARGV[7], 'C\\n' .. ARGV[2] .. '\\n' .. epoch .. '\\n' .. seq .. '\\n' .. msg)
return {seq, epoch}
"""

# KEYS: epoch, seq, log.  ARGV: candidate epoch, cursor (-1: none wanted), limit.
# Returns {epoch, last seq, first buffered seq, messages after the cursor (at most limit)}.
_READ = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then redis.call('SET', KEYS[1], ARGV[1]); epoch = ARGV[1] end
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local cursor = tonumber(ARGV[2])
if cursor < 0 or cursor >= last then return {epoch, last, last + 1, {}} end
local n = redis.call('LLEN', KEYS[3])
local first = last - n + 1
local start = math.max(cursor + 1, first)
local count = math.min(last - start + 1, tonumber(ARGV[3]))
return {epoch, last, first, redis.call('LRANGE', KEYS[3], start - first, start - first + count - 1)}
"""

# KEYS: task.  ARGV: owner, submitted_at, duration_ms, payload_bytes, ttl ms.  1 = created.
_TASK_SUBMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 's', 'r', 'o', ARGV[1], 'sub', ARGV[2], 'dur', ARGV[3], 'pay', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS: task.  ARGV: finished_at, ttl ms, fan-out channel, id.
_TASK_FINISH = """
if redis.call('HGET', KEYS[1], 's') ~= 'r' then return 0 end
redis.call('HSET', KEYS[1], 's', 'd', 'fin', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], 'T\\n' .. ARGV[4])
return 1
"""

# KEYS: task.  ARGV: heartbeat key prefix, fan-out channel, id.  The task's fields; a running
# task whose owner's heartbeat is gone is marked lost ('l') first, and its waiters told.
_TASK_GET = """
local t = redis.call('HGETALL', KEYS[1])
if #t == 0 then return t end
local h = {}
for i = 1, #t, 2 do h[t[i]] = t[i + 1] end
if h['s'] == 'r' and redis.call('EXISTS', ARGV[1] .. h['o']) == 0 then
  redis.call('HSET', KEYS[1], 's', 'l')
  redis.call('PUBLISH', ARGV[2], 'T\\n' .. ARGV[3])
  t = redis.call('HGETALL', KEYS[1])
end
return t
"""


class Unavailable(Exception):
    """Redis cannot answer: the handler answers 503 with this text."""


class ChannelLimit(Exception):
    """The shared channel table is full."""


class ChannelView(Channel):
    """One process's view of a shared channel: the tail the fan-out delivered, and waiters."""

    def __init__(self, name: str, buffer_len: int):
        super().__init__(name, buffer_len, epoch="")
        self.users = 0                  # polls in progress that use this view
        self.synced = False             # known_last is the channel's last seq (see module doc)
        self.known_last = 0
        self.idle_since = time.monotonic()
        self.syncing: asyncio.Future | None = None


@dataclass
class TaskView:
    waiters: Waiters = field(default_factory=Waiters)
    owner: str = ""
    users: int = 0


@dataclass
class Read:
    """A Redis read of a channel: what a poll needs to answer from it."""
    epoch: str
    last: int
    first: int
    start: int            # seq of messages[0]
    messages: list[bytes]

    def dropped(self, cursor: int) -> tuple[int, int] | None:
        return (cursor + 1, self.first - 1) if cursor + 1 < self.first <= self.last else None


@dataclass
class SharedCounters:
    redis_reads: int = 0
    redis_publishes: int = 0
    fanout_messages: int = 0
    polls_answered_from_view: int = 0
    fanout_reconnects: int = 0
    redis_errors: int = 0


class _FanoutPubSub(PubSub):
    """redis-py's PubSub, telling its owner each time its connection is (re)made: messages
    published while it was away are never delivered, so every view must be re-read."""

    def __init__(self, *args: Any, on_reconnect, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._on_reconnect = on_reconnect

    async def on_connect(self, connection) -> None:
        self._on_reconnect()
        await super().on_connect(connection)


class SharedState:
    """The Redis side of one backend process (see the module's docstring)."""

    def __init__(self, url: str, prefix: str, buffer_len: int, max_channels: int,
                 result_ttl_s: float, backend_index: int):
        self.url = url
        parts = urlsplit(url)  # named in errors and /stats without a password
        self.where = f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path}"
        self.prefix = prefix
        self.buffer_len = buffer_len
        self.max_channels = max_channels
        self.result_ttl_ms = int(result_ttl_s * 1000)
        self.instance = f"{backend_index}-{os.getpid()}-{secrets.token_hex(3)}"
        self.fanout = f"{prefix}fanout"
        self.heartbeat_prefix = f"{prefix}hb:"
        self.epoch_key = f"{prefix}epoch"
        self.channels_key = f"{prefix}channels"
        # One retry on a broken connection: after Redis restarts, each pooled connection
        # fails once ("closed by server") before it is made again.  No retry on a timeout:
        # a stalled Redis answers 503 after COMMAND_TIMEOUT_S, not twice that.
        self.redis = aioredis.Redis.from_url(
            url, socket_timeout=COMMAND_TIMEOUT_S, socket_connect_timeout=COMMAND_TIMEOUT_S,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            max_connections=REDIS_POOL_SIZE)
        self._publish = self.redis.register_script(_PUBLISH)
        self._read = self.redis.register_script(_READ)
        self._task_submit = self.redis.register_script(_TASK_SUBMIT)
        self._task_finish = self.redis.register_script(_TASK_FINISH)
        self._task_get = self.redis.register_script(_TASK_GET)
        self.views: dict[str, ChannelView] = {}
        self.task_views: dict[str, TaskView] = {}
        self.running_tasks = 0
        self.ready = False      # subscribed to the fan-out: views can be trusted
        self.generation = 0     # bumped whenever the fan-out may have missed messages
        self.counters = SharedCounters()
        self.last_error = ""
        self._tasks: list[asyncio.Task] = []
        self._subscribed = asyncio.Event()
        self._stopping = False

    # -- life ---------------------------------------------------------------------------------

    async def start(self, timeout: float = 10.0) -> None:
        """Reach Redis and subscribe to the fan-out (raise Unavailable if that fails)."""
        try:
            await asyncio.wait_for(self.redis.ping(), timeout)
        except (RedisError, OSError, TimeoutError) as e:
            raise Unavailable(f"cannot reach redis at {self.where}: {e}") from None
        self._tasks = [asyncio.create_task(self._fanout_loop()),
                       asyncio.create_task(self._housekeeping())]
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout)
        except TimeoutError:
            raise Unavailable(f"cannot subscribe to {self.fanout} at {self.where}: "
                              f"{self.last_error or 'no answer'}") from None
        await self._beat()

    async def stop(self) -> None:
        """Stop following Redis; a running task of this process is lost from now on."""
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        try:
            await asyncio.wait_for(self.redis.delete(self.heartbeat_prefix + self.instance), 1)
        except (RedisError, OSError, TimeoutError):
            pass
        await self.redis.aclose()

    def wake_everyone(self) -> None:
        for view in self.views.values():
            view.waiters.wake_all()
        for tv in self.task_views.values():
            tv.waiters.wake_all()

    async def _housekeeping(self) -> None:
        """Heartbeat, lost-owner checks for awaited tasks, and idle views, once a second."""
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY_S)
            try:
                await self._beat()
                await self._check_task_owners()
            except (RedisError, OSError, TimeoutError) as e:
                self._note_error(e)
            self._forget_idle_views()

    async def _beat(self) -> None:
        await self.redis.set(self.heartbeat_prefix + self.instance, b"1", px=HEARTBEAT_TTL_MS)

    def _forget_idle_views(self, idle_s: float = VIEW_IDLE_S) -> None:
        now = time.monotonic()
        stale = [name for name, v in self.views.items()
                 if v.users == 0 and now - v.idle_since > idle_s]
        for name in stale:
            del self.views[name]

    # -- the fan-out --------------------------------------------------------------------------

    def _invalidate(self) -> None:
        """The fan-out may have missed messages: no view can be trusted any more."""
        self.ready = False
        self.generation += 1
        for view in self.views.values():
            view.synced = False
            view.reset(None)
            view.waiters.wake_all()
        for tv in self.task_views.values():
            tv.waiters.wake_all()

    def _on_connect(self) -> None:
        self.counters.fanout_reconnects += 1
        self._invalidate()

    async def _fanout_loop(self) -> None:
        delay = 0.05
        while not self._stopping:
            ps = _FanoutPubSub(self.redis.connection_pool, on_reconnect=self._on_connect)
            try:
                await ps.subscribe(self.fanout)
                while True:
                    msg = await ps.get_message(timeout=None)
                    if msg is None:
                        continue
                    kind = msg["type"]
                    if kind == "message":
                        self._on_fanout(msg["data"])
                    elif kind == "subscribe":
                        self.ready = True
                        self._subscribed.set()
                        delay = 0.05
            except asyncio.CancelledError:
                await ps.aclose()
                raise
            except (RedisError, OSError) as e:
                self._note_error(e)
                self._invalidate()
                await ps.aclose()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _on_fanout(self, payload: bytes) -> None:
        self.counters.fanout_messages += 1
        if payload[:2] == b"T\n":
            tv = self.task_views.get(payload[2:].decode())
            if tv is not None:
                tv.waiters.wake_all()
            return
        # b"C\n<name>\n<epoch>\n<seq>\n<message json>" (the JSON may hold newlines)
        _, name_b, epoch_b, seq_b, encoded = payload.split(b"\n", 4)
        view = self.views.get(name_b.decode())
        if view is None:
            return
        epoch, seq = epoch_b.decode(), int(seq_b)
        if view.epoch != epoch:
            # Redis' data changed under a live connection (flushed): read it again
            view.reset(epoch)
            view.synced = False
        view.append(Message(seq, 0.0, b"", encoded))
        if view.synced and seq > view.known_last:
            view.known_last = seq
        view.waiters.wake_all()

    # -- channels -----------------------------------------------------------------------------

    def acquire(self, name: str) -> ChannelView:
        view = self.views.get(name)
        if view is None:
            if len(self.views) >= self.max_channels:
                self._forget_idle_views(idle_s=0)
            view = self.views[name] = ChannelView(name, min(self.buffer_len, 1000))
        view.users += 1
        return view

    def release(self, view: ChannelView) -> None:
        view.users -= 1
        if view.users == 0:
            view.idle_since = time.monotonic()

    def _keys(self, name: str) -> list[str]:
        return [self.epoch_key, f"{self.prefix}c:{name}:seq", f"{self.prefix}c:{name}:log",
                self.channels_key]

    def _note_error(self, e: BaseException) -> None:
        self.counters.redis_errors += 1
        self.last_error = f"{type(e).__name__}: {e}"

    def _unavailable(self, e: BaseException) -> Unavailable:
        self._note_error(e)
        return Unavailable(f"shared state unavailable (redis at {self.where}: "
                           f"{type(e).__name__}: {e})")

    async def publish(self, name: str, data: bytes) -> tuple[int, float, str]:
        """(seq, ts, epoch) of the new message."""
        ts = time.time()
        try:
            seq, epoch = await self._publish(
                keys=self._keys(name),
                args=[secrets.token_hex(6), name, b"%.6f" % ts, data, self.buffer_len,
                      self.max_channels, self.fanout])
        except (RedisError, OSError) as e:
            raise self._unavailable(e) from None
        if seq == 0:
            raise ChannelLimit(f"too many channels (limit {self.max_channels})")
        self.counters.redis_publishes += 1
        return int(seq), ts, epoch.decode()

    async def read(self, name: str, cursor: int, limit: int) -> Read:
        """The channel's epoch and last seq, and its messages after ``cursor`` (-1: none)."""
        try:
            epoch, last, first, msgs = await self._read(
                keys=self._keys(name)[:3], args=[secrets.token_hex(6), cursor, limit])
        except (RedisError, OSError) as e:
            raise self._unavailable(e) from None
        self.counters.redis_reads += 1
        last, first = int(last), int(first)
        return Read(epoch.decode(), last, first, max(cursor + 1, first), msgs)

    async def sync(self, view: ChannelView) -> None:
        """Learn the channel's epoch and last seq for ``view`` (one read shared by every poll
        that needs it at once): makes a view synced, or brings a synced one's last seq up to
        Redis' when the fan-out lags.  Raise Unavailable when Redis or the fan-out is down."""
        if view.syncing is not None:
            await asyncio.shield(view.syncing)
            return
        if not self.ready:
            raise Unavailable(f"shared state unavailable (redis at {self.where}: not subscribed "
                              f"to the fan-out; {self.last_error or 'reconnecting'})")
        fut = view.syncing = asyncio.get_running_loop().create_future()
        generation = self.generation
        try:
            got = await self.read(view.name, -1, 0)
            if generation == self.generation and self.ready:
                if view.epoch != got.epoch:
                    view.reset(got.epoch)
                view.known_last = max(got.last, view.last_seq)
                view.synced = True
            fut.set_result(None)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved here: the pollers that share it re-raise it
            raise
        finally:
            view.syncing = None

    def render_read(self, got: Read, cursor: int, view: ChannelView) -> tuple[bytes, int, int]:
        """The 200 body for a read from Redis, how many messages it holds and how many its
        dropped range names.  Messages that
        join the view's tail are kept in it, so the next poll finds them there."""
        msgs = [Message(got.start + i, 0.0, b"", m) for i, m in enumerate(got.messages)]
        if got.epoch == view.epoch and msgs and not view.buffer:
            for m in msgs:
                view.append(m)
        dropped = got.dropped(cursor)
        last = msgs[-1].seq if msgs else (dropped[1] if dropped else cursor)
        return (render_answer([m.encoded for m in msgs], last, got.epoch, dropped), len(msgs),
                dropped_count(dropped))

    # -- tasks --------------------------------------------------------------------------------

    def _task_key(self, task_id: str) -> str:
        return f"{self.prefix}t:{task_id}"

    async def submit_task(self, task_id: str, duration_ms: int, payload_bytes: int,
                          submitted_at: float) -> bool:
        """Record a running task owned by this process; False if the id is taken."""
        ttl = duration_ms + self.result_ttl_ms
        try:
            created = await self._task_submit(
                keys=[self._task_key(task_id)],
                args=[self.instance, repr(submitted_at), duration_ms, payload_bytes, ttl])
        except (RedisError, OSError) as e:
            raise self._unavailable(e) from None
        return bool(created)

    async def finish_task(self, task_id: str) -> None:
        for attempt in range(3):
            try:
                await self._task_finish(keys=[self._task_key(task_id)],
                                        args=[repr(time.time()), self.result_ttl_ms,
                                              self.fanout, task_id])
                return
            except (RedisError, OSError) as e:
                self._note_error(e)
                log.warning("task %s: could not record its result (%s), attempt %d", task_id,
                            e, attempt + 1)
                await asyncio.sleep(0.2 * (attempt + 1))

    async def get_task(self, task_id: str) -> dict[str, str] | None:
        try:
            raw = await self._task_get(keys=[self._task_key(task_id)],
                                       args=[self.heartbeat_prefix, self.fanout, task_id])
        except (RedisError, OSError) as e:
            raise self._unavailable(e) from None
        if not raw:
            return None
        it = iter(raw)
        return {k.decode(): v.decode() for k, v in zip(it, it, strict=True)}

    def acquire_task(self, task_id: str) -> TaskView:
        tv = self.task_views.get(task_id)
        if tv is None:
            tv = self.task_views[task_id] = TaskView()
        tv.users += 1
        return tv

    def release_task(self, task_id: str, tv: TaskView) -> None:
        tv.users -= 1
        if tv.users == 0 and self.task_views.get(task_id) is tv:
            del self.task_views[task_id]

    async def _check_task_owners(self) -> None:
        """Wake the polls of tasks whose owner stopped beating: they re-read and answer."""
        owners = {tv.owner for tv in self.task_views.values() if tv.owner and len(tv.waiters)}
        if not owners:
            return
        ordered = sorted(owners)
        alive = await self.redis.mget([self.heartbeat_prefix + o for o in ordered])
        dead = {o for o, beat in zip(ordered, alive, strict=True) if beat is None}
        for tv in self.task_views.values():
            if tv.owner in dead:
                tv.waiters.wake_all()

    def snapshot(self) -> dict[str, Any]:
        c = self.counters
        return {
            "url": self.where, "prefix": self.prefix, "instance": self.instance,
            "subscribed": self.ready, "views": len(self.views),
            "views_synced": sum(1 for v in self.views.values() if v.synced),
            "redis_reads": c.redis_reads, "redis_publishes": c.redis_publishes,
            "fanout_messages": c.fanout_messages,
            "polls_answered_from_view": c.polls_answered_from_view,
            "fanout_reconnects": c.fanout_reconnects, "redis_errors": c.redis_errors,
            "last_error": self.last_error, "running_tasks": self.running_tasks,
        }
