"""Simulated long-poll clients: task pollers, channel subscribers and an open-model publisher.

Every user is a FastHttpUser (one connection per user, reused unless the
``--pb-connection`` option says otherwise).  Long-poll responses are named so
that the hold time never passes for latency: a 204 is its own row
("... (204 timeout)"), a success, and what matters is recorded as custom
request types (DELIVERY, TASK, TASK_OVERHEAD, REPOLL_GAP, PUBLISH_LAG), which
Locust shows and sums across workers, and which are also kept lossless in
HdrHistograms (:mod:`loadtests.metrics`).

Clock assumption: delivery latency compares the backend's ``ts`` (time.time()
when the message was published) with the subscriber's time.time() at receipt.
Both run on this machine here; with workers on other machines the clocks must
be synchronised (NTP/PTP) and the offset bounds the error.
"""

from __future__ import annotations

import itertools
import json
import time

import gevent
import gevent.pool
from locust import FastHttpUser, constant, task

from loadtests.metrics import DELIVERY, PUBLISH_LAG, REPOLL_GAP, TASK, TASK_OVERHEAD
from loadtests.options import parse_connection_mode

_user_ids = itertools.count()


class MessageLost(Exception):
    """Messages a subscriber will never see; counted, never hidden."""


class DuplicateMessage(Exception):
    """A message delivered to the same subscriber twice."""


class PollbenchUser(FastHttpUser):
    abstract = True
    wait_time = constant(0)
    # The client must wait longer than the server may hold a poll.
    network_timeout = 300.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.opts = opts
        self.index = next(_user_ids)
        self.recorder = self.environment.pollbench.recorder
        self.close_every = parse_connection_mode(opts.pb_connection)
        self._requests = 0
        self.poll_timeout = opts.pb_poll_timeout

    def headers(self) -> dict[str, str] | None:
        """Connection: close on every K-th request when connection reuse is being limited."""
        self._requests += 1
        if self.close_every and self._requests % self.close_every == 0:
            return {"Connection": "close"}
        return None

    def fire(self, request_type: str, name: str, ms: float, exception=None) -> None:
        self.environment.events.request.fire(request_type=request_type, name=name,
                                             response_time=ms, response_length=0,
                                             exception=exception, context={})

    @staticmethod
    def failure_text(resp) -> str:
        if resp.status_code == 0 or resp.status_code is None:
            return f"{type(resp.error).__name__}: {resp.error}" if resp.error else "no response"
        return f"HTTP {resp.status_code}: {(resp.text or '')[:120]}"


class TaskPoller(PollbenchUser):
    """Submits a background task, then long-polls until its result arrives."""

    weight = 1

    @task
    def submit_and_wait(self) -> None:
        opts = self.opts
        duration_ms = opts.pb_task_duration_ms
        t_submit = time.time()
        with self.client.post("/tasks", json={"duration_ms": duration_ms,
                                              "payload_bytes": opts.pb_task_payload_bytes},
                              name="/tasks", headers=self.headers(), catch_response=True) as resp:
            if resp.status_code != 202:
                resp.failure(self.failure_text(resp))
                return
            task_id = resp.json()["id"]
        # bounded: the task's own duration plus a margin, in polls of poll_timeout
        max_polls = 3 + int(duration_ms / 1000 / max(self.poll_timeout, 0.1)) + 3
        for _ in range(max_polls):
            with self.client.get(f"/tasks/{task_id}?timeout={self.poll_timeout:g}",
                                 name="/tasks/[id]", headers=self.headers(),
                                 catch_response=True) as resp:
                if resp.status_code == 204:
                    resp.request_meta["name"] = "/tasks/[id] (204 timeout)"
                    resp.success()
                    continue
                if resp.status_code != 200:
                    resp.failure(self.failure_text(resp))
                    return
                turnaround_ms = (time.time() - t_submit) * 1000
                resp.success()
            self.recorder.record_ms(TASK, turnaround_ms)
            self.recorder.record_ms(TASK_OVERHEAD, max(turnaround_ms - duration_ms, 0.001))
            self.recorder.count("tasks_done")
            self.fire(TASK, "submit -> result", turnaround_ms)
            self.fire(TASK_OVERHEAD, "turnaround - duration", turnaround_ms - duration_ms)
            return
        self.fire(TASK, "submit -> result", 0, exception=Exception("result never arrived"))


class ChannelSubscriber(PollbenchUser):
    """Long-polls one channel by cursor with no pause between polls; checks every seq."""

    weight = 10

    def on_start(self) -> None:
        super().on_start()
        self.channel = f"ch{self.index % self.opts.pb_channels}"
        self.path = f"/channels/{self.channel}"
        self.cursor: int | None = None
        self.epoch: str | None = None
        self.expected: int | None = None  # next seq this subscriber must see
        self.last_receipt: float | None = None

    @task
    def poll(self) -> None:
        query = f"timeout={self.poll_timeout:g}"
        if self.cursor is not None:
            query += f"&cursor={self.cursor}&epoch={self.epoch}"
        sent = time.time()
        if self.last_receipt is not None:
            gap_ms = (sent - self.last_receipt) * 1000
            self.recorder.record_ms(REPOLL_GAP, gap_ms)
        with self.client.get(f"{self.path}?{query}", name="/channels/[name]",
                             headers=self.headers(), catch_response=True) as resp:
            received = time.time()
            self.last_receipt = received
            if resp.status_code == 204:
                resp.request_meta["name"] = "/channels/[name] (204 timeout)"
                if self.cursor is None:
                    self.cursor = int(resp.headers.get("X-Cursor", 0))
                    self.epoch = resp.headers.get("X-Epoch")
                    self.expected = self.cursor + 1
                resp.success()
                return
            if resp.status_code != 200:
                resp.failure(self.failure_text(resp))
                self.last_receipt = None
                gevent.sleep(0.1)  # don't spin on a failing backend
                return
            try:
                data = json.loads(resp.content)
            except ValueError:
                resp.failure("invalid JSON in a 200 poll answer")
                return
            resp.success()
        self.take(data, received)

    def take(self, data: dict, received: float) -> None:
        rec = self.recorder
        if self.epoch is not None and data["epoch"] != self.epoch:
            # The channel's state was lost (a backend restarted): whatever was in flight is
            # gone, and we cannot know how much.  Counted as its own kind of loss.
            rec.count("epoch_changes")
            self.fire(DELIVERY, "lost (epoch change)", 0,
                      exception=MessageLost(f"channel {self.channel} restarted"))
            self.expected = None
        self.epoch = data["epoch"]
        dropped = data.get("dropped")
        if dropped:
            n = dropped[1] - dropped[0] + 1
            rec.count("lost_dropped", n)
            self.fire(DELIVERY, "lost (dropped by buffer)", 0,
                      exception=MessageLost(f"{n} messages dropped [{dropped[0]}, {dropped[1]}]"))
            self.expected = dropped[1] + 1
        expected = self.expected
        delivered = 0
        for msg in data["messages"]:
            seq = msg["seq"]
            if expected is not None:
                if seq < expected:
                    rec.count("duplicate")
                    self.fire(DELIVERY, "duplicate", 0,
                              exception=DuplicateMessage(f"seq {seq} seen twice"))
                    continue
                if seq > expected:
                    rec.count("lost_silent", seq - expected)
                    self.fire(DELIVERY, "lost (silent gap)", 0,
                              exception=MessageLost(f"seqs {expected}..{seq - 1} never arrived"))
            latency_ms = (received - msg["ts"]) * 1000
            rec.record_ms(DELIVERY, latency_ms)
            self.fire(DELIVERY, "publish -> receive", latency_ms)
            delivered += 1
            expected = seq + 1
        self.expected = expected
        rec.count("delivered", delivered)
        self.cursor = data["cursor"]


class Publisher(PollbenchUser):
    """Publishes at a fixed rate on a schedule that never waits for responses (open model).

    Lateness against the schedule is recorded, so coordinated omission is visible
    instead of silently thinning the load.
    """

    fixed_count = 1
    weight = 1
    concurrency = 200  # requests in flight at once from this one user

    @task
    def run_schedule(self) -> None:
        opts = self.opts
        rate = opts.pb_publish_rate
        if rate <= 0:
            gevent.sleep(3600)
            return
        interval = 1.0 / rate
        channels = opts.pb_channels
        body = json.dumps({"pad": "x" * max(opts.pb_message_bytes - 11, 0)})
        pool = gevent.pool.Pool(self.concurrency)
        start = time.time()
        for k in itertools.count():
            scheduled = start + k * interval
            delay = scheduled - time.time()
            if delay > 0:
                gevent.sleep(delay)
            self.recorder.record_ms(PUBLISH_LAG, max((time.time() - scheduled) * 1000, 0.001))
            pool.spawn(self.publish, f"/channels/ch{k % channels}", body)

    def publish(self, path: str, body: str) -> None:
        with self.client.post(path, data=body, name="/channels/[name]", headers=self.headers(),
                              catch_response=True) as resp:
            if resp.status_code != 201:
                resp.failure(self.failure_text(resp))
                return
            resp.success()
        self.recorder.count("published")
