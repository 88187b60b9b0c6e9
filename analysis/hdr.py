"""Read the lossless latency log (``metrics/latency.hdr.jsonl``) written by loadtests.metrics.

    log = read_hdr_log(run_dir / "metrics" / "latency.hdr.jsonl")
    hist = merged(log, "DELIVERY")              # one HdrHistogram over the whole run
    percentiles_ms(hist, [50, 99])              # {50: 1.9, 99: 4.1}

Values are recorded in microseconds; everything returned here is in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from hdrh.histogram import HdrHistogram

from analysis.hdr_format import new_histogram  # re-exported for readers


def read_hdr_log(path: Path) -> pd.DataFrame:
    """One row per interval histogram: t0, t1, metric, source, count, hist (encoded)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=["t0", "t1", "metric", "source", "count", "hist"])
    df = pd.read_json(path, lines=True, dtype={"hist": str, "metric": str, "source": str})
    return df


def merged(log: pd.DataFrame, metric: str, t_from: float | None = None,
           t_to: float | None = None) -> HdrHistogram:
    """All intervals of ``metric`` (optionally those starting within [t_from, t_to)) in one."""
    hist = new_histogram()
    rows = log[log["metric"] == metric]
    if t_from is not None:
        rows = rows[rows["t0"] >= t_from]
    if t_to is not None:
        rows = rows[rows["t0"] < t_to]
    for encoded in rows["hist"]:
        hist.decode_and_add(encoded)
    return hist


_VALUE_TABLES: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _value_tables(hist: HdrHistogram) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest equivalent value of every counts index (once per histogram layout)."""
    key = (hist.lowest_trackable_value, hist.highest_trackable_value, hist.significant_figures)
    if key not in _VALUE_TABLES:
        values = [hist.get_value_from_index(i) for i in range(hist.counts_len)]
        _VALUE_TABLES[key] = (
            np.array([hist.get_lowest_equivalent_value(v) for v in values], dtype=np.int64),
            np.array([hist.get_highest_equivalent_value(v) for v in values], dtype=np.int64))
    return _VALUE_TABLES[key]


def percentiles_us(hist: HdrHistogram, percentiles) -> np.ndarray:
    """Values at ``percentiles`` exactly as hdrh's get_value_at_percentile computes them,
    but in one vectorised pass (hdrh walks the counts array in Python for each one)."""
    low, high = _value_tables(hist)
    counts = np.ctypeslib.as_array(hist.counts)[:hist.counts_len]
    cum = np.cumsum(counts, dtype=np.int64)
    total = int(cum[-1]) if cum.size else 0
    p = np.minimum(np.asarray(percentiles, dtype=float), 100.0)
    targets = np.maximum((p * total / 100 + 0.5).astype(np.int64), 1)
    idx = np.minimum(np.searchsorted(cum, targets, side="left"), hist.counts_len - 1)
    return np.where(p > 0, high[idx], low[idx])


def percentiles_ms(hist: HdrHistogram, percentiles) -> dict[float, float | None]:
    if hist.get_total_count() == 0:
        return {p: None for p in percentiles}
    values = percentiles_us(hist, percentiles)
    return {p: float(v) / 1000.0 for p, v in zip(percentiles, values, strict=True)}


def summary_ms(hist: HdrHistogram) -> dict:
    count = hist.get_total_count()
    if count == 0:
        return {"count": 0}
    pct = percentiles_ms(hist, [50, 90, 95, 99, 99.9])
    return {"count": count, "min": hist.get_min_value() / 1000.0,
            "mean": hist.get_mean_value() / 1000.0, "p50": pct[50], "p90": pct[90],
            "p95": pct[95], "p99": pct[99], "p99_9": pct[99.9],
            "max": hist.get_max_value() / 1000.0}


def read_counters(path: Path) -> pd.DataFrame:
    """counters.jsonl -> one row per (interval, source, counter): t0, t1, source, counter, value."""
    path = Path(path)
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            for name, value in rec["counters"].items():
                rows.append((rec["t0"], rec["t1"], rec["source"], name, value))
    return pd.DataFrame(rows, columns=["t0", "t1", "source", "counter", "value"])
