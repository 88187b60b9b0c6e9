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

The parts, each in its module: :mod:`target_app.shared_redis` (the connection and the Lua
scripts), :mod:`target_app.shared_fanout` (the subscription), :mod:`target_app.shared_channels`
and :mod:`target_app.shared_tasks`; :class:`RedisState` here puts them together and keeps the
heartbeat.

Redis structures were chosen by measurement (``benchmarks/redis_structures.py``): a list
trimmed to the buffer length against a stream with ``MAXLEN`` and seq-numbered ids.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import RedisError

from target_app.shared_channels import RedisChannels
from target_app.shared_fanout import FanOut
from target_app.shared_redis import REDIS_CONNECTIONS_PER_BACKEND, Link
from target_app.shared_tasks import RedisTasks
from target_app.store import State, TaskDone, Unavailable

__all__ = ["REDIS_CONNECTIONS_PER_BACKEND", "RedisState", "Unavailable"]

# A backend's heartbeat key lives this long and is refreshed every HEARTBEAT_EVERY_S: a task
# whose owner missed it for this long is lost (a GC pause is far shorter).
HEARTBEAT_TTL_MS = 3000
HEARTBEAT_EVERY_S = 1.0


class RedisState(State):
    """Shared state for one backend process (see the module's docstring)."""

    def __init__(self, url: str, prefix: str, buffer_len: int, max_channels: int,
                 max_running: int, result_ttl_s: float, backend_index: int,
                 on_task_done: TaskDone):
        self.link = Link(url, prefix, backend_index)
        self.fanout = FanOut(self.link)
        self.channels: RedisChannels = RedisChannels(self.link, self.fanout, buffer_len,
                                                     max_channels)
        self.tasks: RedisTasks = RedisTasks(self.link, self.fanout, max_running, result_ttl_s,
                                            on_task_done)
        self._tasks: list[asyncio.Task] = []

    def where(self) -> str:
        return self.link.where

    async def start(self, timeout: float = 10.0) -> None:
        """Reach Redis and subscribe to the fan-out (raise Unavailable if that fails)."""
        link = self.link
        try:
            await asyncio.wait_for(link.redis.ping(), timeout)
        except (RedisError, OSError, TimeoutError) as e:
            raise Unavailable(f"cannot reach redis at {link.where}: {e}") from None
        self._tasks = [asyncio.create_task(self.fanout.run()),
                       asyncio.create_task(self._housekeeping())]
        try:
            await asyncio.wait_for(self.fanout.subscribed.wait(), timeout)
        except TimeoutError:
            raise Unavailable(f"cannot subscribe to {link.fanout} at {link.where}: "
                              f"{link.last_error or 'no answer'}") from None
        await self._beat()

    async def stop(self) -> None:
        """Stop following Redis; a running task of this process is lost from now on."""
        self.fanout.stopping = True
        for t in self._tasks:
            t.cancel()
        try:
            await asyncio.wait_for(
                self.link.redis.delete(self.link.heartbeat_prefix + self.link.instance), 1)
        except (RedisError, OSError, TimeoutError):
            pass
        await self.link.redis.aclose()

    def wake_everyone(self) -> None:
        self.channels.wake_everyone()
        self.tasks.wake_everyone()

    async def _housekeeping(self) -> None:
        """Heartbeat, lost-owner checks for awaited tasks, and idle views, once a second."""
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY_S)
            try:
                await self._beat()
                await self.tasks.check_owners()
            except (RedisError, OSError, TimeoutError) as e:
                self.link.note_error(e)
            self.channels.forget_idle()

    async def _beat(self) -> None:
        await self.link.redis.set(self.link.heartbeat_prefix + self.link.instance, b"1",
                                  px=HEARTBEAT_TTL_MS)

    def details(self) -> dict[str, Any]:
        link, c = self.link, self.link.counters
        return {
            "url": link.where, "prefix": link.prefix, "instance": link.instance,
            "subscribed": self.fanout.ready, "views": self.channels.count(),
            "views_synced": self.channels.synced(),
            "redis_reads": c.redis_reads, "redis_publishes": c.redis_publishes,
            "fanout_messages": c.fanout_messages,
            "polls_answered_from_view": c.polls_answered_from_view,
            "fanout_reconnects": c.fanout_reconnects, "redis_errors": c.redis_errors,
            "last_error": link.last_error, "running_tasks": self.tasks.running(),
        }
