"""The HdrHistogram layout of the latency log: one definition for its writer
(loadtests.metrics, inside Locust) and its readers (analysis), and the one percentile
function both the report and the web UI's live tab use.  Imports hdrh and numpy only,
so Locust processes can use it without loading pandas (numpy only when a
percentile is asked for).

Values are microseconds from 1 us to one hour, with 3 significant digits.
"""

from __future__ import annotations

import ctypes
import sys
from typing import TYPE_CHECKING

from hdrh.histogram import HdrHistogram

if TYPE_CHECKING:
    import numpy as np

HDR_LOWEST_US = 1
HDR_HIGHEST_US = 3_600_000_000  # one hour
HDR_DIGITS = 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(HDR_LOWEST_US, HDR_HIGHEST_US, HDR_DIGITS)


def discard_histogram(hist: HdrHistogram) -> None:
    """Break the reference cycle of a histogram no longer used (it and its encoder point at
    each other), so that reference counting frees its 188 KiB at once instead of the cyclic
    collector some time later (rarely, under Locust's GC thresholds)."""
    hist.encoder.histogram = None


def clear_histogram(hist: HdrHistogram) -> None:
    """Empty ``hist`` for reuse, as ``hist.reset()`` does but with one memset of its counts
    (15 us instead of 1.5 ms for this layout's 23,552 counts).  Reusing a histogram makes no
    garbage: a dropped one is a reference cycle of 188 KiB that only the cyclic collector
    frees, rarely under Locust's GC thresholds."""
    ctypes.memset(ctypes.addressof(hist.counts), 0, ctypes.sizeof(hist.counts))
    hist.total_count = 0
    hist.min_value = sys.maxsize
    hist.max_value = 0
    hist.start_time_stamp_msec = sys.maxsize
    hist.end_time_stamp_msec = 0


_ENCODE_BUFFERS: dict[int, ctypes.Array] = {}


def encode_histogram(hist: HdrHistogram) -> bytes:
    """``hist.encode()``, byte for byte, into a buffer made once per layout.

    hdrh's encoder allocates ``(c_byte * n)()`` with ``n`` from the histogram's highest
    value, so nearly every interval makes a new ctypes array *type*: a reference cycle of
    ~3 KB that only the cyclic collector frees, rarely under Locust's GC thresholds.  A
    soak's load generator gained ~175 such types a minute (tens of MiB an hour).  Here the
    varint buffer is one array for the largest encoding; nothing can switch greenlets
    between filling and copying it, so one buffer serves every histogram of a layout.
    """
    import base64
    import zlib

    from hdrh.codec import ext_header_size, payload_header_size
    from pyhdrh import encode  # hdrh's own C encoder

    encoder = hist.encoder
    payload = encoder.payload
    per_count = payload.word_size + 1  # LEB128 + ZigZag: at most one byte more a counter
    size = payload_header_size + hist.counts_len * per_count
    buf = _ENCODE_BUFFERS.get(size)
    if buf is None:
        buf = _ENCODE_BUFFERS[size] = (ctypes.c_byte * size)()
    relevant = hist.get_counts_array_index(hist.max_value) + 1 if hist.total_count else 0
    start = ctypes.addressof(buf)
    varint_len = encode(ctypes.addressof(payload.counts), relevant, payload.word_size,
                        start + payload_header_size, relevant * per_count)
    payload.payload.payload_len = varint_len
    ctypes.memmove(start, ctypes.addressof(payload.payload), payload_header_size)
    compressed = zlib.compress(ctypes.string_at(start, payload_header_size + varint_len))
    encoder.header.length = len(compressed)
    header = ctypes.string_at(ctypes.addressof(encoder.header), ext_header_size)
    return base64.b64encode(header + compressed)


_VALUE_TABLES: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _value_tables(hist: HdrHistogram) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest equivalent value of every counts index (once per histogram layout)."""
    import numpy as np  # here: Locust processes that never ask for a percentile skip it

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
    import numpy as np

    low, high = _value_tables(hist)
    counts = np.ctypeslib.as_array(hist.counts)[:hist.counts_len]
    cum = np.cumsum(counts, dtype=np.int64)
    total = int(cum[-1]) if cum.size else 0
    p = np.minimum(np.asarray(percentiles, dtype=float), 100.0)
    targets = np.maximum((p * total / 100 + 0.5).astype(np.int64), 1)
    idx = np.minimum(np.searchsorted(cum, targets, side="left"), hist.counts_len - 1)
    return np.where(p > 0, high[idx], low[idx])


def mean_us(hist: HdrHistogram) -> float:
    """hdrh's get_mean_value, exactly, visiting only the buckets that hold a count (hdrh
    walks every sub-bucket in Python: ~0.2 s a histogram, paid at the end of every run)."""
    import numpy as np

    total = hist.get_total_count()
    if not total:
        return 0.0
    _, high = _value_tables(hist)
    counts = np.ctypeslib.as_array(hist.counts)[:hist.counts_len]
    idx = np.flatnonzero(counts)
    return float(sum(int(counts[i]) * hist._hdr_median_equiv_value(int(high[i]))
                     for i in idx)) / total


def percentiles_ms(hist: HdrHistogram, percentiles) -> dict[float, float | None]:
    if hist.get_total_count() == 0:
        return {p: None for p in percentiles}
    values = percentiles_us(hist, percentiles)
    return {p: float(v) / 1000.0 for p, v in zip(percentiles, values, strict=True)}
