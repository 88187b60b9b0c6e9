"""Read the lossless latency log (``metrics/latency.hdr.jsonl``) written by loadtests.metrics.

    log = read_hdr_log(run_dir / "metrics" / "latency.hdr.jsonl")
    hist = merged(log, "DELIVERY")              # one HdrHistogram over the whole run
    percentiles_ms(hist, [50, 99])              # {50: 1.9, 99: 4.1}

Values are recorded in microseconds; everything returned here is in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from hdrh.histogram import HdrHistogram

from analysis.hdr_format import (  # noqa: F401  (re-exported for readers)
    mean_us,
    new_histogram,
    percentiles_ms,
    percentiles_us,
)


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


def summary_ms(hist: HdrHistogram) -> dict:
    count = hist.get_total_count()
    if count == 0:
        return {"count": 0}
    pct = percentiles_ms(hist, [50, 90, 95, 99, 99.9])
    return {"count": count, "min": hist.get_min_value() / 1000.0,
            "mean": mean_us(hist) / 1000.0, "p50": pct[50], "p90": pct[90],
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
