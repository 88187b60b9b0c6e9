"""The HdrHistogram layout of the latency log: one definition for its writer
(loadtests.metrics, inside Locust) and its readers (analysis).  Imports hdrh only,
so Locust processes can use it without loading pandas.

Values are microseconds from 1 us to one hour, with 3 significant digits.
"""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

HDR_LOWEST_US = 1
HDR_HIGHEST_US = 3_600_000_000  # one hour
HDR_DIGITS = 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(HDR_LOWEST_US, HDR_HIGHEST_US, HDR_DIGITS)
