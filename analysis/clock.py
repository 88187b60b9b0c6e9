"""How far a load host's clock is from the target's: NTP-style round trips to the agent.

Pure arithmetic: the exchanges are made by the caller (:mod:`pollbench.stack.remote` on
the controller, :mod:`loadtests.metrics` in each Locust worker).

Delivery latency compares the target's ``ts`` (its clock, at publish) with the receipt time
on a load host (that host's clock).  On one machine both are one clock; across hosts the
difference of the clocks adds to every latency.  Each exchange sends at local ``t0``, the
agent answers its time ``server``, the answer arrives at local ``t1``: the server read its
clock somewhere in [t0, t1], so the offset (server - local) lies in
[server - t1, server - t0].  Of several exchanges the one with the shortest round trip
bounds it best; the estimate is the midpoint, the uncertainty half that round trip.

    >>> o = estimate([(10.0, 110.3, 10.2), (11.0, 111.05, 11.1)])
    >>> round(o.offset_s, 3), round(o.uncertainty_s, 3)
    (100.0, 0.05)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Offset:
    offset_s: float  # target clock - this clock
    uncertainty_s: float  # the true offset is within offset_s +- this
    round_trip_s: float  # of the exchange used
    exchanges: int

    def as_dict(self) -> dict:
        return asdict(self)


def estimate(exchanges: list[tuple[float, float, float]]) -> Offset:
    """The offset from (t0, server, t1) exchanges: the shortest round trip's midpoint."""
    usable = [(t1 - t0, t0, server, t1) for t0, server, t1 in exchanges if t1 >= t0]
    if not usable:
        raise ValueError("no usable clock exchange (each needs t1 >= t0)")
    rtt, t0, server, t1 = min(usable)
    return Offset(server - (t0 + t1) / 2, rtt / 2, rtt, len(usable))


def measure(read_remote: Callable[[], float], count: int = 16,
            clock: Callable[[], float] = time.time,
            pause: Callable[[], object] | None = None) -> Offset:
    """``count`` exchanges with ``read_remote`` (a call that returns the remote clock);
    ``pause`` is called between two (spreading them out finds a quiet moment on a busy
    host: only the shortest round trip counts)."""
    exchanges = []
    for i in range(count):
        if pause is not None and i:
            pause()
        t0 = clock()
        server = read_remote()
        t1 = clock()
        exchanges.append((t0, server, t1))
    return estimate(exchanges)


def combine(before: Offset, after: Offset) -> Offset:
    """One offset for a run from measurements before and after it: the mean, uncertain by
    the worse of the two plus half of how far the clocks drifted apart in between."""
    drift = abs(after.offset_s - before.offset_s)
    return Offset((before.offset_s + after.offset_s) / 2,
                  max(before.uncertainty_s, after.uncertainty_s) + drift / 2,
                  max(before.round_trip_s, after.round_trip_s),
                  before.exchanges + after.exchanges)


def too_uncertain(offset: Offset, delivery_p50_ms: float) -> str | None:
    """A warning when the clock uncertainty exceeds 10 % of the measured delivery p50."""
    if delivery_p50_ms <= 0 or offset.uncertainty_s * 1000 <= 0.1 * delivery_p50_ms:
        return None
    return (f"clock offset to the target is uncertain by +-{offset.uncertainty_s * 1000:.2f} "
            f"ms, more than 10 % of the delivery p50 ({delivery_p50_ms:.2f} ms): sync the "
            "clocks (chrony/NTP) or read delivery latency as bounded, not exact")


def run_offsets(events: list[dict]) -> dict[str, dict]:
    """Per load process (``source``), its offset to the target for a run, from the events
    its Locust process logged (``kind`` "clock", ``phase`` before/after, with the fields of
    :class:`Offset`, and ``applied_s``: what it added to every receipt time)."""
    phases: dict[str, dict[str, dict]] = {}
    for e in events:
        if e.get("kind") == "clock" and e.get("phase") in ("before", "after"):
            phases.setdefault(e.get("source", "?"), {})[e["phase"]] = e
    out = {}
    for source, got in sorted(phases.items()):
        parts = [Offset(float(e["offset_s"]), float(e["uncertainty_s"]),
                        float(e["round_trip_s"]), int(e["exchanges"]))
                 for e in (got.get("before"), got.get("after")) if e is not None]
        offset = combine(*parts) if len(parts) == 2 else parts[0]
        first = got.get("before") or got.get("after") or {}
        out[source] = {**offset.as_dict(), "host": first.get("host"),
                       "applied_s": first.get("applied_s", 0.0),
                       "measured": sorted(got)}
    return out
