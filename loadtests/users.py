"""Simulated long-poll clients: task pollers, channel subscribers and an open-model publisher.

Every user is a Locust ``User`` with a lean client of its own
(:mod:`loadtests.leanhttp`: one keep-alive connection per user, reused unless
``--pb-connection`` says otherwise; receipt stamped by the kernel).  Locust's
FastHttpUser cost about 6x the CPU of a raw client per long-poll answer, and
that CPU showed up as latency on a machine shared with the stack.

What users see stays Locust's: every request is a row ("GET /channels/[name]";
a poll that times out is its own row "... (204 timeout)", a success, so the
hold never passes for latency), and what matters is a custom request type
(DELIVERY, TASK, TASK_OVERHEAD) that Locust shows and sums across workers.
Successes are batched into Locust's stats once a second
(:class:`loadtests.recorder.LocustRows`) instead of firing one event each;
failures still fire ``events.request``.  Everything is also kept lossless in
HdrHistograms (:mod:`loadtests.metrics`), with REPOLL_GAP and PUBLISH_LAG.

Clock assumption: delivery latency compares the backend's ``ts`` (time.time()
when the message was published) with the receipt time of the answer (the
kernel's CLOCK_REALTIME stamp, see leanhttp).  Both are on this machine here;
with workers on other machines the clocks must be synchronised (NTP/PTP) and
the offset bounds the error.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import socket
import time
from typing import cast
from urllib.parse import urlsplit

import gevent
import gevent.pool
from locust import User, constant, task

from analysis.limits import answer_cause
from loadtests.leanhttp import HttpError, LeanConnection, Response, build_request
from loadtests.options import (
    SOURCE_ENV,
    Backoff,
    parse_backoff,
    parse_connection_mode,
    parse_source_addresses,
)
from loadtests.protocols import (
    EPOCHS,
    SERVER_SEQ,
    BadAnswer,
    Poll,
    Protocol,
    Published,
    load_protocol,
    stamp_body,
)
from loadtests.recorder import DELIVERY, PUBLISH_LAG, REPOLL_GAP, TASK, TASK_OVERHEAD

# POLLBENCH_TRACE=1: subscribers and the publisher log every seq to events.jsonl, so that a
# test can count lost messages independently of the harness's own accounting.  Never on
# in a benchmark: it is one event per message.
TRACE = os.environ.get("POLLBENCH_TRACE") == "1"

_user_ids = itertools.count()
_rng = random.Random()  # the back-off jitter of every user of this process

_sources: tuple[str, itertools.cycle | None] = ("", None)  # (the text, its cycle)


def next_source(opts) -> str | None:
    """The source address of this process's next connection (round-robin over the list;
    None: the kernel chooses)."""
    global _sources
    text = os.environ.get(SOURCE_ENV) or getattr(opts, "pb_source_addresses", "") or ""
    if text != _sources[0]:
        addresses = parse_source_addresses(text)
        _sources = (text, itertools.cycle(addresses) if addresses else None)
    cycle = _sources[1]
    return next(cycle) if cycle is not None else None


class MessageLost(Exception):
    """Messages a subscriber will never see; counted, never hidden."""


class ChannelRestarted(MessageLost):
    """A channel's state was lost (an epoch change): what was in flight is counted from the
    publisher's report (analysis.epochs), or said to be unknown; its text is its cause."""


class DuplicateMessage(Exception):
    """A message delivered to the same subscriber twice."""


class PollbenchUser(User):
    abstract = True
    # Each user's own state in slots: Locust builds users in batches before any on_start has
    # run, so their instance dicts were sized for Locust's few attributes and each grew a
    # dict of its own for these (~0.5 KiB a user: benchmarks/held_poll_memory.py
    # --component loadgen).
    __slots__ = ("opts", "index", "recorder", "rows", "close_every", "_requests",
                 "poll_timeout", "host_header", "address", "conn", "backoff")
    wait_time = constant(0)
    # The client must wait longer than the server may hold a poll.
    network_timeout = 300.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.opts = opts
        self.index = next(_user_ids)
        plumbing = self.environment.pollbench
        self.recorder = plumbing.recorder
        self.rows = plumbing.rows
        self.close_every = parse_connection_mode(opts.pb_connection)
        self._requests = 0
        self.poll_timeout = opts.pb_poll_timeout
        url = urlsplit(str(self.host))
        self.host_header = url.netloc
        self.address = (url.hostname or "127.0.0.1", url.port or 80)
        self.conn = self.new_connection()
        self.recorder.clock = self.conn.clock  # how receipt times are taken, for run.json
        self.backoff = Backoff(*parse_backoff(opts.pb_retry_backoff), _rng)

    def on_stop(self) -> None:
        self.conn.close()

    def new_connection(self) -> LeanConnection:
        return LeanConnection(*self.address, timeout=self.network_timeout,
                              connect_timeout=self.connection_timeout,
                              source=next_source(self.opts))

    def close_next(self) -> bool:
        """Connection: close on every K-th request when connection reuse is being limited."""
        self._requests += 1
        return bool(self.close_every) and self._requests % self.close_every == 0

    def exchange(self, method: str, target: str, name: str, body: bytes | None = None,
                 conn: LeanConnection | None = None, headers: tuple[tuple[str, str], ...] = (),
                 content_type: str = "application/json") -> tuple[Response | None, float]:
        """One request: (answer, ms from send to the answer's receipt).  A transport error is
        reported as a failure here and gives (None, ms)."""
        close = self.close_next()
        raw = build_request(method, target, self.host_header, body, close, content_type, headers)
        self.recorder.count("requests")
        conn = conn or self.conn
        connects = conn.connects
        sent = time.time()
        try:
            resp = conn.request(raw, close)
        except (OSError, HttpError) as e:
            ms = (time.time() - sent) * 1000
            self.fail(method, name, ms, e)
            return None, ms
        finally:
            if conn.connects != connects:  # a new TCP connection (first, planned or after a loss)
                self.recorder.count("connects", conn.connects - connects)
        return resp, (resp.received - sent) * 1000

    def back_off(self) -> None:
        """After a failure: wait as a real client would (exponential back-off with jitter),
        so that a failing stack is not met by a retry storm; counted as a retry."""
        delay = self.backoff.next_delay()
        self.recorder.count("retries")
        if delay > 0:
            self.recorder.count("retry_wait_ms", round(delay * 1000))
        gevent.sleep(delay)

    def ok(self, method: str, name: str, ms: float, length: int) -> None:
        self.rows.log(method, name, ms, length)
        self.recorder.record_ms(f"HTTP {method} {name}", ms)

    def fail(self, request_type: str, name: str, ms: float, exception: Exception) -> None:
        self.environment.events.request.fire(request_type=request_type, name=name,
                                             response_time=ms, response_length=0,
                                             exception=exception, context={})

    def fail_answer(self, method: str, name: str, ms: float, resp: Response) -> None:
        self.fail(method, name, ms,
                  BadAnswer(answer_cause(resp.status, resp.body, resp.header("server"))))


class TaskPoller(PollbenchUser):
    """Submits a background task, then long-polls until its result arrives."""

    weight = 1

    @task
    def submit_and_wait(self) -> None:
        opts = self.opts
        duration_ms = opts.pb_task_duration_ms
        body = json.dumps({"duration_ms": duration_ms,
                           "payload_bytes": opts.pb_task_payload_bytes}).encode()
        t_submit = time.time()
        resp, ms = self.exchange("POST", "/tasks", "/tasks", body)
        if resp is None:
            self.back_off()
            return
        if resp.status != 202:
            self.fail_answer("POST", "/tasks", ms, resp)
            self.back_off()
            return
        try:
            task_id = json.loads(resp.body)["id"]
        except (ValueError, KeyError, TypeError):
            self.fail("POST", "/tasks", ms, BadAnswer("HTTP 202 without a task id"))
            self.back_off()
            return
        self.ok("POST", "/tasks", ms, len(resp.body))
        # bounded: the task's own duration plus a margin, in polls of poll_timeout
        max_polls = 3 + int(duration_ms / 1000 / max(self.poll_timeout, 0.1)) + 3
        target = f"/tasks/{task_id}?timeout={self.poll_timeout:g}"
        for _ in range(max_polls):
            resp, ms = self.exchange("GET", target, "/tasks/[id]")
            if resp is None:
                self.back_off()
                return
            if resp.status == 204:
                self.ok("GET", "/tasks/[id] (204 timeout)", ms, 0)
                continue
            if resp.status != 200:
                self.fail_answer("GET", "/tasks/[id]", ms, resp)
                self.back_off()
                return
            self.backoff.reset()
            self.ok("GET", "/tasks/[id]", ms, len(resp.body))
            turnaround_ms = (resp.received - t_submit) * 1000
            self.recorder.record_ms(TASK, turnaround_ms)
            self.recorder.record_ms(TASK_OVERHEAD, max(turnaround_ms - duration_ms, 0.001))
            self.recorder.count("tasks_done")
            self.rows.log(TASK, "submit -> result", turnaround_ms)
            self.rows.log(TASK_OVERHEAD, "turnaround - duration", turnaround_ms - duration_ms)
            return
        self.fail(TASK, "submit -> result", 0, Exception("result never arrived"))


class ChannelSubscriber(PollbenchUser):
    """Long-polls one channel by cursor with no pause between polls, in the run's protocol
    (:mod:`loadtests.protocols`), and judges every message it gets: by the server's
    sequence where the protocol gives one (its gap and epoch signals too), else by the
    publisher's stamp (:class:`StampOrder`)."""

    __slots__ = ("proto", "by_server_seq", "channel", "cursor", "epoch", "expected", "order",
                 "last_receipt", "failing_since")
    weight = 10
    # Polls per Locust task: Locust's task loop (pick a task, check the user's state, sleep(0)
    # through the hub) costs about as much as a poll; bounded so Locust still stops users.
    POLLS_PER_TASK = 20

    def on_start(self) -> None:
        super().on_start()
        self.proto = protocol_for(self.opts)
        self.by_server_seq = SERVER_SEQ in self.proto.gives
        self.channel = self.proto.channel(self.index % self.opts.pb_channels)
        self.cursor = self.proto.new_cursor(self.channel)  # the protocol's own
        self.epoch: str | None = None
        self.expected: int | None = None  # next server seq this subscriber must see
        self.order = StampOrder()  # the publishers' stamps seen (protocols without a seq)
        self.last_receipt: float | None = None
        self.failing_since: float | None = None  # first failure since the last delivery

    @task
    def poll_channel(self) -> None:
        for _ in range(self.POLLS_PER_TASK):
            self.poll()

    def poll(self) -> None:
        """One long poll from the cursor, and what its answer delivered."""
        proto = self.proto
        req = proto.poll(self.channel, self.cursor)
        if self.last_receipt is not None:
            self.recorder.record_ms(REPOLL_GAP, (time.time() - self.last_receipt) * 1000)
        resp, ms = self.exchange(req.method, req.target, proto.poll_name, req.body,
                                 headers=req.headers)
        answer = None
        if resp is not None:
            try:
                answer = proto.read_poll(resp, self.cursor)
            except BadAnswer as e:
                self.fail(req.method, proto.poll_name, ms, e)
                if e.session_lost:  # a new session; the stamps count what it missed
                    self.cursor = proto.new_cursor(self.channel)
        if answer is None or resp is None:
            if self.failing_since is None:
                self.failing_since = time.time()
            self.last_receipt = None
            self.back_off()  # don't spin on a failing stack
            return
        self.backoff.reset()
        self.last_receipt = resp.received
        self.read_answer(req, resp, ms, answer)
        if answer.send:
            self.send(answer)

    def read_answer(self, req, resp: Response, ms: float, answer: Poll) -> None:
        """A good answer: its messages judged, the cursor moved on."""
        proto = self.proto
        if not answer.messages and answer.dropped is None:  # (a gap alone is news)
            self.ok(req.method, proto.timeout_name, ms, 0)
            if self.cursor is None and answer.at_seq is not None:  # joined "from now on"
                self.epoch = answer.epoch
                self.expected = answer.at_seq + 1
                if TRACE:
                    self.recorder.event("trace_join", user=id(self), channel=self.channel,
                                        epoch=self.epoch, cursor=answer.at_seq,
                                        at=round(resp.received, 4))
            self.cursor = answer.cursor
            return
        self.ok(req.method, proto.poll_name, ms, len(resp.body))
        if self.by_server_seq:
            self.take(answer, resp.received)
        else:
            self.take_stamped(answer, resp.received)
        self.cursor = answer.cursor

    def send(self, answer: Poll) -> bool:
        """The requests a poll's answer asks for before the next poll (a session's
        connect, a pong), in order, after its messages were taken; False (and backed
        off) when one failed."""
        proto = self.proto
        for req in answer.send:
            resp, ms = self.exchange(req.method, req.target, proto.send_name, req.body,
                                     headers=req.headers, content_type=req.content_type)
            if resp is not None:
                try:
                    proto.read_sent(req, resp)
                    self.ok(req.method, proto.send_name, ms, len(resp.body))
                    continue
                except BadAnswer as e:
                    self.fail(req.method, proto.send_name, ms, e)
                    if e.session_lost:
                        self.cursor = proto.new_cursor(self.channel)
            if self.failing_since is None:
                self.failing_since = time.time()
            self.last_receipt = None
            self.back_off()
            return False
        return True

    def take(self, answer: Poll, received: float) -> None:
        """Messages judged by the server's sequence, with its gap and epoch signals."""
        rec = self.recorder
        clock_offset = rec.clock_offset_s  # this host's clock to the target's (0: one host)
        # a protocol that gives SERVER_SEQ gives it (and SERVER_TIME) for every message
        messages = cast("list[tuple[None, int, float]]", answer.messages)
        if TRACE:  # every seq seen, for tests that count losses independently
            if self.cursor is None and messages:
                rec.event("trace_join", user=id(self), channel=self.channel,
                          epoch=answer.epoch, cursor=messages[0][1] - 1, at=round(received, 4))
            rec.event("trace_seen", user=id(self), channel=self.channel, epoch=answer.epoch,
                      seqs=[m[1] for m in messages], at=round(received, 4))
        if self.epoch is not None and answer.epoch != self.epoch:
            # The channel's state was lost (a backend restarted): whatever was in flight is
            # gone, and we cannot know how much.  Counted as its own kind of loss.
            rec.count("epoch_changes")
            self.fail(DELIVERY, "lost (epoch change)", 0,
                      ChannelRestarted("channel state lost (epoch change)"))
            # what was published after our cursor in the old epoch is lost: counted from
            # this and the publisher's publisher_epoch_end (loadtests.recorder.EpochLoss)
            rec.event("epoch_change", channel=self.channel, old_epoch=self.epoch,
                      cursor=self.cursor[0] if self.cursor else 0, new_epoch=answer.epoch)
            if self.failing_since is None:
                self.failing_since = time.time()
            self.expected = None
        self.epoch = answer.epoch
        dropped = answer.dropped
        if dropped:
            n = dropped[1] - dropped[0] + 1
            rec.count("lost_dropped", n)
            self.fail(DELIVERY, "lost (dropped by buffer)", 0,
                      MessageLost(f"{n} messages dropped [{dropped[0]}, {dropped[1]}]"))
            self.expected = dropped[1] + 1
        expected = self.expected
        delivered = 0
        log_row = self.rows.log
        for _, seq, ts in messages:
            if expected is not None:
                if seq < expected:
                    rec.count("duplicate")
                    self.fail(DELIVERY, "duplicate", 0,
                              DuplicateMessage(f"seq {seq} seen twice"))
                    continue
                if seq > expected:
                    rec.count("lost_silent", seq - expected)
                    self.fail(DELIVERY, "lost (silent gap)", 0,
                              MessageLost(f"seqs {expected}..{seq - 1} never arrived"))
            latency_ms = (received + clock_offset - ts) * 1000
            rec.record_ms(DELIVERY, latency_ms)
            log_row(DELIVERY, "publish -> receive", latency_ms)
            delivered += 1
            expected = seq + 1
        self.expected = expected
        self.delivered(delivered, received)

    def take_stamped(self, answer: Poll, received: float) -> None:
        """Messages judged by the publisher's stamp: (publisher, seq in the channel, send
        time on the target's clock); latency from the server's time where it gives one."""
        rec = self.recorder
        clock_offset = rec.clock_offset_s
        order = self.order
        delivered = 0
        log_row = self.rows.log
        for stamp, _, server_ts in answer.messages:
            if stamp is None:  # not our publisher's (no stamp): delivered, not timed
                rec.count("unstamped")
                continue
            verdict = order.see(stamp[0], stamp[1])
            if verdict == DUPLICATE:
                rec.count("duplicate")
                self.fail(DELIVERY, "duplicate", 0,
                          DuplicateMessage(f"seq {stamp[1]} of {stamp[0]} seen twice"))
                continue
            if verdict == LATE:  # filled a gap counted lost: it was only out of order
                rec.count("reordered")
                rec.count("lost_silent", -1)
            elif verdict > 0:  # a gap of that many
                rec.count("lost_silent", verdict)
                self.fail(DELIVERY, "lost (silent gap)", 0, MessageLost(
                    f"seqs {stamp[1] - verdict}..{stamp[1] - 1} of {stamp[0]} never arrived"))
            sent = server_ts if server_ts is not None else stamp[2]
            latency_ms = (received + clock_offset - sent) * 1000
            rec.record_ms(DELIVERY, latency_ms)
            log_row(DELIVERY, "publish -> receive", latency_ms)
            delivered += 1
        self.delivered(delivered, received)

    def delivered(self, n: int, received: float) -> None:
        self.recorder.count("delivered", n)
        if n and self.failing_since is not None:
            self.recorder.event("recovered", channel=self.channel,
                                since=round(self.failing_since, 4), at=round(received, 4))
            self.failing_since = None


DUPLICATE = -1  # StampOrder.see: seen already
LATE = -2       # StampOrder.see: fills a gap counted lost


class StampOrder:
    """The stamps one subscriber has seen, per publisher: the next sequence expected and
    the gaps still open (at most :attr:`MAX_GAPS` ranges each, so a subscriber far behind
    costs bounded memory; a late message in a forgotten gap reads as a duplicate).

    :meth:`see` answers 0 (in order), N (N messages skipped: counted lost), LATE (it fills
    a gap counted lost before: out of order, not lost) or DUPLICATE (seen already)."""

    MAX_GAPS = 64
    __slots__ = ("next", "gaps")  # one per subscriber

    def __init__(self) -> None:
        self.next: dict[str, int] = {}
        self.gaps: dict[str, list[list[int]]] = {}

    def see(self, publisher: str, seq: int) -> int:
        expected = self.next.get(publisher)
        if expected is None or seq == expected:  # the first seen starts the count
            self.next[publisher] = seq + 1
            return 0
        if seq > expected:
            gaps = self.gaps.setdefault(publisher, [])
            gaps.append([expected, seq - 1])
            del gaps[:-self.MAX_GAPS]
            self.next[publisher] = seq + 1
            return seq - expected
        for i, (lo, hi) in enumerate(self.gaps.get(publisher, ())):
            if lo <= seq <= hi:
                gaps = self.gaps[publisher]
                gaps[i:i + 1] = [r for r in ([lo, seq - 1], [seq + 1, hi]) if r[0] <= r[1]]
                return LATE
        return DUPLICATE


_protocol: tuple[str, Protocol | None] = ("", None)


def protocol_for(opts) -> Protocol:
    """This process's protocol (one instance: protocols hold no per-subscriber state)."""
    global _protocol
    name = getattr(opts, "pb_protocol", "pollbench") or "pollbench"
    if _protocol[0] != name or _protocol[1] is None:
        _protocol = (name, load_protocol(name)(opts.pb_poll_timeout))
    assert _protocol[1] is not None
    return _protocol[1]


class Publisher(PollbenchUser):
    """Publishes at a fixed rate on a schedule that never waits for responses (open model),
    each payload stamped (publisher id, sequence per channel, send time): loss, duplicates
    and order are judged from what was sent, whatever the server's cursor looks like.

    Lateness against the schedule is recorded, so coordinated omission is visible
    instead of silently thinning the load.
    """

    fixed_count = 1
    weight = 1
    concurrency = 200  # requests in flight at once from this one user (one connection each)

    def on_start(self) -> None:
        super().on_start()
        self.proto = protocol_for(self.opts)
        self.publisher_id = f"{socket.gethostname()}-{os.getpid()}-{self.index}"
        self.sent: dict[str, int] = {}  # channel -> last stamp seq
        self.idle: list[LeanConnection] = [self.conn]
        self.epochs: dict[str, tuple[str, int]] = {}  # channel -> (epoch, last seq published)
        self.ended: dict[str, set[str]] = {}          # channel -> epochs reported ended

    def on_stop(self) -> None:
        for conn in self.idle:
            conn.close()

    @task
    def run_schedule(self) -> None:
        opts = self.opts
        rate = opts.pb_publish_rate
        if rate <= 0:
            gevent.sleep(3600)
            return
        interval = 1.0 / rate
        channels = [self.proto.channel(i) for i in range(opts.pb_channels)]
        pool = gevent.pool.Pool(self.concurrency)
        start = time.time()
        for k in itertools.count():
            scheduled = start + k * interval
            delay = scheduled - time.time()
            if delay > 0:
                gevent.sleep(delay)
            self.recorder.record_ms(PUBLISH_LAG, max((time.time() - scheduled) * 1000, 0.001))
            pool.spawn(self.publish, channels[k % len(channels)])

    def note_published(self, channel: str, got: Published) -> None:
        """Track the last seq published in each channel's epoch; when an epoch ends (a new
        one answers), report its last seq: subscribers' losses are counted against it."""
        seq, epoch = got.server_seq, got.epoch
        if not epoch or seq is None:
            return
        current = self.epochs.get(channel)
        if current is None or current[0] == epoch:
            self.epochs[channel] = (epoch, max(seq, current[1] if current else 0))
            return
        if epoch in self.ended.get(channel, ()):
            # a late answer from an epoch already reported ended: report its new last seq
            self.recorder.event("publisher_epoch_end", channel=channel, epoch=epoch,
                                last_seq=seq)
            return
        self.recorder.event("publisher_epoch_end", channel=channel, epoch=current[0],
                            last_seq=current[1], next_epoch=epoch)
        self.ended.setdefault(channel, set()).add(current[0])
        self.epochs[channel] = (epoch, seq)

    def publish(self, channel: str) -> None:
        proto = self.proto
        seq = self.sent[channel] = self.sent.get(channel, 0) + 1
        body = stamp_body(self.publisher_id, seq, time.time() + self.recorder.clock_offset_s,
                          self.opts.pb_message_bytes)
        req = proto.publish(channel, body)
        conn = self.idle.pop() if self.idle else self.new_connection()
        try:
            resp, ms = self.exchange(req.method, req.target, proto.publish_name, req.body,
                                     conn=conn, headers=req.headers,
                                     content_type=req.content_type)
            if resp is None:
                return
            try:
                got = proto.read_publish(resp)
            except BadAnswer as e:
                self.fail(req.method, proto.publish_name, ms, e)
                # refused: never published, so not lost to anyone.  Its sequence is given
                # back while no later one was taken (a publish with no answer keeps it:
                # the server may have it, and a subscriber that never sees it counts it)
                if self.sent[channel] == seq:
                    self.sent[channel] = seq - 1
                return
            self.ok(req.method, proto.publish_name, ms, len(resp.body))
            self.recorder.count("published")
            if EPOCHS in proto.gives:
                self.note_published(channel, got)
            if TRACE and got.server_seq is not None:
                self.recorder.event("trace_published", channel=channel, epoch=got.epoch,
                                    seq=got.server_seq, ts=got.server_ts)
        finally:
            self.idle.append(conn)
