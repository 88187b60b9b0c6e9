"""Once a second during a run: CPU/memory/fds of every component, nginx stub_status, backend /stats.

Runs in a thread of the orchestrator (no gevent here).  Files, appended as it goes
so an interrupted run keeps what was sampled:

* ``samples/processes.csv``: time,component,pid,cpu_percent,rss_bytes,num_fds
  (cpu_percent is of one core: 100 = one core busy; component ``system`` is the
  whole machine, 100 = every core busy)
* ``samples/stub_status.csv``: time,active,accepts,handled,requests,reading,writing,waiting
* ``samples/backend_stats.jsonl``: {"time", "backend", "stats": <GET /stats>}
"""

from __future__ import annotations

import csv
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from pollbench.stack.net import get_json, http_get

SATURATION_CPU_PERCENT = 90.0  # of one core; Locust itself warns at 90 %
SATURATION_SHARE = 0.2  # flagged when at least this share of samples is saturated
MACHINE_SATURATION_PERCENT = 95.0  # of all cores together
# A process's first seconds are imports and set-up (Locust: ~1-2 s at 100 % of a core), not
# load: they are not counted towards saturation (a 5-s run would otherwise always be flagged).
STARTUP_GRACE_S = 3.0

_STUB = re.compile(rb"Active connections:\s*(\d+)\s*server accepts handled requests\s*(\d+)\s+(\d+)"
                   rb"\s+(\d+)\s*Reading:\s*(\d+)\s*Writing:\s*(\d+)\s*Waiting:\s*(\d+)")


def parse_stub_status(body: bytes) -> list[int] | None:
    m = _STUB.search(body)
    return [int(x) for x in m.groups()] if m else None


class Sampler(threading.Thread):
    def __init__(self, out: Path, components: Callable[[], dict[str, int]], nginx_url: str | None,
                 backend_urls: list[str], interval: float = 1.0):
        super().__init__(name="pollbench-sampler", daemon=True)
        self.out = out
        self.components = components  # name -> root pid; children are sampled too
        self.nginx_url = nginx_url
        self.backend_urls = backend_urls
        self.interval = interval
        self._halt = threading.Event()
        self._procs: dict[int, psutil.Process] = {}
        # per component: [samples, saturated samples]
        self.saturation: dict[str, list[int]] = {}
        self.cpu_seconds: dict[str, float] = {}
        out.mkdir(parents=True, exist_ok=True)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def run(self) -> None:
        with open(self.out / "processes.csv", "w", newline="", buffering=1) as pf, \
                open(self.out / "stub_status.csv", "w", newline="", buffering=1) as sf, \
                open(self.out / "backend_stats.jsonl", "w", buffering=1) as bf:
            pw, sw = csv.writer(pf), csv.writer(sf)
            pw.writerow(["time", "component", "pid", "cpu_percent", "rss_bytes", "num_fds"])
            sw.writerow(["time", "active", "accepts", "handled", "requests", "reading", "writing",
                         "waiting"])
            psutil.cpu_percent(None)
            next_t = time.monotonic()
            while not self._halt.is_set():
                self.sample(pw, sw, bf)
                next_t += self.interval
                self._halt.wait(max(next_t - time.monotonic(), 0))

    def _process(self, pid: int) -> psutil.Process | None:
        proc = self._procs.get(pid)
        if proc is None:
            try:
                proc = self._procs[pid] = psutil.Process(pid)
                proc.cpu_percent(None)  # prime: the first reading is always 0
            except psutil.Error:
                return None
            return None
        return proc

    def sample(self, pw, sw, bf) -> None:
        now = round(time.time(), 3)
        system_cpu = psutil.cpu_percent(None)
        pw.writerow([now, "system", 0, system_cpu, psutil.virtual_memory().used, 0])
        sat = self.saturation.setdefault("system", [0, 0])
        sat[0] += 1
        sat[1] += system_cpu >= MACHINE_SATURATION_PERCENT
        for component, root in self.components().items():
            try:
                pids = [root] + [c.pid for c in psutil.Process(root).children(recursive=True)]
            except psutil.Error:
                continue
            for i, pid in enumerate(pids):
                proc = self._process(pid)
                if proc is None:
                    continue
                try:
                    with proc.oneshot():
                        cpu = proc.cpu_percent(None)
                        rss = proc.memory_info().rss
                        fds = proc.num_fds()
                        age = now - proc.create_time()
                except psutil.Error:
                    continue
                name = component if i == 0 else f"{component}/{pid}"
                pw.writerow([now, name, pid, cpu, rss, fds])
                if age >= STARTUP_GRACE_S:
                    sat = self.saturation.setdefault(name, [0, 0])
                    sat[0] += 1
                    sat[1] += cpu >= SATURATION_CPU_PERCENT
                self.cpu_seconds[component] = self.cpu_seconds.get(component, 0.0) + \
                    cpu / 100 * self.interval
        if self.nginx_url:
            try:
                status, body = http_get(f"{self.nginx_url}/nginx_status", timeout=1)
                row = parse_stub_status(body) if status == 200 else None
                if row:
                    sw.writerow([now, *row])
            except OSError:
                pass
        for i, url in enumerate(self.backend_urls):
            try:
                stats = get_json(f"{url}/stats", timeout=1)
            except (OSError, ValueError):
                continue
            stats.pop("config", None)
            bf.write(json.dumps({"time": now, "backend": i, "stats": stats}) + "\n")

    def saturated(self, prefix: str) -> list[str]:
        """Processes of a component busy >= 90 % of a core in >= 20 % of their samples."""
        return [name for name, (n, sat) in self.saturation.items()
                if name.startswith(prefix) and n >= 3 and sat / n >= SATURATION_SHARE]
