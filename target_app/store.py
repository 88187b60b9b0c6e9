"""Where channels and tasks live: the one interface every request handler uses.

Two implementations answer the same async methods:

- :mod:`target_app.local`: one process's memory (nginx routes each key to one backend);
- :mod:`target_app.shared`: Redis, shared by every backend (any backend answers).

A handler's long poll is the same loop for both (``target_app.app``)::

    handle = state.channels.acquire(name)          # before any read: wakes from now on count
    try:
        while True:
            answer = await state.channels.read(handle, position, limit)
            if answer is not None: ...             # 200 with the messages
            ...                                    # out of time: 204 at position
            await wait(handle.waiters, remaining)  # a publish (or a finished task) wakes it
    finally:
        state.channels.release(handle)

Errors are the store's words for what the handler answers: :class:`LimitExceeded` and
:class:`Unavailable` are 503, :class:`CursorAhead` 400, :class:`TaskLost` 500.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from target_app.state import Answer, LimitExceeded, Task, Waiters

__all__ = ["Answer", "ChannelStore", "CursorAhead", "Held", "LimitExceeded", "Position",
           "State", "TaskLost", "TaskStoreBase", "Unavailable"]


class Unavailable(Exception):
    """The store cannot answer now (Redis is down or slow): 503 with this text."""


class CursorAhead(Exception):
    """A poll's cursor is past the channel's last message (its state restarted): 400."""


class TaskLost(Exception):
    """The process running a task stopped before it finished: 500 with this text."""


class Position:
    """Where one poll reads from.  The client's ``cursor`` (None: "from now on") and
    ``epoch``; the store resolves them against the channel at the first read (and again if
    the channel's epoch changes), so after a read they are where a 204 says "now" is."""

    __slots__ = ("cursor", "epoch", "resolved")

    def __init__(self, cursor: int | None, epoch: str | None):
        self.cursor = cursor
        self.epoch = epoch
        self.resolved = False

    def resolve(self, name: str, last_seq: int, epoch: str) -> int:
        """Resolve against a channel whose last message is ``last_seq`` in ``epoch`` (once,
        and again when the epoch changed under the poll); the cursor to read after."""
        if self.resolved and self.epoch == epoch:
            assert self.cursor is not None
            return self.cursor
        cursor = self.cursor
        if cursor is None:
            cursor = last_seq  # "from now on"
        elif self.epoch is not None and self.epoch != epoch:
            # The cursor belongs to a previous life of the channel: everything the client may
            # have missed is reported through the epoch change; start from 0.
            cursor = 0
        elif cursor > last_seq:
            raise CursorAhead(f"cursor {cursor} is ahead of channel {name!r} (last seq "
                              f"{last_seq}, epoch {epoch}): the channel restarted; poll without "
                              "a cursor")
        self.cursor, self.epoch, self.resolved = cursor, epoch, True
        return cursor


class Held(Protocol):
    """What a poll holds while it waits: the waiters a publish (or a finish) wakes."""

    waiters: Waiters


H = TypeVar("H", bound=Held)
T = TypeVar("T", bound=Held)


class ChannelStore(ABC, Generic[H]):
    """Channels: publish, and read after a cursor, waiting for the next message."""

    @abstractmethod
    async def publish(self, name: str, data: bytes) -> tuple[int, float, str]:
        """Append ``data`` (validated JSON) to channel ``name`` and wake its polls:
        (seq, ts, epoch).  LimitExceeded when the channel table is full."""

    @abstractmethod
    def acquire(self, name: str) -> H:
        """Hold channel ``name`` for one poll (before its first read); release it after."""

    @abstractmethod
    def release(self, handle: H) -> None: ...

    @abstractmethod
    async def read(self, handle: H, position: Position, limit: int) -> Answer | None:
        """The answer for a poll at ``position`` (at most ``limit`` messages), or None when
        nothing follows its cursor yet (``position`` then says where it stands)."""

    @abstractmethod
    def count(self) -> int:
        """Channels this process holds (shared state: follows)."""


class TaskStoreBase(ABC, Generic[T]):
    """Background tasks: submit one, and read its result, waiting for it to finish."""

    @abstractmethod
    async def submit(self, task_id: str, duration_ms: int, payload_bytes: int) -> str:
        """Start a task that finishes in ``duration_ms``: its id (``task_id`` unless that is
        taken).  LimitExceeded when too many run."""

    @abstractmethod
    def acquire(self, task_id: str) -> T: ...

    @abstractmethod
    def release(self, task_id: str, handle: T) -> None: ...

    @abstractmethod
    async def read(self, task_id: str, handle: T) -> Task | None:
        """The task (finished or not), None if unknown or expired; TaskLost if its process
        stopped before it finished."""

    @abstractmethod
    def running(self) -> int: ...


class State(ABC):
    """One process's channels and tasks, wherever they live."""

    channels: ChannelStore[Any]
    tasks: TaskStoreBase[Any]

    @abstractmethod
    async def start(self) -> None:
        """Reach the store (Unavailable if it cannot be reached)."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop following the store."""

    @abstractmethod
    def wake_everyone(self) -> None:
        """On shutdown: wake every held poll (each answers 204 and its client polls again)."""

    def details(self) -> dict[str, Any] | None:
        """The store's own figures for /stats (None: nothing beyond the counts)."""
        return None

    def where(self) -> str:
        """Where the state lives, without a password (/stats' config)."""
        return ""


TaskDone = Callable[[], None]
"""Called when a task this process ran finishes (the /stats counter)."""
