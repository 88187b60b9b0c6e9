"""Charts of one run (matplotlib, Agg).  Each function returns a Figure, or None when its data is missing.

Every chart has a title, axis labels with units and the run's configuration as
a subtitle; latencies use log axes because they span orders of magnitude.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from analysis.figures import (  # noqa: E402
    Figures,
    backend_reuse,
    client_reuse,
    interval_rate,
    spectrum,
)
from analysis.hdr import percentiles_us  # noqa: E402
from analysis.limits import NGINX_ERRORS_FILE, read_jsonl, split_error_counter  # noqa: E402
from analysis.saturation import CHART_LABEL, CPU_PERCENT  # noqa: E402

PCT_STYLE = {"p50": ("#1f77b4", "-"), "p95": ("#ff7f0e", "-"), "p99": ("#d62728", "-"),
             "max": ("#7f7f7f", ":")}
FAMILY_TITLES = {"deliveries": "Delivery latency (publish -> receipt)",
                 "requests": "Plain request latency (non-poll)",
                 "tasks": "Task turnaround (submit -> result)"}


def _figure(fig: Figures, title: str, nrows: int = 1, ncols: int = 1, height: float = 4.2,
            sharex: bool = False):
    f, axes = plt.subplots(nrows, ncols, figsize=(11, height * nrows), sharex=sharex,
                           squeeze=False)
    total_h = height * nrows
    f.suptitle(title, fontsize=13, fontweight="bold", y=1 - 0.08 / total_h)
    f.text(0.5, 1 - 0.40 / total_h, fig.label, ha="center", va="top", fontsize=9, color="#444")
    f._pollbench_top = 1 - 0.70 / total_h  # type: ignore[attr-defined]  # read by _finish
    f._pollbench_faults = fault_spans(fig)  # type: ignore[attr-defined]  # read by _finish
    return f, axes.ravel()


def fault_spans(fig: Figures) -> list[tuple[float, float, str]]:
    """(start, end, label) of each injected fault, in seconds since the load started."""
    spans = []
    for r in fig.run.info.get("faults") or []:
        if not isinstance(r, dict) or not isinstance(r.get("started_at"), (int, float)):
            continue
        t0 = float(r["started_at"]) - fig.run.start
        end = r.get("ended_at")
        t1 = float(end) - fig.run.start if isinstance(end, (int, float)) else t0
        spans.append((t0, max(t1, t0), str(r.get("fault", r.get("action", "fault")))))
    return spans


def _mark_faults(f) -> None:
    """On every time chart of the figure: a red line at each fault, shaded while it lasts."""
    spans = getattr(f, "_pollbench_faults", [])
    if not spans or not any(ax.get_xlabel().startswith("time since start")
                            for ax in f.axes):
        return
    for ax in f.axes:
        for t0, t1, label in spans:
            ax.axvline(t0, color="#d62728", lw=1.2, linestyle="-.", zorder=5)
            if t1 - t0 > 0.2:
                ax.axvspan(t0, t1, color="#d62728", alpha=0.10, lw=0)
            ax.text(t0, 1.0, f" {label}", transform=ax.get_xaxis_transform(), rotation=90,
                    va="top", ha="left", fontsize=7, color="#d62728")


def _finish(f):
    _mark_faults(f)
    f.tight_layout(rect=(0, 0, 1, f._pollbench_top))
    return f


def ecdf_points(values, points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """An empirical CDF as at most ``points`` quantiles: a million-point line draws for
    seconds and shows nothing more."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if v.size <= points:
        v = np.sort(v)
        return v, np.arange(1, v.size + 1) / max(v.size, 1)
    q = np.linspace(0, 1, points)
    return np.quantile(v, q), q


def plain_ticks(axis) -> None:
    """Log axes labelled 0.5, 2, 500 rather than 5x10^-1, 2x10^0, 5.12x10^2."""
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(fmt)
    axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _warmup(ax, fig: Figures) -> None:
    if fig.warmup_s > 0:
        ax.axvspan(0, fig.warmup_s, color="#cccccc", alpha=0.35, lw=0)


def throughput(fig: Figures):
    run = fig.run
    hist = run.history
    http = run.hdr[run.hdr["metric"].str.startswith("HTTP ")] if not run.hdr.empty else run.hdr
    reqs = interval_rate(http["t0"], http["t1"], http["count"], run.start, fig.bin_s)
    delivered = run.counters[run.counters["counter"] == "delivered"] if not \
        run.counters.empty else run.counters
    deliveries = interval_rate(delivered["t0"], delivered["t1"], delivered["value"], run.start,
                               fig.bin_s)
    if reqs.empty and deliveries.empty:
        return None
    f, (ax,) = _figure(fig, "Users and throughput over time")
    _warmup(ax, fig)
    if not reqs.empty:
        ax.plot(reqs.index, reqs.values, label="requests/s", color="#1f77b4")
    if not deliveries.empty:
        ax.plot(deliveries.index, deliveries.values, label="deliveries/s", color="#2ca02c")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("per second")
    ax.set_ylim(bottom=0)
    if not hist.empty and "Name" in hist:
        agg = hist[hist["Name"] == "Aggregated"]
        if not agg.empty:
            ax2 = ax.twinx()
            ax2.step(agg["Timestamp"] - run.start, agg["User Count"], where="post",
                     color="#9467bd", label="users", alpha=0.8)
            ax2.set_ylabel("users")
            ax2.set_ylim(bottom=0)
            h2, l2 = ax2.get_legend_handles_labels()
            h1, l1 = ax.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=9)
    else:
        ax.legend(loc="upper left", fontsize=9)
    return _finish(f)


def latency_over_time(fig: Figures):
    names = [k for k in ("deliveries", "requests", "tasks") if not fig.families[k].series.empty]
    timeouts = fig.families["poll_timeouts"].series
    if not names:
        return None
    f, axes = _figure(fig, "Latency percentiles over time (lossless, HdrHistogram)",
                      nrows=len(names) + 1, height=3.0, sharex=True)
    for ax, name in zip(axes, names, strict=False):
        s = fig.families[name].series
        _warmup(ax, fig)
        for q, (color, style) in PCT_STYLE.items():
            ax.plot(s["t"], s[q], color=color, linestyle=style, label=q)
        ax.set_yscale("log")
        plain_ticks(ax.yaxis)
        lo, hi = s["p50"].min(), s["max"].max()
        if hi / max(lo, 1e-9) < 10:  # a narrow range gets few major ticks: label minors too
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_ylabel("latency (ms)")
        ax.set_title(FAMILY_TITLES[name], fontsize=10, loc="left")
        ax.legend(loc="upper right", fontsize=8, ncol=4)
        ax.grid(True, which="major", alpha=0.3)
    ax = axes[len(names)]
    _warmup(ax, fig)
    if not timeouts.empty:
        ax.bar(timeouts["t"], timeouts["count"] / fig.bin_s, width=fig.bin_s * 0.9,
               color="#bcbd22", align="edge")
    else:
        ax.text(0.5, 0.5, "no poll timed out", ha="center", va="center", transform=ax.transAxes,
                color="#777")
    ax.set_title("Long polls answered 204 (hold expired, no news): not latency, shown apart",
                 fontsize=10, loc="left")
    ax.set_ylabel("204 answers/s")
    ax.set_xlabel("time since start (s)  [grey: warm-up, excluded from the summary]")
    return _finish(f)


def spectrum_axis(ax) -> None:
    ax.set_xscale("log")
    ticks = [1, 10, 100, 1000, 10000, 100000]
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(FuncFormatter(
        lambda x, _: {1: "0%", 10: "90%", 100: "99%", 1000: "99.9%", 10000: "99.99%",
                      100000: "99.999%"}.get(int(round(x)), "")))
    ax.set_xlim(1, 100000)
    ax.set_xlabel("percentile")
    ax.set_yscale("log")
    plain_ticks(ax.yaxis)
    ax.set_ylabel("latency (ms)")
    ax.grid(True, which="major", alpha=0.3)


def spectrum_x(percentiles) -> np.ndarray:
    p = np.asarray(percentiles, dtype=float)
    return 1.0 / np.maximum(1 - p / 100.0, 1e-5)


def percentile_spectrum(fig: Figures):
    series = {k: spectrum(fig.families[k].total) for k in ("deliveries", "requests", "tasks")}
    series = {k: v for k, v in series.items() if not v.empty}
    if not series:
        return None
    f, (ax,) = _figure(fig, "Latency by percentile (HdrHistogram percentile spectrum)")
    for name, df in series.items():
        n = fig.families[name].total.get_total_count()
        ax.plot(spectrum_x(df["percentile"]), df["latency_ms"], label=f"{FAMILY_TITLES[name]}, "
                f"n={n:,}")
    spectrum_axis(ax)
    ax.legend(fontsize=9, loc="lower right")
    return _finish(f)


def delivery_cdf(fig: Figures):
    df = spectrum(fig.families["deliveries"].total)
    if df.empty:
        return None
    f, (ax,) = _figure(fig, "Delivery latency: cumulative distribution")
    ax.plot(df["latency_ms"], df["percentile"] / 100, drawstyle="steps-post", color="#2ca02c")
    ax.set_xscale("log")
    plain_ticks(ax.xaxis)
    ax.set_xlabel("delivery latency, publish -> receipt (ms)")
    ax.set_ylabel("fraction of messages delivered within")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    for q, v in zip((50, 99), percentiles_us(fig.families["deliveries"].total, [50, 99]) / 1000,
                    strict=True):
        ax.axvline(v, color="#999", linestyle="--", lw=1)
        ax.annotate(f"p{q} {v:.2f} ms", (v, 0.05 if q == 50 else 0.15), fontsize=8,
                    xytext=(4, 0), textcoords="offset points")
    return _finish(f)


def _cdf_from_counts(dist: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """{requests on a connection: connections} -> (x, fraction of connections with <= x)."""
    dist = dist.sort_index()
    return dist.index.to_numpy(dtype=float), dist.cumsum().to_numpy() / dist.sum()


def connection_reuse(fig: Figures):
    run = fig.run
    creuse, breuse = client_reuse(run.access), backend_reuse(run.backend_stats)
    if not creuse and not breuse:
        return None
    f, axes = _figure(fig, "Connection reuse on both hops", ncols=3, height=4.4)
    hops = (("client -> nginx", creuse, "#1f77b4"), ("nginx -> backend", breuse, "#d62728"))
    ax = axes[0]
    for hop, data, color in hops:
        if data and not data["distribution"].empty:
            x, y = _cdf_from_counts(data["distribution"])
            ax.step(np.concatenate([[x[0]], x]), np.concatenate([[0], y]), where="post",
                    color=color, label=hop)
    ax.set_xscale("log")
    plain_ticks(ax.xaxis)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("requests on one connection")
    ax.set_ylabel("fraction of connections (CDF)")
    ax.set_title("requests per connection", fontsize=9, loc="left")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, alpha=0.3)
    ax = axes[1]
    labels = [h for h, d, _ in hops if d]
    means = [d["mean"] for _, d, _ in hops if d]
    bars = ax.bar(labels, means, color=[c for _, d, c in hops if d])
    ax.bar_label(bars, labels=[f"{m:.2f}\n({d['connections']:,} conns)" for m, (_, d, _) in
                               zip(means, [h for h in hops if h[1]], strict=True)], fontsize=8)
    ax.set_ylim(0, max(means + [1]) * 1.3)
    ax.set_ylabel("mean requests per connection")
    ax.set_title("reuse ratio ($connection_requests; backend counters)", fontsize=9, loc="left")
    ax = axes[2]
    stub = run.stub_status
    if not stub.empty and len(stub) > 1:
        s = stub.sort_values("time")
        rate = s["accepts"].diff() / s["time"].diff()
        ax.plot(s["time"] - run.start, rate, label="client -> nginx", color="#1f77b4")
    b = run.backend_stats
    if not b.empty:
        acc = b.pivot_table(index="time", columns="backend", values="connections_accepted")
        total = acc.sum(axis=1).sort_index()
        rate = total.diff() / pd.Series(total.index, index=total.index).diff()
        ax.plot(total.index - run.start, rate.values, label="nginx -> backends", color="#d62728")
    ax.set_title("new connections per second", fontsize=9, loc="left")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("connections/s")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return _finish(f)


def upstream_timing(fig: Figures):
    acc = fig.run.access
    if acc.empty or acc["upstream_response_time"].isna().all():
        return None
    proxied = acc[acc["upstream_response_time"].notna()]
    poll = proxied["method"].eq("GET") & proxied["uri"].str.match(r"^/(channels|tasks)/")
    f, axes = _figure(fig, "Upstream timing from nginx's log (nginx -> backend)", ncols=2,
                      height=4.4)
    for ax, subset, title in ((axes[0], proxied[~poll], "publishes, submits, other requests"),
                              (axes[1], proxied[poll], "long polls (response time = hold time)")):
        ax.set_title(f"{title}: {len(subset):,} requests", fontsize=9, loc="left")
        for col, color in (("upstream_connect_time", "#1f77b4"),
                           ("upstream_header_time", "#ff7f0e"),
                           ("upstream_response_time", "#d62728")):
            x, y = ecdf_points(subset[col].to_numpy() * 1000)
            if len(x):
                # loopback times are often 0.000 s: plot them at the 0.1-ms log floor
                ax.plot(np.maximum(x, 0.1), y,
                        label=col.replace("upstream_", "").replace("_", " "), color=color,
                        drawstyle="steps-post")
        ax.set_xscale("log")
        plain_ticks(ax.xaxis)
        ax.set_xlabel("time (ms; nginx logs whole ms, 0 drawn at 0.1)")
        ax.set_ylabel("fraction of requests")
        if ax.lines:
            ax.legend(fontsize=8, loc="lower right")
        ax.grid(True, alpha=0.3)
    return _finish(f)


def _stacked_rates(ax, t0, keys, values, fig: Figures) -> None:
    """Per-second rates of ``values`` by ``keys``, stacked in the time bins."""
    t = ((np.asarray(t0, dtype=float) - fig.run.start) // fig.bin_s) * fig.bin_s
    table = pd.DataFrame({"t": t, "key": keys, "value": values}).pivot_table(
        index="t", columns="key", values="value", aggfunc="sum", fill_value=0)
    order = table.sum().sort_values(ascending=False).index  # the biggest at the bottom
    bottom = np.zeros(len(table))
    for key in order:
        ax.bar(table.index, table[key] / fig.bin_s, bottom=bottom, width=fig.bin_s * 0.9,
               align="edge", label=key)
        bottom += table[key].to_numpy() / fig.bin_s
    ax.legend(fontsize=7, loc="upper right")


def _mark_first_limit(ax, fig: Figures) -> None:
    first = (fig.summary.get("limits") or {}).get("first")
    if first:
        ax.axvline(first["at_s"], color="black", linestyle="--", lw=1)
        ax.text(first["at_s"], 0.02, " ran out first: " + first["limit"].replace("_", " "),
                transform=ax.get_xaxis_transform(), fontsize=7, va="bottom", rotation=90)


def errors(fig: Figures):
    run = fig.run
    c = run.counters
    errs = c[c["counter"].str.startswith("error:")] if not c.empty else c
    nginx = [r for r in read_jsonl(run.path / NGINX_ERRORS_FILE) if r.get("counts")]
    lost = int(fig.summary["metrics"]["lost_messages"]["value"])
    dup = int(fig.summary["metrics"]["duplicate_messages"]["value"])
    f, axes = _figure(fig, "Errors by cause, nginx's error log, lost and duplicate messages",
                      nrows=2, ncols=2, height=3.6)
    ax = axes[0]
    if errs.empty:
        ax.text(0.5, 0.5, "no failed requests", ha="center", va="center",
                transform=ax.transAxes, fontsize=12, color="#2ca02c")
    else:
        causes = [(split_error_counter(n) or ("", n))[1][:60] for n in errs["counter"]]
        _stacked_rates(ax, errs["t0"], causes, errs["value"], fig)
        _mark_first_limit(ax, fig)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("failed requests/s")
    ax.set_title("failed requests by cause", fontsize=9, loc="left")
    ax = axes[1]
    if not nginx:
        ax.text(0.5, 0.5, "no problem logged", ha="center", va="center",
                transform=ax.transAxes, fontsize=12, color="#2ca02c")
    else:
        rows = [(r["time"], k, n) for r in nginx for k, n in r["counts"].items()]
        _stacked_rates(ax, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                       fig)
        _mark_first_limit(ax, fig)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("error-log lines/s")
    ax.set_title("nginx's error log by category", fontsize=9, loc="left")
    ax = axes[2]
    who: dict[str, int] = {}
    for e in fig.summary.get("failures") or []:
        who[e["source"]] = who.get(e["source"], 0) + e["count"]
    if who:
        names = sorted(who, key=who.get)  # type: ignore[arg-type]
        bars = ax.barh([n.replace(" (", "\n(") for n in names], [who[n] for n in names],
                       color="#9467bd")
        ax.bar_label(bars, fmt="{:,.0f}", fontsize=8)
        ax.set_xlim(0, max(who.values()) * 1.2)
        ax.tick_params(axis="y", labelsize=8)
    else:
        ax.text(0.5, 0.5, "no failed requests", ha="center", va="center",
                transform=ax.transAxes, fontsize=12, color="#2ca02c")
    ax.set_xlabel("failed requests, whole run")
    ax.set_title("who failed them", fontsize=9, loc="left")
    ax = axes[3]
    bars = ax.bar(["lost", "duplicate"], [lost, dup], color=["#d62728", "#ff7f0e"])
    ax.bar_label(bars)
    ax.set_ylabel("messages")
    ax.set_title("message integrity (non-zero: a bug or an overflow)", fontsize=9,
                 loc="left")
    ax.set_ylim(0, max(lost, dup, 1) * 1.25)
    return _finish(f)


def component_of(name: str) -> str:
    """'nginx/1234' -> 'nginx', 'loadgen/99' -> 'loadgen' (children belong to their root)."""
    return name.split("/", 1)[0]


def resources(fig: Figures):
    p = fig.run.processes
    if p.empty:
        return None
    run = fig.run
    p = p.assign(component=p["component"].map(component_of), t=p["time"] - run.start)
    # "system": the machine of the stack; "controller-system": the controller's, when the
    # stack ran on another host (their samples are not at the same instants)
    is_machine = p["component"].str.endswith("system")
    machines, comps = p[is_machine], p[~is_machine]
    cpu = comps.pivot_table(index="t", columns="component", values="cpu_percent", aggfunc="sum")
    rss = comps.pivot_table(index="t", columns="component", values="rss_bytes",
                            aggfunc="sum") / 2**20
    f, axes = _figure(fig, "CPU and memory per component", nrows=2, height=3.6, sharex=True)
    ax = axes[0]
    for col in cpu.columns:
        series = cpu[col].dropna()
        ax.plot(series.index, series, label=col, lw=1.6 if col in ("loadgen", "nginx") else 1.0)
    distributed = fig.run.info.get("distributed") or {}
    peaks = [float(np.nanmax(cpu.to_numpy())) if cpu.size else 0.0]
    c = run.counters
    # (a last partial interval of a few ms holds the worker's shutdown: not plotted)
    worker_cpu = c[(c["counter"] == "cpu_ms") & (c["t1"] - c["t0"] >= 0.5)] if not c.empty \
        else c
    for source, g in worker_cpu.groupby("source"):  # Locust workers: their own count
        pct = g["value"] / ((g["t1"] - g["t0"]).clip(lower=1e-3) * 1000) * 100
        ax.plot(g["t1"] - run.start, pct, lw=1.0, linestyle="--", label=f"loadgen {source}")
        peaks.append(float(pct.max()))
    for name, g in machines.groupby("component"):
        host = distributed.get("controller", {}) if name != "system" else \
            fig.run.info.get("host", {})
        cores = (host or {}).get("cpu_count") or 1
        what = ("whole machine" if not distributed else
                "target host" if name == "system" else "controller host")
        ax.plot(g["t"], g["cpu_percent"] * cores, color="black",
                linestyle=":" if name == "system" else "-.", label=f"{what} ({cores} cores)")
        peaks.append(float(g["cpu_percent"].max()) * cores)
    ax.axhline(CPU_PERCENT, color="#d62728", linestyle="--", lw=1)
    ax.text(0.995, CPU_PERCENT, CHART_LABEL,
            transform=ax.get_yaxis_transform(), ha="right", va="bottom", fontsize=8,
            color="#d62728")
    loadgen = comps[comps["component"] == "loadgen"].groupby("pid")
    for _, g in loadgen:
        hot = g[g["cpu_percent"] >= CPU_PERCENT]
        for t in hot["t"]:
            ax.axvspan(t - 0.5, t + 0.5, color="#d62728", alpha=0.15, lw=0)
    sat = "SATURATED" if fig.summary["loadgen_saturated"] else "not saturated"
    ax.set_title(f"CPU (100% = one core); load generator {sat}", fontsize=9, loc="left")
    ax.set_ylabel("CPU (% of one core)")
    ax.set_ylim(0, max(110.0, *peaks) * 1.08)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax = axes[1]
    for col in rss.columns:
        series = rss[col].dropna()
        ax.plot(series.index, series, label=col)
    ax.set_ylabel("resident memory (MiB)")
    ax.set_xlabel("time since start (s)")
    ax.set_ylim(bottom=0)
    ax.set_title("memory (RSS, process and its children)", fontsize=9, loc="left")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _finish(f)


def cost(fig: Figures):
    """CPU per 1,000 deliveries and per 1,000 requests of each component over the measured
    window: each backend, nginx, Redis (shared state), the load generator."""
    metrics = fig.summary["metrics"]
    units = [u for u in ("delivery", "request")
             if any(k.startswith(f"cpu_per_k{u}_") for k in metrics)]
    if not units:
        return None
    order = sorted({k.split("_", 3)[3] for k in metrics if k.startswith("cpu_per_k")},
                   key=lambda c: (c in ("backends", "stack"), c.startswith("backend-"), c))
    parts = [c for c in order if c not in ("backends", "stack")]
    f, axes = _figure(fig, "Cost: CPU per 1,000 deliveries and requests by component",
                      ncols=len(units), height=max(3.0, 0.45 * len(parts) + 1.6))
    axes = np.atleast_1d(axes)
    colors = {"loadgen": "#7f7f7f", "nginx": "#2ca02c", "redis": "#d62728"}
    for ax, u in zip(axes, units, strict=True):
        values = [metrics.get(f"cpu_per_k{u}_{c}", {}).get("value") or 0.0 for c in parts]
        y = np.arange(len(parts))
        ax.barh(y, values, color=[colors.get(c, "#1f77b4") for c in parts])
        for yi, v in zip(y, values, strict=True):
            ax.text(v, yi, f" {v:.3g}", va="center", fontsize=8)
        ax.set_yticks(y, parts)
        ax.invert_yaxis()
        what = "deliveries" if u == "delivery" else "requests"
        total = metrics.get(f"cpu_per_k{u}_stack", {}).get("value")
        unmeasured = (fig.summary.get("not_measured") or {}).get(f"cpu_per_k{u}_stack")
        ax.set_xlabel(f"CPU-s per 1,000 {what} (= CPU-ms per one)")
        ax.set_title(f"per 1,000 {what}" + (f"; stack (nginx + backends + Redis) {total:.3g}"
                                             if total is not None else
                                             "; the stack: not measured" if unmeasured
                                             else ""),
                     fontsize=9, loc="left")
        ax.set_xlim(0, max(values + [1e-9]) * 1.25)
    f.text(0.01, 0.01, f"over the measured window ({fig.summary['measured_s']:g} s after the "
           f"{fig.warmup_s:g}-s warm-up), from each process's own CPU time; the load "
           "generator is the instrument", fontsize=8, color="#444")
    f.tight_layout(rect=(0, 0.06, 1, f._pollbench_top))  # the note below the axes
    return f


CHARTS = {
    "throughput": (throughput, "Users and throughput"),
    "latency_over_time": (latency_over_time, "Latency percentiles over time"),
    "percentile_spectrum": (percentile_spectrum, "Percentile spectrum"),
    "delivery_cdf": (delivery_cdf, "Delivery latency CDF"),
    "connection_reuse": (connection_reuse, "Connection reuse"),
    "upstream_timing": (upstream_timing, "Upstream timing"),
    "errors": (errors, "Errors, lost and duplicate messages"),
    "resources": (resources, "CPU and memory per component"),
    "cost": (cost, "Cost per delivery and request by component"),
}
