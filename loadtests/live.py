"""The web UI's "Long polling" tab: live figures of the test in progress.

Fed by the same interval payloads the lossless log is written from (one per
second per Locust process, see :mod:`loadtests.metrics`), so its latencies are
the HdrHistogram percentiles the report computes (same function:
:func:`analysis.hdr_format.percentiles_ms`), not Locust's rounded ones.  What the
load generator cannot see (CPU per component, held polls per backend, nginx's
stub_status, connection counters) comes from the orchestrator's sampler, which
rewrites ``samples/live.json`` every second during a ``pollbench ui`` session.

Memory is bounded: one histogram for the test, one per second for the last
:data:`WINDOW_S` + :data:`SETTLE_S` seconds, and :data:`SERIES_POINTS` per-second
points.  Work per payload: one histogram decode and two adds (no per-sample or
per-user work).
"""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path

from hdrh.histogram import HdrHistogram

from analysis.hdr_format import discard_histogram, new_histogram, percentiles_ms
from analysis.limits import NGINX_ERRORS, fit_warnings, sentence
from analysis.saturation import LOADGEN_SATURATED

WINDOW_S = 10          # "now" = the last 10 s
SETTLE_S = 3           # a second's point is drawn once every process's payload is in
SERIES_POINTS = 900    # per-second points kept (15 min) for /pollbench/live.json
TREND_POINTS = 60      # points in the tab's text sparkline
SPARK = "▁▂▃▄▅▆▇█"
QUANTILES = (50, 95, 99)
DELIVERY = "DELIVERY"


def sparkline(values: list[float | None]) -> str:
    """Unicode block sparkline of the points (gaps as spaces); '' with no points."""
    known = [v for v in values if v is not None]
    if not known:
        return ""
    lo, hi = min(known), max(known)
    span = hi - lo
    return "".join(" " if v is None else
                   SPARK[0 if span == 0 else min(int((v - lo) / span * len(SPARK)), len(SPARK) - 1)]
                   for v in values)


def latency_summary(hist: HdrHistogram) -> dict:
    """count, p50, p95, p99, max in ms (None without samples)."""
    count = hist.get_total_count()
    if not count:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    pct = percentiles_ms(hist, QUANTILES)
    return {"count": count, **{f"p{q}": pct[q] for q in QUANTILES},
            "max": hist.get_max_value() / 1000.0}


class _Second:
    __slots__ = ("hist", "counters", "settled")

    def __init__(self) -> None:
        self.hist = new_histogram()
        self.counters: dict[str, int] = {}
        self.settled = False


class LiveView:
    """The live figures of one test (reset when the next one starts)."""

    def __init__(self, live_path: Path | None, clock=time.time,
                 gives: frozenset[str] | None = None) -> None:
        self.live_path = live_path
        self.clock = clock
        # what the run's protocol gives (loadtests.protocols): a figure needing one it lacks
        # reads "not measured"; None: everything (the reference target's API)
        self.gives = gives
        self.total = new_histogram()
        self.seconds: dict[int, _Second] = {}
        self.reset(clock())

    def reset(self, now: float) -> None:
        for old in [self.total, *(s.hist for s in self.seconds.values())]:
            discard_histogram(old)
        self.started_at = now
        self.ended_at: float | None = None  # the test's "this test" rates stop here
        self.total = new_histogram()
        self.totals: dict[str, int] = {}
        self.seconds = {}
        self.series: deque[list] = deque(maxlen=SERIES_POINTS)
        self.settled_upto = 0  # seconds up to here have their point: late intervals skip it
        self.lost_epoch = 0
        # the target-side sample just before this test: connection reuse counts from it
        self.target_base: dict | None = self._read_live()

    def _read_live(self) -> dict | None:
        if self.live_path is None:
            return None
        try:
            return json.loads(self.live_path.read_text())
        except (OSError, ValueError):
            return None

    # --- fed once per second per Locust process
    def add(self, payload: dict) -> None:
        key = int(payload["t1"])
        sec = self.seconds.get(key) if key > self.settled_upto else _Second()
        if sec is None:
            sec = self.seconds[key] = _Second()
        encoded = payload["hists"].get(DELIVERY)
        if encoded:
            hist = HdrHistogram.decode(encoded[1])
            sec.hist.add(hist)
            self.total.add(hist)
            discard_histogram(hist)  # freed now: no garbage per interval
        for name, n in payload["counters"].items():
            sec.counters[name] = sec.counters.get(name, 0) + n
            self.totals[name] = self.totals.get(name, 0) + n
        self._settle(self.clock())

    def _settle(self, now: float) -> None:
        for key in sorted(self.seconds):
            sec = self.seconds[key]
            if not sec.settled and key < now - SETTLE_S:
                sec.settled = True
                self.settled_upto = max(self.settled_upto, key)
                s = latency_summary(sec.hist)
                self.series.append([key, s["p50"], s["p95"], s["p99"], s["max"],
                                    sec.counters.get("delivered", 0),
                                    sec.counters.get("requests", 0)])
            if key < now - WINDOW_S - SETTLE_S:
                discard_histogram(self.seconds.pop(key).hist)

    def stop(self, now: float) -> None:
        self.ended_at = now

    # --- read by the web UI (every 2 s per open browser tab)
    def snapshot(self) -> dict:
        now = self.clock()
        self._settle(now)
        window = [s for k, s in self.seconds.items() if k > int(now) - WINDOW_S]
        recent = new_histogram()
        counts: dict[str, int] = {}
        for s in window:
            recent.add(s.hist)
            for name, n in s.counters.items():
                counts[name] = counts.get(name, 0) + n
        span = max(min(WINDOW_S, now - self.started_at), 1e-3)
        elapsed = max((self.ended_at or now) - self.started_at, 1e-3)
        t = self.totals
        recent_summary = latency_summary(recent)
        discard_histogram(recent)
        return {
            "time": now, "started_at": self.started_at, "elapsed_s": round(elapsed, 1),
            "window_s": WINDOW_S,
            "delivery": {"now": recent_summary, "test": latency_summary(self.total)},
            "rates": {"now": {"deliveries_per_s": counts.get("delivered", 0) / span,
                              "requests_per_s": counts.get("requests", 0) / span},
                      "test": {"deliveries_per_s": t.get("delivered", 0) / elapsed,
                               "requests_per_s": t.get("requests", 0) / elapsed}},
            "lost": {"dropped": t.get("lost_dropped", 0), "silent": t.get("lost_silent", 0),
                     "epoch": self.lost_epoch},
            "duplicates": t.get("duplicate", 0), "epoch_changes": t.get("epoch_changes", 0),
            "reordered": t.get("reordered", 0),
            "gives": None if self.gives is None else sorted(self.gives),
            "errors": {"now": _errors(counts), "test": _errors(t)},
            "series": list(self.series),
            "target": self.target(self._error_rate(t)),
        }

    @staticmethod
    def _error_rate(totals: dict[str, int]) -> float:
        """Failed HTTP requests / HTTP requests sent, this test."""
        failed = sum(n for name, n in totals.items() if name.startswith("error:")
                     and name[len("error:"):].split(" ", 1)[0] in ("GET", "POST"))
        return failed / totals["requests"] if totals.get("requests") else 0.0

    def target(self, error_rate: float = 0.0) -> dict:
        """The orchestrator's latest sample, with connection reuse since this test started;
        its saturation warning fits what ran out first (:func:`analysis.limits.fit_warnings`)."""
        live = self._read_live()
        if live is None:
            return {}
        if self.target_base is None:  # the session's first sample came after the test began
            self.target_base = live
        base = self.target_base
        # The sampler's own GET /nginx_status and GET /stats are one connection and one
        # request each per sample: taken out so that reuse is the load's.
        samples = live.get("seq", 0) - base.get("seq", 0)
        stub, stub0 = live.get("stub_status"), base.get("stub_status")
        client = None
        if stub and stub0:
            conns = stub["handled"] - stub0["handled"] - samples
            reqs = stub["requests"] - stub0["requests"] - samples
            client = reqs / conns if conns > 0 else None
        backends = live.get("backends", [])
        before = {b["backend"]: b for b in base.get("backends", [])}
        conns = reqs = 0
        for b in backends:
            b0 = before.get(b["backend"])
            if b0 and b.get("requests") is not None and b0.get("requests") is not None:
                conns += b["connections_accepted"] - b0["connections_accepted"] - samples
                reqs += b["requests"] - b0["requests"] - samples
        cpu = live.get("cpu", {})
        # CPU time spent since this test began (a restarted process's first life is lost)
        spent = {k: max(v - (base.get("cpu_time_s") or {}).get(k, 0.0), 0.0)
                 for k, v in (live.get("cpu_time_s") or {}).items()}
        first = (live.get("limits") or {}).get("first")
        loadgen = sorted(n for n in live.get("saturated", []) if n.startswith("loadgen"))
        return {
            "time": live.get("time"),
            "held_polls": {f"backend-{b['backend']}": b.get("long_polls_waiting")
                           for b in backends},
            "nginx": {k: stub[k] for k in ("active", "reading", "writing", "waiting")}
            if stub else {},
            "requests_per_connection": {"client": client,
                                        "upstream": reqs / conns if conns > 0 else None},
            "cpu_percent": {
                "loadgen": cpu.get("loadgen"), "nginx": cpu.get("nginx"),
                "backends": sum(v for k, v in cpu.items() if k.startswith("backend-"))
                if any(k.startswith("backend-") for k in cpu) else None,
                **({"redis": cpu.get("redis")} if "redis" in cpu else {}),
                "system": cpu.get("system")},
            "cpu_s_this_test": cost_groups(spent),
            # with shared state: the sampler's latest INFO (or why it went unanswered)
            "redis": live.get("redis"),
            "loadgen_saturated": loadgen,
            "warning": fit_warnings([LOADGEN_SATURATED.format(
                names=", ".join(loadgen), span="the last 30 s")], first, error_rate)[0]
            if loadgen else None,
            # since the session started (the sampler's analysis.limits.LimitWatch)
            "ran_out_first": first,
            "nginx_errors": live.get("nginx_errors") or {},
        }

    def rows(self, reports_href: str | None = None) -> list[dict]:
        """The tab's table: figure | now (last 10 s) | this test | last 60 s."""
        snap = self.snapshot()
        series = snap["series"][-TREND_POINTS:]
        rows: list[dict] = []

        def row(figure: str, now="", test="", trend="") -> None:
            # Locust's table sorts by "name" until a header is clicked: the order is ours
            rows.append({"name": f"{len(rows):03d}", "figure": figure, "now": now, "test": test,
                         "trend": trend})

        target = snap["target"]
        if target.get("warning"):
            row("WARNING", target["warning"])
        if target:
            row("what ran out first (this session)", sentence(target.get("ran_out_first")))
        d_now, d_test = snap["delivery"]["now"], snap["delivery"]["test"]
        for i, q in enumerate(("p50", "p95", "p99", "max"), start=1):
            row(f"delivery latency {q} (ms)", _ms(d_now[q]), _ms(d_test[q]),
                sparkline([p[i] for p in series]))
        row("deliveries", _int(d_now["count"]), _int(d_test["count"]))
        r_now, r_test = snap["rates"]["now"], snap["rates"]["test"]
        row("deliveries/s", _rate(r_now["deliveries_per_s"]), _rate(r_test["deliveries_per_s"]),
            sparkline([p[5] for p in series]))
        row("HTTP requests/s (real requests only)", _rate(r_now["requests_per_s"]),
            _rate(r_test["requests_per_s"]), sparkline([p[6] for p in series]))
        lost, gives = snap["lost"], snap.get("gives")

        def given(capability: str, value: str) -> str:
            return value if gives is None or capability in gives else \
                "not measured (the protocol does not give it)"

        row("lost: dropped by the server (slow reader)",
            test=given("gap_signal", _int(lost["dropped"])))
        row("lost: never delivered (gap in seq)", test=_int(lost["silent"]))
        row("lost: channel state lost (backend restart)", test=given("epochs", _int(lost["epoch"])))
        row("duplicate messages", test=_int(snap["duplicates"]))
        row("out of order (late, not lost)", test=_int(snap.get("reordered", 0)))
        row("epoch changes", test=given("epochs", _int(snap["epoch_changes"])))
        errors_now, errors_test = snap["errors"]["now"], snap["errors"]["test"]
        if not errors_test:
            row("errors", _int(0), _int(0))
        for cause in sorted(errors_test):
            row(f"errors: {cause}", _int(errors_now.get(cause, 0)), _int(errors_test[cause]))
        for category, n in sorted(target.get("nginx_errors", {}).items()):
            row(f"nginx error log: {NGINX_ERRORS.get(category, (category, category))[1]} "
                "(last second)", _int(n))
        for name, held in sorted(target.get("held_polls", {}).items()):
            row(f"held polls, {name}", _int(held))
        nginx = target.get("nginx", {})
        if nginx:
            row("nginx connections active / reading / writing / waiting",
                " / ".join(str(nginx[k]) for k in ("active", "reading", "writing", "waiting")))
        reuse = target.get("requests_per_connection", {})
        if reuse:
            row("requests per connection, client -> nginx", test=_num(reuse.get("client")))
            row("requests per connection, nginx -> backends", test=_num(reuse.get("upstream")))
        redis = target.get("redis")
        if redis:
            if redis.get("error"):
                row("Redis (shared state)", f"not answering: {redis['error']}")
            else:
                row("Redis ops/s, clients, pub/sub channels",
                    f"{_int(redis.get('instantaneous_ops_per_sec'))} / "
                    f"{_int(redis.get('connected_clients'))} / "
                    f"{_int(redis.get('pubsub_channels'))}")
                row("Redis memory (MiB), keys", f"{_num(redis.get('used_memory', 0) / 2**20, 1)}"
                    f" / {_int(redis.get('keys'))}")
        delivered = self.totals.get("delivered", 0)
        for comp, secs in target.get("cpu_s_this_test", {}).items():
            if delivered:
                row(f"cost per 1,000 deliveries, {comp} (CPU-s)",
                    test=_num(secs / delivered * 1000, 3))
        for comp, value in target.get("cpu_percent", {}).items():
            label = "all cores = 100" if comp == "system" else "one core = 100"
            row(f"CPU % {comp} ({label})", _num(value, 0))
        if reports_href:
            row("reports of finished tests", reports_href)
        return rows


def cost_groups(spent: dict[str, float]) -> dict[str, float]:
    """CPU seconds by what the tab prices: the stack (nginx, backends, Redis), the backends,
    nginx, Redis, and the load generator."""
    backends = sum(v for k, v in spent.items() if k.startswith("backend-"))
    out = {"stack": backends + spent.get("nginx", 0.0) + spent.get("redis", 0.0),
           "backends": backends, "nginx": spent.get("nginx"), "redis": spent.get("redis"),
           "load generator": spent.get("loadgen")}
    return {k: v for k, v in out.items() if v is not None} if spent else {}


def _errors(counters: dict[str, int]) -> dict[str, int]:
    """'error:GET /x: HTTP 503' counters -> {'GET /x: HTTP 503': n}."""
    return {k[len("error:"):]: v for k, v in counters.items() if k.startswith("error:") and v}


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _int(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def _rate(v: float) -> str:
    return f"{v:,.1f}"


def _num(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"
