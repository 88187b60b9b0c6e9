"""What faults cost: lost messages when channel state was lost, recovery, stalls, old workers.

Inputs are the run folder's files only: ``run.json`` (``faults``: what was injected and
when), ``metrics/events.jsonl`` (``epoch_change`` from subscribers with their cursor,
``publisher_epoch_end`` with the last seq published in an epoch that ended,
``recovered`` with when a subscriber's failures began and when it was delivered to
again), ``metrics/counters.jsonl`` (failures by cause), ``samples/backend_stats.jsonl``
(each backend's /stats, once a second) and ``samples/processes.csv`` (nginx's workers).

    lost, unknown = epoch_loss(run.events)
    rows = per_fault(run)       # one dict per injected fault
    stalls = backend_stalls(run)
"""

from __future__ import annotations

import json
import statistics

from analysis.catalog import REDIS_INFO_FILE
from analysis.epochs import epoch_loss
from analysis.load import RunData

__all__ = ["backend_stalls", "epoch_loss", "old_workers", "per_fault"]

STALL_GAP_S = 3.0  # a backend whose /stats did not answer for this long (sampled every 1 s)


def _windows(run: RunData) -> list[tuple[dict, float, float]]:
    """Each fault record with its window: from its start to the next fault's (or the end)."""
    faults = sorted((f for f in run.info.get("faults") or [] if isinstance(f, dict)
                     and isinstance(f.get("started_at"), (int, float))),
                    key=lambda f: f["started_at"])
    out = []
    for i, f in enumerate(faults):
        end = faults[i + 1]["started_at"] if i + 1 < len(faults) else run.end
        out.append((f, float(f["started_at"]), float(end)))
    return out


def per_fault(run: RunData) -> list[dict]:
    """One row per injected fault: its cost until the next fault (or the end of the run)."""
    rows = []
    counters = run.counters
    for f, t0, t1 in _windows(run):
        in_window = [e for e in run.events if t0 <= float(e.get("t", 0)) < t1]
        changes = [e for e in in_window if e.get("kind") == "epoch_change"]
        lost, unknown = epoch_loss([e for e in run.events
                                    if e.get("kind") == "publisher_epoch_end"] + changes)
        recovered = [float(e["at"]) - t0 for e in run.events if e.get("kind") == "recovered"
                     and t0 <= float(e.get("since", 0)) < t1]
        failures: dict[str, int] = {}
        opened = 0
        if not counters.empty:
            overlap = (counters["t1"] > t0) & (counters["t0"] < t1)
            opened = int(counters[overlap & (counters["counter"] == "connects")]["value"].sum())
            err = counters[counters["counter"].str.startswith("error:")
                           & (counters["t1"] > t0) & (counters["t0"] < t1)]
            for cause, n in err.groupby("counter")["value"].sum().items():
                failures[str(cause)[len("error:"):]] = int(n)
        row = {
            "fault": f.get("fault", f.get("action")), "action": f.get("action"),
            # on the report's clock (from the load's first interval), and as the fault spec
            # said it (from when Locust was up: earlier by its start-up, ~1 s)
            "at_s": round(t0 - run.start, 2), "spec_at_s": f.get("at_s"),
            "lasted_s": round(float(f.get("ended_at") or t0) - t0, 2),
            "detail": f.get("detail", ""), "ok": f.get("ok", True),
            "epoch_changes": len(changes), "lost_epoch_messages": lost,
            "epoch_changes_loss_unknown": unknown,
            "failed_requests": sum(failures.values()), "failures_by_cause": failures,
            "connections_opened": opened,  # by the clients: reconnects after the fault
            "channels_recovered": len(recovered),
            "recovery_p50_s": round(statistics.median(recovered), 3) if recovered else None,
            "recovery_max_s": round(max(recovered), 3) if recovered else None,
        }
        if f.get("action") in ("reload", "upgrade"):
            row.update(old_workers(run, t0, t1))
        rows.append(row)
    return rows


def old_workers(run: RunData, t0: float, t1: float) -> dict:
    """nginx workers alive just before a reload, and how long any of them outlived it."""
    p = run.processes
    if p.empty:
        return {"old_workers": None, "old_workers_lingered_s": None}
    nginx = p[p["component"].astype(str).str.startswith("nginx/")]
    before = nginx[nginx["time"] < t0]
    if before.empty:
        return {"old_workers": None, "old_workers_lingered_s": None}
    old = set(before[before["time"] == before["time"].max()]["pid"])
    after = nginx[(nginx["time"] >= t0) & (nginx["pid"].isin(old))]
    last = float(after["time"].max()) if not after.empty else t0
    return {"old_workers": len(old), "old_workers_lingered_s": round(last - t0, 1),
            "old_workers_alive_at_end": bool(not after.empty and last >= float(
                nginx["time"].max()))}


def backend_stalls(run: RunData) -> list[dict]:
    """Spans where a backend's /stats went unanswered for STALL_GAP_S or more while the
    others answered: stopped, overloaded or down.  Delivery latency can look normal then
    (the backend stamps ``ts`` when it publishes, after it resumes)."""
    b = run.backend_stats
    if b.empty:
        return []
    times = sorted(set(b["time"]))
    if len(times) < 2:
        return []
    stalls = []
    for backend, g in b.groupby("backend"):
        seen = sorted(g["time"])
        gaps = zip([times[0], *seen], [*seen, times[-1]], strict=True)
        for a, c in gaps:
            if c - a >= STALL_GAP_S:
                held = g[g["time"] == c]["long_polls_waiting"]
                stalls.append({"backend": int(backend), "from_s": round(a - run.start, 1),
                               "to_s": round(c - run.start, 1), "lasted_s": round(c - a, 1),
                               "held_polls_after": int(held.iloc[0]) if not held.empty
                               else None})
    return stalls


def redis_stalls(run: RunData) -> list[dict]:
    """Spans where the stack's Redis did not answer the sampler's INFO (an error each time)
    for STALL_GAP_S or more: stopped, overloaded or down.  Every request that needs the shared
    state waits for it meanwhile (then 503s)."""
    path = run.path / REDIS_INFO_FILE
    if not path.exists():
        return []
    stalls, since = [], None
    last_time = None
    with path.open() as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by the end of the run
            last_time = row["time"]
            if "error" in row:
                since = row["time"] if since is None else since
            elif since is not None:
                stalls.append((since, row["time"]))
                since = None
    if since is not None and last_time is not None:
        stalls.append((since, last_time))
    return [{"from_s": round(a - run.start, 1), "to_s": round(b - run.start, 1),
             "lasted_s": round(b - a, 1)} for a, b in stalls if b - a >= STALL_GAP_S]

