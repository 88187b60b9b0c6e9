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
import os
import time
from pathlib import Path

import gevent
from hdrh.histogram import HdrHistogram

from analysis.hdr_format import HDR_HIGHEST_US, HDR_LOWEST_US, new_histogram

FLUSH_INTERVAL_S = 1.0
MESSAGE_TYPE = "pollbench_metrics"

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
            "counters": self.counters,
        }
        for k, v in self.counters.items():
            self.totals[k] = self.totals.get(k, 0) + v
        self.hists = {}
        self.counters = {}
        self.interval_start = now
        return payload


class Sink:
    """Appends intervals to the run's files (local runner or master only)."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self._hdr = open(out / "latency.hdr.jsonl", "a", buffering=1)
        self._counters = open(out / "counters.jsonl", "a", buffering=1)
        self.totals: dict[str, int] = {}
        self.rates: dict[str, float] = {}

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

    def write_progress(self, progress: dict) -> None:
        tmp = self.out / ".progress.json.tmp"
        tmp.write_text(json.dumps(progress))
        os.replace(tmp, self.out / "progress.json")

    def close(self) -> None:
        self._hdr.close()
        self._counters.close()


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


class MetricsPlumbing:
    """Wires a Recorder into one Locust process according to its role."""

    def __init__(self, environment, out: str | None) -> None:
        from locust.runners import MasterRunner, WorkerRunner

        self.env = environment
        self.runner = environment.runner
        self.recorder = Recorder()
        self.is_master = isinstance(self.runner, MasterRunner)
        self.is_worker = isinstance(self.runner, WorkerRunner)
        self.sink = Sink(Path(out)) if out and not self.is_worker else None
        self.started_at = time.time()
        self._last_delivered = 0
        self._last_t = time.time()
        self._greenlet = None
        self._stopped = False
        watch_gc(self.recorder)

        events = environment.events
        events.request.add_listener(self.on_request)
        events.test_start.add_listener(self.on_test_start)
        events.test_stop.add_listener(self.on_test_stop)
        events.quitting.add_listener(self.on_quitting)
        if self.is_master:
            self.runner.register_message(MESSAGE_TYPE, self.on_worker_metrics)
        if not self.is_master:
            self._greenlet = gevent.spawn(self._flush_loop)

    # --- hot path: one call per request (Locust's own and our custom rows)
    def on_request(self, request_type, name, response_time, response_length, exception=None,
                   **_kw) -> None:
        if exception is not None:
            self.recorder.count(f"error:{request_type} {name}: {error_cause(exception)}")
            return
        if request_type in ("GET", "POST"):
            self.recorder.record_ms(f"HTTP {request_type} {name}", response_time)

    # --- interval handling
    def _flush_loop(self) -> None:
        while True:
            gevent.sleep(FLUSH_INTERVAL_S)
            self.flush()

    def flush(self) -> None:
        payload = self.recorder.cut()
        if self.is_worker:
            self.runner.send_message(MESSAGE_TYPE, payload)
        elif self.sink is not None:
            self.sink.write("local", payload)
            self.write_progress()

    def on_worker_metrics(self, environment, msg, **_kw) -> None:
        if self.sink is not None:
            self.sink.write(f"worker-{msg.node_id[-8:]}", msg.data)

    def write_progress(self) -> None:
        if self.sink is None:
            return
        now = time.time()
        delivered = self.sink.totals.get("delivered", 0)
        dt = max(now - self._last_t, 1e-6)
        total = self.env.stats.total
        progress = {
            "time": now, "elapsed_s": round(now - self.started_at, 1),
            "users": self.runner.user_count, "state": str(self.runner.state),
            "requests": total.num_requests, "failures": total.num_failures,
            "requests_per_s": round(total.current_rps, 1),
            "deliveries_per_s": round((delivered - self._last_delivered) / dt, 1),
            "delivered": delivered,
            "lost": self.sink.totals.get("lost_dropped", 0) + self.sink.totals.get("lost_silent", 0),
            "duplicates": self.sink.totals.get("duplicate", 0),
        }
        self._last_delivered, self._last_t = delivered, now
        self.sink.write_progress(progress)

    def on_test_start(self, environment, **_kw) -> None:
        if self.is_master and self._greenlet is None:
            self._greenlet = gevent.spawn(self._progress_loop)

    def _progress_loop(self) -> None:
        while True:
            gevent.sleep(FLUSH_INTERVAL_S)
            self.write_progress()

    def on_test_stop(self, environment, **_kw) -> None:
        # A worker ships its last partial interval now: the message travels ahead of the
        # worker's "stopped" notice, so the master has it before the run ends.
        if not self.is_master:
            self.flush()

    def on_quitting(self, environment, **_kw) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
        if not self.is_master:
            self.flush()
        if self.sink is not None:
            self.write_progress()
            self.sink.close()
