"""Lossless long-poll metrics for Locust: HdrHistograms per interval, shipped worker -> master.

Each Locust process keeps one HdrHistogram per metric (1 us .. 1 h, 3
significant digits; ~0.7 us per record) and a dict of counters.  Every second
the interval is cut: a local runner writes it; a worker sends it to the master
as a custom message, and the master writes it.  Nothing per sample is kept.

Files written into ``--pb-out`` (only by the local runner or the master):

* ``latency.hdr.jsonl``: one line per (interval, metric, source):
  ``{"t0": epoch s, "t1": epoch s, "metric": "DELIVERY", "source": "local",
  "count": n, "hist": "<HdrHistogram compressed base64, values in us>"}``
* ``counters.jsonl``: one line per interval and source: ``{"t0", "t1", "source",
  "counters": {"delivered": n, "lost_dropped": n, "error:HTTP 503": n, ...}}``
* ``progress.json``: rewritten every second (what ``pollbench run`` shows).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import gevent
from hdrh.histogram import HdrHistogram

from analysis.atomic import write_atomic
from analysis.catalog import (
    METRICS_DIR,
    PROGRESS_FILE,
    RUN_FILES,
    UI_TEST_FILE,
    WORKER_CONNECTED_MARK,
    WORKER_REFUSED_MARK,
)
from analysis.epochs import epoch_loss
from analysis.hdr_format import HDR_HIGHEST_US, HDR_LOWEST_US, new_histogram

# the files inside --pb-out (the run folder's metrics/), named once in analysis.catalog
HDR_NAME = Path(RUN_FILES["latency_hdr"]).name
COUNTERS_NAME = Path(RUN_FILES["counters"]).name
EVENTS_NAME = Path(RUN_FILES["events"]).name

FLUSH_INTERVAL_S = 1.0
# A master ends a web UI test this long after it stopped: the workers' last intervals
# travel after the stop.
TEST_END_GRACE_S = 2.0
ROWS_MERGES_PER_FLUSH = 4
MESSAGE_TYPE = "pollbench_metrics"
# Several hosts (pollbench worker / pollbench run --expect-workers): each worker says which
# pollbench it runs; the master refuses one that differs.
HELLO_TYPE = "pollbench_hello"
REFUSE_TYPE = "pollbench_refuse"
REFUSED_MARK = WORKER_REFUSED_MARK  # pollbench worker looks for these in Locust's log
CONNECTED_MARK = WORKER_CONNECTED_MARK
CLOCK_EXCHANGES = 32
log = logging.getLogger("pollbench")

# Metric names (also Locust request types for the custom rows in the UI and CSVs).
DELIVERY = "DELIVERY"          # publish (server ts) -> message received by a subscriber
TASK = "TASK"                  # task submit sent -> result received
TASK_OVERHEAD = "TASK_OVERHEAD"  # turnaround minus the task's own duration
REPOLL_GAP = "REPOLL_GAP"      # response received -> next poll sent, same subscriber
PUBLISH_LAG = "PUBLISH_LAG"    # how late a publish left against its fixed schedule
GC_PAUSE = "GC_PAUSE"          # load generator's own garbage-collection pauses


class Recorder:
    """Interval histograms and counters of one Locust process."""

    def __init__(self) -> None:
        self.hists: dict[str, HdrHistogram] = {}
        self.counters: dict[str, int] = {}
        self.totals: dict[str, int] = {}
        self.interval_start = time.time()
        self.clock = ""  # how receipt times were taken (loadtests.leanhttp CLOCK_*)
        # added to every receipt time before delivery latency is taken: this host's clock
        # offset to the target's (0 on one machine; see measure_clock)
        self.clock_offset_s = 0.0
        self.events: list[dict] = []  # rare events (faults seen): written as they are

    def event(self, kind: str, **fields) -> None:
        """A rare event (a channel's epoch changed, a subscriber recovered): one line in
        events.jsonl, never per message."""
        self.events.append({"t": round(time.time(), 4), "kind": kind, **fields})

    def record_ms(self, metric: str, value_ms: float) -> None:
        hist = self.hists.get(metric)
        if hist is None:
            hist = self.hists[metric] = new_histogram()
        us = int(value_ms * 1000)
        hist.record_value(min(max(us, HDR_LOWEST_US), HDR_HIGHEST_US))

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def cut(self) -> dict:
        """The interval so far, encoded; resets the interval."""
        now = time.time()
        payload = {
            "t0": self.interval_start, "t1": now,
            "hists": {m: (h.get_total_count(), h.encode().decode()) for m, h in self.hists.items()
                      if h.get_total_count()},
            "counters": self.counters, "clock": self.clock, "events": self.events,
        }
        for k, v in self.counters.items():
            self.totals[k] = self.totals.get(k, 0) + v
        self.hists = {}
        self.counters = {}
        self.events = []
        self.interval_start = now
        return payload


class LocustRows:
    """Successful requests and deliveries for Locust's stats, batched.

    Firing ``events.request`` per request runs every listener and updates two of
    Locust's StatsEntry objects each time.  Here a success is logged into a
    private StatsEntry (Locust's own class, so its rounding and per-second counts
    are Locust's) and :meth:`merge`, called 4 times a second, extends the
    environment's row and total with it: the web UI, the CSVs and the worker
    reports show the same rows, at most a quarter of a second later.
    """

    def __init__(self, stats) -> None:
        self.stats = stats
        self.pending: dict[tuple[str, str], Any] = {}  # locust.stats.StatsEntry

    def log(self, method: str, name: str, ms: float, length: int = 0) -> None:
        entry = self.pending.get((name, method))
        if entry is None:
            from locust.stats import StatsEntry

            entry = self.pending[(name, method)] = StatsEntry(self.stats, name, method)
        entry.log(ms, length)  # type: ignore[arg-type]  # Locust's own events log floats

    def merge(self) -> None:
        pending, self.pending = self.pending, {}
        for (name, method), entry in pending.items():
            self.stats.get(name, method).extend(entry)
            self.stats.total.extend(entry)


class Sink:
    """Appends intervals to the run's files (local runner or master only)."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self._hdr = open(out / HDR_NAME, "a", buffering=1)
        self._counters = open(out / COUNTERS_NAME, "a", buffering=1)
        self._events = open(out / EVENTS_NAME, "a", buffering=1)
        self.totals: dict[str, int] = {}
        self.clocks: set[str] = set()
        self.epoch_loss = EpochLoss()
        self.last = (0, 0, time.time())  # delivered, requests, time at the last progress write

    def write(self, source: str, payload: dict) -> None:
        t0, t1 = payload["t0"], payload["t1"]
        for metric, (count, encoded) in payload["hists"].items():
            self._hdr.write(json.dumps({"t0": round(t0, 4), "t1": round(t1, 4), "metric": metric,
                                        "source": source, "count": count, "hist": encoded}) + "\n")
        if payload["counters"]:
            self._counters.write(json.dumps({"t0": round(t0, 4), "t1": round(t1, 4),
                                             "source": source,
                                             "counters": payload["counters"]}) + "\n")
        for k, v in payload["counters"].items():
            self.totals[k] = self.totals.get(k, 0) + v
        if payload.get("clock"):
            self.clocks.add(payload["clock"])
        for event in payload.get("events", ()):
            self._events.write(json.dumps({**event, "source": source}) + "\n")
            self.epoch_loss.add(event)

    def event(self, source: str, event: dict) -> None:
        """An event of the master itself (a worker joined, was refused or was lost)."""
        self._events.write(json.dumps({"t": round(time.time(), 4), **event,
                                       "source": source}) + "\n")

    def write_progress(self, progress: dict) -> None:
        write_atomic(self.out / PROGRESS_FILE, json.dumps(progress), durable=False)

    def close(self) -> None:
        self._hdr.close()
        self._counters.close()
        self._events.close()


class EpochLoss:
    """Messages lost when a channel's state was lost (a backend restart), counted exactly.

    The live count (progress.json): the events of every process, counted by
    :func:`analysis.epochs.epoch_loss`, the function the report counts with too."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def add(self, event: dict) -> None:
        if event.get("kind") in ("epoch_change", "publisher_epoch_end"):
            self.events.append(event)

    def lost(self) -> int:
        return epoch_loss(self.events)[0]


def pollbench_version() -> str:
    """The installed pollbench's version (read from its metadata: nothing of it is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pollbench")
    except PackageNotFoundError:
        return "unknown"


def watch_gc(recorder: Recorder) -> None:
    started = [0.0]

    def callback(phase, info):
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            recorder.record_ms(GC_PAUSE, (time.perf_counter() - started[0]) * 1000)
            recorder.count(f"gc_gen{info['generation']}")

    gc.callbacks.append(callback)


def error_cause(exc) -> str:
    """A short, stable cause for an error count: 'HTTP 503', 'ConnectionResetError', 'timeout'."""
    text = str(exc)
    if text.startswith("HTTP "):
        return text.split(":", 1)[0]
    name = type(exc).__name__
    if "timeout" in text.lower() or "timeout" in name.lower():
        return "timeout"
    if name in ("CatchResponseError", "Exception", "LocustError"):
        return text[:60]
    return name


class UiTest:
    """One test started from the web UI: its own metrics folder and ``test.json``.

    The orchestrator (``pollbench ui``) turns each stopped test into a run folder with a
    report; ``test.json`` says what was started (users, spawn rate, classes, options) and
    when it started and stopped."""

    def __init__(self, tests_dir: Path, environment, workers: int) -> None:
        tests_dir.mkdir(parents=True, exist_ok=True)
        number = 1 + max((int(p.name) for p in tests_dir.iterdir() if p.name.isdigit()),
                         default=0)
        self.dir = tests_dir / f"{number:03d}"
        self.dir.mkdir()
        self.sink = Sink(self.dir / METRICS_DIR)
        opts = environment.parsed_options
        self.info = {
            "number": number, "status": "running", "started_at": time.time(), "ended_at": None,
            "users": getattr(opts, "num_users", None), "spawn_rate": getattr(opts, "spawn_rate",
                                                                            None),
            "user_classes": sorted(c.__name__ for c in environment.user_classes),
            "host": environment.host,
            "workers": workers,
            "options": {k: v for k, v in sorted(vars(opts).items())
                        if k.startswith("pb_") and k not in ("pb_out", "pb_tests", "pb_live")},
        }
        self.write()

    def write(self) -> None:
        write_atomic(self.dir / UI_TEST_FILE, json.dumps(self.info, indent=1))

    def end(self, reason: str) -> None:
        self.info.update(status="stopped", ended_at=self.info["ended_at"] or time.time(),
                         stop_reason=reason)
        self.sink.close()
        self.write()


class MetricsPlumbing:
    """Wires a Recorder into one Locust process according to its role."""

    def __init__(self, environment, out: str | None, tests_dir: str | None = None,
                 live_path: str | None = None) -> None:
        from locust.runners import MasterRunner, WorkerRunner

        self.env = environment
        self.runner = environment.runner
        self.recorder = Recorder()
        self.rows = LocustRows(environment.stats)
        self.is_master = isinstance(self.runner, MasterRunner)
        self.is_worker = isinstance(self.runner, WorkerRunner)
        self.sink = Sink(Path(out)) if out and not self.is_worker else None
        # web UI sessions: one folder per test, and the "Long polling" tab's live view
        self.tests_dir = Path(tests_dir) if tests_dir and not self.is_worker else None
        self.test: UiTest | None = None
        self.live = None
        if environment.web_ui is not None and not self.is_worker:
            from loadtests.live import LiveView

            self.live = LiveView(Path(live_path) if live_path else None)
        self.started_at = time.time()
        self._greenlet = None
        self._stopped = False
        self._quitting = False
        watch_gc(self.recorder)

        events = environment.events
        events.request.add_listener(self.on_request)
        events.test_start.add_listener(self.on_test_start)
        events.test_stop.add_listener(self.on_test_stop)
        events.quitting.add_listener(self.on_quitting)
        events.quit.add_listener(self.on_quit)
        self.workers: dict[str, dict] = {}  # master: node id -> what it said, its state
        self.workers_lost: list[str] = []
        self._cpu_mark = time.process_time()  # worker: its CPU time at the last interval
        if self.is_master:
            self.runner.register_message(MESSAGE_TYPE, self.on_worker_metrics)
            self.runner.register_message(HELLO_TYPE, self.on_worker_hello)
        if self.is_worker:
            self.runner.register_message(REFUSE_TYPE, self.on_refused)
            self.runner.send_message(HELLO_TYPE, {"pollbench": pollbench_version(),
                                                  "host": socket.gethostname(),
                                                  "pid": os.getpid()})
            log.info("%s %s:%s (pollbench %s)", CONNECTED_MARK, self.runner.master_host,
                     self.runner.master_port, pollbench_version())
        if not self.is_master:
            self._greenlet = gevent.spawn(self._flush_loop)

    # --- several hosts: versions, lost workers, clocks
    def on_worker_hello(self, environment, msg, **_kw) -> None:
        data = msg.data if isinstance(msg.data, dict) else {}
        theirs, mine = data.get("pollbench"), pollbench_version()
        node = f"worker-{msg.node_id[-8:]}"
        refused = theirs != mine
        # a refused worker quits at once: its leaving is no loss (watch_workers skips it)
        self.workers[msg.node_id] = {"host": data.get("host"), "pollbench": theirs,
                                     "lost": False, "refused": refused}
        if refused:
            reason = (f"pollbench {theirs} on {data.get('host')} but {mine} on the master: "
                      "install the same pollbench on every host")
            log.error("worker %s %s %s", node, REFUSED_MARK, reason)
            self.runner.send_message(REFUSE_TYPE, {"reason": reason}, client_id=msg.node_id)
            event: dict[str, Any] = {"kind": "worker_refused", "node": node, "reason": reason}
        else:
            event = {"kind": "worker_joined", "node": node, "host": data.get("host")}
        if self.sink is not None:
            self.sink.event("master", event)

    def on_refused(self, environment, msg, **_kw) -> None:
        log.error("%s %s", REFUSED_MARK, (msg.data or {}).get("reason"))
        gevent.spawn(self.runner.quit)

    def watch_workers(self) -> None:
        """Master, during a test: a worker that went missing or quit is lost (once each)."""
        from locust.runners import STATE_MISSING

        present = {c.id: c.state for c in self.runner.clients.values()}
        for node, info in self.workers.items():
            gone = node not in present or present[node] == STATE_MISSING
            if gone and not info["lost"] and not info.get("refused") and not self._stopped:
                info["lost"] = True
                name = f"worker-{node[-8:]}"
                self.workers_lost.append(name)
                log.error("worker %s (%s) was lost mid-run", name, info.get("host"))
                if self.sink is not None:
                    self.sink.event("master", {"kind": "worker_lost", "node": name,
                                               "host": info.get("host")})

    def measure_clock(self, phase: str) -> bool:
        """This process's clock offset to the target (the agent's /v1/time), before the
        test (then applied to receipt times) and after it (drift), as "clock" events."""
        opts = self.env.parsed_options
        url = getattr(opts, "pb_agent", "") if opts is not None else ""
        if not url or self.is_master:
            return False
        import http.client
        from urllib.parse import urlsplit

        from analysis.clock import measure

        parts = urlsplit(url)
        headers = {"Authorization": f"Bearer {getattr(opts, 'pb_agent_token', '')}"}
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=2)

        def remote() -> float:  # one keep-alive connection: no handshake in the round trips
            conn.request("GET", "/v1/time", headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise OSError(f"the agent answered {resp.status}")
            return float(json.loads(body)["time"])

        try:  # before: spread over ~0.3 s of a busy start; after: at once (the master waits
            # for nobody once it quits)
            offset = measure(remote, CLOCK_EXCHANGES if phase == "before" else 12,
                             pause=(lambda: gevent.sleep(0.01)) if phase == "before" else None)
        except Exception as e:  # no offset: latency stays uncorrected, and it is said
            self.recorder.event("clock", phase=phase, error=f"{type(e).__name__}: {e}",
                                host=socket.gethostname())
            return True
        finally:
            conn.close()
        if phase == "before":
            # corrected only when the offset is known to be non-zero
            self.recorder.clock_offset_s = (offset.offset_s if abs(offset.offset_s)
                                            > offset.uncertainty_s else 0.0)
        self.recorder.event("clock", phase=phase, host=socket.gethostname(),
                            applied_s=self.recorder.clock_offset_s, **offset.as_dict())
        return True

    # --- one call per fired request: failures (successes go through self.rows)
    def on_request(self, request_type, name, response_time, response_length, exception=None,
                   **_kw) -> None:
        if exception is not None:
            self.recorder.count(f"error:{request_type} {name}: {error_cause(exception)}")
            return
        if request_type in ("GET", "POST"):
            self.recorder.record_ms(f"HTTP {request_type} {name}", response_time)

    # --- interval handling
    def _flush_loop(self) -> None:
        # Locust's rows are merged 4 times per interval so that its 1-s CSV writer and web UI
        # lag the requests as little as they did when every request fired an event.
        while True:
            for _ in range(ROWS_MERGES_PER_FLUSH - 1):
                gevent.sleep(FLUSH_INTERVAL_S / ROWS_MERGES_PER_FLUSH)
                self.rows.merge()
            gevent.sleep(FLUSH_INTERVAL_S / ROWS_MERGES_PER_FLUSH)
            self.flush()

    def flush(self) -> None:
        self.rows.merge()
        payload = self.recorder.cut()
        if self.is_worker:
            # its own CPU in the interval (ms), for the controller's record: a worker on
            # another host is sampled by nobody else
            now = time.process_time()
            payload["counters"]["cpu_ms"] = round((now - self._cpu_mark) * 1000)
            self._cpu_mark = now
            self.runner.send_message(MESSAGE_TYPE, payload)
        else:
            self.deliver("local", payload)
            self.write_progress()

    def on_worker_metrics(self, environment, msg, **_kw) -> None:
        if not self._stopped:
            self.deliver(f"worker-{msg.node_id[-8:]}", msg.data)

    def deliver(self, source: str, payload: dict) -> None:
        """An interval of one process: into the session's files, the test's, the live view."""
        if self.sink is not None:
            self.sink.write(source, payload)
        if self.test is not None:
            self.test.sink.write(source, payload)
        if self.live is not None:
            self.live.add(payload)
            if self.test is not None:
                self.live.lost_epoch = self.test.sink.epoch_loss.lost()

    def write_progress(self) -> None:
        if self.sink is None:
            return
        now = time.time()
        self.sink.write_progress(self.progress(self.sink, now, self.started_at))
        if self.test is not None:
            self.test.sink.write_progress(self.progress(self.test.sink, now,
                                                        self.test.info["started_at"]))

    def progress(self, sink: Sink, now: float, started_at: float) -> dict:
        totals = sink.totals
        delivered, requests = totals.get("delivered", 0), totals.get("requests", 0)
        last_delivered, last_requests, last_t = sink.last
        dt = max(now - last_t, 1e-6)
        sink.last = (delivered, requests, now)
        lost_epoch = sink.epoch_loss.lost()
        return {
            "time": now, "elapsed_s": round(now - started_at, 1),
            "users": self.runner.user_count, "state": str(self.runner.state),
            # HTTP requests only: Locust's total also counts the DELIVERY / TASK rows
            "requests": requests, "failures": self.env.stats.total.num_failures,
            "requests_per_s": round((requests - last_requests) / dt, 1),
            "deliveries_per_s": round((delivered - last_delivered) / dt, 1),
            "delivered": delivered,
            "lost": totals.get("lost_dropped", 0) + totals.get("lost_silent", 0)
            + lost_epoch,
            "lost_epoch": lost_epoch,
            "duplicates": totals.get("duplicate", 0),
            "clock_source": ", ".join(sorted(sink.clocks)),
            **({"workers": self.runner.worker_count, "workers_lost": list(self.workers_lost)}
               if self.is_master else {}),
        }

    def on_test_start(self, environment, **_kw) -> None:
        if self.is_master and self._greenlet is None:
            self._greenlet = gevent.spawn(self._progress_loop)
        if not self.is_master:  # in the background: spawning goes on meanwhile
            gevent.spawn(self.measure_clock, "before")
        if self.tests_dir is not None and not self.is_worker:
            self.end_test("a new test started")
            self.test = UiTest(self.tests_dir, environment,
                               self.runner.worker_count if self.is_master else 0)
        if self.live is not None:
            self.live.reset(time.time())

    def end_test(self, reason: str) -> None:
        test, self.test = self.test, None
        if test is not None:
            test.end(reason)

    def _progress_loop(self) -> None:
        while True:
            gevent.sleep(FLUSH_INTERVAL_S)
            self.watch_workers()
            self.write_progress()

    def on_test_stop(self, environment, **_kw) -> None:
        # The users have stopped: Locust's final reports (its JSON file; a worker's last
        # stats message) come next and must hold every row.  A worker ships its last partial
        # interval now too: the message travels ahead of its "stopped" notice.
        if not self.is_master:
            self.flush()
            if self.measure_clock("after"):
                self.flush()  # the "after" event, right behind the last interval
        if self.live is not None:
            self.live.stop(time.time())
        if self.test is not None:
            self.test.info["ended_at"] = time.time()
            reason = "the session ended" if self._quitting else "stopped"
            if self.is_master:  # the workers' last intervals are on their way
                gevent.spawn_later(TEST_END_GRACE_S, self._end_after_grace, self.test, reason)
            else:
                self.write_progress()
                self.end_test(reason)

    def _end_after_grace(self, test: UiTest, reason: str) -> None:
        if self.test is test:
            self.write_progress()
            self.end_test(reason)

    def on_quitting(self, environment, **_kw) -> None:
        # Users may still be running (Locust stops them after this event): flush what is
        # here, keep the files open for what they record until ``quit``.
        self._quitting = True
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
        if not self.is_master and not self._stopped:
            self.flush()

    def on_quit(self, **_kw) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.sink is not None:
            if not self.is_master:
                self.flush()
            self.write_progress()
            self.sink.close()
        self.end_test("the session ended")
