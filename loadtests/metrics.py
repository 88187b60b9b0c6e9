"""Lossless long-poll metrics for Locust: HdrHistograms per interval, shipped worker -> master.

This module wires the parts into one Locust process by its role (:class:`MetricsPlumbing`)
and ships the intervals; the parts are :mod:`loadtests.recorder` (what is recorded, the
files), :mod:`loadtests.hosts` (the several-hosts protocol) and :mod:`loadtests.uitest`
(the web UI's tests).

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

import time
from pathlib import Path

import gevent

from loadtests.hosts import HELLO_TYPE, MasterWorkers, measure_clock, node_name, say_hello
from loadtests.recorder import LocustRows, LocustTrim, Recorder, Sink, error_cause, watch_gc
from loadtests.uitest import UiTests

FLUSH_INTERVAL_S = 1.0
ROWS_MERGES_PER_FLUSH = 4
MESSAGE_TYPE = "pollbench_metrics"
TRIM_EVERY_S = 30.0


class MetricsPlumbing:
    """Wires a Recorder into one Locust process according to its role."""

    def __init__(self, environment, out: str | None, tests_dir: str | None = None,
                 live_path: str | None = None, metrics_port: int = 0) -> None:
        from locust.runners import MasterRunner, WorkerRunner

        self.env = environment
        self.runner = environment.runner
        self.recorder = Recorder()
        self.rows = LocustRows(environment.stats)
        self.is_master = isinstance(self.runner, MasterRunner)
        self.is_worker = isinstance(self.runner, WorkerRunner)
        self.sink = Sink(Path(out)) if out and not self.is_worker else None
        # web UI sessions: one folder per test, and the "Long polling" tab's live view
        self.tests = UiTests(Path(tests_dir), environment, self.is_master) \
            if tests_dir and not self.is_worker else None
        self.live = None
        if environment.web_ui is not None and not self.is_worker:
            from loadtests.live import LiveView
            from loadtests.protocols import load_protocol

            opts = environment.parsed_options
            protocol = load_protocol(getattr(opts, "pb_protocol", None) or "pollbench")
            self.live = LiveView(Path(live_path) if live_path else None,
                                 gives=protocol.gives)
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
        self._cpu_mark = time.process_time()  # worker: its CPU time at the last interval
        self.workers: MasterWorkers | None = None
        if self.is_master:
            self.workers = MasterWorkers(self.runner, self.sink)
            self.runner.register_message(MESSAGE_TYPE, self.on_worker_metrics)
            self.runner.register_message(HELLO_TYPE, self.workers.on_hello)
        if self.is_worker:
            say_hello(self.runner)
        if not self.is_master:
            self._greenlet = gevent.spawn(self._flush_loop)
        # the live figures for Prometheus (loadtests.openmetrics), where the run's files are
        self.openmetrics = self._openmetrics_server = None
        if metrics_port and not self.is_worker:
            from loadtests.openmetrics import LoadgenMetrics, serve

            sink = self.sink
            self.openmetrics = LoadgenMetrics(
                (lambda: sink.epoch_loss.lost()) if sink is not None else (lambda: 0),
                Path(live_path) if live_path else None)
            try:
                self._openmetrics_server = serve(self.openmetrics, metrics_port)
            except OSError as e:  # taken since pollbench chose it: the run goes on without
                import logging

                logging.getLogger(__name__).warning(
                    f"the Prometheus endpoint could not listen on 127.0.0.1:{metrics_port} "
                    f"({e}); the run goes on without it")
                self.openmetrics = None
        self.trim = LocustTrim(environment.stats)
        self._trim_greenlet = gevent.spawn(self._trim_loop)

    @property
    def test(self):
        """The web UI's test running now (None outside a web UI session)."""
        return self.tests.current if self.tests is not None else None

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
            try:
                self.flush()
            except OSError as e:  # the record must outlive a load that exhausts the host
                import logging

                logging.getLogger(__name__).error(f"the run's figures could not be written "
                                                  f"this second ({e}); trying again")

    def _trim_loop(self) -> None:
        while True:
            gevent.sleep(TRIM_EVERY_S)
            self.trim.trim(time.time())

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
            self.deliver(node_name(msg.node_id), msg.data)

    def deliver(self, source: str, payload: dict) -> None:
        """An interval of one process: into the session's files, the test's, the live view."""
        if self.sink is not None:
            self.sink.write(source, payload)
        if self.openmetrics is not None:
            self.openmetrics.add(payload)
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
        lost_epoch, lost_unknown = sink.epoch_loss.counts()
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
            # subscribers that saw their channel's state lost (a restart, an epoch change),
            # and of those the changes whose loss cannot be counted (no publisher report)
            "epoch_changes": totals.get("epoch_changes", 0),
            "lost_epoch_unknown": lost_unknown,
            "reordered": totals.get("reordered", 0),
            "duplicates": totals.get("duplicate", 0),
            "clock_source": ", ".join(sorted(sink.clocks)),
            **({"workers": self.runner.worker_count, "workers_lost": list(self.workers.lost)}
               if self.workers is not None else {}),
        }

    def on_test_start(self, environment, **_kw) -> None:
        if self.sink is not None:  # when the run's duration starts counting (analysis.limits)
            self.sink.event("master" if self.is_master else "local", {"kind": "load_started"})
        if self.is_master and self._greenlet is None:
            self._greenlet = gevent.spawn(self._progress_loop)
        if not self.is_master:  # in the background: spawning goes on meanwhile
            gevent.spawn(measure_clock, self.env, self.recorder, "before")
        if self.workers is not None:
            self.workers.test_started()
        if self.tests is not None:
            self.tests.start(self.runner.worker_count if self.is_master else 0)
        if self.live is not None:
            self.live.reset(time.time())

    def _progress_loop(self) -> None:
        while True:
            gevent.sleep(FLUSH_INTERVAL_S)
            if self.workers is not None:
                self.workers.watch()
            self.write_progress()

    def on_test_stop(self, environment, **_kw) -> None:
        # The users have stopped: Locust's final reports (its JSON file; a worker's last
        # stats message) come next and must hold every row.  A worker ships its last partial
        # interval now too: the message travels ahead of its "stopped" notice.
        if self.workers is not None:
            self.workers.test_stopped()  # the workers' leaving from now on is no loss
        if not self.is_master:
            self.flush()
            if measure_clock(self.env, self.recorder, "after"):
                self.flush()  # the "after" event, right behind the last interval
            if self.is_worker:
                # a worker on its way out (Locust's "quit" stops the test, then the process
                # exits): zmq sends from a thread of its own, and what is still queued at
                # exit is dropped (a fresh-clone CI run lost one worker's "after" clock
                # event so).  The master waits 0.5 s for these last messages.
                gevent.sleep(0.1)
        if self.live is not None:
            self.live.stop(time.time())
        if self.tests is not None:
            self.tests.stopped("the session ended" if self._quitting else "stopped",
                               self.write_progress)

    def on_quitting(self, environment, **_kw) -> None:
        # Users may still be running (Locust stops them after this event): flush what is
        # here, keep the files open for what they record until ``quit``.
        self._quitting = True
        self._trim_greenlet.kill(block=False)
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
        if not self.is_master and not self._stopped:
            self.flush()

    def on_quit(self, **_kw) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._openmetrics_server is not None:
            self._openmetrics_server.stop(timeout=1)
        if self.workers is not None:
            self.workers.test_stopped()
        if self.sink is not None:
            if not self.is_master:
                self.flush()
            self.write_progress()
            self.sink.close()
        if self.tests is not None:
            self.tests.end("the session ended")
