"""In-memory state of one target process: channels (pub/sub by cursor) and tasks.

Pure data structures with no HTTP in them, so the semantics can be tested
directly and the handlers in :mod:`target_app.app` stay thin.  Waiting is done
with plain futures: a long poll registers a future, a publish (or a finished
task) resolves every registered future, and a poll that times out or whose
client disconnects removes its own future at once (no pile-up of dead waiters
until the next publish, which is the chat demo's fault).

    >>> ch = Channel("news", buffer_len=2, now=lambda: 1.0)
    >>> ch.publish(b'{"a":1}').seq, ch.publish(b'2').seq, ch.publish(b'3').seq
    (1, 2, 3)
    >>> ch.read_after(0).dropped    # seq 1 fell out of the 2-message buffer
    (1, 1)
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple


class LimitExceeded(Exception):
    """A configured bound was reached; the handler answers 503 with this text."""


@dataclass(frozen=True, slots=True)
class Message:
    seq: int
    ts: float
    data: bytes  # the publisher's JSON body, validated, kept verbatim
    # The message rendered once as JSON, reused for every subscriber it reaches.
    encoded: bytes


@dataclass(frozen=True, slots=True)
class ReadResult:
    messages: list[Message]
    cursor: int
    dropped: tuple[int, int] | None


class Answer(NamedTuple):
    """A poll's 200: its JSON body, how many messages it holds, how many its dropped range
    names."""

    body: bytes
    delivered: int
    dropped: int


class Waiters:
    """A set of futures woken together; O(1) to add and remove one."""

    __slots__ = ("_futures",)

    def __init__(self) -> None:
        self._futures: set[asyncio.Future] = set()

    def __len__(self) -> int:
        return len(self._futures)

    def add(self) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._futures.add(fut)
        return fut

    def discard(self, fut: asyncio.Future) -> None:
        self._futures.discard(fut)

    def wake_all(self) -> int:
        woken = 0
        futures, self._futures = self._futures, set()
        for fut in futures:
            if not fut.done():
                fut.set_result(True)
                woken += 1
        return woken


class Channel:
    """A bounded, ordered message buffer with a cursor protocol.

    ``seq`` starts at 1 and grows by one per message.  ``epoch`` names the
    lifetime of the channel's state (by default random; the service gives every
    channel its process's epoch), so a client can tell that state was lost
    (process restart) rather than mistaking a new sequence for the old one.
    """

    def __init__(self, name: str, buffer_len: int, now: Callable[[], float] = time.time,
                 epoch: str | None = None):
        self.name = name
        self.epoch = epoch or secrets.token_hex(6)
        self.buffer: collections.deque[Message] = collections.deque(maxlen=buffer_len)
        self.last_seq = 0
        self.waiters = Waiters()
        self._rendered: dict[tuple[int, int], Answer] = {}
        self._now = now

    def publish(self, data: bytes) -> Message:
        self.last_seq += 1
        ts = self._now()
        encoded = b'{"seq":%d,"ts":%.6f,"data":%s}' % (self.last_seq, ts, data)
        msg = Message(self.last_seq, ts, data, encoded)
        self.buffer.append(msg)
        return msg

    def append(self, msg: Message) -> bool:
        """Add a message made elsewhere (shared state: another process published it).  A seq
        at or below the last is ignored (already here); one that skips seqs starts the buffer
        again from it, so the buffer always holds consecutive seqs.  True if it was added."""
        if msg.seq <= self.last_seq:
            return False
        if msg.seq != self.last_seq + 1:
            self.buffer.clear()
        self.buffer.append(msg)
        self.last_seq = msg.seq
        self._rendered.clear()
        return True

    def covers(self, cursor: int) -> bool:
        """Whether the buffer holds every message after ``cursor`` (and there is one)."""
        return bool(self.buffer) and self.buffer[0].seq <= cursor + 1 <= self.last_seq

    def reset(self, epoch: str | None) -> None:
        """Forget every buffered message (the shared state may have changed under us)."""
        self.buffer.clear()
        self.last_seq = 0
        self._rendered.clear()
        if epoch is not None:
            self.epoch = epoch

    @property
    def first_buffered_seq(self) -> int:
        return self.buffer[0].seq if self.buffer else self.last_seq + 1

    def read_after(self, cursor: int, limit: int | None = None) -> ReadResult:
        """Messages with seq > cursor, and the range that fell out of the buffer."""
        if cursor >= self.last_seq:
            return ReadResult([], cursor, None)
        first = self.first_buffered_seq
        dropped = (cursor + 1, first - 1) if cursor + 1 < first else None
        start_seq = max(cursor + 1, first)
        count = self.last_seq - start_seq + 1
        if limit is not None and count > limit:
            # seqs in the buffer are consecutive: the start index is arithmetic
            start = start_seq - first
            msgs = list(itertools.islice(self.buffer, start, start + limit))
        else:
            # the common case (a subscriber one message behind) reads from the right end
            msgs = list(itertools.islice(reversed(self.buffer), count))
            msgs.reverse()
        last = msgs[-1].seq if msgs else (dropped[1] if dropped else cursor)
        return ReadResult(msgs, last, dropped)

    def render_after(self, cursor: int, limit: int) -> Answer:
        """The JSON answer for a poll at ``cursor``, how many messages it holds, and how
        many its dropped range names.

        Subscribers of a broadcast mostly share a cursor, so the body is built
        once per (cursor, last_seq) and reused: waking 10,000 waiters costs one
        encoding, not 10,000.
        """
        key = (cursor, self.last_seq)
        cached = self._rendered.get(key)
        if cached is not None:
            return cached
        res = self.read_after(cursor, limit)
        body = render_answer([m.encoded for m in res.messages], res.cursor, self.epoch,
                             res.dropped)
        if len(self._rendered) >= 64:
            self._rendered.clear()
        answer = self._rendered[key] = Answer(body, len(res.messages),
                                              dropped_count(res.dropped))
        return answer


def dropped_count(dropped: tuple[int, int] | None) -> int:
    return dropped[1] - dropped[0] + 1 if dropped else 0


def render_answer(encoded: list[bytes], cursor: int, epoch: str,
                  dropped: tuple[int, int] | None) -> bytes:
    """The JSON body of a poll's 200 answer (the one place its format is written)."""
    dropped_text = b"[%d,%d]" % dropped if dropped else b"null"
    return b'{"messages":[%s],"cursor":%d,"epoch":"%s","dropped":%s}' % (
        b",".join(encoded), cursor, epoch.encode(), dropped_text)


class Task:
    __slots__ = ("id", "duration_ms", "payload_bytes", "submitted_at", "finished_at", "waiters")

    def __init__(self, task_id: str, duration_ms: int, payload_bytes: int, submitted_at: float):
        self.id = task_id
        self.duration_ms = duration_ms
        self.payload_bytes = payload_bytes
        self.submitted_at = submitted_at
        self.finished_at: float | None = None
        self.waiters = Waiters()

    @property
    def done(self) -> bool:
        return self.finished_at is not None


class TaskStore:
    """Running tasks plus finished results kept for ``result_ttl_s`` and at most ``max_results``."""

    def __init__(self, max_running: int, max_results: int, result_ttl_s: float,
                 now: Callable[[], float] = time.time):
        self.max_running = max_running
        self.max_results = max_results
        self.result_ttl_s = result_ttl_s
        self.running: dict[str, Task] = {}
        self.finished: collections.OrderedDict[str, Task] = collections.OrderedDict()
        self._now = now

    def submit(self, task_id: str, duration_ms: int, payload_bytes: int) -> Task:
        if len(self.running) >= self.max_running:
            raise LimitExceeded(f"too many running tasks (limit {self.max_running})")
        if task_id in self.running or task_id in self.finished:
            task_id = secrets.token_hex(16)
        task = Task(task_id, duration_ms, payload_bytes, self._now())
        self.running[task_id] = task
        return task

    def finish(self, task: Task) -> None:
        task.finished_at = self._now()
        self.running.pop(task.id, None)
        self.finished[task.id] = task
        self.expire()
        task.waiters.wake_all()

    def expire(self) -> None:
        deadline = self._now() - self.result_ttl_s
        finished = self.finished
        # every task here has finished, so finished_at is set
        while finished and (len(finished) > self.max_results
                            or (next(iter(finished.values())).finished_at or 0.0) < deadline):
            finished.popitem(last=False)

    def get(self, task_id: str) -> Task | None:
        task = self.running.get(task_id)
        if task is not None:
            return task
        self.expire()
        return self.finished.get(task_id)
