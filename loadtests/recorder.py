"""What one Locust process records, and where a run's intervals are written.

* :class:`Recorder`: interval HdrHistograms (1 us .. 1 h, 3 significant digits) and counters
  of one process, cut every second; nothing per sample is kept, and the histograms are
  emptied and reused, not dropped (memory stays flat: benchmarks/recorder_memory.py).
* :class:`LocustRows`: successes batched into Locust's own stats rows.
* :class:`LocustTrim`: keeps Locust's own bookkeeping bounded over a soak.
* :class:`Sink`: a local runner's or a master's files in ``--pb-out`` (see
  :mod:`loadtests.metrics` for their format), with the run's totals and exact epoch loss.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import time
from pathlib import Path

from hdrh.histogram import HdrHistogram

from analysis.atomic import write_atomic
from analysis.catalog import PROGRESS_FILE, RUN_FILES
from analysis.epochs import epoch_loss
from analysis.hdr_format import (
    HDR_HIGHEST_US,
    HDR_LOWEST_US,
    clear_histogram,
    encode_histogram,
    new_histogram,
)
from analysis.limits import transport_cause

# the files inside --pb-out (the run folder's metrics/), named once in analysis.catalog
HDR_NAME = Path(RUN_FILES["latency_hdr"]).name
COUNTERS_NAME = Path(RUN_FILES["counters"]).name
EVENTS_NAME = Path(RUN_FILES["events"]).name

# Metric names (also Locust request types for the custom rows in the UI and CSVs).
DELIVERY = "DELIVERY"          # publish (server ts) -> message received by a subscriber
TASK = "TASK"                  # task submit sent -> result received
TASK_OVERHEAD = "TASK_OVERHEAD"  # turnaround minus the task's own duration
REPOLL_GAP = "REPOLL_GAP"      # response received -> next poll sent, same subscriber
PUBLISH_LAG = "PUBLISH_LAG"    # how late a publish left against its fixed schedule
GC_PAUSE = "GC_PAUSE"          # load generator's own garbage-collection pauses


# hdrh's record_value finds a value's counter through three method calls and a bin() string
# (~3 us); every delivery records three values.  The same index, inline: a value's bucket
# is its bit length past the sub-bucket range, its sub-bucket the value shifted by it.
_LAYOUT = new_histogram()
_UNIT_MAG = _LAYOUT.unit_magnitude
_HALF_MAG = _LAYOUT.sub_bucket_half_count_magnitude
_HALF_COUNT = _LAYOUT.sub_bucket_half_count
_MASK = _LAYOUT.sub_bucket_mask
_SHIFT = _UNIT_MAG + _HALF_MAG + 1
del _LAYOUT


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
        """Record ``value_ms`` (as whole microseconds, clamped to the layout's range) exactly
        as ``HdrHistogram.record_value`` does: its counter, the total, the lowest and highest
        value (the encoding ends at the highest)."""
        hist = self.hists.get(metric)
        if hist is None:
            hist = self.hists[metric] = new_histogram()
        us = int(value_ms * 1000)
        if us < HDR_LOWEST_US:
            us = HDR_LOWEST_US
        elif us > HDR_HIGHEST_US:
            us = HDR_HIGHEST_US
        bucket = (us | _MASK).bit_length() - _SHIFT
        hist.counts[((bucket + 1) << _HALF_MAG) + (us >> (bucket + _UNIT_MAG)) - _HALF_COUNT] += 1
        hist.total_count += 1
        if us > hist.max_value:
            hist.max_value = us
        if us < hist.min_value:
            hist.min_value = us

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def cut(self) -> dict:
        """The interval so far, encoded; resets the interval."""
        now = time.time()
        payload = {
            "t0": self.interval_start, "t1": now,
            "hists": {m: (h.get_total_count(), encode_histogram(h).decode())
                      for m, h in self.hists.items() if h.get_total_count()},
            "counters": self.counters, "clock": self.clock, "events": self.events,
        }
        for k, v in self.counters.items():
            self.totals[k] = self.totals.get(k, 0) + v
        for h in self.hists.values():  # reused, not dropped: no garbage per interval
            if h.get_total_count():
                clear_histogram(h)
        self.counters = {}
        self.events = []
        self.interval_start = now
        return payload


class LocustRows:
    """Successful requests and deliveries for Locust's stats, batched.

    Firing ``events.request`` per request runs every listener and updates two of
    Locust's StatsEntry objects each time; even one ``StatsEntry.log`` per success (the
    clock, the per-second count, min, max, the rounded bucket) was a tenth of the client's
    CPU per long-poll answer.  Here a success appends its time to its row's batch, and
    :meth:`merge`, called 4 times a second, turns each batch into one StatsEntry (Locust's
    own class, buckets rounded by Locust's ``bucket_response_time``) and extends the
    environment's row and total with it: the web UI, the CSVs and the worker reports show
    the same rows, at most a quarter of a second later.  A batch's requests count in
    Locust's per-second counts (its current RPS) in the second of the merge.  Nothing is
    kept past a merge.
    """

    def __init__(self, stats) -> None:
        self.stats = stats
        self.pending: dict[tuple[str, str], list] = {}  # (name, method) -> [times, bytes]

    def log(self, method: str, name: str, ms: float, length: int = 0) -> None:
        batch = self.pending.get((name, method))
        if batch is None:
            batch = self.pending[(name, method)] = [[], 0]
        batch[0].append(ms)
        batch[1] += length

    def merge(self) -> None:
        if not self.pending:
            return
        from collections import Counter

        from locust import stats as locust_stats

        pending, self.pending = self.pending, {}
        now = time.time()
        for (name, method), (times, length) in pending.items():
            entry = locust_stats.StatsEntry(self.stats, name, method)
            entry.num_requests = len(times)
            entry.total_response_time = sum(times)
            entry.min_response_time = min(times)
            entry.max_response_time = max(times)
            entry.total_content_length = length
            # (looked up each time: Locust lets a locustfile replace the bucketing)
            entry.response_times = Counter(map(locust_stats.bucket_response_time, times))
            entry.num_reqs_per_sec = {int(now): len(times)}
            entry.last_request_timestamp = now
            self.stats.get(name, method).extend(entry)
            self.stats.total.extend(entry)


class LocustTrim:
    """Locust's stats keep, for the whole run, a count per second in every row
    (``StatsEntry.num_reqs_per_sec`` / ``num_fail_per_sec``, ~0.4 MiB an hour a row) and
    a history entry every 5 s for the HTML report's charts (~0.9 MiB an hour).  Locust
    reads only the last 10-20 s of the per-second counts (current RPS); the totals and the
    rows' response times are kept apart.  :meth:`trim`, called every ~30 s in every
    Locust process, drops per-second counts older than :attr:`KEEP_S` and thins the
    history older than its last :attr:`HISTORY_FULL` entries to one in
    :attr:`HISTORY_EVERY` (the last hour at 5 s, earlier hours at one a minute): memory
    then stays flat for a day, and the report still charts the whole run.
    """

    KEEP_S = 60
    HISTORY_FULL = 720
    HISTORY_EVERY = 12

    def __init__(self, stats) -> None:
        self.stats = stats
        self.history: list | None = None  # the list thinned so far (Locust replaces it)
        self.thinned = 0  # history[:thinned] is thinned already

    def trim(self, now: float) -> None:
        cutoff = int(now) - self.KEEP_S
        for entry in [self.stats.total, *self.stats.entries.values()]:
            for counts in (entry.num_reqs_per_sec, entry.num_fail_per_sec):
                old = [t for t in counts if t < cutoff]
                for t in old:
                    del counts[t]
        history: list = self.stats.history
        if history is not self.history or len(history) < self.thinned:
            self.history, self.thinned = history, 0  # a new test: Locust began a new list
        end = len(history) - self.HISTORY_FULL
        if end - self.thinned >= self.HISTORY_EVERY * 10:  # thin in batches, not each call
            kept = history[self.thinned:end:self.HISTORY_EVERY]
            history[self.thinned:end] = kept  # in place: Locust's report reads this list
            self.thinned += len(kept)


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
        # held for the record's own writes when the load has taken every other descriptor
        self._reserve = _reserve_descriptors(RESERVED_DESCRIPTORS)

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
        """progress.json, atomically: a new temporary file each time, so a load that has
        used every descriptor would stop it; descriptors kept in reserve are given up for
        the write and taken back after (as many as the process can get again)."""
        try:
            write_atomic(self.out / PROGRESS_FILE, json.dumps(progress), durable=False)
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE) or not self._reserve:
                raise
            while self._reserve:
                os.close(self._reserve.pop())
            write_atomic(self.out / PROGRESS_FILE, json.dumps(progress), durable=False)
            self._reserve = _reserve_descriptors(RESERVED_DESCRIPTORS)

    def close(self) -> None:
        while self._reserve:
            os.close(self._reserve.pop())
        self._hdr.close()
        self._counters.close()
        self._events.close()


RESERVED_DESCRIPTORS = 4  # progress.json's temporary file, its folder, and room to spare


def _reserve_descriptors(n: int) -> list[int]:
    """Up to ``n`` descriptors (of /dev/null) held so the record can give them up to write."""
    held = []
    for _ in range(n):
        try:
            held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break
    return held


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

    def counts(self) -> tuple[int, int]:
        """(messages lost to epoch changes, epoch changes whose loss is unknown)."""
        return epoch_loss(self.events)


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
    """A short, stable cause a person can act on, for an error count: the answer's status and
    who gave it ("HTTP 503 from backend: too many waiting polls", "HTTP 502 from nginx ..."),
    the socket error ("connection refused", "connection reset", "timed out"), or the load
    generator's own limit ("too many open files in the load generator"); the vocabulary is
    :mod:`analysis.limits`."""
    if type(exc).__name__ in ("BadAnswer", "ChannelRestarted"):
        return str(exc)
    if isinstance(exc, OSError) or type(exc).__name__ == "HttpError":
        return transport_cause(exc)
    text = str(exc)
    name = type(exc).__name__
    if "timeout" in text.lower() or "timeout" in name.lower():
        return "timed out"
    if name in ("CatchResponseError", "Exception", "LocustError"):
        return text[:60]
    return name
