"""What a run writes to disk: estimated before it starts, checked against the free space, and
watched while it runs; and nginx's access-log mode when the user leaves it to pollbench.

    per_hour = estimate(load, backends=4, access_log="full")   # bytes per hour, by file
    access_log = choose_access_log(load, backends=4)           # "full" or "sampled-100" ...
    check_fits(Path("results"), total_bytes, floor=1 << 30)     # UserError: one line
    watch = DiskWatch(run_dir, floor=1 << 30); watch.low()      # None, or why the run stops

The estimate's figures were measured on this project's runs (docs/measured.md, "A run
folder sized for days"); they are upper-end figures for a load that does not fail.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pollbench.errors import UserError
from pollbench.stack.loadgen import LoadSpec

# measured: a 1,000-user seed run's access.jsonl, 10,191,390 bytes in 25,551 lines
ACCESS_LINE_BYTES = 400
# measured per second of a run: latency.hdr.jsonl ~0.9 KB, counters ~0.4 KB, processes.csv
# ~0.4 KB, Locust's full stats history ~0.9 KB, events and logs; and backend_stats.jsonl
# ~0.85 KB per backend
FIXED_BYTES_PER_S = 4_000
BACKEND_BYTES_PER_S = 900
# "auto": the full log while it stays under this over the whole run, else one connection in
# N (the smallest N of ACCESS_LOG_SAMPLES that keeps a day of the load under the same)
AUTO_FULL_BYTES = 2 << 30
ACCESS_LOG_SAMPLES = (10, 100, 1000)
DEFAULT_FLOOR = 1 << 30
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def requests_per_s(load: LoadSpec) -> float:
    """The load's HTTP requests per second at full strength, roughly: each message wakes every
    subscriber of its channel (each then polls again), each idle poll ends at the poll
    timeout, each task costs a submit and its polls."""
    classes = load.user_classes()
    subscribers = load.users - (1 if "Publisher" in classes else 0)
    rate = 0.0
    if "ChannelSubscriber" in classes:
        per_channel = subscribers / max(load.channels, 1)
        rate += load.publish_rate * (1 + per_channel) + subscribers / max(load.poll_timeout_s, 1)
    if "TaskPoller" in classes:
        task_s = max(load.task_duration_ms / 1000, 0.05)
        rate += subscribers * 2 / task_s if "ChannelSubscriber" not in classes \
            else subscribers * 0.1 * 2 / task_s  # a mix: about a tenth of the users
    return rate


def access_log_share(mode: str | None) -> float:
    """The share of requests an access-log mode writes."""
    if mode in (None, "full"):
        return 1.0
    if mode == "off":
        return 0.0
    return 1.0 / int(str(mode).split("-", 1)[1])


def estimate(load: LoadSpec, backends: int, access_log: str | None) -> dict[str, float]:
    """Bytes per hour, by what writes them."""
    return {
        "nginx access log": requests_per_s(load) * ACCESS_LINE_BYTES * 3600
        * access_log_share(access_log),
        "samples, metrics and logs": (FIXED_BYTES_PER_S + BACKEND_BYTES_PER_S * backends) * 3600,
    }


def choose_access_log(load: LoadSpec, backends: int) -> str:
    """"full" while the run's full log stays under :data:`AUTO_FULL_BYTES` (every short
    benchmark), else "sampled-N" with the smallest N that keeps a day of the load under it."""
    full_per_s = requests_per_s(load) * ACCESS_LINE_BYTES
    if full_per_s * load.duration_s <= AUTO_FULL_BYTES:
        return "full"
    for n in ACCESS_LOG_SAMPLES:
        if full_per_s / n * 86400 <= AUTO_FULL_BYTES:
            return f"sampled-{n}"
    return f"sampled-{ACCESS_LOG_SAMPLES[-1]}"


def parse_size(text: str) -> int:
    """'500M', '2G', '1.5T', '4096' -> bytes (binary units)."""
    t = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1] if t and t[-1] in _UNITS else ""
    try:
        value = float(t[:-1] if unit else t)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise UserError(f"size {text!r} does not parse: use bytes or a number with K, M, G or "
                        "T (e.g. 500M, 2G)")
    return int(value * _UNITS[unit])


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError


def existing_parent(path: Path) -> Path:
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return path


def check_fits(where: Path, total_bytes: float, per_hour: dict[str, float], floor: int) -> None:
    """Refuse, in one line and before anything starts, a run that would bring the free space
    of ``where``'s filesystem under ``floor``."""
    free = shutil.disk_usage(existing_parent(where)).free
    if free - total_bytes >= floor:
        return
    parts = ", ".join(f"{k} {human(v)}" for k, v in per_hour.items())
    raise UserError(
        f"this run would write about {human(total_bytes)} ({parts} per hour) to "
        f"{existing_parent(where)}, which has {human(free)} free: that passes the floor of "
        f"{human(floor)} (--min-free-disk); sample or turn off nginx's access log "
        "(--access-log sampled-100 or off), shorten --duration, or write elsewhere (--out)")


class DiskWatch:
    """Free space of a run folder's filesystem, read at most every ``every_s`` (a statvfs)."""

    def __init__(self, path: Path, floor: int, every_s: float = 2.0):
        self.path, self.floor, self.every_s = Path(path), floor, every_s
        self._next = 0.0

    def low(self) -> str | None:
        """Why the run must stop (free space under the floor), or None."""
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self.every_s
        free = shutil.disk_usage(self.path).free
        if free >= self.floor:
            return None
        return (f"stopped: free disk space on {self.path} fell to {human(free)}, under the "
                f"floor of {human(self.floor)} (--min-free-disk)")
