"""What the work cost: the CPU each component spent per 1,000 deliveries and per 1,000
requests over a run's measured window.

The window is the span of the load generator's intervals counted after the warm-up (the
ones the latencies and the counts use).  Each process's CPU is its own cumulative CPU time
(``cpu_time_s`` in processes.csv: the kernel's schedstat, to the nanosecond), read at the
window's two edges, linear between its 1-s samples: not a sum of rounded 1-s percentages,
and a process restarted by a fault counts with both its lives.  Cost is steady where
latency is not: on a shared 2-core machine the backends' cost per delivery of the CI
scenario spreads 2-4 % between runs while its p95 spreads 7 %.

Standard library only: ``pollbench`` writes run.json's ``cost`` with it when a run ends,
and :mod:`analysis.figures` the summary's ``cpu_per_k*`` metrics.

    window = measured_window(counter_rows, start, warmup_s)      # (t0, t1)
    cpu = window_cpu(process_rows, window)      # {"backend-0": 0.21, ..., "stack": 1.02}
    cost_figures(cpu, deliveries=1500, requests=1600)   # {"cpu_per_kdelivery_stack": 0.68, ...}
    relative_cost(cpu)        # backends' CPU / (nginx's + the load generator's): 1.85

The backends' cost per delivery moves with the machine's speed of the moment: on a shared
2-core VM it spreads 11-14 % between two interleaved runs of the same code, while the
backends' CPU divided by that of nginx and the load generator in the same window (the
same work at the same moment, their per-run correlation 0.87-0.95) spreads 4-6 %.  That
ratio is a cost only while the yardstick's own code (the load generator, nginx's config)
is the same on both sides: run.json's ``yardstick`` names it (see :func:`relative_cost`).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from pathlib import Path

STACK_COMPONENTS = ("nginx", "backends", "redis")  # the whole stack: the instrument apart
# the processes whose CPU in the same window measures the machine's speed of the moment
YARDSTICK = ("nginx", "loadgen")
SAMPLE_S = 1.0  # the sampler's interval (pollbench.stack.sampler)
_BACKEND = re.compile(r"backend-\d+")
_NOT_A_COMPONENT = ("pollbench",)  # the harness's own row


def default_warmup(info: dict) -> float:
    """The run's own warm-up when the command that made it fixed one (``warmup_s`` in
    run.json: a check's or a sweep's, so that every reader ranks and stores the same
    figures), else the spawn time (users / spawn rate), at most a fifth of the run."""
    own = info.get("warmup_s")
    if isinstance(own, (int, float)) and not isinstance(own, bool) and own >= 0:
        return float(own)
    p = info["parameters"]
    spawn = p["users"] / p["spawn_rate"] if p.get("spawn_rate") else 0.0
    return round(min(spawn, 0.2 * p["duration_s"]), 3)


def measured_window(intervals: Iterable[tuple[float, float]], start: float,
                    warmup_s: float) -> tuple[float, float] | None:
    """The span of the load generator's intervals (t0, t1) counted after the warm-up: an
    interval counts when most of it is after it, as for the latencies and the counts."""
    kept = [(t0, t1) for t0, t1 in intervals if (t0 + t1) / 2 - start >= warmup_s]
    if not kept:
        return None
    return min(t0 for t0, _ in kept), max(t1 for _, t1 in kept)


def cpu_at(samples: list[tuple[float, float]], t: float) -> float:
    """A process's cumulative CPU time at ``t`` from its (time, cpu_time_s) samples in time
    order, linear between them.  Before its first sample: back along its first rate, not
    below 0 (a process started, or restarted by a fault, inside the window).  After its
    last: along its last rate for at most one sampling interval (a process that ended within
    it, killed or at the load's end), then flat."""
    if len(samples) == 1:
        return samples[0][1]
    if t <= samples[0][0]:
        (ta, ca), (tb, cb) = samples[0], samples[1]
        return max(ca - (cb - ca) / (tb - ta) * (ta - t), 0.0)
    if t >= samples[-1][0]:
        (ta, ca), (tb, cb) = samples[-2], samples[-1]
        return cb + (cb - ca) / (tb - ta) * min(t - tb, SAMPLE_S)
    lo, hi = 0, len(samples) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if samples[mid][0] <= t:
            lo = mid
        else:
            hi = mid
    (ta, ca), (tb, cb) = samples[lo], samples[hi]
    return ca + (cb - ca) * (t - ta) / (tb - ta)


def window_cpu(rows: Iterable[tuple[float, str, object, float]],
               window: tuple[float, float]) -> dict[str, float]:
    """CPU seconds each component spent inside ``window``, from its processes' samples
    (time, component, pid, cpu_time_s), each process read at the window's edges; with each
    backend, ``backends`` (their sum) and ``stack`` (nginx, backends and Redis).  A row whose
    component is ``nginx/1234`` is a child of nginx; the machine's rows are left out."""
    series: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for t, name, pid, cpu in rows:
        component = str(name).split("/", 1)[0]
        if component.endswith("system") or component in _NOT_A_COMPONENT:
            continue
        series.setdefault((component, str(pid)), []).append((float(t), float(cpu)))
    lo, hi = window
    out: dict[str, float] = {}
    for (component, _pid), samples in series.items():
        samples.sort()
        if samples[-1][0] + SAMPLE_S < lo or samples[0][0] - SAMPLE_S > hi:
            continue  # lived and ended before the window, or started after it
        spent = cpu_at(samples, hi) - cpu_at(samples, lo)
        out[component] = out.get(component, 0.0) + max(spent, 0.0)
    backends = [v for k, v in out.items() if _BACKEND.fullmatch(k)]
    if backends:
        out["backends"] = sum(backends)
    stack = [out[k] for k in STACK_COMPONENTS if k in out]
    if stack:
        out["stack"] = sum(stack)
    return out


def with_workers(cpu_s: dict[str, float], workers_cpu_s: float) -> dict[str, float]:
    """``cpu_s`` with the CPU the load hosts' Locust workers counted themselves in the window
    (``cpu_ms`` of the counted intervals) added to the load generator's: in a run across
    hosts nobody else samples them (a local run's workers are the load generator's sampled
    children, and are not added again)."""
    if not workers_cpu_s:
        return cpu_s
    return {**cpu_s, "loadgen": cpu_s.get("loadgen", 0.0) + workers_cpu_s}


def cost_figures(cpu_s: dict[str, float], deliveries: int, requests: int) -> dict[str, float]:
    """CPU seconds per 1,000 deliveries and per 1,000 requests of each component (the same
    number as CPU milliseconds per delivery / request); none where there were none."""
    out = {}
    for comp, secs in cpu_s.items():
        if deliveries:
            out[f"cpu_per_kdelivery_{comp}"] = secs / deliveries * 1000
        if requests:
            out[f"cpu_per_krequest_{comp}"] = secs / requests * 1000
    return out


def relative_cost(cpu_s: dict[str, float]) -> float | None:
    """The backends' CPU seconds per CPU second of the yardstick (nginx and the load
    generator) in the same window: the backends' cost with the machine's speed of the moment
    divided out.  Only between runs whose yardstick (run.json's ``yardstick``: the load
    generator's code, nginx's binary and config) is the same, and only when the whole
    pipeline ran on one machine (not across hosts).  None when a part is missing or idle."""
    ruler = sum(cpu_s.get(k, 0.0) for k in YARDSTICK)
    if "backends" not in cpu_s or any(k not in cpu_s for k in YARDSTICK) or ruler <= 0:
        return None
    return cpu_s["backends"] / ruler


def process_rows(path: Path) -> list[tuple[float, str, str, float]]:
    """processes.csv's rows that carry a CPU time: (time, component, pid, cpu_time_s)."""
    out = []
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    out.append((float(row["time"]), row["component"], row["pid"],
                                float(row.get("cpu_time_s") or "nan")))
                except (KeyError, TypeError, ValueError):
                    continue
    except OSError:
        return []
    return [r for r in out if r[3] == r[3]]  # not NaN


def run_cost(run_dir: Path, info: dict, counters_file: str, processes_file: str) -> dict | None:
    """run.json's ``cost``: the window, the CPU each component spent in it, the deliveries
    and requests the load generator counted in it, and the cost figures; None when the run
    has no CPU times or no counted interval."""
    intervals: list[tuple[float, float, dict]] = []
    try:
        lines = (run_dir / counters_file).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            r = json.loads(line)
            intervals.append((float(r["t0"]), float(r["t1"]), r.get("counters") or {}))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    if not intervals:
        return None
    # the run's clock starts at its first load interval, as the analysis's does
    start = min(t0 for t0, _, _ in intervals)
    warmup = default_warmup(info)
    delivered = requests = workers_ms = 0
    for t0, t1, counts in intervals:
        if (t0 + t1) / 2 - start >= warmup:
            delivered += int(counts.get("delivered", 0))
            requests += int(counts.get("requests", 0))
            workers_ms += int(counts.get("cpu_ms", 0))
    window = measured_window([(t0, t1) for t0, t1, _ in intervals], start, warmup)
    rows = process_rows(run_dir / processes_file)
    if window is None or not rows:
        return None
    cpu = window_cpu(rows, window)
    if info.get("distributed"):
        cpu = with_workers(cpu, workers_ms / 1000)
    return {"window": [round(window[0], 3), round(window[1], 3)], "warmup_s": warmup,
            "cpu_s": {k: round(v, 6) for k, v in sorted(cpu.items())},
            "deliveries": delivered, "requests": requests,
            "figures": {k: round(v, 6) for k, v in sorted(cost_figures(cpu, delivered,
                                                                      requests).items())}}
