"""Is the candidate worse than the baseline?  Threshold AND significance, defined once here.

A metric regresses only when both hold:

1. its change exceeds its threshold (default 10 %) in the worse direction; the
   change is relative, of the medians: (candidate - baseline) / baseline;
2. the difference is significant: a two-sided Mann-Whitney U test (as asv uses)
   at ``alpha`` (default 0.05) over the samples of each side.

Samples: one value per repetition when both sides have at least ``MIN_SAMPLES``
repetitions; otherwise, for latency percentiles, the per-10-s-window values of
every repetition pooled.  With fewer than ``MIN_SAMPLES`` samples a side cannot
show significance at 0.05 (four against four is the smallest that can), so the
verdict is "insufficient data", never a guess.

Absolute gates need no baseline: any lost or duplicate message, an error rate
above its cap; and a CPU-saturated load generator voids the measurement.

    v = judge("delivery_latency_p99", base=[10, 11, 10, 12], cand=[14, 15, 14, 16],
              better="lower", threshold=0.10, alpha=0.05)
    v.status   # "regression"
"""

from __future__ import annotations

import math
import statistics
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from analysis import catalog

DEFAULT_THRESHOLD = 0.10
DEFAULT_ALPHA = 0.05
DEFAULT_ERROR_RATE_CAP = 0.001
MIN_SAMPLES = 4

# metric -> (which way is better, summary window series usable as samples or None)
COMPARED_METRICS: dict[str, tuple[str, str | None]] = {
    m: (catalog.better(m), series) for m, series in catalog.COMPARED.items()}
GATE_METRICS = catalog.GATES

OK, REGRESSION, IMPROVEMENT, INSUFFICIENT, NOT_MEASURED, GATE_FAILED, VOID = (
    "ok", "regression", "improvement", "insufficient data", "not measured", "gate failed",
    "void")


class ThresholdsError(Exception):
    """A thresholds file that cannot be used; the message says what to fix."""


@dataclass
class Thresholds:
    default: float = DEFAULT_THRESHOLD
    alpha: float = DEFAULT_ALPHA
    error_rate_cap: float = DEFAULT_ERROR_RATE_CAP
    per_metric: dict[str, float] = field(default_factory=dict)

    def for_metric(self, metric: str) -> float:
        return self.per_metric.get(metric, self.default)


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

    def as_dict(self) -> dict:
        return asdict(self)


def relative_change(base: float, cand: float) -> float:
    if base == 0:
        return 0.0 if cand == 0 else math.copysign(math.inf, cand)
    return (cand - base) / abs(base)


def judge(metric: str, base: list[float], cand: list[float], better: str, threshold: float,
          alpha: float, method: str = "repetitions") -> Verdict:
    if not base or not cand:
        return Verdict(metric, NOT_MEASURED, None, None, None, threshold, None, method,
                       len(base), len(cand), "not measured on both sides")
    b, c = statistics.median(base), statistics.median(cand)
    change = relative_change(b, c)
    worse = change > threshold if better == "lower" else change < -threshold
    better_by = change < -threshold if better == "lower" else change > threshold
    if not worse and not better_by:
        return Verdict(metric, OK, b, c, change, threshold, None, method, len(base), len(cand),
                       f"change {change:+.1%} is within the {threshold:.0%} threshold")
    if len(base) < MIN_SAMPLES or len(cand) < MIN_SAMPLES:
        return Verdict(metric, INSUFFICIENT, b, c, change, threshold, None, method, len(base),
                       len(cand), f"change {change:+.1%} exceeds {threshold:.0%}, but "
                       f"{len(base)} vs {len(cand)} samples cannot show significance (need "
                       f"{MIN_SAMPLES} per side): repeat the runs")
    if len(set(base) | set(cand)) == 1:
        p = 1.0
    else:
        from scipy.stats import mannwhitneyu  # here: scipy costs 0.4 s to import

        p = float(mannwhitneyu(base, cand, alternative="two-sided").pvalue)
    if p >= alpha:
        return Verdict(metric, OK, b, c, change, threshold, p, method, len(base), len(cand),
                       f"change {change:+.1%} exceeds {threshold:.0%} but is not significant "
                       f"(Mann-Whitney p={p:.3g} >= {alpha:g}): within noise")
    status = REGRESSION if worse else IMPROVEMENT
    return Verdict(metric, status, b, c, change, threshold, p, method, len(base), len(cand),
                   f"{'worse' if worse else 'better'} by {abs(change):.1%} (threshold "
                   f"{threshold:.0%}), significant (Mann-Whitney p={p:.3g} < {alpha:g})")


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


def compare(baseline: list[dict], candidate: list[dict], thresholds: Thresholds) -> list[Verdict]:
    """Every compared metric, then the absolute gates, then the void check."""
    verdicts = []
    per_repetition = len(baseline) >= MIN_SAMPLES and len(candidate) >= MIN_SAMPLES
    for metric, (better, series) in COMPARED_METRICS.items():
        use_windows = not per_repetition and series is not None
        method = "10-s windows, pooled" if use_windows else "repetitions"
        v = judge(metric, samples(baseline, metric, series, use_windows),
                  samples(candidate, metric, series, use_windows), better,
                  thresholds.for_metric(metric), thresholds.alpha, method)
        # the medians shown are those of the headline figure, not of the windows
        if use_windows and v.status != NOT_MEASURED:
            hb, hc = samples(baseline, metric, None, False), samples(candidate, metric, None,
                                                                      False)
            if hb and hc:
                v.baseline, v.candidate = statistics.median(hb), statistics.median(hc)
        verdicts.append(v)
    for metric in GATE_METRICS:
        total = sum(samples(candidate, metric, None, False))
        verdicts.append(Verdict(metric, GATE_FAILED if total else OK, None, total, None, 0,
                                None, "absolute gate", 0, len(candidate),
                                f"{total:g} in the candidate: must be 0" if total
                                else "0 in the candidate"))
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
