"""Synthetic run folders with known content, for tests and the report benchmark.

    make_run(path, delivery_ms=np.arange(1, 1001), duration_s=10)

The files have exactly the formats ``pollbench run`` writes, so the analysis
cannot tell them from a real run; the known inputs make its outputs checkable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from analysis import catalog
from analysis.hdr import new_histogram

T0 = 1_800_000_000.0


def _intervals(values_ms: np.ndarray, duration_s: float, metric: str, source: str) -> list[str]:
    """Spread the values evenly over 1-s intervals; one encoded histogram per interval."""
    lines = []
    n_int = max(int(duration_s), 1)
    for i, chunk in enumerate(np.array_split(np.asarray(values_ms, dtype=float), n_int)):
        if not len(chunk):
            continue
        h = new_histogram()
        us, counts = np.unique(np.maximum((chunk * 1000).astype(np.int64), 1), return_counts=True)
        for v, c in zip(us.tolist(), counts.tolist(), strict=True):
            h.record_value(v, c)
        lines.append(json.dumps({"t0": T0 + i, "t1": T0 + i + 1, "metric": metric,
                                 "source": source, "count": int(len(chunk)),
                                 "hist": h.encode().decode()}))
    return lines


def run_json(parameters: dict | None = None, stack: dict | None = None, **extra) -> dict:
    params: dict[str, Any] = {"scenario": "channels", "user_classes": ["ChannelSubscriber", "Publisher"],
              "users": 100, "spawn_rate": 1000.0, "duration_s": 10.0, "shape": "constant",
              "workers": 0, "connection": "keepalive", "channels": 10, "publish_rate": 20.0,
              "poll_timeout_s": 20.0, "task_duration_ms": 500}
    params.update(parameters or {})
    stk = {"profile": "seed", "nginx": {"backends": 4, "upstream_keepalive": None},
           "backends": 4, "loop": "asyncio", "port": 8080,
           "backend_ports": [8000, 8001, 8002, 8003], "max_hold_s": 120.0,
           "delivery_delay_ms": 0.0}
    stk.update(stack or {})
    record = {
        "schema_version": 1, "kind": "run", "status": "complete", "complete": True,
        "started_at": T0 - 2, "ended_at": T0 + params["duration_s"] + 1,
        "duration_s": params["duration_s"] + 3, "parameters": params, "stack": stk,
        "software": {"python": "3.11", "tornado": "6.6.1", "locust": "2.47.0",
                     "nginx": "nginx version: nginx/1.22.1"},
        "host": {"cpu_count": 2, "memory_bytes": 1 << 34, "kernel": "6"},
        "cpu": {"cpu_seconds": {"loadgen": 5.0, "nginx": 1.0}, "loadgen_saturated": False},
        "warnings": [], "files": {}, "exit": {"code": 0, "reason": "complete"},
    }
    record.update(extra)
    return record


# (component, pid, % of a core, RSS, descriptors) of a synthetic run's processes
SYNTHETIC_PROCESSES = (("loadgen", 10, 40.0, 5000000, 30), ("nginx", 11, 5.0, 2000000, 20),
                       ("nginx/12", 12, 10.0, 2000000, 40), ("backend-0", 13, 20.0, 3000000, 25))


def make_run(path: Path, *, delivery_ms=None, request_ms=None, task_ms=None,
             duration_s: float = 10.0, counters: dict | None = None,
             access_connections: dict[int, int] | None = None,
             backend_histogram: dict[int, int] | None = None, info: dict | None = None,
             parameters: dict | None = None, stack: dict | None = None,
             cpu_scale: float = 1.0) -> Path:
    """Write a run folder.  ``access_connections`` maps nginx $connection -> its request count;
    ``backend_histogram`` maps requests-per-connection -> connections (summed over backends);
    ``cpu_scale`` multiplies every process's CPU (a costlier run of the same work)."""
    path = Path(path)
    (path / catalog.METRICS_DIR).mkdir(parents=True)
    (path / "samples").mkdir()
    (path / "nginx" / "logs").mkdir(parents=True)
    (path / "locust").mkdir()
    rec = info or run_json(parameters, stack)
    (path / "run.json").write_text(json.dumps(rec))
    lines = []
    for metric, values in (("DELIVERY", delivery_ms), ("HTTP POST /channels/[name]", request_ms),
                           ("TASK", task_ms)):
        if values is not None:
            lines += _intervals(np.asarray(values), duration_s, metric, "local")
    (path / catalog.RUN_FILES["latency_hdr"]).write_text("\n".join(lines) + "\n")
    per_interval = []
    for i in range(int(duration_s)):
        share = {k: v // int(duration_s) + (1 if i < v % int(duration_s) else 0)
                 for k, v in (counters or {}).items()}
        per_interval.append(json.dumps({"t0": T0 + i, "t1": T0 + i + 1, "source": "local",
                                        "counters": {k: v for k, v in share.items() if v}}))
    (path / catalog.RUN_FILES["counters"]).write_text("\n".join(per_interval) + "\n")
    access = []
    for conn, n in (access_connections or {}).items():
        for r in range(1, n + 1):
            t = T0 + (conn % int(duration_s)) + r * 1e-4
            access.append(json.dumps({
                "msec": f"{t:.3f}", "connection": str(conn), "connection_requests": str(r),
                "remote_addr": "127.0.0.1", "method": "GET", "uri": "/channels/ch1",
                "status": "200", "body_bytes_sent": "100", "request_time": "0.002",
                "upstream_addr": "127.0.0.1:8000", "upstream_status": "200",
                "upstream_connect_time": "0.000", "upstream_header_time": "0.002",
                "upstream_response_time": "0.002", "request_id": "x"}))
    (path / "nginx" / "logs" / "access.jsonl").write_text("\n".join(access) + "\n")
    hist = backend_histogram or {1: 10}
    conns = sum(hist.values())
    reqs = sum(k * v for k, v in hist.items())
    stats = {"connections": {"accepted": conns, "open": 0}, "requests": reqs,
             "requests_per_connection": {"mean": reqs / conns,
                                         "closed_histogram": {str(k): v for k, v in hist.items()}},
             "long_polls_waiting": 0, "messages_delivered": 0, "gc": {"pause_max_ms": 0.1}}
    (path / "samples" / "backend_stats.jsonl").write_text(
        json.dumps({"time": T0 + duration_s, "backend": 0, "stats": stats}) + "\n")
    # each process busy at a steady share of a core, its CPU time (schedstat) counted since T0
    rows = ["time,component,pid,cpu_percent,rss_bytes,num_fds,cpu_time_s,wait_time_s"]
    for i in range(int(duration_s)):
        rows += [f"{T0 + i},system,0,50.0,1000000,0,,"]
        rows += [f"{T0 + i},{name},{pid},{pct * cpu_scale},{rss},{fds},"
                 f"{pct * cpu_scale / 100 * (i + 1):.6f},0.0"
                 for name, pid, pct, rss, fds in SYNTHETIC_PROCESSES]
    (path / "samples" / "processes.csv").write_text("\n".join(rows) + "\n")
    stub = ["time,active,accepts,handled,requests,reading,writing,waiting"]
    stub += [f"{T0 + i},5,{10 + i},{10 + i},{100 + 10 * i},0,5,0" for i in range(int(duration_s))]
    (path / "samples" / "stub_status.csv").write_text("\n".join(stub) + "\n")
    hist_rows = ["Timestamp,User Count,Type,Name,Requests/s"]
    hist_rows += [f"{int(T0) + i},100,,Aggregated,50" for i in range(int(duration_s))]
    (path / "locust" / "locust_stats_history.csv").write_text("\n".join(hist_rows) + "\n")
    return path
