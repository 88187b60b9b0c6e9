"""Is the candidate worse than the baseline?  Threshold AND significance, defined once here.

A metric regresses only when both hold:

1. its change exceeds its threshold (default 10 %; a cost per delivery 3 %, the catalog's
   own) in the worse direction; the change is relative, of the medians: (candidate -
   baseline) / baseline; for interleaved pairs, the median of each pair's own change (the
   machine's drift between rounds cancels in it as in the test);
2. the difference is significant: a two-sided Mann-Whitney U test (as asv uses)
   over the samples of each side, its p-value adjusted by Holm's step-down
   method over every compared metric measured on both sides, below ``alpha``
   (default 0.05).  So the chance that a check with no real change flags any of
   its metrics stays under ``alpha``, however many metrics it compares.

Samples: one value per repetition when both sides have enough repetitions for
Holm's strictest level (``alpha / metrics``; 6 a side at 0.05 over 11 metrics);
otherwise, for latency percentiles, the per-10-s-window values of every
repetition pooled.  A side too small to ever reach that level makes a change
beyond the threshold "insufficient data", never a guess.

Every metric also gets the smallest change the comparison could have detected
(``detectable``): the relative shift that Mann-Whitney finds at Holm's strictest
level with 80 % power, for normal noise with the measured pooled spread.  A
"no regression" verdict thus says how large a regression it could have missed:
the larger of that and the threshold.

A figure measured against a yardstick (``cpu_relative_backends``: the backends' CPU per
CPU-second of nginx and the load generator) is judged only when every run names the same
yardstick; otherwise it is "not measured", and says why.

Absolute gates need no baseline: any lost or duplicate message, an error rate
above its cap; and a CPU-saturated load generator voids the measurement.

    v = judge("delivery_latency_p99", base=[10, 11, 10, 12], cand=[14, 15, 14, 16],
              better="lower", threshold=0.10, alpha=0.05)
    v.status   # "regression"
"""

from __future__ import annotations

import functools
import math
import statistics
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from analysis import catalog

DEFAULT_THRESHOLD = 0.10
DEFAULT_ALPHA = 0.05
DEFAULT_ERROR_RATE_CAP = 0.001
MIN_SAMPLES = 4  # the fewest a side for one test at 0.05 (2 / C(8, 4) = 0.029)
DEFAULT_POWER = 0.8

# metric -> (which way is better, summary window series usable as samples or None)
COMPARED_METRICS: dict[str, tuple[str, str | None]] = {
    m: (catalog.better(m), series) for m, series in catalog.COMPARED.items()}
GATE_METRICS = catalog.GATES

OK, REGRESSION, IMPROVEMENT, INSUFFICIENT, NOT_MEASURED, GATE_FAILED, VOID, SHOWN = (
    "ok", "regression", "improvement", "insufficient data", "not measured", "gate failed",
    "void", "shown")


class ThresholdsError(Exception):
    """A thresholds file that cannot be used; the message says what to fix."""


@dataclass
class Thresholds:
    default: float = DEFAULT_THRESHOLD
    alpha: float = DEFAULT_ALPHA
    error_rate_cap: float = DEFAULT_ERROR_RATE_CAP
    per_metric: dict[str, float] = field(default_factory=dict)

    def for_metric(self, metric: str) -> float:
        """The file's [metrics.NAME] threshold, else the metric's own (the catalog's: 3 % for
        a cost per delivery), else the default."""
        return self.per_metric.get(metric, catalog.THRESHOLDS.get(metric, self.default))


def read_thresholds(path: Path | None) -> Thresholds:
    """TOML: ``[defaults] threshold / alpha / error_rate_cap`` and ``[metrics.NAME] threshold``."""
    if path is None:
        return Thresholds()
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ThresholdsError(f"thresholds file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ThresholdsError(f"thresholds file {path} is not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ThresholdsError(f"thresholds file {path} is not UTF-8 text (byte {e.start}); "
                              "save it as UTF-8") from None
    except OSError as e:
        raise ThresholdsError(f"thresholds file {path} cannot be read ({e.strerror})") from None
    unknown = set(data) - {"defaults", "metrics"}
    if unknown:
        raise ThresholdsError(f"thresholds file {path}: unknown section(s) {sorted(unknown)}; "
                              "use [defaults] and [metrics.<name>]")
    t = Thresholds()
    defaults = data.get("defaults", {})
    for key, value in defaults.items():
        if key not in ("threshold", "alpha", "error_rate_cap"):
            raise ThresholdsError(f"thresholds file {path}: unknown [defaults] key {key!r}; "
                                  "use threshold, alpha or error_rate_cap")
        _check_fraction(path, f"defaults.{key}", value, upper=1.0 if key != "threshold" else 10)
    t.default = defaults.get("threshold", t.default)
    t.alpha = defaults.get("alpha", t.alpha)
    t.error_rate_cap = defaults.get("error_rate_cap", t.error_rate_cap)
    for metric, table in data.get("metrics", {}).items():
        if metric not in COMPARED_METRICS:
            raise ThresholdsError(f"thresholds file {path}: unknown metric {metric!r}; known: "
                                  + ", ".join(COMPARED_METRICS))
        if not isinstance(table, dict) or set(table) != {"threshold"}:
            raise ThresholdsError(f"thresholds file {path}: [metrics.{metric}] takes exactly "
                                  "one key, threshold")
        _check_fraction(path, f"metrics.{metric}.threshold", table["threshold"], upper=10)
        t.per_metric[metric] = table["threshold"]
    return t


def _check_fraction(path, key: str, value, upper: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not 0 <= value <= upper:
        raise ThresholdsError(f"thresholds file {path}: {key} must be a number from 0 to "
                              f"{upper:g} (a fraction: 0.10 is 10 %), not {value!r}")


@dataclass
class Verdict:
    metric: str
    status: str
    baseline: float | None
    candidate: float | None
    change: float | None  # relative, of the medians; positive = larger
    threshold: float | None
    p_value: float | None
    method: str
    n_baseline: int
    n_candidate: int
    explanation: str
    p_adjusted: float | None = None  # Holm, over the compared metrics
    detectable: float | None = None  # relative change found with 80 % power (see module doc)
    family: int = 1  # how many metrics the p-value was adjusted over
    candidate_low: float | None = None   # the candidate runs' lowest figure (the spread
    candidate_high: float | None = None  # trackers chart), and highest

    def as_dict(self) -> dict:
        return asdict(self)


def relative_change(base: float, cand: float) -> float:
    if base == 0:
        return 0.0 if cand == 0 else math.copysign(math.inf, cand)
    return (cand - base) / abs(base)


def min_p_value(n1: int, n2: int, paired: bool = False) -> float:
    """The smallest two-sided p-value an exact Mann-Whitney test of n1 vs n2 samples gives
    (paired: the Wilcoxon signed-rank test of n1 pairs)."""
    if paired:
        return 2 / 2 ** n1 if n1 else 1.0
    return 2 / math.comb(n1 + n2, n1) if n1 and n2 else 1.0


def min_samples(level: float, paired: bool = False) -> int:
    """The fewest samples a side (equal sides) for which the test can reach ``level``."""
    n = 1
    while min_p_value(n, n, paired) >= level:
        n += 1
    return n


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given (family-wise error control)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@functools.lru_cache(maxsize=256)
def detectable_factor(n1: int, n2: int, level: float, power: float = DEFAULT_POWER,
                      paired: bool = False) -> float:
    """The shift, in standard deviations of normal noise, that a two-sided Mann-Whitney test
    of n1 vs n2 samples finds at ``level`` with probability ``power``; inf when the sizes
    cannot reach ``level`` at all.  Paired: the Wilcoxon signed-rank test of n1 pairs, in
    standard deviations of the pairs' differences.  Simulated (fixed seed: the answer is
    reproducible) for small samples, where the textbook normal approximation promises too
    much power."""
    if min_p_value(n1, n2, paired) >= level:
        return math.inf
    from scipy.stats import mannwhitneyu, norm, wilcoxon

    if n1 + n2 > 60:  # large samples: the asymptotic formula is accurate (ARE 3/pi)
        spread = 1 / math.sqrt(n1) if paired else math.sqrt(1 / n1 + 1 / n2)
        return (norm.ppf(1 - level / 2) + norm.ppf(power)) * spread / math.sqrt(3 / math.pi)
    import numpy as np

    rng = np.random.default_rng(20261128)
    x = rng.standard_normal((2000, n1))
    y = rng.standard_normal((2000, n2))

    def found(shift: float) -> bool:
        p = wilcoxon(x + shift, axis=1).pvalue if paired else \
            mannwhitneyu(x, y + shift, axis=1).pvalue
        return float(np.mean(p < level)) >= power

    lo, hi = 0.0, 1.0
    while not found(hi):
        lo, hi = hi, hi * 2
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if found(mid) else (mid, hi)
    return hi


def detectable_change(base: list[float], cand: list[float], level: float,
                      power: float = DEFAULT_POWER, paired: bool = False) -> float | None:
    """The relative change (of the baseline median) these samples could have shown at
    ``level`` with ``power``, from their pooled spread (paired: the spread of the pairs'
    differences); None when it cannot be estimated."""
    n1, n2 = len(base), len(cand)
    if n1 < 2 or n2 < 2:
        return None
    b = statistics.median(base)
    if b == 0:
        return None
    factor = detectable_factor(n1, n2, level, power, paired)
    if paired:
        spread = statistics.stdev([c - a for a, c in zip(base, cand, strict=True)])
    else:
        spread = math.sqrt(((n1 - 1) * statistics.variance(base) +
                            (n2 - 1) * statistics.variance(cand)) / (n1 + n2 - 2))
    if spread == 0:
        return 0.0
    return factor * spread / abs(b)


def _p_value(base: list[float], cand: list[float], paired: bool = False) -> float:
    """Two-sided: Mann-Whitney U of the two samples, or (paired) Wilcoxon's signed-rank test
    of the pairs' differences (base[i] and cand[i] ran next to each other)."""
    if paired:
        differences = [c - b for b, c in zip(base, cand, strict=True)]
        if not any(differences):
            return 1.0
        from scipy.stats import wilcoxon

        return float(wilcoxon(differences).pvalue)
    if len(set(base) | set(cand)) == 1:
        return 1.0
    from scipy.stats import mannwhitneyu  # here: scipy costs 0.4 s to import

    return float(mannwhitneyu(base, cand, alternative="two-sided").pvalue)


def _missable(v: Verdict) -> str:
    if v.detectable is None:
        return ""
    if math.isinf(v.detectable):
        return "; too few samples to detect any change"
    return f"; could have missed up to {max(v.threshold or 0.0, v.detectable):.0%}"


def judge(metric: str, base: list[float], cand: list[float], better: str, threshold: float,
          alpha: float, method: str = "repetitions", family: int = 1,
          p_adjusted: float | None = None, paired: bool = False) -> Verdict:
    """One metric's verdict.  ``family`` metrics are compared together; ``p_adjusted`` is
    this metric's Holm-adjusted p-value among them (None: computed here, for a family of 1).
    ``paired``: base[i] and cand[i] are one interleaved round (equal lengths)."""
    if not base or not cand:
        return Verdict(metric, NOT_MEASURED, None, None, None, threshold, None, method,
                       len(base), len(cand), "not measured on both sides")
    b, c = statistics.median(base), statistics.median(cand)
    level = alpha / family  # Holm's strictest step: what a lone change must reach
    paired = paired and len(base) == len(cand)
    # paired: the median of each round's own change, so that the machine's drift between
    # rounds (which the medians of the two sides each carry) cancels here as in the test
    change = statistics.median([relative_change(x, y) for x, y in zip(base, cand, strict=True)]) \
        if paired else relative_change(b, c)
    p = _p_value(base, cand, paired) if len(base) >= 2 and len(cand) >= 2 else None
    if p_adjusted is None and p is not None:
        p_adjusted = min(1.0, p * family)
    v = Verdict(metric, OK, b, c, change, threshold, p, method, len(base), len(cand), "",
                p_adjusted, detectable_change(base, cand, level, paired=paired), family)
    test = "Wilcoxon signed-rank" if paired else "Mann-Whitney"
    worse = change > threshold if better == "lower" else change < -threshold
    better_by = change < -threshold if better == "lower" else change > threshold
    holm_note = f" after Holm over {family} metrics" if family > 1 else ""
    if not worse and not better_by:
        v.explanation = f"change {change:+.1%} is within the {threshold:.0%} threshold" + \
            _missable(v)
        return v
    if min_p_value(len(base), len(cand), paired) >= level or p is None:
        need = min_samples(level, paired)
        v.status = INSUFFICIENT
        v.explanation = (f"change {change:+.1%} exceeds {threshold:.0%}, but {len(base)} vs "
                         f"{len(cand)} samples cannot show significance at {level:.2g} (need "
                         f"{need} per side): repeat the runs")
        return v
    assert p_adjusted is not None
    if p_adjusted >= alpha:
        v.explanation = (f"change {change:+.1%} exceeds {threshold:.0%} but is not "
                         f"significant ({test} p={p:.3g}, {p_adjusted:.3g}{holm_note} "
                         f">= {alpha:g}): within noise" + _missable(v))
        return v
    v.status = REGRESSION if worse else IMPROVEMENT
    v.explanation = (f"{'worse' if worse else 'better'} by {abs(change):.1%} (threshold "
                     f"{threshold:.0%}), significant ({test} p={p:.3g}, "
                     f"{p_adjusted:.3g}{holm_note} < {alpha:g})")
    return v


def samples(summaries: list[dict], metric: str, window_series: str | None,
            use_windows: bool) -> list[float]:
    if use_windows and window_series:
        out = []
        for s in summaries:
            out += s.get("windows", {}).get("series", {}).get(window_series, [])
        return out
    out = []
    for s in summaries:
        m = s["metrics"].get(metric)
        if m is not None and m.get("value") is not None:
            out.append(float(m["value"]))
    return out


def yardstick_differs(summaries: list[dict]) -> str | None:
    """Why a figure measured against a yardstick (catalog.NEEDS_YARDSTICK) does not compare
    across these runs, or None when it does: all of them name one yardstick."""
    named = {s.get("yardstick") for s in summaries}
    if None in named:
        return ("a run does not record its yardstick (the load generator's code, nginx's "
                "binary and config), so its CPU ratio has nothing to be compared against")
    if len(named) > 1:
        return ("the yardstick differs between the runs (the load generator's code, "
                "nginx's binary or config, or the load changed), so the backends' CPU ratio "
                "to it is no cost: judge the cost per delivery")
    return None


def strip(summary: dict, metrics: dict) -> dict:
    """``summary`` without ``metrics`` (a copy)."""
    return {**summary, "metrics": {k: v for k, v in summary.get("metrics", {}).items()
                                   if k not in metrics}}


def not_measured_reason(summaries: list[dict], metric: str) -> str | None:
    """Why a run's target could not give ``metric`` (figures.not_measured), if one says."""
    return next((why for s in summaries
                 if (why := (s.get("not_measured") or {}).get(metric))), None)


def compare(baseline: list[dict], candidate: list[dict], thresholds: Thresholds,
            paired: bool = False) -> list[Verdict]:
    """Every compared metric (Holm over those measured on both sides), then the absolute
    gates, then the void check.  ``paired``: baseline[i] and candidate[i] ran next to each
    other (an interleaved check), so each metric is tested on the pairs' differences, which
    cancels the machine's drift between rounds."""
    verdicts = []
    unjudged = {m: why for m in catalog.NEEDS_YARDSTICK
                if all(any(m in s.get("metrics", {}) for s in side)
                       for side in (baseline, candidate))
                and (why := yardstick_differs(baseline + candidate))}
    if unjudged:  # measured against different yardsticks: no sample is comparable
        baseline, candidate = ([strip(s, unjudged) for s in side]
                               for side in (baseline, candidate))
    family = sum(1 for metric in COMPARED_METRICS
                 if samples(baseline, metric, None, False) and
                 samples(candidate, metric, None, False)) or 1
    paired = paired and len(baseline) == len(candidate)
    needed = min_samples(thresholds.alpha / family, paired)
    per_repetition = len(baseline) >= needed and len(candidate) >= needed
    paired = paired and per_repetition
    sides = {}
    for metric, (_better, series) in COMPARED_METRICS.items():
        use_windows = not per_repetition and series is not None
        sides[metric] = (samples(baseline, metric, series, use_windows),
                         samples(candidate, metric, series, use_windows), use_windows)
    tested = [m for m, (b, c, _) in sides.items() if len(b) >= 2 and len(c) >= 2]
    pair = {m: paired and len(sides[m][0]) == len(sides[m][1]) for m in tested}
    raw = [_p_value(*sides[m][:2], pair[m]) for m in tested]
    adjusted = dict(zip(tested, holm(raw), strict=True))
    for metric, (better, _series) in COMPARED_METRICS.items():
        base, cand, use_windows = sides[metric]
        method = "10-s windows, pooled" if use_windows else \
            "interleaved pairs" if pair.get(metric) else "repetitions"
        v = judge(metric, base, cand, better, thresholds.for_metric(metric), thresholds.alpha,
                  method, family, adjusted.get(metric), pair.get(metric, False))
        if metric in unjudged:
            v.explanation = f"not judged: {unjudged[metric]}"
        elif v.status == NOT_MEASURED and (why := not_measured_reason(baseline + candidate,
                                                                      metric)):
            v.explanation = f"not measured: {why}"  # what the target cannot give, and why
        # the medians shown are those of the headline figure, not of the windows
        if use_windows and v.status != NOT_MEASURED:
            hb, hc = samples(baseline, metric, None, False), samples(candidate, metric, None,
                                                                      False)
            if hb and hc:
                v.baseline, v.candidate = statistics.median(hb), statistics.median(hc)
        headline = samples(candidate, metric, None, False)
        if headline and v.status != NOT_MEASURED:
            v.candidate_low, v.candidate_high = min(headline), max(headline)
        verdicts.append(v)
    for metric in catalog.SHOWN:  # the instrument's own figures: shown, never judged
        base, cand = (samples(side, metric, None, False) for side in (baseline, candidate))
        if base and cand:
            b, c = statistics.median(base), statistics.median(cand)
            verdicts.append(Verdict(metric, SHOWN, b, c, relative_change(b, c), None, None,
                                    "the instrument", len(base), len(cand),
                                    f"change {relative_change(b, c):+.1%}: the load "
                                    "generator's own cost, shown, never judged",
                                    candidate_low=min(cand), candidate_high=max(cand)))
    for metric in GATE_METRICS:
        total = sum(samples(candidate, metric, None, False))
        # a channel's state lost with nobody able to count what went with it: not 0
        unknown = sum(int(s.get("lost_unknown") or 0) for s in candidate) \
            if metric == "lost_messages" else 0
        said = f"{total:g} in the candidate: must be 0" if total else "0 in the candidate"
        if unknown:
            said = (f"{total:g} counted, and unknown for {unknown} subscriber(s) that saw "
                    "their channel's state lost (epoch change): must be 0")
        verdicts.append(Verdict(metric, GATE_FAILED if total or unknown else OK, None, total,
                                None, 0, None, "absolute gate", 0, len(candidate), said))
    rates = samples(candidate, "error_rate", None, False)
    worst = max(rates, default=0.0)
    verdicts.append(Verdict("error_rate_cap", GATE_FAILED if worst > thresholds.error_rate_cap
                            else OK, None, worst, None, thresholds.error_rate_cap, None,
                            "absolute gate", 0, len(candidate),
                            f"worst error rate {worst:.3%} against a cap of "
                            f"{thresholds.error_rate_cap:.3%}"))
    saturated = [s.get("run", "?") for s in baseline + candidate if s.get("loadgen_saturated")]
    verdicts.append(Verdict("load_generator", VOID if saturated else OK, None, None, None, None,
                            None, "validity", len(baseline), len(candidate),
                            f"CPU-saturated in {', '.join(saturated)}: the measurement is void"
                            if saturated else "not saturated in any run"))
    return verdicts


def exit_code(verdicts: list[Verdict]) -> int:
    """0 no regression; 1 regression or a failed gate; 2 void measurement, or a change beyond
    its threshold that too few samples cannot decide.  A void measurement outranks all."""
    statuses = {v.status for v in verdicts}
    if VOID in statuses:
        return catalog.EXIT_BROKEN
    if REGRESSION in statuses or GATE_FAILED in statuses:
        return catalog.EXIT_REGRESSION
    if INSUFFICIENT in statuses:
        return catalog.EXIT_BROKEN
    return catalog.EXIT_OK
