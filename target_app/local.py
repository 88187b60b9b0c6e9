"""Channels and tasks in this process's memory (``--state local``): nginx must route every
key to one backend (the ``longpoll`` profiles hash on it).  The data structures are
:mod:`target_app.state`'s; this is the :mod:`target_app.store` interface over them."""

from __future__ import annotations

import asyncio
import secrets

from target_app.state import Channel, LimitExceeded, Task, TaskStore
from target_app.store import Answer, ChannelStore, Position, State, TaskDone, TaskStoreBase


class LocalChannels(ChannelStore[Channel]):
    def __init__(self, buffer_len: int, max_channels: int):
        self.buffer_len = buffer_len
        self.max_channels = max_channels
        self.channels: dict[str, Channel] = {}
        # Channel state lives as long as this process: one epoch for all its channels, so a
        # channel dropped while it had no message (release) comes back as the same state.
        self.epoch = secrets.token_hex(6)

    def _channel(self, name: str) -> Channel:
        ch = self.channels.get(name)
        if ch is None:
            if len(self.channels) >= self.max_channels:
                raise LimitExceeded(f"too many channels (limit {self.max_channels})")
            ch = self.channels[name] = Channel(name, self.buffer_len, epoch=self.epoch)
        return ch

    async def publish(self, name: str, data: bytes) -> tuple[int, float, str]:
        ch = self._channel(name)
        msg = ch.publish(data)
        ch.waiters.wake_all()
        return msg.seq, msg.ts, ch.epoch

    def acquire(self, name: str) -> Channel:
        return self._channel(name)

    def release(self, handle: Channel) -> None:
        """Drop a channel nobody published to and nobody waits on: polls (GETs) alone cannot
        fill the channel table.  Its state (epoch, seq 0) is exactly what re-making it gives."""
        if handle.last_seq == 0 and not len(handle.waiters) and \
                self.channels.get(handle.name) is handle:
            del self.channels[handle.name]

    async def read(self, handle: Channel, position: Position, limit: int) -> Answer | None:
        cursor = position.resolve(handle.name, handle.last_seq, handle.epoch)
        if cursor >= handle.last_seq:
            return None
        return handle.render_after(cursor, limit)

    def count(self) -> int:
        return len(self.channels)

    def wake_everyone(self) -> None:
        for ch in self.channels.values():
            ch.waiters.wake_all()


class LocalTasks(TaskStoreBase[Task]):
    def __init__(self, max_running: int, max_results: int, result_ttl_s: float,
                 on_done: TaskDone):
        self.store = TaskStore(max_running, max_results, result_ttl_s)
        self.on_done = on_done
        self._unknown = Task("", 0, 0, 0.0)  # the handle of a poll for no task: never woken

    async def submit(self, task_id: str, duration_ms: int, payload_bytes: int) -> str:
        task = self.store.submit(task_id, duration_ms, payload_bytes)
        asyncio.get_running_loop().call_later(duration_ms / 1000.0, self._finish, task)
        return task.id

    def _finish(self, task: Task) -> None:
        self.store.finish(task)
        self.on_done()

    def acquire(self, task_id: str) -> Task:
        return self.store.get(task_id) or self._unknown

    def release(self, task_id: str, handle: Task) -> None:
        pass

    async def read(self, task_id: str, handle: Task) -> Task | None:
        return handle if handle is not self._unknown else None

    def running(self) -> int:
        return len(self.store.running)

    def wake_everyone(self) -> None:
        for task in list(self.store.running.values()):
            task.waiters.wake_all()


class LocalState(State):
    def __init__(self, buffer_len: int, max_channels: int, max_running: int, max_results: int,
                 result_ttl_s: float, on_task_done: TaskDone):
        self.channels: LocalChannels = LocalChannels(buffer_len, max_channels)
        self.tasks: LocalTasks = LocalTasks(max_running, max_results, result_ttl_s,
                                            on_task_done)

    async def start(self) -> None:
        """Nothing to reach: the state is this process's memory."""

    async def stop(self) -> None:
        """Nothing to let go of."""

    def wake_everyone(self) -> None:
        self.channels.wake_everyone()
        self.tasks.wake_everyone()
