"""The facts every layer agrees on, defined once: exit codes, the run folder's files, and the
metrics (unit, which way is better, what each means).

Standard library only, so that every package may import it: ``loadtests`` (which
writes the metrics files), ``pollbench`` (which writes the rest of the run folder
and turns outcomes into exit codes) and ``analysis`` (which reads them).

    better("delivery_latency_p99")       # "lower"
    unit("throughput_deliveries")        # "messages/s"
    RUN_FILES["latency_hdr"]             # "metrics/latency.hdr.jsonl"
"""

from __future__ import annotations

from dataclasses import dataclass

# -- exit codes (pollbench's CLI, and the verdicts of compare / check) ---------------------
EXIT_OK = 0               # success; no regression
EXIT_REGRESSION = 1       # a regression, or a failed absolute gate
EXIT_BROKEN = 2           # bad input, or a void / undecidable measurement
EXIT_RUN_FAILED = 3       # a run started but could not complete
EXIT_INTERRUPTED = 130    # Ctrl-C or SIGTERM

# -- the history's step detectors (analysis.trends; ``pollbench history --detector``) ------
TREND_DETECTORS = ("pelt", "edivisive")

# -- the run folder ---------------------------------------------------------------------------
# History of run.json's schema_version:
#   1 (pollbench 0.1): first version.
RUN_SCHEMA_VERSION = 1
SUPPORTED_RUN_SCHEMA_VERSIONS = (1,)

# key (as run.json's "files" lists them) -> path inside the run folder
RUN_FILES = {
    "nginx_conf": "nginx/nginx.conf", "nginx_access_log": "nginx/logs/access.jsonl",
    "nginx_error_log": "nginx/logs/error.log", "locust_log": "logs/locust.log",
    "locust_stats": "locust/locust_stats.csv", "locust_history": "locust/locust_stats_history.csv",
    "locust_failures": "locust/locust_failures.csv", "locust_html": "locust/report.html",
    "locust_json": "locust/stats.json", "latency_hdr": "metrics/latency.hdr.jsonl",
    "counters": "metrics/counters.jsonl", "processes": "samples/processes.csv",
    "stub_status": "samples/stub_status.csv", "backend_stats": "samples/backend_stats.jsonl",
    "events": "metrics/events.jsonl",
}
METRICS_DIR = "metrics"          # what the load generator writes (``--pb-out``)
PROGRESS_FILE = "progress.json"  # in METRICS_DIR, rewritten every second during a run
# Several hosts: the lines a Locust worker logs (loadtests.metrics) that pollbench worker
# watches for in its output
WORKER_CONNECTED_MARK = "pollbench worker connected to the master"
WORKER_REFUSED_MARK = "refused by the master:"
LIVE_FILE = "samples/live.json"  # the latest target-side sample (web UI sessions only)
# Redis' INFO every second (runs with --state redis only: not in RUN_FILES, whose files every
# complete run has)
REDIS_INFO_FILE = "samples/redis_info.jsonl"
UI_TESTS_DIR = "tests"           # a web UI session's tests, one run folder each
UI_TEST_FILE = "test.json"       # in a test's folder: what the load generator knows of it

# -- metrics ----------------------------------------------------------------------------------
LOWER, HIGHER = "lower", "higher"
QUANTILES = ("p50", "p95", "p99", "p99_9", "max", "mean")
# latency family prefix -> what is measured (each has <prefix>_<quantile> in ms, and _count)
LATENCY_FAMILIES = {
    "delivery_latency": "publish -> receipt",
    "request_latency": "plain (non-poll) requests",
    "task_turnaround": "task submit -> result",
    "task_overhead": "turnaround - duration",
    "repoll_gap": "response -> next poll",
    "publish_lag": "publish lateness vs schedule",
}
# every other metric: name -> (unit, better, description)
METRICS: dict[str, tuple[str, str, str]] = {
    "throughput_requests": ("requests/s", HIGHER, "HTTP requests completed per second"),
    "throughput_attempted": ("requests/s", LOWER,
                             "HTTP requests attempted per second, failed ones included (far "
                             "above the completed rate: a retry storm)"),
    "throughput_deliveries": ("messages/s", HIGHER, "messages delivered per second"),
    "error_rate": ("fraction", LOWER, "failed requests / all requests"),
    "errors": ("count", LOWER, "failed requests"),
    "lost_messages": ("count", LOWER, "messages a subscriber never got (every kind)"),
    "lost_epoch_messages": ("count", LOWER,
                            "published before a channel's state was lost, never delivered"),
    "duplicate_messages": ("count", LOWER, "messages delivered twice"),
    "epoch_changes": ("count", LOWER, "channel state lost (backend restart)"),
    "retries": ("count", LOWER, "requests retried after a failure, each after its back-off"),
    "retry_wait_s": ("s", LOWER, "time clients spent backing off, all together"),
    "requests_per_connection_client": ("requests/connection", HIGHER, "client -> nginx reuse"),
    "requests_per_connection_upstream": ("requests/connection", HIGHER,
                                         "nginx -> backend reuse"),
    # the backends' cost with the machine's speed divided out (analysis.cost.relative_cost)
    "cpu_relative_backends": ("cpu-s/cpu-s", LOWER,
                              "CPU of the backends per CPU-second of nginx and the load "
                              "generator in the same window, after the warm-up"),
}
# per-component metrics: prefix -> (unit, better, description with {} for the component)
COMPONENT_METRICS = {
    "cpu_percent_": ("% of a core", LOWER, "mean CPU of {} after the warm-up"),
    "cpu_seconds_": ("cpu-s", LOWER, "CPU time of {}"),
    # the cost of the work: CPU-s per 1,000 = CPU-ms per one, over the measured window, from
    # each process's own CPU time (steady where latency is not)
    "cpu_per_kdelivery_": ("cpu-s/1k deliveries", LOWER,
                           "CPU of {} per 1,000 deliveries, after the warm-up"),
    "cpu_per_krequest_": ("cpu-s/1k requests", LOWER,
                          "CPU of {} per 1,000 requests attempted, after the warm-up"),
}

@dataclass(frozen=True)
class Compared:
    """How a figure takes part in comparing runs."""

    label: str                  # its column / bar label in a side-by-side comparison
    verdict: bool = False       # compare and check judge it against a baseline
    series: str | None = None   # the summary's per-window series that may stand in for
    #                             repetitions in a verdict (latency percentiles only)
    rankable: bool = False      # a sweep may rank its cells by it
    group: str = ""             # the comparison chart it is drawn in
    threshold: float | None = None  # its own verdict threshold (None: the default, 10 %)
    shown: bool = False         # compare and check print it beside the verdicts, unjudged
    yardstick: bool = False     # judged only between runs of one yardstick (run.json's)


# A cost per delivery moves less than a latency between runs of the same code (a 5 % change
# is worth catching; benchmarks/check_trials.py --kind cost): its verdicts' own threshold.
COST_THRESHOLD = 0.03

# Every figure a comparison shows, in its order: the one table that the side-by-side report
# (compare, sweep), the verdicts (compare, check) and a sweep's rank_by read.
COMPARED_FIGURES: dict[str, Compared] = {
    "delivery_latency_p50": Compared("delivery p50", True, "delivery_latency_p50", True,
                                     "deliveries"),
    "delivery_latency_p95": Compared("delivery p95", True, "delivery_latency_p95", True,
                                     "deliveries"),
    "delivery_latency_p99": Compared("delivery p99", True, "delivery_latency_p99", True,
                                     "deliveries"),
    "request_latency_p50": Compared("request p50", False, None, True, "requests"),
    "request_latency_p95": Compared("request p95", True, "request_latency_p95", True,
                                    "requests"),
    "request_latency_p99": Compared("request p99", True, "request_latency_p99", True,
                                    "requests"),
    "task_turnaround_p99": Compared("task turnaround p99", True, "task_turnaround_p99", True),
    "throughput_requests": Compared("requests/s", True, None, True, "throughput"),
    "throughput_deliveries": Compared("deliveries/s", True, None, True, "throughput"),
    "error_rate": Compared("error rate", True, None, True, "throughput"),
    "requests_per_connection_client": Compared("requests/conn client->nginx", True, None, True,
                                               "reuse"),
    "requests_per_connection_upstream": Compared("requests/conn nginx->backend", True, None,
                                                 True, "reuse"),
    "cpu_percent_nginx": Compared("CPU nginx %", group="cpu"),
    "cpu_percent_backends": Compared("CPU backends %", group="cpu"),
    "cpu_percent_loadgen": Compared("CPU load generator %", group="cpu"),
    # how evenly the backends share the work (routing by key piles a hot channel on one)
    "cpu_percent_backend_busiest": Compared("CPU busiest backend %", group="cpu"),
    "cpu_percent_backend_quietest": Compared("CPU quietest backend %", group="cpu"),
    "cpu_percent_redis": Compared("CPU Redis %", group="cpu"),
    # the cost of a delivery / a request: the stack's judged (threshold COST_THRESHOLD), the
    # load generator's shown, never judged (it is the instrument); each rankable
    **{f"cpu_per_k{unit}_{comp}": Compared(
        f"CPU {label} per 1k {'deliveries' if unit == 'delivery' else 'requests'}", verdict=unit == "delivery" and comp != "loadgen",
        rankable=True, group=f"cost_{unit}", shown=unit == "delivery" and comp == "loadgen",
        threshold=COST_THRESHOLD if unit == "delivery" and comp != "loadgen" else None)
       for unit in ("delivery", "request")
       for comp, label in (("stack", "stack"), ("backends", "backends"), ("nginx", "nginx"),
                           ("redis", "Redis"), ("loadgen", "load generator"))},
    # the backends' cost per CPU-second of nginx and the load generator: 2-3x steadier than
    # their cost per delivery on a shared VM, but a cost only while nginx and the load
    # generator do the same work the same way on both sides (never ranked: a sweep of nginx
    # settings changes the yardstick itself)
    "cpu_relative_backends": Compared("CPU backends / (nginx + load generator)", verdict=True,
                                      threshold=COST_THRESHOLD, yardstick=True),
}
# The figures a verdict compares -> the window series usable as samples (or None).
COMPARED: dict[str, str | None] = {
    m: c.series for m, c in COMPARED_FIGURES.items() if c.verdict}
# The figures compare and check show beside the verdicts without judging them (the instrument's
# own cost: a change there says nothing of the target).
SHOWN = tuple(m for m, c in COMPARED_FIGURES.items() if c.shown)
# The compared figures with a threshold of their own.
THRESHOLDS: dict[str, float] = {
    m: c.threshold for m, c in COMPARED_FIGURES.items() if c.threshold is not None}
# The compared figures judged only between runs that share a yardstick.
NEEDS_YARDSTICK = tuple(m for m, c in COMPARED_FIGURES.items() if c.yardstick)
# Absolute gates: any non-zero value fails, whatever the baseline.
GATES = ("lost_messages", "duplicate_messages")
# The figures a sweep may rank its cells by.
RANKABLE = tuple(m for m, c in COMPARED_FIGURES.items() if c.rankable)


def compared_in(group: str) -> list[tuple[str, str]]:
    """(metric, label) of the compared figures drawn in one comparison chart, in order."""
    return [(m, c.label) for m, c in COMPARED_FIGURES.items() if c.group == group]


def describe(metric: str) -> tuple[str, str, str]:
    """(unit, better, description) of a metric; KeyError for a name this catalog lacks."""
    if metric in METRICS:
        return METRICS[metric]
    for prefix, what in LATENCY_FAMILIES.items():
        q = metric[len(prefix) + 1:] if metric.startswith(prefix + "_") else None
        if q in QUANTILES:
            return "ms", LOWER, f"{what}, {q}"
        if q == "count":
            return "count", HIGHER, f"{what}, samples"
    for prefix, (unit_, better_, text) in COMPONENT_METRICS.items():
        if metric.startswith(prefix) and len(metric) > len(prefix):
            return unit_, better_, text.format(metric[len(prefix):])
    raise KeyError(f"unknown metric {metric!r}")


def better(metric: str) -> str:
    """"lower" or "higher": which way this metric improves."""
    return describe(metric)[1]


def unit(metric: str) -> str:
    return describe(metric)[0]
