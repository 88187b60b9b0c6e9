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

The second detector (``detector="edivisive"``) is E-Divisive means, as Apache Otava (Hunter)
uses it: the split of a segment that maximises the energy statistic of Matteson & James
(2014, alpha = 1) is a candidate step; it is kept when Student's t-test between the two sides
gives p <= :data:`EDIVISIVE_MAX_P` (0.001, Otava's default), and splitting goes on in the
segments it leaves; at the end every step is tested again against its neighbours and the
weakest dropped until all pass.  Its steps also need :data:`MIN_STEP`.  No permutation
test (Otava dropped it for the t-test too): the result is deterministic.
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
DETECTORS = catalog.TREND_DETECTORS
EDIVISIVE_MAX_P = 0.001
EDIVISIVE_MIN_SIZE = 2  # commits on each side of a candidate step


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


def _pelt_breaks(medians: np.ndarray, sigma: float) -> list[int]:
    import ruptures

    n = len(medians)
    # PELT on the L2 cost, in ruptures' C implementation (the linear kernel's cost is the L2
    # cost; its Python Pelt took 12 s on 2,500 commits, this one 8 ms)
    algo = ruptures.KernelCPD(kernel="linear", min_size=1).fit(medians.reshape(-1, 1))
    return [int(b) for b in algo.predict(pen=2 * sigma**2 * math.log(n)) if b < n]


def _energy_split(x: np.ndarray, min_size: int) -> tuple[int, float] | None:
    """The split of ``x`` with the largest energy statistic Q (alpha = 1) and that Q."""
    n = len(x)
    if n < 2 * min_size:
        return None
    d = np.abs(x[:, None] - x[None, :])
    c = np.zeros((n + 1, n + 1))
    c[1:, 1:] = d.cumsum(0).cumsum(1)  # c[i, j]: sum of d[:i, :j]

    def block(r0, r1, c0, c1):
        return c[r1, c1] - c[r0, c1] - c[r1, c0] + c[r0, c0]

    tau = np.arange(min_size, n - min_size + 1)
    m, k = tau.astype(float), (n - tau).astype(float)
    cross = block(0, tau, tau, n)
    left, right = block(0, tau, 0, tau), block(tau, n, tau, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        within_l = np.where(m > 1, left / (m * (m - 1)), 0.0)
        within_r = np.where(k > 1, right / (k * (k - 1)), 0.0)
    q = m * k / (m + k) * (2 * cross / (m * k) - within_l - within_r)
    best = int(np.argmax(q))
    return int(tau[best]), float(q[best])


def _t_p(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import ttest_ind

    if np.ptp(np.concatenate([a, b])) == 0:
        return 1.0
    # Student's (pooled variance): the noise is the machine's on both sides of a step, and a
    # side of 2-3 commits that happen to agree must not look like certainty (Welch's would)
    p = float(ttest_ind(a, b, equal_var=True).pvalue)
    return 1.0 if math.isnan(p) else p


def edivisive_breaks(values: np.ndarray, max_p: float = EDIVISIVE_MAX_P,
                     min_size: int = EDIVISIVE_MIN_SIZE) -> list[int]:
    """Step positions (index of the first point after each) by E-Divisive means with a
    t-test, as the module's text says."""
    n = len(values)
    found: list[int] = []
    while True:
        edges = [0, *sorted(found), n]
        best = None
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            split = _energy_split(values[a:b], min_size)
            if split is not None and (best is None or split[1] > best[1]):
                best = (a + split[0], split[1], a, b)
        if best is None:
            break
        at, _q, a, b = best
        if _t_p(values[a:at], values[at:b]) > max_p:
            break
        found.append(at)
    while found:  # each step against its final neighbours; drop the weakest until all pass
        found.sort()
        edges = [0, *found, n]
        ps = [_t_p(values[edges[i]:edges[i + 1]], values[edges[i + 1]:edges[i + 2]])
              for i in range(len(found))]
        worst = int(np.argmax(ps))
        if ps[worst] <= max_p:
            break
        found.pop(worst)
    return sorted(found)


def steps(metric: str, runs: pd.DataFrame, detector: str = "pelt") -> list[Step]:
    """The steps of ``metric`` over commits (see the module's text)."""
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}: one of {', '.join(DETECTORS)}")
    commits = per_commit(runs)
    n = len(commits)
    if n < 4:
        return []
    medians = commits["median"].to_numpy(dtype=float)
    sigma = _noise(medians)
    scale = max(abs(float(np.median(medians))), 1e-12)
    if sigma <= 1e-9 * scale:
        sigma = 1e-3 * scale  # a perfectly flat series: any real step stands out
    breaks = _pelt_breaks(medians, sigma) if detector == "pelt" else edivisive_breaks(medians)
    found = []
    edges = [0, *breaks, n]
    for i, b in enumerate(breaks):
        before = float(np.median(medians[edges[i]:b]))
        after = float(np.median(medians[b:edges[i + 2]]))
        if abs(after - before) < MIN_STEP * max(abs(before), 1e-12):
            continue
        if detector == "pelt" and abs(after - before) < 3 * sigma:
            continue  # E-Divisive's t-test has judged the noise already
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


def trend_page(tables: dict[str, pd.DataFrame], title: str,
               detector: str = "pelt") -> tuple[str, list[Step]]:
    """A self-contained HTML page: per metric a chart over commits (repetitions, spread,
    machine changes, steps) and the list of steps; returns the page and every step."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:1em auto}"
             "td,th{padding:2px 8px;text-align:left}</style>",
             f"<h1>{html.escape(title)}</h1>"]
    everything = []
    for metric, runs in tables.items():
        commits = per_commit(runs)
        found = steps(metric, runs, detector)
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
