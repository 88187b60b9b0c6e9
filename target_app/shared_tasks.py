"""Shared state's tasks: a hash per task in Redis (state, owner, times) with a TTL.  The
backend that accepted a task runs it and publishes its end on the fan-out; a poll for a
running task whose owner's heartbeat is gone learns that the task was lost."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from target_app.shared_fanout import FanOut
from target_app.shared_redis import TASK_FINISH, TASK_GET, TASK_SUBMIT, Link
from target_app.state import LimitExceeded, Task, Waiters
from target_app.store import TaskDone, TaskLost, TaskStoreBase

log = logging.getLogger("target_app.shared")


@dataclass
class TaskView:
    """One process's polls for a task: their waiters, and who runs the task."""
    waiters: Waiters = field(default_factory=Waiters)
    owner: str = ""
    users: int = 0


class RedisTasks(TaskStoreBase[TaskView]):
    def __init__(self, link: Link, fanout: FanOut, max_running: int, result_ttl_s: float,
                 on_done: TaskDone):
        self.link = link
        self.max_running = max_running
        self.result_ttl_ms = int(result_ttl_s * 1000)
        self.on_done = on_done
        self.views: dict[str, TaskView] = {}
        self.running_here = 0
        self._submit = link.redis.register_script(TASK_SUBMIT)
        self._finish = link.redis.register_script(TASK_FINISH)
        self._get = link.redis.register_script(TASK_GET)
        fanout.listeners[ord("T")] = self

    def _key(self, task_id: str) -> str:
        return f"{self.link.prefix}t:{task_id}"

    def running(self) -> int:
        return self.running_here

    async def submit(self, task_id: str, duration_ms: int, payload_bytes: int) -> str:
        if self.running_here >= self.max_running:
            raise LimitExceeded(f"too many running tasks (limit {self.max_running})")
        ttl = duration_ms + self.result_ttl_ms
        submitted_at = repr(time.time())
        try:
            while not await self._submit(keys=[self._key(task_id)],
                                         args=[self.link.instance, submitted_at, duration_ms,
                                               payload_bytes, ttl]):
                task_id = secrets.token_hex(16)  # the id was taken
        except (RedisError, OSError) as e:
            raise self.link.unavailable(e) from None
        self.running_here += 1
        asyncio.get_running_loop().call_later(duration_ms / 1000.0, self._finished, task_id)
        return task_id

    def _finished(self, task_id: str) -> None:
        self.running_here -= 1
        self.on_done()
        asyncio.ensure_future(self._record_finish(task_id))

    async def _record_finish(self, task_id: str) -> None:
        for attempt in range(3):
            try:
                await self._finish(keys=[self._key(task_id)],
                                   args=[repr(time.time()), self.result_ttl_ms,
                                         self.link.fanout, task_id])
                return
            except (RedisError, OSError) as e:
                self.link.note_error(e)
                log.warning("task %s: could not record its result (%s), attempt %d", task_id,
                            e, attempt + 1)
                await asyncio.sleep(0.2 * (attempt + 1))

    def acquire(self, task_id: str) -> TaskView:
        """Before the first read: the task's end wakes the poll from now on."""
        tv = self.views.get(task_id)
        if tv is None:
            tv = self.views[task_id] = TaskView()
        tv.users += 1
        return tv

    def release(self, task_id: str, handle: TaskView) -> None:
        handle.users -= 1
        if handle.users == 0 and self.views.get(task_id) is handle:
            del self.views[task_id]

    async def read(self, task_id: str, handle: TaskView) -> Task | None:
        try:
            raw = await self._get(keys=[self._key(task_id)],
                                  args=[self.link.heartbeat_prefix, self.link.fanout, task_id])
        except (RedisError, OSError) as e:
            raise self.link.unavailable(e) from None
        if not raw:
            return None
        it = iter(raw)
        rec = {k.decode(): v.decode() for k, v in zip(it, it, strict=True)}
        if rec["s"] == "l":
            raise TaskLost(f"task {task_id} was lost: the backend running it ({rec['o']}) "
                           "stopped before it finished; submit it again")
        handle.owner = rec["o"]
        task = Task(task_id, int(rec["dur"]), int(rec["pay"]), float(rec["sub"]))
        if rec["s"] == "d":
            task.finished_at = float(rec["fin"])
        return task

    def on_fanout(self, payload: bytes) -> None:
        tv = self.views.get(payload[2:].decode())  # b"T\n<id>"
        if tv is not None:
            tv.waiters.wake_all()

    def invalidate(self) -> None:
        self.wake_everyone()

    def wake_everyone(self) -> None:
        for tv in self.views.values():
            tv.waiters.wake_all()

    async def check_owners(self) -> None:
        """Wake the polls of tasks whose owner stopped beating: they re-read and answer."""
        owners = {tv.owner for tv in self.views.values() if tv.owner and len(tv.waiters)}
        if not owners:
            return
        ordered = sorted(owners)
        alive = await self.link.redis.mget([self.link.heartbeat_prefix + o for o in ordered])
        dead = {o for o, beat in zip(ordered, alive, strict=True) if beat is None}
        for tv in self.views.values():
            if tv.owner in dead:
                tv.waiters.wake_all()
