"""Benchmark: what counting open descriptors costs the sampler, once a second, at scale.

    python benchmarks/sampler_cost.py [--processes 4] [--fds 19000] [--rounds 6]

Starts ``--processes`` children holding ``--fds`` open files each (as nginx workers, backends
and Locust processes hold held polls' sockets), then times the sampler's count of all of them
(one pass, as in one second of a run) both ways, interleaved ABBA ``--rounds`` times: ``list``
is psutil's ``num_fds()`` (a listing of /proc/PID/fd), ``size`` is
:func:`pollbench.stack.sampler.open_fds` (the folder's size, Linux 6.2 on).  Printed: CPU
milliseconds per pass each way and per round size / list, median and range.  Both must
agree on every count.  Only local processes; every loop is bounded.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pollbench.stack.sampler import open_fds  # noqa: E402

HOLD = "import sys; fs = [open(sys.argv[1], 'rb') for _ in range(int(sys.argv[2]))]; " \
       "print('ready', flush=True); sys.stdin.read()"


def one_pass(procs: list[psutil.Process], how: str, passes: int = 20) -> tuple[float, int]:
    """CPU ms per pass over every process, and the count it found."""
    count = 0
    started = time.process_time()
    for _ in range(passes):
        count = sum(p.num_fds() if how == "list" else open_fds(p) for p in procs)
    return (time.process_time() - started) / passes * 1000, count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--fds", type=int, default=19000)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    if not 0 < args.fds <= 19500:
        ap.error("--fds: 1 to 19,500 (a process's limit here is 20,000)")
    children = [subprocess.Popen([sys.executable, "-c", HOLD, __file__, str(args.fds)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                for _ in range(args.processes)]
    try:
        for c in children:
            assert c.stdout is not None and c.stdout.readline().strip() == "ready"
        procs = [psutil.Process(c.pid) for c in children]
        ratios = []
        for rnd in range(args.rounds):
            order = ["list", "size"] if rnd % 4 in (0, 3) else ["size", "list"]
            got = {how: one_pass(procs, how) for how in order}
            assert got["list"][1] == got["size"][1], got
            ratios.append(got["size"][0] / got["list"][0])
            print(f"round {rnd}: {got['list'][1]:,} descriptors; list {got['list'][0]:.2f} ms, "
                  f"size {got['size'][0]:.3f} ms CPU per pass; size / list {ratios[-1]:.4f}",
                  flush=True)
        print(f"size / list: median {statistics.median(ratios):.4f} "
              f"({min(ratios):.4f}-{max(ratios):.4f}) over {len(ratios)} rounds")
    finally:
        for c in children:
            c.kill()
            c.wait()
            for f in (c.stdin, c.stdout):
                if f is not None:
                    f.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
