"""Write a run's report: ``report.html`` (self-contained, images embedded), ``summary.md``,
``summary.json`` and the chart PNGs in ``charts/``.

    paths = write_run_report(Path("results/<run>"), out=None)   # out defaults to the run folder

Functions that format return text; only the writers touch the disk, atomically.
"""

from __future__ import annotations

import base64
import html
import io
import json
import multiprocessing
import os
import signal
import sys
import threading
from pathlib import Path

import jinja2
import matplotlib.pyplot as plt

from analysis import charts
from analysis.atomic import write_atomic
from analysis.figures import Figures, compute
from analysis.limits import sentence
from analysis.load import load_run

HEADLINE = [
    ("delivery_latency_p50", "Delivery latency p50"), ("delivery_latency_p95", "Delivery p95"),
    ("delivery_latency_p99", "Delivery p99"), ("delivery_latency_max", "Delivery max"),
    ("request_latency_p50", "Request latency p50"), ("request_latency_p95", "Request p95"),
    ("request_latency_p99", "Request p99"), ("task_turnaround_p50", "Task turnaround p50"),
    ("task_turnaround_p99", "Task turnaround p99"), ("task_overhead_p99", "Task overhead p99"),
    ("repoll_gap_p99", "Re-poll gap p99"), ("publish_lag_p99", "Publish lateness p99"),
    ("throughput_attempted", "Requests attempted (failed ones included)"),
    ("throughput_requests", "Requests completed"), ("throughput_deliveries", "Deliveries"),
    ("error_rate", "Error rate"), ("lost_messages", "Lost messages"),
    ("lost_epoch_messages", "Lost to channel state loss (epoch changes)"),
    ("duplicate_messages", "Duplicate messages"),
    ("retries", "Retries after a failure (each after its back-off)"),
    ("requests_per_connection_client", "Requests/connection, client -> nginx"),
    ("requests_per_connection_upstream", "Requests/connection, nginx -> backend"),
    ("cpu_per_kdelivery_stack", "Cost per 1,000 deliveries: the stack (nginx + backends + Redis)"),
    ("cpu_per_kdelivery_backends", "Cost per 1,000 deliveries: the backends"),
    ("cpu_per_kdelivery_nginx", "Cost per 1,000 deliveries: nginx"),
    ("cpu_per_kdelivery_loadgen", "Cost per 1,000 deliveries: the load generator"),
    ("cpu_per_krequest_stack", "Cost per 1,000 requests: the stack"),
]


def fmt_value(m: dict) -> str:
    v = m["value"]
    if v is None:
        return "n/a"
    if m["unit"] == "fraction":
        return f"{v * 100:.3g} %"
    if isinstance(v, int):
        return f"{v:,} {m['unit'] if m['unit'] != 'count' else ''}".strip()
    return f"{v:,.3g} {m['unit']}" if abs(v) < 1000 else f"{v:,.0f} {m['unit']}"


def headline_rows(summary: dict) -> list[tuple[str, str]]:
    """(label, value) of each headline figure the run has; one it cannot give reads "not
    measured" with the reason."""
    metrics, unmeasured = summary["metrics"], summary.get("not_measured") or {}
    rows = []
    unknown = summary.get("lost_unknown") or 0
    for key, label in HEADLINE:
        if key in metrics:
            value = fmt_value(metrics[key])
            if unknown and key in ("lost_messages", "lost_epoch_messages"):
                value += (f" counted + unknown for {unknown} subscriber(s) that saw their "
                          "channel's state lost")
            rows.append((label, value))
        elif key in unmeasured:
            rows.append((label, f"not measured: {unmeasured[key]}"))
    return rows


def fault_rows(summary: dict) -> list[list[str]]:
    """The injected faults as table cells: what, when, and what each cost."""
    rows = []
    for f in summary.get("faults") or []:
        rec = "-" if f["recovery_p50_s"] is None else \
            f"{f['recovery_p50_s']:.2f} / {f['recovery_max_s']:.2f} s ({f['channels_recovered']})"
        old = "-" if f.get("old_workers") is None else \
            f"{f['old_workers']} lingered {f['old_workers_lingered_s']:g} s"
        lost = str(f["lost_epoch_messages"]) + (
            f" (+{f['epoch_changes_loss_unknown']} unknown)"
            if f["epoch_changes_loss_unknown"] else "")
        at = f"{f['at_s']:g} s"
        spec = f.get("spec_at_s")
        if isinstance(spec, (int, float)) and abs(spec - f["at_s"]) >= 0.05:
            at += f" (spec {spec:g} s)"
        rows.append([at, str(f["fault"]), f"{f['lasted_s']:g} s",
                     str(f["failed_requests"]), str(f.get("connections_opened", "-")),
                     str(f["epoch_changes"]), lost, rec, old,
                     ("" if f.get("ok", True) else "NOT INJECTED: ") + str(f["detail"])])
    return rows


def failure_rows(summary: dict) -> list[list[str]]:
    """Failed requests by cause: the cause, who answered, how many, their share, which
    requests."""
    table = summary.get("failures") or []
    total = sum(e["count"] for e in table) or 1
    return [[e["cause"], e["source"], f"{e['count']:,}", f"{e['count'] / total:.1%}",
             ", ".join(f"{r} {n:,}" for r, n in sorted(e["requests"].items(),
                                                        key=lambda kv: -kv[1]))]
            for e in table]


FAILURE_HEADER = ["cause", "who", "failed", "share", "requests"]


def limit_rows(summary: dict) -> list[list[str]]:
    """Every limit the run reached, the first first: when, what, the evidence, the cure."""
    return [[f"{r['at_s']:g} s", r["what"], r["evidence"] + (
        f" (during the injected fault {r['during_fault']}: not counted as running out)"
        if r.get("during_fault") else ""), r["cure"] or "-"]
            for r in (summary.get("limits") or {}).get("reached", [])]


LIMIT_HEADER = ["first reached", "what ran out", "evidence", "cure"]


def ran_out_first(summary: dict) -> str:
    first = (summary.get("limits") or {}).get("first")
    return sentence(first) if first else "No limit was reached"


FAULT_HEADER = ["at", "fault", "lasted", "failed requests", "client reconnects", "epoch changes",
                "lost (epoch)", "recovery p50 / max (subscribers)", "old nginx workers",
                "what happened"]


def summary_markdown(fig: Figures) -> str:
    s = fig.summary
    lines = [f"# pollbench run: {s['label']}", "",
             f"- run folder: `{s['run']}`",
             f"- status: **{s['status']}**; measured {s['measured_s']:g} s after a "
             f"{s['warmup_s']:g} s warm-up",
             f"- load generator: {'**CPU-saturated: figures not to be trusted**' if s['loadgen_saturated'] else 'not saturated'}",
             "", "| figure | value |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in headline_rows(s)]
    if s.get("faults"):
        lines += ["", "## Injected faults (each until the next; red lines in the charts)", "",
                  "| " + " | ".join(FAULT_HEADER) + " |", "|" + "---|" * len(FAULT_HEADER)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |"
                  for row in fault_rows(s)]
    lines += ["", "## What ran out first", "", ran_out_first(s) + "."]
    if limit_rows(s):
        lines += ["", "| " + " | ".join(LIMIT_HEADER) + " |", "|" + "---|" * len(LIMIT_HEADER)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |"
                  for row in limit_rows(s)]
    if failure_rows(s):
        lines += ["", "## Failed requests by cause (whole run)", "",
                  "| " + " | ".join(FAILURE_HEADER) + " |", "|" + "---|" * len(FAILURE_HEADER)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |"
                  for row in failure_rows(s)]
    for title, items in (("Warnings", s["warnings"]), ("Notes", s["notes"])):
        if items:
            lines += ["", f"## {title}", ""] + [f"- {x}" for x in items]
    lines += ["", "All latencies are computed from the lossless HdrHistogram log "
              "(metrics/latency.hdr.jsonl), not from Locust's rounded percentiles.", ""]
    if s.get("failing"):
        lines += [f"**{s['failing']}**", ""]
    return "\n".join(lines)


HTML = jinja2.Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>pollbench report: {{ s.label }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; } td, th { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: left; }
td.v { text-align: right; font-variant-numeric: tabular-nums; }
.warn { background: #fff3cd; border-left: 4px solid #d39e00; padding: 0.5em 1em; }
.bad { background: #f8d7da; border-left: 4px solid #c82333; padding: 0.5em 1em; }
.note { color: #555; } img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0 1.5em; }
code { background: #f4f4f4; padding: 1px 4px; }
</style></head><body>
<h1>pollbench run report</h1>
<p><b>{{ s.label }}</b><br>run folder <code>{{ s.run }}</code>; status <b>{{ s.status }}</b>;
measured {{ s.measured_s }} s after a {{ s.warmup_s }} s warm-up (shaded grey in the charts).</p>
{% if s.failing %}<p class="bad">{{ s.failing }}</p>{% endif %}
{% if s.loadgen_saturated %}<p class="bad">The load generator was CPU-saturated: its latencies and rates are not to be trusted.</p>{% endif %}
{% for w in s.warnings %}<p class="warn">{{ w }}</p>{% endfor %}
<h2>Headline figures</h2>
<table><tr><th>figure</th><th>value</th></tr>
{% for label, value in rows %}<tr><td>{{ label }}</td><td class="v">{{ value }}</td></tr>{% endfor %}
</table>
{% if faults %}<h2>Injected faults</h2><p class="note">Each fault's costs count until the next fault; red lines mark them in the time charts. Times count from the load's first interval, as the charts' do; a fault spec ("9s:stop") counts from when Locust was up, earlier by its start-up: where they differ, both are shown.</p><table><tr>{% for h in fault_header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in faults %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</table>{% endif %}
<h2>What ran out first</h2><p>{{ first }}.</p>
{% if limits %}<table><tr>{% for h in limit_header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in limits %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</table>{% endif %}
{% if failures %}<h3>Failed requests by cause (whole run)</h3><table><tr>{% for h in failure_header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in failures %}<tr>{% for c in row %}<td{% if loop.index0 in (2, 3) %} class="v"{% endif %}>{{ c }}</td>{% endfor %}</tr>{% endfor %}</table>{% endif %}
{% for title, img in images %}<h2>{{ title }}</h2><img alt="{{ title }}" src="data:image/png;base64,{{ img }}">
{% endfor %}
{% if notes %}<h2>Notes</h2><ul>{% for n in notes %}<li class="note">{{ n }}</li>{% endfor %}</ul>{% endif %}
<p class="note">Latencies come from the lossless HdrHistogram log, not from Locust's rounded percentiles.
Configuration: <code>{{ config }}</code></p>
</body></html>
""", autoescape=True)


# The figures the chart processes draw: set before they are forked, so each inherits them
# (nothing large is pickled); None outside render_charts.
_FIGURES: Figures | None = None
MAX_CHART_PROCESSES = 4


def _draw(names: list[str]) -> list[tuple[str, bytes | None]]:
    """Each named chart of :data:`_FIGURES` as PNG bytes (None: its data is missing)."""
    assert _FIGURES is not None, "render_charts sets the figures first"
    drawn: list[tuple[str, bytes | None]] = []
    for name in names:
        func, _ = charts.CHARTS[name]
        figure = func(_FIGURES)
        if figure is None:
            drawn.append((name, None))
            continue
        buf = io.BytesIO()
        figure.savefig(buf, format="png", dpi=100)
        plt.close(figure)
        drawn.append((name, buf.getvalue()))
    return drawn


def _chart_child() -> None:
    """A chart process leaves Ctrl-C to its parent (which stops it) and dies quietly on
    SIGTERM, with none of the parent's handlers it inherited."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by its parent's fork


def chart_processes() -> int:
    """How many processes draw a report's charts: one per CPU this process may run on (at
    most :data:`MAX_CHART_PROCESSES`); one where forking is not safe (another thread runs:
    a lock it holds would stay held in the child; gevent has patched threading, as importing
    Locust does: the pool's result thread would never run) or not available."""
    monkey = sys.modules.get("gevent.monkey")  # Locust's: Pool's helper threads are greenlets
    if threading.active_count() > 1 or "fork" not in multiprocessing.get_all_start_methods() \
            or (monkey is not None and monkey.is_module_patched("threading")):
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cpus or 1, MAX_CHART_PROCESSES))


def render_charts(fig: Figures, out: Path, processes: int | None = None,
                  ) -> tuple[list[tuple[str, str]], list[str]]:
    """Save every chart the data allows; return (title, base64 PNG) pairs and notes.  The
    charts are drawn by ``processes`` forked processes (default :func:`chart_processes`;
    always one where that says forking is not safe), each a share of them; the result is the
    same whatever the number."""
    global _FIGURES
    names = list(charts.CHARTS)
    safe = chart_processes()
    n = max(1, min(processes or safe, len(names))) if safe > 1 else 1
    _FIGURES = fig
    try:
        if n == 1:
            drawn = dict(_draw(names))
        else:
            # Ctrl-C held back while the pool forks: one that lands in an at-fork handler
            # (logging's _releaseLock) is "ignored" there and lost (the report then ran on to
            # exit 0); once unblocked it is raised here, in plain code
            held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                pool = multiprocessing.get_context("fork").Pool(n, initializer=_chart_child)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
            with pool:
                shares = pool.map(_draw, [names[i::n] for i in range(n)])
                pool.close()  # the children end on their own; terminate() would kill them
                pool.join()
            drawn = dict(d for share in shares for d in share)
    finally:
        _FIGURES = None
    (out / "charts").mkdir(parents=True, exist_ok=True)
    images, notes = [], []
    for name, (_, title) in charts.CHARTS.items():
        png = drawn[name]
        if png is None:
            notes.append(f"chart '{title}' left out: the data it needs is missing")
            continue
        write_atomic(out / "charts" / f"{name}.png", png)
        images.append((title, base64.b64encode(png).decode()))
    return images, notes


def write_run_report(run_dir: Path, out: Path | None = None,
                     warmup_s: float | None = None) -> dict[str, Path]:
    run = load_run(run_dir)
    fig = compute(run, warmup_s)
    out = Path(out) if out else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    images, chart_notes = render_charts(fig, out)
    fig.summary["notes"] += chart_notes
    page = HTML.render(s=fig.summary, rows=headline_rows(fig.summary), images=images,
                       faults=fault_rows(fig.summary), fault_header=FAULT_HEADER,
                       first=ran_out_first(fig.summary), limits=limit_rows(fig.summary),
                       limit_header=LIMIT_HEADER, failures=failure_rows(fig.summary),
                       failure_header=FAILURE_HEADER,
                       notes=fig.summary["notes"],
                       config=html.escape(json.dumps(fig.summary["config"]))[:4000])
    paths = {"html": out / "report.html", "markdown": out / "summary.md",
             "json": out / "summary.json"}
    write_atomic(paths["json"], (json.dumps(fig.summary, indent=2) + "\n").encode())
    write_atomic(paths["markdown"], summary_markdown(fig).encode())
    write_atomic(paths["html"], page.encode())
    return paths
