"""The fan-out subscription of shared state: one Redis pub/sub connection per backend process
that every publish (and every finished task) reaches once.  It hands each message to the
process's channel views and task views (``Listener``), and tells them when it may have missed
messages (a reconnect), so no view is trusted past that point."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from target_app.shared_redis import Link


class Listener(Protocol):
    def on_fanout(self, payload: bytes) -> None: ...

    def invalidate(self) -> None: ...


class _FanoutPubSub(PubSub):
    """redis-py's PubSub, telling its owner each time its connection is (re)made: messages
    published while it was away are never delivered, so every view must be re-read."""

    def __init__(self, *args: Any, on_reconnect, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._on_reconnect = on_reconnect

    async def on_connect(self, connection) -> None:
        self._on_reconnect()
        await super().on_connect(connection)


class FanOut:
    def __init__(self, link: Link):
        self.link = link
        # by the first byte of a payload: b"C" a channel's message, b"T" a task's end
        self.listeners: dict[int, Listener] = {}
        self.ready = False      # subscribed: views can be trusted
        self.generation = 0     # bumped whenever the fan-out may have missed messages
        self.subscribed = asyncio.Event()
        self.stopping = False

    def invalidate(self) -> None:
        """The fan-out may have missed messages: no view can be trusted any more."""
        self.ready = False
        self.generation += 1
        for listener in self.listeners.values():
            listener.invalidate()

    def _on_connect(self) -> None:
        self.link.counters.fanout_reconnects += 1
        self.invalidate()

    async def run(self) -> None:
        delay = 0.05
        while not self.stopping:
            ps = _FanoutPubSub(self.link.redis.connection_pool, on_reconnect=self._on_connect)
            try:
                await ps.subscribe(self.link.fanout)
                while True:
                    msg = await ps.get_message(timeout=None)
                    if msg is None:
                        continue
                    kind = msg["type"]
                    if kind == "message":
                        self.link.counters.fanout_messages += 1
                        payload = msg["data"]
                        listener = self.listeners.get(payload[0])
                        if listener is not None:
                            listener.on_fanout(payload)
                    elif kind == "subscribe":
                        self.ready = True
                        self.subscribed.set()
                        delay = 0.05
            except asyncio.CancelledError:
                await ps.aclose()
                raise
            except (RedisError, OSError) as e:
                self.link.note_error(e)
                self.invalidate()
                await ps.aclose()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
