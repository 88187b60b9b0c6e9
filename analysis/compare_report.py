"""Side-by-side report of several runs (a sweep, or runs picked by hand).

Runs with the same configuration are repetitions of one cell: their figures are
averaged with a 95 % confidence interval (Student's t over repetitions).  Cells
are labelled by the settings that differ between them, never by run id.

    write_comparison([run_a, run_b, run_c], out)
"""

from __future__ import annotations

import base64
import html as html_mod
import io
import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from analysis.atomic import write_atomic  # noqa: E402
from analysis.catalog import COMPARED_FIGURES, compared_in  # noqa: E402
from analysis.charts import plain_ticks, spectrum_axis, spectrum_x  # noqa: E402
from analysis.figures import Figures, compute, spectrum  # noqa: E402
from analysis.hdr import new_histogram  # noqa: E402
from analysis.load import AnalysisError, load_run  # noqa: E402

# Settings that never describe a configuration (they differ between any two runs).
IGNORED_KEYS = {"stack.port", "stack.backend_ports", "stack.redis.port",
                "parameters.user_classes"}
# (metric, label) of every figure the side-by-side table shows, in order
COMPARED = [(m, c.label) for m, c in COMPARED_FIGURES.items()]
CPU = compared_in("cpu")


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list) else v
    return out


def config_of(fig: Figures) -> dict:
    flat = flatten(fig.summary["config"])
    return {k: v for k, v in flat.items() if k not in IGNORED_KEYS}


def short_key(key: str) -> str:
    return key.split(".")[-1]


def differing_keys(configs: list[dict]) -> list[str]:
    keys = sorted(set().union(*configs))
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


@dataclass
class RunGroup:
    """Runs of one configuration (a sweep's cell, or runs whose settings are the same)."""

    label: str
    config: dict
    figures: list[Figures]

    def values(self, metric: str) -> list[float]:
        out = []
        for f in self.figures:
            m = f.summary["metrics"].get(metric)
            if m and m["value"] is not None:
                out.append(float(m["value"]))
        return out

    def mean_ci(self, metric: str) -> tuple[float | None, float | None]:
        v = self.values(metric)
        if not v:
            return None, None
        mean = float(np.mean(v))
        if len(v) < 2:
            return mean, None
        half = stats.t.ppf(0.975, len(v) - 1) * np.std(v, ddof=1) / math.sqrt(len(v))
        return mean, float(half)

    def merged(self, family: str):
        h = new_histogram()
        for f in self.figures:
            h.add(f.families[family].total)
        return h


def group_cells(figs: list[Figures], labels: list[str] | None = None) -> list[RunGroup]:
    """Runs with the same configuration form a cell, labelled by the settings that differ;
    ``labels`` (one per run, e.g. a sweep's cell names) group and name them instead, in the
    order given."""
    configs = [config_of(f) for f in figs]
    diff = differing_keys(configs)
    cells: dict[str, RunGroup] = {}
    for i, (f, cfg) in enumerate(zip(figs, configs, strict=True)):
        label = labels[i] if labels else (
            ", ".join(f"{short_key(k)}={cfg.get(k)}" for k in diff) or "same configuration")
        if label not in cells:
            cells[label] = RunGroup(label, {k: cfg.get(k) for k in diff}, [])
        cells[label].figures.append(f)
    if labels:
        return list(cells.values())
    return sorted(cells.values(), key=lambda c: [_sort_key(c.config[k]) for k in diff])


def _sort_key(value):
    """Numbers in numeric order, then everything else by its text (None first)."""
    if value is None:
        return (0, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value, "")
    return (2, 0, str(value))


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _bars(ax, cells: list[RunGroup], metrics: list[tuple[str, str]], ylabel: str, log=False):
    n = len(metrics)
    width = 0.8 / n
    x = np.arange(len(cells))
    for i, (metric, name) in enumerate(metrics):
        means, errs = zip(*(c.mean_ci(metric) for c in cells), strict=True)
        heights = [m if m is not None else 0 for m in means]
        yerr = [e if e is not None else 0 for e in errs]
        bars = ax.bar(x + (i - (n - 1) / 2) * width, heights, width, yerr=yerr, capsize=3,
                      label=name)
        ax.bar_label(bars, labels=[f"{m:.3g}" if m is not None else "n/a" for m in means],
                     fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(tick_labels(cells), fontsize=8)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
        plain_ticks(ax.yaxis)
        ax.set_ylim(top=ax.get_ylim()[1] * 2.5)  # room for the value labels
    else:
        # room for the whiskers and the value labels above them
        top = max([(c.mean_ci(m)[0] or 0) + (c.mean_ci(m)[1] or 0)
                   for c in cells for m, _ in metrics] + [0])
        ax.set_ylim(0, top * 1.25 if top > 0 else 1)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)


def tick_labels(cells: list[RunGroup]) -> list[str]:
    """The labels themselves when short; otherwise letters, keyed in the figure's footer."""
    if all(len(c.label) <= 40 for c in cells):
        # narrower lines as cells get more numerous (11-inch figure: ~110 characters in all)
        width = max(10, min(28, 100 // len(cells)))
        return [textwrap.fill(c.label, width) for c in cells]
    return [chr(ord("A") + i) for i in range(len(cells))]


def add_key(fig, cells: list[RunGroup]) -> None:
    if all(len(c.label) <= 40 for c in cells):
        return
    key = "\n".join(f"{chr(ord('A') + i)}: {c.label}" for i, c in enumerate(cells))
    fig.text(0.01, 0.005, key, fontsize=8, va="bottom", ha="left", family="monospace")
    fig.subplots_adjust(bottom=0.08 + 0.03 * len(cells))


def _wrap(label: str, width: int = 28) -> str:
    parts, line = [], ""
    for word in label.split(", "):
        if line and len(line) + len(word) > width:
            parts.append(line)
            line = word
        else:
            line = f"{line}, {word}" if line else word
    parts.append(line)
    return "\n".join(parts)


def comparison_charts(cells: list[RunGroup]) -> list[tuple[str, str]]:
    images = []
    reps = max(len(c.figures) for c in cells)
    note = (f"bars: mean of up to {reps} repetitions, whiskers: 95% confidence interval"
            if reps > 1 else "one run per configuration: no confidence interval")
    for family in ("deliveries", "requests"):
        metrics = compared_in(family)
        if not any(c.values(metrics[0][0]) for c in cells):
            continue
        f, ax = plt.subplots(figsize=(11, 4.8))
        means = [float(v) for v in (c.mean_ci(m)[0] for c in cells for m, _ in metrics) if v]
        # one cell far off (a failing one) must not flatten the others: log scale then
        _bars(ax, cells, metrics, "latency (ms)",
              log=bool(means) and max(means) / min(means) > 30)
        what = "Delivery latency (publish -> receipt)" if family == "deliveries" else \
            "Plain request latency"
        f.suptitle(f"{what} by configuration", fontweight="bold")
        ax.set_title(note, fontsize=9, color="#444")
        f.tight_layout()
        add_key(f, cells)
        images.append((f"{what} by configuration", _png(f)))
    f, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, (metric, name), ylabel in zip(
            axes.ravel(), compared_in("throughput") + compared_in("reuse")[:1],
            ["requests/s", "messages/s", "failed / all requests", "requests per connection"],
            strict=True):
        if metric == "requests_per_connection_client":
            _bars(ax, cells, compared_in("reuse"), ylabel)
            ax.set_title("connection reuse, both hops", fontsize=9)
        else:
            _bars(ax, cells, [(metric, name)], ylabel)
            ax.set_title(name, fontsize=9)
    f.suptitle("Throughput, errors and connection reuse by configuration", fontweight="bold")
    f.tight_layout()
    add_key(f, cells)
    images.append(("Throughput, errors and connection reuse", _png(f)))
    if any(c.values(CPU[0][0]) for c in cells):
        f, ax = plt.subplots(figsize=(11, 4.8))
        _bars(ax, cells, CPU, "CPU (% of one core)")
        f.suptitle("CPU per component by configuration (mean after the warm-up)",
                   fontweight="bold")
        ax.set_title(note + "; 100% = one core, the machine has "
                     f"{cells[0].figures[0].run.info.get('host', {}).get('cpu_count', '?')}",
                     fontsize=9, color="#444")
        f.tight_layout()
        add_key(f, cells)
        images.append(("CPU per component by configuration", _png(f)))
    for unit, what in (("delivery", "deliveries"), ("request", "requests")):
        metrics = [(m, label) for m, label in compared_in(f"cost_{unit}")
                   if any(c.values(m) for c in cells)]
        if not metrics:
            continue
        f, ax = plt.subplots(figsize=(11, 4.8))
        _bars(ax, cells, metrics, f"CPU-s per 1,000 {what}")
        f.suptitle(f"Cost per 1,000 {what} by configuration (CPU of each component over the "
                   "measured window)", fontweight="bold")
        ax.set_title(note + "; the stack is nginx + backends + Redis", fontsize=9,
                     color="#444")
        f.tight_layout()
        add_key(f, cells)
        images.append((f"Cost per 1,000 {what} by configuration", _png(f)))
        break  # per delivery where there are deliveries; per request otherwise
    f, ax = plt.subplots(figsize=(11, 5))
    drawn = False
    for c in cells:
        df = spectrum(c.merged("deliveries"))
        if not df.empty:
            ax.plot(spectrum_x(df["percentile"]), df["latency_ms"], label=_wrap(c.label, 80))
            drawn = True
    if drawn:
        spectrum_axis(ax)
        ax.legend(fontsize=8, loc="upper left")
        f.suptitle("Delivery latency by percentile, configurations overlaid "
                   "(repetitions merged)", fontweight="bold")
        f.tight_layout()
        images.append(("Delivery latency percentile spectra", _png(f)))
    else:
        plt.close(f)
    return images


def ran_out_first(cell: RunGroup) -> str:
    """What ran out first in a cell's runs (analysis.limits), in the words of a run's report:
    each limit named once, with how many of the runs reached it first and when."""
    firsts: dict[str, list[float]] = {}
    for f in cell.figures:
        first = (f.summary.get("limits") or {}).get("first")
        if first:
            firsts.setdefault(first["what"], []).append(first["at_s"])
    if not firsts:
        return "nothing"
    n = len(cell.figures)
    return "; ".join(f"{what} ({len(ts)} of {n} runs, at {min(ts):g}-{max(ts):g} s)"
                     if len(ts) > 1 else f"{what} ({len(ts)} of {n} runs, at {ts[0]:g} s)"
                     for what, ts in sorted(firsts.items(), key=lambda kv: -len(kv[1])))


def comparison_table(cells: list[RunGroup]) -> pd.DataFrame:
    rows = []
    for c in cells:
        row = {"configuration": c.label, "runs": len(c.figures)}
        for metric, name in COMPARED:
            mean, half = c.mean_ci(metric)
            unmeasured = any(metric in (f.summary.get("not_measured") or {}) for f in c.figures)
            row[name] = ("not measured" if mean is None and unmeasured else
                         "n/a" if mean is None else
                         f"{mean:.4g}" + (f" ± {half:.2g}" if half is not None else ""))
        row["ran out first"] = ran_out_first(c)
        rows.append(row)
    return pd.DataFrame(rows)


PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{title}</title><style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }} td, th {{ padding: 4px 8px; border-bottom: 1px solid #ddd; }}
img {{ max-width: 100%; border: 1px solid #eee; margin: 0.5em 0 1.5em; }} .warn {{ background: #fff3cd; padding: .5em 1em; }}
</style></head><body><h1>{title}</h1>
<p>Configurations are labelled by the settings that differ between them. Figures are the mean
over repetitions ± the half-width of a 95% confidence interval (Student's t) where a
configuration was repeated. All latencies come from the lossless HdrHistogram logs.</p>
{warnings}{table}{images}</body></html>"""


def write_comparison(run_dirs: list[Path], out: Path, warmup_s: float | None = None,
                     rank_by: str | None = None, rank_threshold: float = 0.05,
                     title: str | None = None, labels: list[str] | None = None,
                     rank_within: list[str] | None = None,
                     cost_rank_by: str | None = None) -> dict:
    """Charts, table (and with ``rank_by`` a ranking with noise verdicts) of several runs;
    ``labels``: a name per run (runs with the same name are repetitions of one cell);
    ``rank_within``: a group text per run: cells are ranked within their group.
    ``cost_rank_by``: the cost figure ranked beside ``rank_by`` (default: the stack's per
    delivery, else per request)."""
    from analysis.ranking import rank_groups, ranking_markdown

    if len(run_dirs) < 2:
        raise AnalysisError("a comparison needs at least two runs")
    figs = [compute(load_run(p), warmup_s) for p in run_dirs]
    cells = group_cells(figs, labels)
    out.mkdir(parents=True, exist_ok=True)
    images = comparison_charts(cells)
    table = comparison_table(cells)
    # rank_within names a group per run, so it comes with labels (a sweep's cell names)
    groups = dict(zip(labels, rank_within, strict=True)) if labels and rank_within else {}
    ranking = rank_groups(cells, groups, rank_by, rank_threshold) if rank_by else []
    # every ranked sweep is ranked on its cost too (the stack's, per delivery where there
    # are deliveries): what its settings cost where latency may not tell them apart
    cost_by = (cost_rank_by or cost_metric(cells)) \
        if rank_by and not rank_by.startswith("cpu_per_k") else None
    cost_ranking = rank_groups(cells, groups, cost_by, rank_threshold) if cost_by else []
    rankings = [(m, rows) for m, rows in ((rank_by, ranking), (cost_by, cost_ranking)) if m]
    ranking_md = "\n\n".join(ranking_markdown(rows, m) for m, rows in rankings)
    warnings = [f"{f.summary['run']}: {w}" for f in figs for w in f.summary["warnings"]]
    warnings += [f"{f.summary['run']}: the load generator was CPU-saturated; its figures are "
                 "void" for f in figs if f.summary["loadgen_saturated"]]
    ranking_html = "".join(_ranking_html(rows, m, rank_threshold) for m, rows in rankings
                           if rows)
    html = PAGE.format(
        n=len(figs), title=html_mod.escape(title or f"pollbench comparison of {len(figs)} runs"),
        table=ranking_html + "<h2>Figures by configuration</h2>"
        + table.to_html(index=False, escape=True),
        warnings="".join(f'<p class="warn">{w}</p>' for w in warnings),
        images="".join(f'<h2>{t}</h2><img alt="{t}" src="data:image/png;base64,{i}">'
                       for t, i in images))
    summary = {"schema_version": 1, "kind": "comparison",
               "runs": [str(p) for p in run_dirs],
               "cells": [{"label": c.label, "config": c.config,
                          "runs": [f.summary["run"] for f in c.figures],
                          "ran_out_first": ran_out_first(c),
                          "metrics": {m: dict(zip(("mean", "ci95_half_width"), c.mean_ci(m),
                                                  strict=True)) for m, _ in COMPARED}}
                         for c in cells],
               "warnings": warnings,
               "ranking": {"metric": rank_by, "threshold": rank_threshold,
                           "rows": [r.as_dict() for r in ranking]} if rank_by else None,
               "cost_ranking": {"metric": cost_by, "threshold": rank_threshold,
                                "rows": [r.as_dict() for r in cost_ranking]} if cost_by else None}
    paths = {"html": out / "report.html", "markdown": out / "summary.md",
             "json": out / "summary.json"}
    write_atomic(paths["html"], html.encode())
    heading = f"# {title or 'pollbench comparison'}\n\n"
    write_atomic(paths["markdown"], (heading + (ranking_md + "\n\n" if ranking_md else "")
                                     + markdown_table(table) + "\n").encode())
    write_atomic(paths["json"], (json.dumps(summary, indent=2) + "\n").encode())
    return paths


def cost_metric(cells: list[RunGroup]) -> str | None:
    """The stack's cost per delivery where any cell delivered, else per request; None when no
    run measured a cost."""
    for metric in ("cpu_per_kdelivery_stack", "cpu_per_krequest_stack"):
        if any(c.values(metric) for c in cells):
            return metric
    return None


def _ranking_html(rows, metric: str, threshold: float) -> str:
    body = "".join(
        "<tr>" + "".join(f"<td>{html_mod.escape(str(v))}</td>" for v in (
            r.group, r.rank or "-", r.label, r.runs, "n/a" if r.value is None else f"{r.value:.4g}",
            "" if r.change_vs_best is None else f"{r.change_vs_best:+.1%}",
            r.verdict + (" (load generator saturated: void)" if r.void else ""),
            "" if r.p_value is None else f"{r.p_value:.3g}", r.method, r.note)) + "</tr>"
        for r in rows)
    return (f"<h2>Ranking by {html_mod.escape(str(metric))}</h2><p>Each configuration "
            f"against the best (of its group, where cells differ in load): worse only when "
            f"beyond {threshold:.0%} and significant (Mann-Whitney U, alpha 0.05); otherwise "
            "within noise.</p>"
            "<table><tr><th>ranked within</th><th>rank</th><th>configuration</th><th>runs</th>"
            "<th>value</th><th>vs best</th><th>verdict</th><th>p</th>"
            f"<th>samples</th><th>note</th></tr>{body}</table>")


def markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "/") for v in row) + " |")
    return "\n".join(lines)
