"""Trends over the results history: steps (change points) per metric, and a trend page.

Input is a plain table (pollbench hands it over from its history store): one row per run
with ``started_at``, ``commit``, ``machine`` and the metric's ``value``.  Runs of one commit
are its repetitions; commits are ordered by their first run.

Steps are found on the per-commit medians with PELT (``ruptures.KernelCPD``, linear
kernel, i.e. the L2 cost) and a
BIC-like penalty from the measured noise (``2 * sigma^2 * log(n)``, sigma from the median
absolute deviation of successive differences), then kept only when the medians on each
side differ by more than the noise of the repetitions could explain (at least 3 sigma of a
median and :data:`MIN_STEP` relative).  Each step is reported between the last commit
before it and the first commit after it.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import catalog

MIN_STEP = 0.03  # steps smaller than 3 % are not reported


def _describe(metric: str) -> tuple[str, str | None]:
    """(unit, better direction) from the catalog; ('', None) for a name it lacks."""
    try:
        unit, better, _ = catalog.describe(metric)
    except KeyError:
        return "", None
    return unit, better


@dataclass
class Step:
    metric: str
    before_commit: str   # the last commit before the step
    after_commit: str    # the first commit after it
    at_time: float       # first run of after_commit
    before: float        # median of the commits before (up to the previous step)
    after: float         # median of the commits after (up to the next step)
    machine_changed: bool = False  # the runs before and after ran on different machines

    @property
    def change(self) -> float:
        return (self.after - self.before) / self.before if self.before else math.inf

    def worse(self) -> bool | None:
        better = _describe(self.metric)[1]
        if better == catalog.LOWER:
            return self.after > self.before
        if better == catalog.HIGHER:
            return self.after < self.before
        return None

    def line(self) -> str:
        unit = _describe(self.metric)[0]
        verdict = {True: "worse", False: "better", None: "changed"}[self.worse()]
        return (f"{self.metric}: {self.before:.4g} -> {self.after:.4g} {unit} "
                f"({self.change:+.1%}, {verdict}) between {self.before_commit[:12]} and "
                f"{self.after_commit[:12]}"
                + ("; the machine changed there too" if self.machine_changed else ""))


def per_commit(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per commit (runs without a commit are their own point), in time order:
    commit, first, median, low, high, n, machine."""
    runs = runs.dropna(subset=["value"]).copy()
    if runs.empty:
        return pd.DataFrame(columns=["commit", "first", "median", "low", "high", "n", "machine"])
    runs["commit"] = runs["commit"].fillna(runs["run_key"])
    g = runs.sort_values("started_at").groupby("commit", sort=False)
    out = pd.DataFrame({"first": g["started_at"].min(), "median": g["value"].median(),
                        "low": g["value"].min(), "high": g["value"].max(),
                        "n": g["value"].size(), "machine": g["machine"].first()})
    return out.sort_values("first").reset_index()


def _noise(values: np.ndarray) -> float:
    if values.size < 3:
        return float(np.std(values)) if values.size else 0.0
    diffs = np.diff(values)
    return float(np.median(np.abs(diffs - np.median(diffs))) * 1.4826 / math.sqrt(2))


def steps(metric: str, runs: pd.DataFrame) -> list[Step]:
    """The steps of ``metric`` over commits (see the module's text)."""
    commits = per_commit(runs)
    n = len(commits)
    if n < 4:
        return []
    import ruptures

    medians = commits["median"].to_numpy(dtype=float)
    sigma = _noise(medians)
    scale = max(abs(float(np.median(medians))), 1e-12)
    if sigma <= 1e-9 * scale:
        sigma = 1e-3 * scale  # a perfectly flat series: any real step stands out
    # PELT on the L2 cost, in ruptures' C implementation (the linear kernel's cost is the L2
    # cost; its Python Pelt took 12 s on 2,500 commits, this one 8 ms)
    algo = ruptures.KernelCPD(kernel="linear", min_size=1).fit(medians.reshape(-1, 1))
    breaks = [int(b) for b in algo.predict(pen=2 * sigma**2 * math.log(n)) if b < n]
    found = []
    edges = [0, *breaks, n]
    for i, b in enumerate(breaks):
        before = float(np.median(medians[edges[i]:b]))
        after = float(np.median(medians[b:edges[i + 2]]))
        if abs(after - before) < 3 * sigma or \
                abs(after - before) < MIN_STEP * max(abs(before), 1e-12):
            continue
        found.append(Step(metric, str(commits["commit"][b - 1]), str(commits["commit"][b]),
                          float(commits["first"][b]), before, after,
                          commits["machine"][b - 1] != commits["machine"][b]))
    return found


def _chart(metric: str, runs: pd.DataFrame, commits: pd.DataFrame, found: list[Step]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.4))
    x = np.arange(len(commits))
    position = dict(zip(commits["commit"], x, strict=True))
    r = runs.dropna(subset=["value"]).copy()
    r["commit"] = r["commit"].fillna(r["run_key"])
    ax.scatter([position[c] for c in r["commit"]], r["value"], s=8, color="#90a4ae",
               label="repetitions", zorder=2)
    ax.plot(x, commits["median"], color="#1565c0", lw=1.5, label="median per commit", zorder=3)
    ax.fill_between(x, commits["low"], commits["high"], color="#bbdefb", alpha=0.6, lw=0,
                    label="spread (min-max)")
    machines = commits["machine"].fillna("?").tolist()
    for i in range(1, len(machines)):
        if machines[i] != machines[i - 1]:
            ax.axvline(i - 0.5, color="#6a1b9a", ls=":", lw=1.2)
            ax.text(i - 0.45, ax.get_ylim()[1], "machine changed", color="#6a1b9a", fontsize=7,
                    va="top")
    for s in found:
        i = position[s.after_commit]
        ax.axvline(i - 0.5, color="#c62828", lw=1.5)
        ax.text(i - 0.45, ax.get_ylim()[0], f" step {s.change:+.1%}", color="#c62828",
                fontsize=8, va="bottom")
    unit = _describe(metric)[0]
    ax.set_title(f"{metric} ({unit}) over commits, oldest first", fontsize=10, loc="left")
    step = max(1, len(x) // 12)
    ax.set_xticks(x[::step])
    ax.set_xticklabels([str(c)[:8] for c in commits["commit"][::step]], rotation=30,
                       fontsize=7)
    ax.grid(axis="y", color="#eee")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def trend_page(tables: dict[str, pd.DataFrame], title: str) -> tuple[str, list[Step]]:
    """A self-contained HTML page: per metric a chart over commits (repetitions, spread,
    machine changes, steps) and the list of steps; returns the page and every step."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:1em auto}"
             "td,th{padding:2px 8px;text-align:left}</style>",
             f"<h1>{html.escape(title)}</h1>"]
    everything = []
    for metric, runs in tables.items():
        commits = per_commit(runs)
        found = steps(metric, runs)
        everything += found
        parts.append(f"<h2>{html.escape(metric)}</h2>")
        if commits.empty:
            parts.append("<p>no values</p>")
            continue
        parts.append(f"<img alt='{html.escape(metric)}' src='data:image/png;base64,"
                     f"{_chart(metric, runs, commits, found)}'>")
        parts.append(f"<p>{len(runs)} runs over {len(commits)} commits.</p>")
        if found:
            parts.append("<table><tr><th>step</th><th>between</th><th>and</th>"
                         "<th>change</th></tr>")
            for s in found:
                parts.append(f"<tr><td>{html.escape(s.line())}</td>"
                             f"<td>{html.escape(s.before_commit)}</td>"
                             f"<td>{html.escape(s.after_commit)}</td>"
                             f"<td>{s.change:+.1%}</td></tr>")
            parts.append("</table>")
        else:
            parts.append("<p>no step detected</p>")
    return "\n".join(parts) + "\n", everything
