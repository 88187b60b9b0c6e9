"""Where does the load generator's memory go?  Two developer's aids for soaks.

``POLLBENCH_MEMSTATS=FILE`` (cheap: :func:`install_stats`) writes a line a minute saying where
the process's bytes sit: Python objects, pymalloc's free room, glibc's heap.

``POLLBENCH_TRACEMALLOC=FILE pollbench run ...`` starts :mod:`tracemalloc` in the Locust
process (10 frames a block: it slows the process down, so figures from such a run are not
latencies to quote) and, every ``POLLBENCH_TRACEMALLOC_EVERY`` seconds (default 60), appends
to FILE the 25 places whose live memory grew most since the first snapshot, with the
traced total.  The first snapshot is taken one interval after the start, once users have
spawned, so what is listed is growth during the run, not start-up.
"""

from __future__ import annotations

import ctypes
import os
import time
import tracemalloc

ENV = "POLLBENCH_TRACEMALLOC"
EVERY_ENV = "POLLBENCH_TRACEMALLOC_EVERY"
TOP = 25


def install() -> None:
    """Start tracing when :data:`ENV` names a file; otherwise do nothing."""
    path = os.environ.get(ENV)
    if not path:
        return
    every = float(os.environ.get(EVERY_ENV, "60"))
    import gevent

    tracemalloc.start(10)
    gevent.spawn(_loop, path, every)


def _loop(path: str, every: float) -> None:
    import gevent

    gevent.sleep(every)
    base = tracemalloc.take_snapshot()
    t0 = time.monotonic()
    while True:
        gevent.sleep(every)
        snap = tracemalloc.take_snapshot()
        stats = snap.compare_to(base, "traceback")
        current, _peak = tracemalloc.get_traced_memory()
        lines = [f"=== {time.monotonic() - t0:.0f} s after the first snapshot; "
                 f"traced {current / 2**20:.1f} MiB"]
        for stat in stats[:TOP]:
            lines.append(f"{stat.size_diff / 2**10:+10.1f} KiB {stat.count_diff:+8d} blocks")
            lines.extend(f"      {line}" for line in stat.traceback.format()[-6:])
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


# --- cheaper: where the process's bytes sit, without tracing every allocation -------------
STATS_ENV = "POLLBENCH_MEMSTATS"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def malloc_info() -> dict[str, int]:
    """glibc's heap: bytes in use, free inside the heap, and mmapped (all arenas)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        m = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    return {"heap": m.arena, "in_use": m.uordblks, "free": m.fordblks, "mmapped": m.hblkhd}


def pymalloc_info() -> dict[str, int]:
    """Python's small-object allocator (``sys._debugmallocstats``, read from fd 2)."""
    import re
    import sys
    import tempfile

    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode("latin-1")
    out = {}
    for key, pattern in (("arenas", r"# arenas allocated current\s*=\s*([\d,]+)"),
                         ("allocated_blocks_bytes", r"# bytes in allocated blocks\s*=\s*([\d,]+)"),
                         ("available_blocks_bytes", r"# bytes in available blocks\s*=\s*([\d,]+)"),
                         ("unused_pools_bytes", r"unused pools \* \d+ bytes\s*=\s*([\d,]+)")):
        m = re.search(pattern, text)
        if m:
            out[key] = int(m.group(1).replace(",", ""))
    return out


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def install_stats() -> None:
    """``POLLBENCH_MEMSTATS=FILE``: every ``POLLBENCH_TRACEMALLOC_EVERY`` s (default 60) one
    JSON line: RSS, glibc's heap, pymalloc's arenas and blocks, and the 15 object types whose
    count grew most since the first line (gc-tracked objects, frozen ones left out)."""
    path = os.environ.get(STATS_ENV)
    if not path:
        return
    import gevent

    gevent.spawn(_stats_loop, path, float(os.environ.get(EVERY_ENV, "60")))


def _stats_loop(path: str, every: float) -> None:
    import collections
    import gc
    import json

    import gevent

    first: collections.Counter | None = None
    t0 = time.monotonic()
    while True:
        gevent.sleep(every)
        counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
        if first is None:
            first = counts
        grown = sorted(((n - first.get(k, 0), k) for k, n in counts.items()), reverse=True)
        line = {"t": round(time.monotonic() - t0), "rss": _rss(), "malloc": malloc_info(),
                "pymalloc": pymalloc_info(), "gc_objects": sum(counts.values()),
                "grown": {k: d for d, k in grown[:15] if d > 0}}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
