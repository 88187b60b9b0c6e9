"""Shared state's channels: a publish is one Lua script in Redis, a poll is answered from
this process's *view* of the channel (filled by the fan-out) whenever the view covers its
cursor, and reads Redis only when it does not (see :mod:`target_app.shared`)."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass

from redis.exceptions import RedisError

from target_app.shared_fanout import FanOut
from target_app.shared_redis import PUBLISH, READ, Link
from target_app.state import Answer, Channel, LimitExceeded, Message, dropped_count, render_answer
from target_app.store import ChannelStore, Position, Unavailable

# A view nobody has polled for this long is forgotten (it costs a Redis read to make again).
VIEW_IDLE_S = 10.0


class ChannelView(Channel):
    """One process's view of a shared channel: the tail the fan-out delivered, and waiters."""

    def __init__(self, name: str, buffer_len: int):
        super().__init__(name, buffer_len, epoch="")
        self.users = 0                  # polls in progress that use this view
        self.synced = False             # known_last is the channel's last seq (module doc)
        self.known_last = 0
        self.idle_since = time.monotonic()
        self.syncing: asyncio.Future | None = None


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


class RedisChannels(ChannelStore[ChannelView]):
    def __init__(self, link: Link, fanout: FanOut, buffer_len: int, max_channels: int):
        self.link = link
        self.fanout = fanout
        self.buffer_len = buffer_len
        self.max_channels = max_channels
        self.views: dict[str, ChannelView] = {}
        self._publish = link.redis.register_script(PUBLISH)
        self._read = link.redis.register_script(READ)
        fanout.listeners[ord("C")] = self

    def count(self) -> int:
        return len(self.views)

    def _keys(self, name: str) -> list[str]:
        p = self.link.prefix
        return [self.link.epoch_key, f"{p}c:{name}:seq", f"{p}c:{name}:log",
                self.link.channels_key]

    # -- publish ----------------------------------------------------------------------------

    async def publish(self, name: str, data: bytes) -> tuple[int, float, str]:
        ts = time.time()
        try:
            seq, epoch = await self._publish(
                keys=self._keys(name),
                args=[secrets.token_hex(6), name, b"%.6f" % ts, data, self.buffer_len,
                      self.max_channels, self.link.fanout])
        except (RedisError, OSError) as e:
            raise self.link.unavailable(e) from None
        if seq == 0:
            raise LimitExceeded(f"too many channels (limit {self.max_channels})")
        self.link.counters.redis_publishes += 1
        return int(seq), ts, epoch.decode()

    # -- polls ------------------------------------------------------------------------------

    def acquire(self, name: str) -> ChannelView:
        """The view of ``name`` (made before any read: the fan-out fills it from now on)."""
        view = self.views.get(name)
        if view is None:
            if len(self.views) >= self.max_channels:
                self.forget_idle(idle_s=0)
            view = self.views[name] = ChannelView(name, min(self.buffer_len, 1000))
        view.users += 1
        return view

    def release(self, handle: ChannelView) -> None:
        handle.users -= 1
        if handle.users == 0:
            handle.idle_since = time.monotonic()

    async def read(self, handle: ChannelView, position: Position, limit: int) -> Answer | None:
        view = handle
        refreshed = False
        while True:
            if not view.synced:
                await self.sync(view)
                refreshed = True
                continue  # (a reconnect may have unsynced it again)
            if not position.resolved and position.cursor is not None and not refreshed and \
                    position.cursor > view.known_last and position.epoch in (None, view.epoch):
                # The client may have read from a process whose fan-out ran ahead of this
                # one's: ask Redis before calling the cursor ahead of the channel.
                await self.sync(view)
                refreshed = True
                continue
            cursor = position.resolve(view.name, view.known_last, view.epoch)
            if cursor >= view.known_last:
                return None
            if view.covers(cursor):
                self.link.counters.polls_answered_from_view += 1
                return view.render_after(cursor, limit)
            got = await self.read_redis(view.name, cursor, limit)
            if got.epoch != view.epoch:
                view.synced = False  # Redis restarted since the view synced
                continue
            if got.messages or got.dropped(cursor):
                return self.render_read(got, cursor, view)
            return None

    async def read_redis(self, name: str, cursor: int, limit: int) -> Read:
        """The channel's epoch and last seq, and its messages after ``cursor`` (-1: none)."""
        try:
            epoch, last, first, msgs = await self._read(
                keys=self._keys(name)[:3], args=[secrets.token_hex(6), cursor, limit])
        except (RedisError, OSError) as e:
            raise self.link.unavailable(e) from None
        self.link.counters.redis_reads += 1
        last, first = int(last), int(first)
        return Read(epoch.decode(), last, first, max(cursor + 1, first), msgs)

    async def sync(self, view: ChannelView) -> None:
        """Learn the channel's epoch and last seq for ``view`` (one read shared by every poll
        that needs it at once): makes a view synced, or brings a synced one's last seq up to
        Redis' when the fan-out lags.  Raise Unavailable when Redis or the fan-out is down."""
        if view.syncing is not None:
            await asyncio.shield(view.syncing)
            return
        fanout = self.fanout
        if not fanout.ready:
            raise Unavailable(f"shared state unavailable (redis at {self.link.where}: not "
                              "subscribed to the fan-out; "
                              f"{self.link.last_error or 'reconnecting'})")
        fut = view.syncing = asyncio.get_running_loop().create_future()
        generation = fanout.generation
        try:
            got = await self.read_redis(view.name, -1, 0)
            if generation == fanout.generation and fanout.ready:
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

    @staticmethod
    def render_read(got: Read, cursor: int, view: ChannelView) -> Answer:
        """The 200 for a read from Redis.  Messages that join the view's tail are kept in it,
        so the next poll finds them there."""
        msgs = [Message(got.start + i, 0.0, b"", m) for i, m in enumerate(got.messages)]
        if got.epoch == view.epoch and msgs and not view.buffer:
            for m in msgs:
                view.append(m)
        dropped = got.dropped(cursor)
        last = msgs[-1].seq if msgs else (dropped[1] if dropped else cursor)
        return Answer(render_answer([m.encoded for m in msgs], last, got.epoch, dropped),
                      len(msgs), dropped_count(dropped))

    # -- the fan-out ------------------------------------------------------------------------

    def on_fanout(self, payload: bytes) -> None:
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

    def invalidate(self) -> None:
        for view in self.views.values():
            view.synced = False
            view.reset(None)
            view.waiters.wake_all()

    def forget_idle(self, idle_s: float = VIEW_IDLE_S) -> None:
        now = time.monotonic()
        stale = [name for name, v in self.views.items()
                 if v.users == 0 and now - v.idle_since > idle_s]
        for name in stale:
            del self.views[name]

    def wake_everyone(self) -> None:
        for view in self.views.values():
            view.waiters.wake_all()

    def synced(self) -> int:
        return sum(1 for v in self.views.values() if v.synced)
