"""Headline figures and time series of one run, computed from the lossless data.

Nothing here reads Locust's rounded percentiles: latencies come from the
HdrHistogram interval log, counts from counters.jsonl, reuse from nginx's access
log and the backends' /stats.  Every figure carries its unit.

    run = load_run(path)
    fig = compute(run)              # Figures: summary dict + DataFrames for the charts
    fig.summary["metrics"]["delivery_latency_p99"]   # {"value": 4.1, "unit": "ms", ...}
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from hdrh.histogram import HdrHistogram

from analysis import catalog
from analysis.cost import (
    cost_figures,
    default_warmup,
    measured_window,
    relative_cost,
    window_cpu,
    with_workers,
)
from analysis.faults import backend_stalls, epoch_loss, per_fault, redis_stalls
from analysis.hdr import new_histogram, percentiles_us, summary_ms
from analysis.limits import (
    NGINX_ERRORS_FILE,
    diagnose,
    failing_line,
    failure_table,
    http_failures,
    read_jsonl,
)
from analysis.load import RunData

# History of summary.json's schema_version:
#   1: first version.
SUMMARY_SCHEMA_VERSION = 1
MAX_TIME_BINS = 120
WINDOW_S = 10.0  # windows whose percentiles feed significance tests across intervals
POLL_PREFIXES = ("HTTP GET /channels/[name]", "HTTP GET /tasks/[id]")
CHARTED_OVER_TIME = {"deliveries", "requests", "tasks", "poll_timeouts"}
SPECTRUM_PERCENTILES = [100 * (1 - 10 ** (-k / 20)) for k in range(0, 101)]  # 0 .. 99.999


def metric_groups(metrics, accounting: dict | None = None) -> dict[str, list[str]]:
    """Which HDR metrics make up each latency family.  ``accounting`` (run.json's): the
    protocol's own poll rows (``poll_rows``: a poll, a poll that ended empty), held polls
    and not plain requests whatever the protocol calls them."""
    metrics = [str(m) for m in metrics]
    http = [m for m in metrics if m.startswith("HTTP ")]
    rows = (accounting or {}).get("poll_rows") or []
    held, empty = (rows + [None, None])[:2]

    def row(m: str) -> str:
        return m.split(" ", 2)[2] if m.count(" ") >= 2 else ""

    def timeout(m: str) -> bool:
        return "(204" in m or (empty is not None and row(m) == empty)

    def poll(m: str) -> bool:
        return m.startswith(POLL_PREFIXES) or timeout(m) or (held is not None
                                                             and row(m) == held)
    return {
        "requests": [m for m in http if not poll(m)],
        "poll_holds": [m for m in http if poll(m) and not timeout(m)],
        "poll_timeouts": [m for m in http if timeout(m)],
        "deliveries": [m for m in metrics if m == "DELIVERY"],
        "tasks": [m for m in metrics if m == "TASK"],
        "task_overhead": [m for m in metrics if m == "TASK_OVERHEAD"],
        "repoll_gap": [m for m in metrics if m == "REPOLL_GAP"],
        "publish_lag": [m for m in metrics if m == "PUBLISH_LAG"],
        "loadgen_gc": [m for m in metrics if m == "GC_PAUSE"],
    }


@dataclass
class Family:
    """One latency family: whole-run histogram, per-bin percentiles, per-window percentiles."""
    total: HdrHistogram
    series: pd.DataFrame      # t (s from start), count, p50, p95, p99, max (ms)
    windows: pd.DataFrame     # same columns per WINDOW_S window (for significance tests)


@dataclass
class Figures:
    run: RunData
    label: str
    warmup_s: float
    bin_s: float
    families: dict[str, Family]
    summary: dict


def _percentile_rows(hists: dict[int, HdrHistogram], width: float) -> pd.DataFrame:
    rows = []
    for b in sorted(hists):
        h = hists[b]
        n = h.get_total_count()
        if not n:
            continue
        p50, p95, p99 = percentiles_us(h, [50, 95, 99]) / 1000
        rows.append((b * width, n, p50, p95, p99, h.get_max_value() / 1000))
    return pd.DataFrame(rows, columns=["t", "count", "p50", "p95", "p99", "max"])


def family(log: pd.DataFrame, metrics: list[str], start: float, warmup_s: float,
           bin_s: float, series: bool = True) -> Family:
    """Decode each interval once; fold it into its time bin, its window and (after warm-up) the
    total.  ``series=False``: the total only (families that are not charted over time)."""
    rows = log[log["metric"].isin(metrics)]
    bins: dict[int, HdrHistogram] = {}
    windows: dict[int, HdrHistogram] = {}
    total = new_histogram()
    # an interval counts as after the warm-up when most of it is
    rel = (rows["t0"].to_numpy(dtype=float) + rows["t1"].to_numpy(dtype=float)) / 2 - start
    for t, encoded in zip(rel, rows["hist"], strict=True):
        if not series:
            if t >= warmup_s:
                total.decode_and_add(encoded)
            continue
        interval = HdrHistogram.decode(encoded)
        b = int(t // bin_s)
        if b not in bins:
            bins[b] = new_histogram()
        bins[b].add(interval)
        if t >= warmup_s:
            total.add(interval)
            w = int((t - warmup_s) // WINDOW_S)
            if w not in windows:
                windows[w] = new_histogram()
            windows[w].add(interval)
    return Family(total, _percentile_rows(bins, bin_s), _percentile_rows(windows, WINDOW_S))


def spectrum(hist: HdrHistogram) -> pd.DataFrame:
    """Latency at percentiles 0 .. 99.999 (the HdrHistogram percentile-spectrum plot)."""
    if not hist.get_total_count():
        return pd.DataFrame(columns=["percentile", "latency_ms"])
    vals = percentiles_us(hist, SPECTRUM_PERCENTILES) / 1000
    return pd.DataFrame({"percentile": SPECTRUM_PERCENTILES, "latency_ms": vals})


def run_label(info: dict) -> str:
    p, s = info["parameters"], info["stack"]
    protocol = p.get("protocol", "pollbench")
    if s.get("external"):  # a service pollbench did not start
        return (f"{p['scenario']}, {protocol} at {s['url']} (not started by pollbench), "
                f"{p['users']} users, {p['connection']}")
    where = f"{s['backends']} backends, loop {s['loop']}" if s["backends"] else \
        f"nginx alone ({protocol})"
    label = f"{p['scenario']}, profile {s['profile']}, {where}, {p['users']} users, " \
        f"{p['connection']}"
    if p.get("cpus_loadgen") or s.get("cpus"):
        cpus = [",".join(map(str, c)) if c else "any" for c in (p.get("cpus_loadgen"), s.get("cpus"))]
        label += f", CPUs load generator {cpus[0]} / stack {cpus[1]}"
    return label


STACK_COMPONENTS = ("stack", "nginx", "backends", "redis")
BACKEND_FIGURES = ("cpu_percent_backends", "cpu_percent_backend_busiest",
                   "cpu_percent_backend_quietest", "cpu_per_kdelivery_backends",
                   "cpu_per_krequest_backends", "requests_per_connection_upstream",
                   "cpu_relative_backends")


def not_measured(info: dict) -> dict[str, str]:
    """The figures this run's target cannot give -> why (a figure it cannot give reads "not
    measured", never 0): the stack's own of a service pollbench did not start, the
    backends' of a stack without backends (nginx alone), the epochs' of a protocol
    without them."""
    stack, params = info.get("stack") or {}, info.get("parameters") or {}
    out: dict[str, str] = {}
    if stack.get("external"):
        why = stack.get("not_measured") or "a service pollbench did not start"
        for comp in STACK_COMPONENTS:
            for prefix in ("cpu_percent_", "cpu_seconds_", "cpu_per_kdelivery_",
                           "cpu_per_krequest_"):
                out[prefix + comp] = why
        for name in BACKEND_FIGURES:
            out[name] = why
    elif stack.get("backends") == 0:
        for name in BACKEND_FIGURES:
            out[name] = "no backends: nginx itself is the target"
    elif stack.get("backend_command"):
        # only the reference target answers /stats (its held polls, read once a second)
        out["backend_stalls"] = ("your backends (a command of yours) serve no /stats of "
                                 "pollbench's reference target to watch for stalls")
    gives = (info.get("accounting") or {}).get("gives")
    if gives is not None and "epochs" not in gives:
        protocol = params.get("protocol", "this")
        for name in ("lost_epoch_messages", "epoch_changes"):
            out[name] = (f"the {protocol} protocol names no lifetime of a channel's state "
                         "(epoch): a restart's loss counts as lost messages")
    return out


def counter_totals(run: RunData, warmup_s: float | None = None) -> dict[str, int]:
    c = run.counters
    if c.empty:
        return {}
    if warmup_s:
        c = c[(c["t0"] + c["t1"]) / 2 - run.start >= warmup_s]
    return {str(k): int(v) for k, v in c.groupby("counter")["value"].sum().items()}


def requests_per_client_connection(access: pd.DataFrame) -> pd.Series:
    """Each logged client->nginx connection's requests ($connection -> its highest
    $connection_requests)."""
    return access.groupby("connection")["connection_requests"].max()


def client_reuse(access: pd.DataFrame) -> dict:
    """Requests per client->nginx connection, from $connection / $connection_requests."""
    if access.empty:
        return {}
    per_conn = requests_per_client_connection(access)
    return {"connections": int(per_conn.size), "mean": float(per_conn.mean()),
            "p50": float(per_conn.median()), "max": int(per_conn.max()),
            "distribution": per_conn.value_counts().sort_index()}


def stub_reuse(stub: pd.DataFrame) -> dict:
    """Requests per client->nginx connection from stub_status's counters over the run (when
    there is no access log): each sample's own GET /nginx_status, one request on a
    connection of its own, is taken out."""
    if len(stub) < 2:
        return {}
    first, last = stub.iloc[0], stub.iloc[-1]
    samples = len(stub) - 1
    conns = int(last["handled"] - first["handled"]) - samples
    reqs = int(last["requests"] - first["requests"]) - samples
    return {"connections": conns, "mean": reqs / conns} if conns > 0 else {}


def backend_reuse(backend: pd.DataFrame) -> dict:
    """Requests per nginx->backend connection, from the backends' own counters (last sample)."""
    if backend.empty:
        return {}
    last = backend.sort_values("time").groupby("backend").tail(1)
    hist: dict[int, int] = {}
    for h in last["closed_histogram"]:
        for k, v in h.items():
            hist[int(k)] = hist.get(int(k), 0) + int(v)
    conns = int(last["connections_accepted"].sum())
    reqs = int(last["requests"].sum())
    return {"connections": conns, "mean": reqs / conns if conns else math.nan,
            "distribution": pd.Series(hist, dtype="int64").sort_index()}


def measured_cpu(run: RunData, warmup_s: float) -> dict[str, float]:
    """Mean CPU (% of one core) after the warm-up of nginx, the backends together, the load
    generator and Redis (each process with its children), and of the busiest and the quietest
    backend process, from the per-second samples."""
    p = run.processes
    if p.empty:
        return {}
    end = float(run.hdr["t1"].max()) if not run.hdr.empty else run.end  # load, not teardown
    p = p[(p["time"] - run.start >= warmup_s) & (p["time"] <= end)
          & ~p["component"].str.endswith("system")]
    if p.empty:
        return {}
    group = p["component"].str.split("/", n=1).str[0].str.replace(r"^backend-\d+$", "backends",
                                                                    regex=True)
    per_second = p.assign(group=group).groupby(["group", "time"])["cpu_percent"].sum()
    out = {g: round(float(v.mean()), 2) for g, v in per_second.groupby(level=0)
           if g in ("nginx", "backends", "loadgen", "redis")}
    backends = p[p["component"].str.fullmatch(r"backend-\d+")].groupby("component")[
        "cpu_percent"].mean()
    if len(backends) > 1:  # how evenly they share the work
        out["backend_busiest"] = round(float(backends.max()), 2)
        out["backend_quietest"] = round(float(backends.min()), 2)
    return out


def cost_window_cpu(run: RunData, warmup_s: float) -> dict[str, float]:
    """CPU seconds of each component over the measured window (:mod:`analysis.cost`)."""
    c, p = run.counters, run.processes
    if c.empty or p.empty or "cpu_time_s" not in p:
        return {}
    window = measured_window(zip(c["t0"], c["t1"], strict=True), run.start, warmup_s)
    if window is None:
        return {}
    p = p.dropna(subset=["cpu_time_s"])
    cpu = window_cpu(zip(p["time"], p["component"], p["pid"], p["cpu_time_s"], strict=True),
                     window)
    if run.info.get("distributed"):  # the load hosts' workers: their own count
        counted = c[((c["t0"] + c["t1"]) / 2 - run.start >= warmup_s) & (c["counter"] == "cpu_ms")]
        cpu = with_workers(cpu, float(counted["value"].sum()) / 1000)
    return cpu


def _m(name: str, value) -> dict:
    """A summary figure: its value with the catalog's unit, direction and description."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        value = None
    unit, better, description = catalog.describe(name)
    return {"value": value, "unit": unit, "better": better, "description": description}


def compute(run: RunData, warmup_s: float | None = None) -> Figures:
    info = run.info
    warmup = default_warmup(info) if warmup_s is None else warmup_s
    duration = max(run.end - run.start, 1e-9)
    span = duration
    if not run.hdr.empty:
        span = max(float(run.hdr["t1"].max()) - run.start, 1.0)
    bin_s = max(1.0, math.ceil(span / MAX_TIME_BINS))
    groups = metric_groups(run.hdr["metric"].unique() if not run.hdr.empty else [],
                           info.get("accounting"))
    families = {name: family(run.hdr, metrics, run.start, warmup, bin_s,
                             series=name in CHARTED_OVER_TIME)
                for name, metrics in groups.items()}
    totals = counter_totals(run, warmup)
    all_totals = counter_totals(run)
    measured_s = max(duration - warmup, 1e-9)
    if not run.hdr.empty:
        measured_s = max(float(run.hdr["t1"].max()) - run.start - warmup, 1e-9)

    requests = sum(f.total.get_total_count() for k, f in families.items()
                   if k in ("requests", "poll_holds", "poll_timeouts"))
    errors = {k[len("error:"):]: v for k, v in totals.items() if k.startswith("error:")}
    n_errors = sum(errors.values())
    creuse, breuse = client_reuse(run.access), backend_reuse(run.backend_stats)
    if not creuse and run.access.empty and \
            (info["stack"].get("nginx") or {}).get("access_log") == "off":
        creuse = stub_reuse(run.stub_status)
    if not creuse and info["stack"].get("external") and all_totals.get("connects"):
        # a service pollbench did not start: the load generator's own count of its requests
        # and the TCP connections it opened for them
        creuse = {"mean": all_totals.get("requests", 0) / all_totals["connects"]}

    fam = {k: summary_ms(f.total) for k, f in families.items()}
    metrics = {}
    for fam_name, prefix in (("deliveries", "delivery_latency"), ("requests", "request_latency"),
                             ("tasks", "task_turnaround"), ("task_overhead", "task_overhead"),
                             ("repoll_gap", "repoll_gap"), ("publish_lag", "publish_lag")):
        s = fam[fam_name]
        if s["count"]:
            for q in catalog.QUANTILES:
                metrics[f"{prefix}_{q}"] = _m(f"{prefix}_{q}", s[q])
            metrics[f"{prefix}_count"] = _m(f"{prefix}_count", s["count"])
    metrics["throughput_requests"] = _m("throughput_requests", requests / measured_s)
    if "requests" in totals:  # counted as each request is sent (older runs lack it)
        metrics["throughput_attempted"] = _m("throughput_attempted",
                                             totals["requests"] / measured_s)
    metrics["throughput_deliveries"] = _m("throughput_deliveries",
                                          totals.get("delivered", 0) / measured_s)
    metrics["error_rate"] = _m("error_rate", n_errors / (requests + n_errors)
                               if requests + n_errors else 0.0)
    metrics["errors"] = _m("errors", n_errors)
    lost_epoch, lost_unknown = epoch_loss(run.events)
    lost = all_totals.get("lost_dropped", 0) + all_totals.get("lost_silent", 0) + lost_epoch
    metrics["lost_messages"] = _m("lost_messages", lost)
    metrics["lost_epoch_messages"] = _m("lost_epoch_messages", lost_epoch)
    metrics["duplicate_messages"] = _m("duplicate_messages", all_totals.get("duplicate", 0))
    metrics["epoch_changes"] = _m("epoch_changes", all_totals.get("epoch_changes", 0))
    metrics["retries"] = _m("retries", all_totals.get("retries", 0))
    metrics["retry_wait_s"] = _m("retry_wait_s", all_totals.get("retry_wait_ms", 0) / 1000)
    if creuse:
        metrics["requests_per_connection_client"] = _m("requests_per_connection_client",
                                                       creuse["mean"])
    if breuse:
        metrics["requests_per_connection_upstream"] = _m("requests_per_connection_upstream",
                                                         breuse["mean"])
    for comp, share in measured_cpu(run, warmup).items():
        metrics[f"cpu_percent_{comp}"] = _m(f"cpu_percent_{comp}", share)
    cpu = info.get("cpu", {})
    for comp, secs in sorted(cpu.get("cpu_seconds", {}).items()):
        metrics[f"cpu_seconds_{comp}"] = _m(f"cpu_seconds_{comp}", secs)
    window_cpu_s = cost_window_cpu(run, warmup)
    for name, value in sorted(cost_figures(window_cpu_s, totals.get("delivered", 0),
                                           totals.get("requests", requests)).items()):
        metrics[name] = _m(name, value)
    # the pipeline on one machine only: across hosts the yardstick ran elsewhere
    relative = None if info.get("distributed") else relative_cost(window_cpu_s)
    if relative is not None:
        metrics["cpu_relative_backends"] = _m("cpu_relative_backends", relative)

    windows = {}
    for fam_name, prefix in (("deliveries", "delivery_latency"), ("requests", "request_latency"),
                             ("tasks", "task_turnaround")):
        w = families[fam_name].windows
        if not w.empty:
            for q in ("p50", "p95", "p99"):
                windows[f"{prefix}_{q}"] = [round(float(x), 4) for x in w[q]]

    unmeasured = not_measured(info)
    for name in unmeasured:
        metrics.pop(name, None)
    warnings = list(info.get("warnings", []))
    if lost_unknown:
        warnings.append(f"{lost_unknown} epoch changes with no publisher report of the old "
                        "epoch's end: their loss is not counted in lost_messages")
    stalls = backend_stalls(run)
    for s in stalls:
        warnings.append(f"backend {s['backend']} did not answer /stats for {s['lasted_s']:g} s "
                        f"(from {s['from_s']:g} s): stopped, overloaded or down; delivery "
                        "latency may look normal while polls pile up")
    shared_stalls = redis_stalls(run)
    for s in shared_stalls:
        warnings.append(f"Redis did not answer for {s['lasted_s']:g} s (from {s['from_s']:g} s): "
                        "stopped, overloaded or down; requests needing the shared state "
                        "waited, then got 503")
    # what ran out, and why requests failed: run.json's (older runs: worked out here)
    limits = info.get("limits") or diagnose(run.path, info)
    failures = info.get("failures")
    if failures is None:
        failures = failure_table(read_jsonl(run.path / catalog.RUN_FILES["counters"]),
                                 read_jsonl(run.path / NGINX_ERRORS_FILE))
    attempted = all_totals.get("requests", 0)
    failed_share = http_failures(failures) / attempted if attempted else 0.0
    summary = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "run": str(run.path), "label": run_label(info),
        "status": info.get("status"), "complete": run.complete,
        "config": {"parameters": info["parameters"],
                   "stack": {k: v for k, v in info["stack"].items() if k != "backend_ports"}},
        "warmup_s": warmup, "measured_s": round(measured_s, 3),
        # the CPU each component spent in the measured window (the cost figures' numerator)
        "window_cpu_s": {k: round(v, 6) for k, v in sorted(window_cpu_s.items())},
        # what cpu_relative_backends is measured against (None: not recorded; older runs)
        "yardstick": info.get("yardstick"),
        "loadgen_saturated": bool(cpu.get("loadgen_saturated", False)),
        "machine_saturated": bool(cpu.get("machine_saturated", False)),
        "warnings": warnings,
        "faults": per_fault(run), "backend_stalls": stalls, "redis_stalls": shared_stalls,
        "metrics": metrics,
        # figures this target cannot give, with the reason: "not measured", never 0
        "not_measured": unmeasured,
        # epoch changes whose loss nobody can count (not in lost_messages, never read as 0)
        "lost_unknown": lost_unknown,
        "errors_by_cause": errors,
        "failures": failures,
        "limits": limits,
        # the summary's last line when more than 1 % of the requests failed
        "failing": failing_line(failed_share, limits.get("first")),
        "windows": {"width_s": WINDOW_S, "series": windows},
        "notes": list(run.notes),
    }
    return Figures(run, run_label(info), warmup, bin_s, families, summary)


def interval_rate(t0, t1, counts, start: float, bin_s: float) -> pd.Series:
    """Events per second in each time bin, each interval's count spread over the bins it
    overlaps (intervals of ~1 s jitter across 1-s bins; counting by start would double up)."""
    a = np.asarray(t0, dtype=float) - start
    b = np.maximum(np.asarray(t1, dtype=float) - start, a + 1e-6)
    c = np.asarray(counts, dtype=float)
    if a.size == 0:
        return pd.Series(dtype=float)
    first = np.floor(a / bin_s).astype(int)
    span = int(np.ceil((b - a).max() / bin_s)) + 1
    offset = min(int(first.min()), 0)
    totals = np.zeros(int(first.max()) + span + 1 - offset)
    for k in range(span):
        i = first + k
        overlap = np.minimum(b, (i + 1) * bin_s) - np.maximum(a, i * bin_s)
        share = np.where(overlap > 0, overlap / (b - a), 0.0)
        np.add.at(totals, i - offset, c * share)
    index = (np.arange(totals.size) + offset) * bin_s
    last = int(np.ceil(b.max() / bin_s)) - offset
    return pd.Series(totals[:last] / bin_s, index=index[:last])
