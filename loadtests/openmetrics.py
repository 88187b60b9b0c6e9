"""The load generator's live figures for Prometheus: ``--pb-metrics-port PORT`` serves
``http://127.0.0.1:PORT/metrics`` from the Locust process that owns the run's files (a
local runner, or the master: workers' intervals reach it as they reach the files).

What it says is the run's own accounting, not Locust's rounded rows: the counters of every
interval (deliveries, HTTP requests, failures by cause, lost messages by kind, duplicates)
and delivery latency as a Prometheus histogram whose buckets are counted from the lossless
HdrHistogram of all deliveries so far (each bucket's count exact to the HDR's 3 significant
digits; the bounds are :data:`LATENCY_BUCKETS_S`).  With the run's target-side sample
(``samples/live.json``, rewritten each second by pollbench's sampler), also what the work
costs: each component's CPU seconds as a counter (``component_cpu_seconds_total``, by
``component``: backend-N, nginx, redis, loadgen) and the cost per 1,000 deliveries of the
stack, backends, nginx, Redis and load generator so far (``cost_per_kdelivery_seconds``,
CPU seconds since the first interval over the deliveries since then: the web UI tab's
figure).  Rendered at scrape time by
``prometheus_client`` (text format 0.0.4, or OpenMetrics 1.0 on ``Accept:
application/openmetrics-text``); names follow Prometheus' conventions (``pollbench_loadgen_``,
``_seconds``, ``_total``).  Nothing is added to the per-request path: one HDR decode and add
per interval and Locust process.
"""

from __future__ import annotations

import json
from pathlib import Path

from hdrh.histogram import HdrHistogram

from analysis.hdr_format import discard_histogram, new_histogram
from loadtests.recorder import DELIVERY

PREFIX = "pollbench_loadgen_"
LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
                     10.0, 20.0, 60.0, 120.0)
LOST_KINDS = {"lost_dropped": "dropped", "lost_silent": "silent"}  # + "epoch", from events


def cumulative_buckets(hist: HdrHistogram, bounds_s=LATENCY_BUCKETS_S) -> list[tuple[str, int]]:
    """(le, count of values <= le) from an HdrHistogram of microseconds, and +Inf."""
    out, cum = [], 0
    it = iter(hist.get_recorded_iterator())
    item = next(it, None)
    for bound in bounds_s:
        limit_us = bound * 1e6
        while item is not None and item.value_iterated_to <= limit_us:
            cum += item.count_at_value_iterated_to
            item = next(it, None)
        out.append((_le(bound), cum))
    out.append(("+Inf", hist.get_total_count()))
    return out


def _le(bound: float) -> str:
    from prometheus_client.utils import floatToGoString

    return floatToGoString(bound)  # as prometheus_client writes its own buckets: "1.0"


class LoadgenMetrics:
    """The run's totals so far, fed one interval at a time (``add``)."""

    def __init__(self, epoch_lost=lambda: 0, live_path: Path | None = None) -> None:
        self.totals: dict[str, int] = {}
        self.delivery = new_histogram()
        self.epoch_lost = epoch_lost  # exact epoch loss so far (the Sink counts it)
        self.live_path = live_path  # the sampler's latest sample: CPU time per component
        # (CPU seconds per component, deliveries) when the first interval came: the cost's origin
        self.cost_base: tuple[dict[str, float], int] | None = None

    def cpu_time_s(self) -> dict[str, float] | None:
        """Each component's CPU seconds so far, as the sampler last read them (None: no
        sample yet, or no sampler)."""
        if self.live_path is None:
            return None
        try:
            cpu = json.loads(self.live_path.read_text()).get("cpu_time_s")
        except (OSError, ValueError, AttributeError):
            return None
        return cpu if isinstance(cpu, dict) and cpu else None

    def add(self, payload: dict) -> None:
        if self.cost_base is None and self.live_path is not None:
            # the first interval with a sample: CPU and deliveries count from its end
            cpu = self.cpu_time_s()
            if cpu is not None:
                self.cost_base = (cpu, self.totals.get("delivered", 0)
                                  + payload["counters"].get("delivered", 0))
        for name, n in payload["counters"].items():
            self.totals[name] = self.totals.get(name, 0) + n
        encoded = payload["hists"].get(DELIVERY)
        if encoded:
            hist = HdrHistogram.decode(encoded[1])
            self.delivery.add(hist)
            discard_histogram(hist)  # freed at once: no garbage per interval

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        t = self.totals
        yield CounterMetricFamily(PREFIX + "deliveries", "messages delivered to subscribers",
                                  value=t.get("delivered", 0))
        failures = {k: n for k, n in t.items() if k.startswith("error:")}
        requests = CounterMetricFamily(PREFIX + "http_requests", "HTTP requests answered, by "
                                       "outcome", labels=["outcome"])
        requests.add_metric(["ok"], max(t.get("requests", 0) - sum(failures.values()), 0))
        requests.add_metric(["failed"], sum(failures.values()))
        yield requests
        failed = CounterMetricFamily(PREFIX + "http_failures", "failed HTTP requests by "
                                     "request and cause", labels=["request", "cause"])
        for key, n in sorted(failures.items()):
            request, _, cause = key[len("error:"):].partition(": ")
            failed.add_metric([request, cause], n)
        yield failed
        lost = CounterMetricFamily(PREFIX + "lost_messages", "messages a subscriber never got, "
                                   "by kind", labels=["kind"])
        for counter, kind in LOST_KINDS.items():
            lost.add_metric([kind], t.get(counter, 0))
        lost.add_metric(["epoch"], self.epoch_lost())
        yield lost
        yield CounterMetricFamily(PREFIX + "duplicate_messages", "messages delivered twice",
                                  value=t.get("duplicate", 0))
        yield CounterMetricFamily(PREFIX + "published_messages", "messages published",
                                  value=t.get("published", 0))
        yield CounterMetricFamily(PREFIX + "retries", "requests retried after a failure",
                                  value=t.get("retries", 0))
        total_us = sum(v * n for v, n in _values(self.delivery))
        yield HistogramMetricFamily(PREFIX + "delivery_latency_seconds", "publish (server "
                                    "time) -> message received by a subscriber, from the "
                                    "lossless HDR data", buckets=cumulative_buckets(self.delivery),
                                    sum_value=total_us / 1e6)
        yield from self._cost()

    def _cost(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from loadtests.live import cost_groups

        cpu = self.cpu_time_s()
        if cpu is None:
            return
        family = CounterMetricFamily(PREFIX + "component_cpu_seconds", "CPU seconds of each "
                                     "process group of the run (its own CPU time, read once a "
                                     "second by the run's sampler; a restarted process starts "
                                     "again from 0)", labels=["component"])
        for component, seconds in sorted(cpu.items()):
            family.add_metric([component], seconds)
        yield family
        if self.cost_base is None:
            return
        base, delivered0 = self.cost_base
        delivered = self.totals.get("delivered", 0) - delivered0
        if delivered <= 0:
            return
        # CPU spent since the first interval (a restarted process counts from its new start)
        spent = {k: v - base.get(k, 0.0) if v >= base.get(k, 0.0) else v for k, v in cpu.items()}
        cost = GaugeMetricFamily(PREFIX + "cost_per_kdelivery_seconds", "CPU seconds per "
                                 "1,000 deliveries since the load's first interval, by what "
                                 "the run prices (stack = nginx + backends + Redis)",
                                 labels=["component"])
        for group, seconds in cost_groups(spent).items():
            cost.add_metric(["loadgen" if group == "load generator" else group],
                            seconds / delivered * 1000)
        yield cost


def _values(hist: HdrHistogram):
    for item in hist.get_recorded_iterator():
        yield item.value_iterated_to, item.count_at_value_iterated_to


def serve(metrics: LoadgenMetrics, port: int):
    """Start the endpoint on 127.0.0.1:``port`` (a gevent server in the Locust process)."""
    from gevent.pywsgi import WSGIServer
    from prometheus_client import ProcessCollector, make_wsgi_app
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    # this process' CPU seconds, memory and descriptors (workers' CPU is in run.json)
    ProcessCollector(namespace="pollbench_loadgen", registry=registry)
    server = WSGIServer(("127.0.0.1", port), make_wsgi_app(registry), log=None)
    server.start()
    return server
