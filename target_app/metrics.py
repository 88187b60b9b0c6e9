"""``GET /metrics``: the backend's counters in the Prometheus / OpenMetrics text formats.

Nothing is counted for it on the hot path that /stats does not count already, except the
time-to-answer of polls that got data (:class:`AnswerTimes`: one bisect and one list
increment per answered poll).  The official ``prometheus_client`` renders, at scrape time,
from the plain integers the handlers keep (:class:`TargetCollector`), so a scrape costs the
backend one pass over a few dozen numbers and no lock is ever taken per request.

Names follow Prometheus' conventions: a ``pollbench_target_`` prefix, units in the name
(``_seconds``), ``_total`` for counters; ``job`` and ``instance`` are the scraper's to add.
An ``Accept: application/openmetrics-text`` scrape gets OpenMetrics 1.0, any other the
classic text format 0.0.4 (``prometheus_client.exposition.choose_encoder``).
"""

from __future__ import annotations

import bisect
import gc
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import CollectorRegistry

PREFIX = "pollbench_target_"
# seconds from a poll's arrival to its answer with data (a held poll's wait included)
ANSWER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                  10.0, 30.0, 60.0, 120.0)
REQUESTS_PER_CONNECTION_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 10000)


class AnswerTimes:
    """A fixed-bucket histogram, O(log buckets) a value, exported cumulatively at scrape."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...] = ANSWER_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.count += 1

    def buckets(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((_le(bound), running))
        out.append(("+Inf", self.count))
        return out


def _le(bound: float) -> str:
    from prometheus_client.utils import floatToGoString

    return floatToGoString(bound)  # as prometheus_client writes its own buckets: "1.0"


def requests_per_connection(closed: dict[int, int]) -> tuple[list[tuple[str, int]], int, int]:
    """Cumulative buckets, sum and count of the closed connections' request counts."""
    out, total, count = [], 0, 0
    for k, n in closed.items():
        total += k * n
        count += n
    for bound in REQUESTS_PER_CONNECTION_BUCKETS:
        out.append((_le(bound), sum(n for k, n in closed.items() if k <= bound)))
    out.append(("+Inf", count))
    return out, total, count


class TargetCollector:
    """Reads the service's counters when Prometheus scrapes."""

    def __init__(self, service: Any) -> None:  # target_app.app.Service (app imports this module)
        self.service = service

    def collect(self):
        svc = self.service
        s = svc.stats
        info = InfoMetricFamily(PREFIX + "backend", "this backend process",
                                labels=["backend_index", "state"])
        info.add_metric([str(svc.config.backend_index), svc.config.state],
                        {"backend_index": str(svc.config.backend_index),
                         "state": svc.config.state})
        yield info
        requests = CounterMetricFamily(PREFIX + "http_requests", "HTTP answers by route, "
                                       "method and status", labels=["route", "method", "status"])
        for (route, method, status), n in sorted(s.responses.items()):
            requests.add_metric([route, method, str(status)], n)
        yield requests
        yield GaugeMetricFamily(PREFIX + "held_polls", "long polls held now", value=svc.waiting)
        channels = svc.state.channels.count()
        yield GaugeMetricFamily(PREFIX + "channels", "channels this process holds (shared "
                                "state: follows)", value=channels)
        for name, value, text in (
                ("messages_published", s.messages_published, "messages published here"),
                ("messages_delivered", s.messages_delivered, "messages sent in poll answers"),
                ("messages_dropped", s.messages_dropped, "messages a poll's cursor had lost "
                 "(fell out of the buffer), as the answers' dropped ranges count them"),
                ("tasks_submitted", s.tasks_submitted, "background tasks submitted here"),
                ("tasks_done", s.tasks_done, "background tasks finished here"),
                ("connections_accepted", s.connections_accepted, "connections accepted"),
                ("connections_rejected", s.connections_rejected,
                 "connections refused at max_connections"),
                ("connections_closed", s.connections_closed, "connections closed")):
            yield CounterMetricFamily(PREFIX + name, text, value=value)
        polls = CounterMetricFamily(PREFIX + "polls_answered", "long polls answered, by outcome",
                                    labels=["outcome"])
        polls.add_metric(["messages"], s.polls_answered_with_messages)
        polls.add_metric(["timeout"], s.polls_timed_out)
        yield polls
        running = svc.state.tasks.running()
        yield GaugeMetricFamily(PREFIX + "tasks_running", "tasks running here", value=running)
        yield GaugeMetricFamily(PREFIX + "connections_open", "connections open now",
                                value=len(s.open_connections))
        buckets, total, count = requests_per_connection(s.requests_per_closed_connection)
        yield HistogramMetricFamily(PREFIX + "requests_per_connection", "requests each closed "
                                    "connection carried (reuse on the nginx -> backend hop)",
                                    buckets=buckets, sum_value=total)
        t = s.answer_times
        yield HistogramMetricFamily(PREFIX + "poll_answer_seconds", "from a poll's arrival to "
                                    "its answer with data", buckets=t.buckets(),
                                    sum_value=t.total)
        collections = CounterMetricFamily(PREFIX + "gc_collections", "garbage collections",
                                          labels=["generation"])
        for gen, n in sorted(s.gc_collections.items()):
            collections.add_metric([str(gen)], n)
        yield collections
        yield CounterMetricFamily(PREFIX + "gc_pause_seconds", "time spent in garbage "
                                  "collection", value=s.gc_pause_total_ms / 1000)
        yield GaugeMetricFamily(PREFIX + "gc_pause_max_seconds", "the longest collection so far",
                                value=s.gc_pause_max_ms / 1000)
        yield GaugeMetricFamily(PREFIX + "gc_frozen_objects", "objects moved out of the "
                                "collector's view (gc.freeze)", value=gc.get_freeze_count())


def make_registry(service: Any) -> CollectorRegistry:
    """This process's registry: the target's counters and the process' own (CPU, memory,
    descriptors: prometheus_client's ProcessCollector, read from /proc at scrape)."""
    from prometheus_client import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(TargetCollector(service))
    ProcessCollector(namespace="pollbench_target", registry=registry)
    return registry


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The body and Content-Type for a scrape with this Accept header."""
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
