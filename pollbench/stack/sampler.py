"""Once a second during a run: CPU/memory/fds of every component, nginx stub_status, backend /stats.

Runs in a thread of the orchestrator (no gevent here).  Files, appended as it goes
so an interrupted run keeps what was sampled:

* ``samples/processes.csv``: time,component,pid,cpu_percent,rss_bytes,num_fds,cpu_time_s,
  wait_time_s (cpu_percent is of one core: 100 = one core busy; component ``system`` is the
  whole machine, 100 = every core busy; component ``pollbench`` is this process, the
  harness that samples and runs the loop: recorded so a soak shows its memory too, and
  counted in no saturation or limit).  ``cpu_time_s`` is the process's own CPU time since
  it started and ``wait_time_s`` the time it was ready to run but waited for a CPU, both
  cumulative, to the nanosecond, from the kernel's per-thread schedstat (:func:`sched_times`):
  a run's cost per delivery is the difference of ``cpu_time_s`` at its window's edges, not a
  sum of rounded 1-s percentages; empty where the kernel keeps no schedstat
* ``samples/stub_status.csv``: time,active,accepts,handled,requests,reading,writing,waiting
* ``samples/backend_stats.jsonl``: {"time", "backend", "stats": <GET /stats>}
* ``samples/nginx_errors.jsonl``: nginx's error log read as it grows, by category
  (:mod:`analysis.limits`): {"time", "counts": {"worker_connections": n, ...}}, one line per
  second that logged a problem
* ``samples/process_limits.jsonl``: {"component", "pid", "nofile"}, once per process: its
  open-files limit, against which its descriptors are judged
* ``samples/redis_info.jsonl`` (with shared state): {"time", "info": <INFO's ops, clients,
  memory, pub/sub channels, CPU>} or {"time", "error": <why INFO went unanswered>}
* ``samples/live.json`` (with ``live=True``: every run and web UI session; read by the web
  UI's "Long polling" tab and the load generator's Prometheus endpoint): the latest sample, rewritten atomically each second: CPU per component (and its CPU time
  so far, ``cpu_time_s``: the tab's cost per delivery), stub_status,
  each backend's held polls and connection counters, and which processes are saturated
  over the last :data:`LIVE_WINDOW` samples, and the limits reached so far
  (:class:`analysis.limits.LimitWatch`, with ``capacity``: what the stack allows).
"""

from __future__ import annotations

import csv
import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from analysis.atomic import write_atomic
from analysis.catalog import REDIS_INFO_FILE, RUN_FILES
from analysis.limits import (
    NGINX_ERRORS_FILE,
    PROCESS_LIMITS_FILE,
    BusyMeter,
    ErrorLogTail,
    LimitWatch,
)
from analysis.saturation import MACHINE, Counter
from pollbench.stack.net import get_json, http_get

LIVE_WINDOW = 30  # samples the live saturation flag looks back on

_STUB = re.compile(rb"Active connections:\s*(\d+)\s*server accepts handled requests\s*(\d+)\s+(\d+)"
                   rb"\s+(\d+)\s*Reading:\s*(\d+)\s*Writing:\s*(\d+)\s*Waiting:\s*(\d+)")


def parse_stub_status(body: bytes) -> list[int] | None:
    m = _STUB.search(body)
    return [int(x) for x in m.groups()] if m else None


HARNESS = "pollbench"  # processes.csv's component for this process
PROCESS_COLUMNS = ["time", "component", "pid", "cpu_percent", "rss_bytes", "num_fds",
                   "cpu_time_s", "wait_time_s"]


def open_fds(proc: psutil.Process) -> int:
    """The process's open descriptors.  Linux (6.2 on) gives their count as the size of
    /proc/PID/fd; psutil lists the folder, one entry a descriptor: at 100,000 held polls
    (400,000 descriptors over the stack and the load generator) that listing took 80 % of
    this process's CPU, ~0.3 of a core every second, more than the backends' idle hold."""
    try:
        count = os.stat(f"/proc/{proc.pid}/fd").st_size
    except OSError:
        count = 0
    return count if count > 0 else proc.num_fds()  # (0: an older kernel, or none open)


def sched_times(pid: int) -> tuple[float, float] | None:
    """(CPU time, time waiting for a CPU) of a process's live threads since they started, in
    seconds to the nanosecond: the first two fields of each ``/proc/PID/task/TID/schedstat``.
    ``/proc/PID/stat``'s times (what psutil reads) come in 10-ms ticks, a tenth of what a
    backend spends in a CI run's 3-s window; and only the scheduler knows the wait.  None where
    the kernel keeps no schedstat (or the process is gone)."""
    cpu = wait = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                fields = f.read().split()
            cpu += int(fields[0])
            wait += int(fields[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended between the listing and the read
    return cpu / 1e9, wait / 1e9


class Sampler(threading.Thread):
    def __init__(self, out: Path, components: Callable[[], dict[str, int]], nginx_url: str | None,
                 backend_urls: list[str], interval: float = 1.0, live: bool = False,
                 redis_url: str | None = None, capacity: dict | None = None):
        super().__init__(name="pollbench-sampler", daemon=True)
        self.out = out
        self.redis_url = redis_url
        self.components = components  # name -> root pid; children are sampled too
        self.nginx_url = nginx_url
        self.backend_urls = backend_urls
        self.interval = interval
        self._halt = threading.Event()
        self._procs: dict[int, psutil.Process] = {}
        self._nofile: dict[int, int] = {}  # pid -> its open-files limit (soft)
        # the one saturation rule (analysis.saturation), over the run and the last samples
        self.counter = Counter(LIVE_WINDOW if live else 0)
        self.cpu_seconds: dict[str, float] = {}
        self.live = live
        self._seq = 0  # samples taken (each is one GET /nginx_status and one GET /stats each)
        # nginx's error log, read as it grows (a stack's run folder holds it beside samples/)
        self._errors = ErrorLogTail(out.parent / RUN_FILES["nginx_error_log"]) \
            if nginx_url else None
        self.limits = LimitWatch(capacity, time.time())  # what ran out, as the samples come
        self._busy = BusyMeter()  # on a CPU or waiting for one, per process
        out.mkdir(parents=True, exist_ok=True)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def run(self) -> None:
        with open(self.out / "processes.csv", "w", newline="", buffering=1) as pf, \
                open(self.out / "stub_status.csv", "w", newline="", buffering=1) as sf, \
                open(self.out / "backend_stats.jsonl", "w", buffering=1) as bf, \
                open(self.out.parent / REDIS_INFO_FILE, "w", buffering=1) if self.redis_url \
                else open(os.devnull, "w") as rf, \
                open(self.out.parent / NGINX_ERRORS_FILE, "w", buffering=1) as ef, \
                open(self.out.parent / PROCESS_LIMITS_FILE, "w", buffering=1) as lf:
            self._redis_out, self._errors_out, self._limits_out = rf, ef, lf
            pw, sw = csv.writer(pf), csv.writer(sf)
            pw.writerow(PROCESS_COLUMNS)
            sw.writerow(["time", "active", "accepts", "handled", "requests", "reading", "writing",
                         "waiting"])
            psutil.cpu_percent(None)
            next_t = time.monotonic()
            while not self._halt.is_set():
                self.sample(pw, sw, bf)
                next_t += self.interval
                self._halt.wait(max(next_t - time.monotonic(), 0))

    def _process(self, pid: int, name: str) -> psutil.Process | None:
        proc = self._procs.get(pid)
        if proc is None:
            try:
                proc = self._procs[pid] = psutil.Process(pid)
                proc.cpu_percent(None)  # prime: the first reading is always 0
                self._nofile[pid] = proc.rlimit(psutil.RLIMIT_NOFILE)[0]
            except psutil.Error:
                return None
            self._limits_out.write(json.dumps({"component": name, "pid": pid,
                                               "nofile": self._nofile[pid]}) + "\n")
            return None
        return proc

    def sample(self, pw, sw, bf) -> None:
        now = round(time.time(), 3)
        system_cpu = psutil.cpu_percent(None)
        used = psutil.virtual_memory().used
        pw.writerow([now, "system", 0, system_cpu, used, 0, "", ""])
        self.counter.add(MACHINE, system_cpu)
        self.limits.cpu(now, MACHINE, system_cpu)
        self.limits.memory(now, used)
        self._seq += 1
        live: dict = {"time": now, "seq": self._seq, "cpu": {"system": system_cpu}, "stub_status": None,
                      "backends": [], "cpu_time_s": {}}
        for component, root in self.components().items():
            try:
                pids = [root] + [c.pid for c in psutil.Process(root).children(recursive=True)]
            except psutil.Error:
                continue
            for i, pid in enumerate(pids):
                name = component if i == 0 else f"{component}/{pid}"
                proc = self._process(pid, name)
                if proc is None:
                    continue
                try:
                    with proc.oneshot():
                        cpu = proc.cpu_percent(None)
                        rss = proc.memory_info().rss
                        fds = open_fds(proc)
                        age = now - proc.create_time()
                except psutil.Error:
                    continue
                times = sched_times(pid)
                pw.writerow([now, name, pid, cpu, rss, fds,
                             *((f"{times[0]:.6f}", f"{times[1]:.6f}") if times else ("", ""))])
                self.counter.add(name, cpu, age)
                self.limits.cpu(now, name, cpu, age, self._busy.add(
                    pid, now, *(times or (None, None))))
                self.limits.descriptors(now, name, fds, self._nofile.get(pid))
                live["cpu"][component] = live["cpu"].get(component, 0.0) + cpu
                if times:  # each component's CPU time so far: the web UI's cost per delivery
                    live["cpu_time_s"][component] = live["cpu_time_s"].get(component, 0.0) + \
                        times[0]
                self.cpu_seconds[component] = self.cpu_seconds.get(component, 0.0) + \
                    cpu / 100 * self.interval
        try:  # the harness itself (this process): its own row, judged by no rule
            me = self._process(os.getpid(), HARNESS)
            if me is not None:
                with me.oneshot():
                    pw.writerow([now, HARNESS, me.pid, me.cpu_percent(None),
                                 me.memory_info().rss, open_fds(me), "", ""])
        except psutil.Error:
            pass
        if self.nginx_url:
            try:
                status, body = http_get(f"{self.nginx_url}/nginx_status", timeout=1)
                row = parse_stub_status(body) if status == 200 else None
                if row:
                    sw.writerow([now, *row])
                    self.limits.nginx_active(now, row[0])
                    live["stub_status"] = dict(zip(("active", "accepts", "handled", "requests",
                                                    "reading", "writing", "waiting"), row, strict=True))
            except OSError:
                pass
        if self._errors is not None:
            counts = self._errors.read()
            if counts:
                self._errors_out.write(json.dumps({"time": now, "counts": counts}) + "\n")
                self.limits.nginx_errors(now, counts)
            live["nginx_errors"] = counts
        for i, url in enumerate(self.backend_urls):
            try:
                stats = get_json(f"{url}/stats", timeout=1)
            except (OSError, ValueError):
                continue
            stats.pop("config", None)
            bf.write(json.dumps({"time": now, "backend": i, "stats": stats}) + "\n")
            self.limits.backend(now, i, stats)
            live["backends"].append({
                "backend": i, "long_polls_waiting": stats.get("long_polls_waiting"),
                "connections_accepted": stats.get("connections", {}).get("accepted"),
                "requests": stats.get("requests")})
        if self.redis_url:
            live["redis"] = self._sample_redis(now)
        if self.live:
            live["saturated"] = self.counter.recent()
            live["limits"] = self.limits.summary()
            # rewritten every second for the web UI: whole, but no fsync
            write_atomic(self.out / "live.json", json.dumps(live), durable=False)

    def _sample_redis(self, now: float) -> dict:
        from pollbench.stack.redis_server import info

        assert self.redis_url is not None
        try:
            row: dict = {"time": now, "info": info(self.redis_url, timeout=self.interval)}
        except Exception as e:  # redis.RedisError or OSError: a stalled or gone Redis
            row = {"time": now, "error": f"{type(e).__name__}: {e}"}
        self._redis_out.write(json.dumps(row) + "\n")
        self.limits.redis(now, row.get("info"), row.get("error"))
        return row.get("info") or {"error": row.get("error")}

    @property
    def saturation(self) -> dict[str, list[int]]:
        """Per component: [counted samples, saturated samples]."""
        return self.counter.counts
