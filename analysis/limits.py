"""What ran out first: why requests failed, which limits a run reached, when, and the cure.

Two vocabularies and one watcher, defined once and used by every reader:

* **Failure causes.**  The load generator counts each failed request under a cause a person
  can act on (:func:`answer_cause`, :func:`transport_cause`): the HTTP status and who
  answered it (the backend's JSON error body, or nginx's own page), or the socket error.
  :func:`cause_source` tells the source back from the text.
* **nginx's error log by category** (:func:`nginx_error_category`): read as it grows by the
  sampler, once a second, into ``samples/nginx_errors.jsonl``.
* **Limits** (:class:`LimitWatch`): fed with samples (CPU, descriptors, nginx connections,
  backend and Redis counters, memory) and with the failures and error-log counts above; it
  keeps, for every limit reached, the first time and the evidence, and names the one
  reached first.  The sampler feeds one live (the web UI's tab shows it); after a run,
  :func:`diagnose` feeds one from the run folder's files (run.json's ``limits``).

Standard library only: ``loadtests`` (which counts the causes) imports it too.

    watch = LimitWatch(capacity={"nginx_connections": 1024}, start=t0)
    watch.nginx_errors(t, {"worker_connections": 12})
    watch.first()   # {"limit": "nginx_connections", "at_s": 3.0, "what": ..., "cure": ...}
"""

from __future__ import annotations

import csv
import errno
import json
import re
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from analysis.saturation import CPU_PERCENT, MACHINE, MACHINE_PERCENT, STARTUP_GRACE_S

# -- failure causes ---------------------------------------------------------------------------
NGINX, BACKEND, SERVER, CONNECTION, LOADGEN_SIDE = (
    "nginx", "backend", "server", "connection", "load generator")
SOURCES = (NGINX, BACKEND, SERVER, CONNECTION, LOADGEN_SIDE)
_NGINX_STATUS = {
    500: "internal error", 502: "bad gateway: no backend answered",
    503: "service unavailable", 504: "gateway timeout: a backend outlived proxy_read_timeout",
}
_VARIABLE = re.compile(r"\S*\d\S*")  # ids, limits, addresses: not part of a stable cause


def stable_reason(text: str, width: int = 60) -> str:
    """A backend's error message as a counter key: what is said, not the numbers in it
    ("too many waiting polls (limit 18000)" -> "too many waiting polls")."""
    text = text.split("(", 1)[0].split(":", 1)[0]
    return " ".join(_VARIABLE.sub("N", text).split())[:width] or "no reason given"


def answer_cause(status: int, body: bytes | str, server: str | None = None) -> str:
    """A failed answer's cause: ``HTTP 503 from backend: too many waiting polls``, ``HTTP 502
    from nginx (bad gateway: no backend answered)``.  The backend answers every error as
    JSON with an ``error``; nginx's own pages are HTML and say ``Server: nginx``."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = text.strip()
    if text.startswith("{"):
        try:
            got = json.loads(text)
        except ValueError:
            got = None
        if isinstance(got, dict) and isinstance(got.get("error"), str):
            return f"HTTP {status} from {BACKEND}: {stable_reason(got['error'])}"
    if (server or "").lower().startswith("nginx") or "<center>nginx" in text[:2000]:
        what = _NGINX_STATUS.get(status)
        return f"HTTP {status} from {NGINX}" + (f" ({what})" if what else "")
    return f"HTTP {status} from {SERVER}"


def transport_cause(exc: BaseException) -> str:
    """A request that got no answer: refused, reset, timed out, closed before the answer, or
    the load generator's own limits (descriptors, local ports)."""
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        return f"too many open files in the {LOADGEN_SIDE}"
    if isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL:
        return f"no free local port in the {LOADGEN_SIDE}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "connection reset"
    if isinstance(exc, TimeoutError) or "timed out" in str(exc).lower():
        return "timed out"
    if type(exc).__name__ == "HttpError":  # loadtests.leanhttp: the peer closed or broke HTTP
        return "connection closed before the answer" if "closed" in str(exc) \
            else "not an HTTP answer"
    return type(exc).__name__


def cause_source(cause: str) -> str:
    """Who a cause names: nginx, backend, server, connection or load generator."""
    m = re.match(r"HTTP \d+ from (\w[\w.]*\w|\w)", cause)
    if m:
        return m.group(1)
    if cause.endswith(LOADGEN_SIDE):
        return LOADGEN_SIDE
    return CONNECTION


def split_error_counter(name: str) -> tuple[str, str] | None:
    """``error:GET /channels/[name]: HTTP 503 from backend: ...`` -> (request, cause)."""
    if not name.startswith("error:"):
        return None
    request, _, cause = name[len("error:"):].partition(": ")
    return request, cause


# -- nginx's error log ------------------------------------------------------------------------
# category -> (the phrase that marks it, what it means)
NGINX_ERRORS: dict[str, tuple[str, str]] = {
    "worker_connections": ("worker_connections are not enough",
                           "worker_connections are not enough"),
    "open_files": ("Too many open files", "too many open files"),
    "upstream_timed_out": ("upstream timed out", "upstream timed out"),
    "no_live_upstreams": ("no live upstreams", "no live upstreams"),
    # before connect_failed: nginx's own ports to a backend ran out (or a proxy_bind address)
    "upstream_ports": ("(99: Cannot assign requested address)",
                       "no free local port to a backend"),
    "connect_failed": ("connect() failed", "connect() to a backend failed"),
    "upstream_closed": ("upstream prematurely closed", "a backend closed mid-answer"),
    "client_closed": ("client prematurely closed", "a client closed first"),
    # Nchan: a long-poll cursor older than the channel's buffer skipped to the oldest kept
    # message (warn level; the subscriber's stamps count the messages it skipped)
    "nchan_missed": ("Missed message for longpoll subscriber",
                     "Nchan: a subscriber's cursor was past the buffer (messages skipped)"),
    # a worker that crashed (Nchan 1.3.6's spool assertion, say): its held polls dropped
    "worker_crashed": ("exited on signal", "an nginx worker crashed (exited on a signal)"),
}
_LEVEL = re.compile(r"\[(warn|error|crit|alert|emerg)\]")


def nginx_error_category(line: str) -> str | None:
    """The category of one error-log line; None for lines below [warn] (start-up, signals);
    "other" for any other problem."""
    if not _LEVEL.search(line[:40]):
        return None
    for category, (phrase, _) in NGINX_ERRORS.items():
        if phrase in line:
            return category
    return "other"


def count_nginx_errors(lines: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in lines:
        c = nginx_error_category(line)
        if c is not None:
            counts[c] = counts.get(c, 0) + 1
    return counts


class ErrorLogTail:
    """nginx's error log read as it grows: each :meth:`read` returns the counts by category
    of the whole lines written since the last (a partial last line waits)."""

    MAX_READ = 32 << 20  # a flood of errors is read over several calls, never all at once

    def __init__(self, path: Path):
        self.path, self.offset, self._rest = path, 0, b""

    def read(self) -> dict[str, int]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read(self.MAX_READ)
        except OSError:
            return {}
        self.offset += len(chunk)
        data = self._rest + chunk
        cut = data.rfind(b"\n") + 1
        self._rest = data[cut:]
        return count_nginx_errors(data[:cut].decode("utf-8", "replace").splitlines())


# -- limits -----------------------------------------------------------------------------------
# a process "ran out of CPU" at the first saturated sample of the first SUSTAINED_SAMPLES in a
# row of which at least SUSTAINED_HOT were saturated (a machine at 89-100 % dips below the
# line now and then; a 2-s burst is not running out)
SUSTAINED_SAMPLES = 5
SUSTAINED_HOT = 3
DESCRIPTOR_SHARE = 0.95  # of a process's open-files limit
MEMORY_SHARE = 0.90      # of the machine's memory
CONNECTION_SHARE = 0.98  # of nginx's worker_processes x worker_connections

# limit -> (what ran out, the cure that fits it); "{x}" is the component where there is one
LIMITS: dict[str, tuple[str, str]] = {
    "nginx_connections": (
        "nginx's connections (worker_processes x worker_connections)",
        "raise worker_connections or worker_processes (a held poll costs 2: client and "
        "upstream), or choose a profile that holds the load"),
    "nginx_descriptors": ("an nginx worker's descriptors",
                          "set worker_rlimit_nofile (and keep worker_connections under it)"),
    "descriptors": ("{x}'s descriptors (its open-files limit)",
                    "spread the sockets over more processes (--workers for the load "
                    "generator, more backends or nginx workers for the stack)"),
    "loadgen_ports": ("the load generator's local ports",
                      "spread the connections over more source addresses (--source-addresses; "
                      "auto does on a loopback target), or fewer new connections (keep-alive)"),
    "upstream_ports": ("nginx's local ports to a backend",
                       "spread nginx's connections to the backends over more source addresses "
                       "(the nginx knob upstream_sources), or add backends"),
    "backend_connections": ("a backend's connection limit (max_connections)",
                            "raise --backend-max-connections or add backends"),
    "backend_waiters": ("a backend's held-poll limit (max_waiters)",
                        "add backends, spread polls over them (shared state or round-robin)"),
    "backends_unreachable": ("the backends (nginx could not reach them: down, or their "
                             "listen backlog full)",
                             "check the backends' logs; raise their listen backlog"),
    "upstream_timeouts": ("the backends' answer time (nginx's proxy_read_timeout passed)",
                          "keep the poll hold under proxy_read_timeout; a slow backend needs "
                          "CPU or fewer polls"),
    "redis_clients": ("Redis' clients (maxclients)", "raise maxclients in the [redis] knobs"),
    "redis_unavailable": ("Redis (the shared state did not answer)",
                          "Redis was down, stalled or saturated: see its CPU and log"),
    "cpu": ("{x}'s CPU", ""),  # the cure depends on whose (_CPU_CURES)
    "memory": ("the machine's memory", "fewer users or processes, or a bigger machine"),
}
_CPU_CURES = {
    "loadgen": "add --workers (more Locust processes) or lower --users",
    "nginx": "raise worker_processes",
    "backend": "add backends or spread the load over them (a hot channel or key-hash puts "
               "it on one)",
    "redis": "raise io_threads, or lighten the work per message",
    "machine": "a machine with more cores, or the load generator on another host "
             "(pollbench worker); every component shares these cores",
}
# when two limits are first seen in the same second, the one that explains the other leads
_ORDER = ("nginx_connections", "nginx_descriptors", "descriptors", "loadgen_ports",
          "upstream_ports",
          "backend_connections", "backend_waiters", "redis_clients", "redis_unavailable",
          "backends_unreachable", "upstream_timeouts", "memory", "cpu")
# a failure cause that shows a limit by itself
_CAUSE_LIMITS = (
    ("too many open files in the load generator", "descriptors", "loadgen"),
    ("no free local port", "loadgen_ports", None),
    ("from backend: too many waiting polls", "backend_waiters", None),
    ("from backend: too many open connections", "backend_connections", None),
    ("from backend: shared state unavailable", "redis_unavailable", None),
    ("from backend: cannot reach redis", "redis_unavailable", None),
)
_NGINX_LIMITS = {"worker_connections": "nginx_connections", "open_files": "nginx_descriptors",
                 "no_live_upstreams": "backends_unreachable",
                 "connect_failed": "backends_unreachable",
                 "upstream_ports": "upstream_ports",
                 "upstream_timed_out": "upstream_timeouts"}


MACHINE_COMPONENT = "the machine"  # the component of the machine's own CPU limit
FAULT_MARGIN_S = 5.0  # after an injected fault ends, what it causes is still its doing


def component_kind(name: str) -> str:
    """'backend-2' -> 'backend', 'loadgen/123' -> 'loadgen', 'system' -> 'system'."""
    root = name.split("/", 1)[0]
    return re.sub(r"-\d+$", "", root)


class BusyMeter:
    """How busy each process was between two samples: on a CPU or ready and waiting for one,
    in % of the time between them, from the cumulative ``cpu_time_s`` and ``wait_time_s`` that
    processes.csv records (the kernel's schedstat).  Fed one sample at a time, by the sampler
    during a run and by :func:`diagnose` after it."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}  # pid -> (time, cpu + wait)

    def add(self, pid: int | str, t: float, cpu_time_s, wait_time_s) -> float | None:
        """This sample's busy share since the process's last one (None: no schedstat, or the
        process's first sample)."""
        try:
            total = float(cpu_time_s) + float(wait_time_s)
        except (TypeError, ValueError):
            return None
        last = self._last.get(str(pid))
        self._last[str(pid)] = (t, total)
        if last is None or t <= last[0]:
            return None
        return (total - last[1]) / (t - last[0]) * 100


class LimitWatch:
    """Limits reached so far, each with the first time and its evidence.

    ``capacity``: what the stack allows (``nginx_connections``, ``max_waiters``,
    ``max_connections``, ``redis_maxclients``, ``memory_bytes``); a missing one is not
    checked.  ``start``: the run's start (times are reported relative to it).  ``faults``:
    (start, end, name) of the injected faults: a limit first seen during one (or within
    :data:`FAULT_MARGIN_S` after it) is the fault's doing, listed last and never first."""

    def __init__(self, capacity: dict | None = None, start: float = 0.0,
                 faults: Iterable[tuple[float, float, str]] = ()):
        self.capacity = capacity or {}
        self.start = start
        self.faults = list(faults)
        self.reached: dict[str, dict] = {}  # key (limit, or limit:component) -> first evidence
        self._recent: dict[str, deque] = {}  # component -> its last samples' (t, saturated)
        self._born: dict[str, float] = {}
        self._last: dict[str, float] = {}   # backend/redis counters last seen

    # -- evidence ---------------------------------------------------------------------------
    def reach(self, limit: str, t: float, evidence: str, component: str | None = None) -> None:
        key = f"{limit}:{component}" if component else limit
        old = self.reached.get(key)
        if old is None or t < old["t"]:
            what, cure = LIMITS[limit]
            if limit == "cpu":
                cure = _CPU_CURES.get("machine" if component == MACHINE_COMPONENT
                                      else component_kind(component or ""), "")
            fault = next((name for t0, t1, name in self.faults
                          if t0 <= t <= t1 + FAULT_MARGIN_S), None)
            self.reached[key] = {"limit": limit, "component": component, "t": t,
                                 "what": what.format(x=component or "a process"),
                                 "evidence": evidence, "cure": cure,
                                 **({"during_fault": fault} if fault else {})}

    def cpu(self, t: float, name: str, cpu_percent: float, age_s: float | None = None,
            busy_percent: float | None = None) -> None:
        """One CPU sample of a process (% of one core) or of the machine (% of all cores).
        ``busy_percent``: the share of the second the process was on a CPU or ready and
        waiting for one (:class:`BusyMeter`).  A single-threaded process is CPU-bound when it
        is never idle, whether it got a whole core or had to share one: on a 2-core machine
        the one backend that owns a hot channel ran at 72-100 % of a core while it waited
        for a CPU the rest of the time (busy 83-101 %), and its cores were never both at
        the machine's line."""
        machine = name.endswith(MACHINE)
        if not machine:
            born = self._born.setdefault(name, t - (age_s or 0.0))
            if t - born < STARTUP_GRACE_S:
                return
        limit = MACHINE_PERCENT if machine else CPU_PERCENT
        waited = not machine and cpu_percent < limit and busy_percent is not None \
            and busy_percent >= limit
        recent = self._recent.setdefault(name, deque(maxlen=SUSTAINED_SAMPLES))
        recent.append((t, cpu_percent >= limit or waited, waited))
        hot = [at for at, is_hot, _ in recent if is_hot]
        if recent[-1][1] and len(hot) >= SUSTAINED_HOT:
            what = "all cores" if machine else "a core"
            if any(w for _, _, w in recent):
                what += " (on it, or ready and waiting for it)"
            self.reach("cpu", hot[0], f">= {limit:g}% of {what} in {len(hot)} of "
                       f"{len(recent)} s", component=MACHINE_COMPONENT if machine
                       else name.split("/", 1)[0])

    def descriptors(self, t: float, name: str, fds: int, limit: int | None) -> None:
        if limit and fds >= DESCRIPTOR_SHARE * limit:
            self.reach("descriptors", t, f"{fds:,} open of {limit:,}",
                       component=name.split("/", 1)[0])

    def memory(self, t: float, used_bytes: float) -> None:
        total = self.capacity.get("memory_bytes")
        if total and used_bytes >= MEMORY_SHARE * total:
            self.reach("memory", t, f"{used_bytes / 2**30:.1f} of {total / 2**30:.1f} GiB used")

    def nginx_active(self, t: float, active: int) -> None:
        allowed = self.capacity.get("nginx_connections")
        if not allowed:
            return
        if self.capacity.get("nginx_holds_polls"):  # Nchan: no upstream, one connection a poll
            if active >= CONNECTION_SHARE * allowed:
                self.reach("nginx_connections", t, f"{active:,} client connections of "
                           f"{allowed:,} (Nchan: no upstreams)")
            return
        # active counts client connections only; each held poll has its upstream too
        if 2 * active >= CONNECTION_SHARE * allowed:
            self.reach("nginx_connections", t, f"{active:,} client connections (about "
                       f"{2 * active:,} with their upstreams) of {allowed:,}")

    def nginx_errors(self, t: float, counts: dict[str, int]) -> None:
        for category, n in counts.items():
            limit = _NGINX_LIMITS.get(category)
            if limit and n:
                self.reach(limit, t, f"nginx's error log: \"{NGINX_ERRORS[category][1]}\"")

    def backend(self, t: float, backend: int | str, stats: dict) -> None:
        name = f"backend-{backend}"
        rejected = (stats.get("connections") or {}).get("rejected") or 0
        if rejected > self._last.get(f"{name}:rejected", 0):
            self.reach("backend_connections", t, f"{name} refused {rejected:,} connections")
        self._last[f"{name}:rejected"] = rejected
        waiting = stats.get("long_polls_waiting") or 0
        cap = self.capacity.get("max_waiters")
        if cap and waiting >= cap:
            self.reach("backend_waiters", t, f"{name} held {waiting:,} polls of {cap:,}")

    def redis(self, t: float, info: dict | None, error: str | None = None) -> None:
        if error:
            self.reach("redis_unavailable", t, f"INFO went unanswered ({error[:80]})")
            return
        info = info or {}
        rejected = info.get("rejected_connections") or 0
        if rejected > self._last.get("redis:rejected", 0):
            self.reach("redis_clients", t, f"Redis refused {rejected:,} connections")
        self._last["redis:rejected"] = rejected
        cap, clients = self.capacity.get("redis_maxclients"), info.get("connected_clients")
        if cap and clients and clients >= cap:
            self.reach("redis_clients", t, f"{clients:,} clients of {cap:,}")

    def failures(self, t: float, counters: dict[str, int]) -> None:
        """An interval's counters from the load generator: its failure causes."""
        for name, n in counters.items():
            parts = split_error_counter(name)
            if parts is None or not n:
                continue
            for phrase, limit, component in _CAUSE_LIMITS:
                if phrase in parts[1]:
                    self.reach(limit, t, f"{n:,} requests failed: {parts[1]}",
                               component=component)

    # -- verdict ----------------------------------------------------------------------------
    def ordered(self) -> list[dict]:
        """Every limit reached, the first first (same second: the one explaining the other).
        A process that ran out of CPU while the whole machine did too (within the
        :data:`SUSTAINED_SAMPLES` it takes to tell) ran out because the machine did: the
        machine leads."""
        def key(r: dict) -> tuple:
            return ("during_fault" in r, int(r["t"] - self.start), _ORDER.index(r["limit"]),
                    r["t"])

        got = sorted(self.reached.values(), key=key)
        machine = self.reached.get(f"cpu:{MACHINE_COMPONENT}")
        if got and machine is not None and got[0]["limit"] == "cpu" \
                and "during_fault" not in machine \
                and machine["t"] <= got[0]["t"] + SUSTAINED_SAMPLES:
            got.remove(machine)
            got.insert(0, machine)
        return [{**{k: v for k, v in r.items() if k != "t"},
                 "at_s": round(r["t"] - self.start, 1)} for r in got]

    def first(self) -> dict | None:
        """The limit reached first, not counting what an injected fault caused."""
        return next((r for r in self.ordered() if "during_fault" not in r), None)

    def summary(self) -> dict:
        return {"first": self.first(), "reached": self.ordered()}


def sentence(first: dict | None) -> str:
    """'nginx's connections ... ran out first, at 3.0 s (nginx's error log: ...): raise ...'"""
    if first is None:
        return "no limit was reached"
    cure = f"; {first['cure']}" if first.get("cure") else ""
    return (f"{first['what']} ran out first, at {first['at_s']:g} s ({first['evidence']})"
            f"{cure}")


# -- after a run: the same watch, fed from the run folder --------------------------------------
NGINX_ERRORS_FILE = "samples/nginx_errors.jsonl"
PROCESS_LIMITS_FILE = "samples/process_limits.jsonl"


def capacity_of(record: dict) -> dict:
    """What the stack allowed, from run.json."""
    stack = record.get("stack") or {}
    nginx = stack.get("nginx") or {}
    out: dict = {}
    workers, conns = nginx.get("worker_processes"), nginx.get("worker_connections")
    if workers == "auto":
        workers = (record.get("host") or {}).get("cpu_count")
    if isinstance(workers, int) and isinstance(conns, int):
        out["nginx_connections"] = workers * conns
    if nginx.get("nchan"):
        out["nginx_holds_polls"] = True
    out.update({k: v for k, v in (stack.get("target_limits") or {}).items()
                if isinstance(v, int)})
    redis = (stack.get("redis") or {}).get("settings") or {}
    if isinstance(redis.get("maxclients"), int):
        out["redis_maxclients"] = redis["maxclients"]
    if (record.get("host") or {}).get("memory_bytes"):
        out["memory_bytes"] = record["host"]["memory_bytes"]
    return out


def read_jsonl(path: Path) -> Iterable[dict]:
    """The records of a JSON-lines file that parse (a last line cut by a crash does not);
    nothing for a missing file."""
    try:
        with open(path) as f:
            for line in f:
                try:
                    yield json.loads(line)
                except ValueError:  # a last line cut by a crash
                    continue
    except OSError:
        return


EVENTS_FILE = "metrics/events.jsonl"
LOAD_END_GRACE_S = 1.0  # a sample's second may end just after the load's


def load_ends_at(run_dir: Path, record: dict) -> float | None:
    """When the run's load ended as asked: Locust's start of the test (its ``load_started``
    event) plus the run's duration; None when the folder does not say (older runs, a web UI
    session).  What runs out after it is the teardown's: Locust stops every user at once,
    and closing 50,000 connections filled this 2-core machine for a few seconds, named as
    what the load ran out of first though the load had ended."""
    duration = (record.get("parameters") or {}).get("duration_s")
    if not isinstance(duration, (int, float)):
        return None
    for row in read_jsonl(Path(run_dir) / EVENTS_FILE):
        if row.get("kind") == "load_started" and isinstance(row.get("t"), (int, float)):
            return float(row["t"]) + float(duration) + LOAD_END_GRACE_S
    return None


def diagnose(run_dir: Path, record: dict, span: tuple[float, float] | None = None) -> dict:
    """run.json's ``limits``: every limit reached and the first, from the run folder.
    ``span``: only evidence between these times (a web UI test's slice of its session).
    Without one, a run's evidence ends with its load (:func:`load_ends_at`)."""
    run_dir = Path(run_dir)
    if span is None and (end := load_ends_at(run_dir, record)) is not None:
        span = (float(record.get("started_at") or 0.0), end)
    start = span[0] if span else float(record.get("started_at") or 0.0)
    faults = [(float(f["started_at"]), float(f.get("ended_at") or f["started_at"]),
               str(f.get("fault", f.get("action", "fault"))))
              for f in record.get("faults") or []
              if isinstance(f, dict) and isinstance(f.get("started_at"), (int, float))]
    watch = LimitWatch(capacity_of(record), start, faults)
    lo, hi = span if span else (float("-inf"), float("inf"))

    def within(t: float) -> bool:
        return lo <= t <= hi

    nofile = {str(r.get("pid")): r.get("nofile") for r in read_jsonl(run_dir / PROCESS_LIMITS_FILE)}
    busy = BusyMeter()
    try:
        with open(run_dir / "samples" / "processes.csv", newline="") as f:
            for row in csv.DictReader(f):
                t = float(row["time"])
                if not within(t):
                    continue
                name = row["component"]
                watch.cpu(t, name, float(row["cpu_percent"]),
                          busy_percent=busy.add(row.get("pid") or "", t, row.get("cpu_time_s"),
                                                row.get("wait_time_s")))
                if name.endswith(MACHINE):
                    if name == MACHINE:
                        watch.memory(t, float(row["rss_bytes"]))
                    continue
                watch.descriptors(t, name, int(float(row["num_fds"] or 0)), nofile.get(row["pid"]))
    except (OSError, KeyError, ValueError):
        pass
    try:
        with open(run_dir / "samples" / "stub_status.csv", newline="") as f:
            for row in csv.DictReader(f):
                if within(float(row["time"])):
                    watch.nginx_active(float(row["time"]), int(row["active"]))
    except (OSError, KeyError, ValueError):
        pass
    for r in read_jsonl(run_dir / NGINX_ERRORS_FILE):
        if within(float(r.get("time", 0))):
            watch.nginx_errors(float(r["time"]), r.get("counts") or {})
    for r in read_jsonl(run_dir / "samples" / "backend_stats.jsonl"):
        if within(float(r.get("time", 0))):
            watch.backend(float(r["time"]), r.get("backend", "?"), r.get("stats") or {})
    for r in read_jsonl(run_dir / "samples" / "redis_info.jsonl"):
        if within(float(r.get("time", 0))):
            watch.redis(float(r["time"]), r.get("info"), r.get("error"))
    for r in read_jsonl(run_dir / "metrics" / "counters.jsonl"):
        if within(float(r.get("t1", 0))):
            watch.failures(float(r.get("t0", 0)), r.get("counters") or {})
    return watch.summary()


def failure_table(counters: Iterable[dict], nginx_errors: Iterable[dict] = ()) -> list[dict]:
    """Failed requests by cause, most first, from counters.jsonl rows (or their totals as
    one row): cause, who (nginx, backend, connection, load generator), count, requests.

    A connection that nginx closed or reset names no one; when nginx's error log
    (``nginx_errors``: nginx_errors.jsonl rows) logged a limit in the same seconds, the
    entry's ``nginx_logged`` says which and for how many of its failures, and ``who`` becomes
    nginx when that is most of them."""
    logged: dict[int, set[str]] = {}
    for r in nginx_errors:
        for category, n in (r.get("counts") or {}).items():
            if n and category in _NGINX_LIMITS:
                logged.setdefault(int(float(r.get("time", 0))), set()).add(category)
    by_cause: dict[str, dict] = {}
    for row in counters:
        seconds = range(int(float(row.get("t0", 0))) - 1, int(float(row.get("t1", 0))) + 2) \
            if logged and "t0" in row else range(0)
        seen = set().union(*(logged.get(s, set()) for s in seconds)) if seconds else set()
        for name, n in (row.get("counters") or {}).items():
            parts = split_error_counter(name)
            if parts is None or not n:
                continue
            request, cause = parts
            entry = by_cause.setdefault(cause, {"cause": cause, "source": cause_source(cause),
                                                "count": 0, "requests": {},
                                                "nginx_logged": {}})
            entry["count"] += n
            entry["requests"][request] = entry["requests"].get(request, 0) + n
            if entry["source"] == CONNECTION:
                for category in seen:
                    entry["nginx_logged"][category] = entry["nginx_logged"].get(category, 0) + n
    for entry in by_cause.values():
        top = max(entry["nginx_logged"].items(), key=lambda kv: kv[1], default=None)
        if top and top[1] >= entry["count"] / 2:
            entry["source"] = f"{NGINX} ({NGINX_ERRORS[top[0]][1]})"
    return sorted(by_cause.values(), key=lambda e: -e["count"])


# -- what a run says of it --------------------------------------------------------------------
ERROR_RATE_SAID = 0.01  # a run failing more than this ends its summary with the rate and cause
_LOADGEN_LIMITS = ("cpu:loadgen", "descriptors:loadgen", "loadgen_ports")


def http_failures(table: list[dict]) -> int:
    """Failed HTTP requests in a :func:`failure_table` (lost and duplicate messages are
    failures of deliveries, not of requests)."""
    return sum(n for e in table for request, n in e["requests"].items()
               if request.split(" ", 1)[0] in ("GET", "POST"))


def loadgen_ran_out(first: dict | None) -> bool:
    if first is None:
        return False
    key = f"{first['limit']}:{first['component']}" if first.get("component") else first["limit"]
    return key in _LOADGEN_LIMITS


def fit_warnings(warnings: list[str], first: dict | None, error_rate: float) -> list[str]:
    """The load generator's saturation warning made to fit the cause: "add --workers" only
    when the load generator itself ran out first.  When the whole machine ran out first,
    more Locust processes on it would not help; when something else ran out first and
    requests failed, the failures (and their retries) kept it busy: more workers would only
    send more failing requests."""
    if first is None or loadgen_ran_out(first):
        return warnings
    machine = first["limit"] == "cpu" and first.get("component") == MACHINE_COMPONENT
    if not machine and error_rate < ERROR_RATE_SAID:
        return warnings
    out = []
    for w in warnings:
        if w.startswith("load generator CPU-saturated"):
            head = w.split(": its latencies", 1)[0]
            if machine:
                w = (f"{head}: the machine's CPU ran out first (at {first['at_s']:g} s: every "
                     "core busy), so its latencies and rates are not to be trusted and more "
                     f"--workers on this machine would not help; {first['cure']}")
            else:
                w = (f"{head} while {error_rate:.1%} of its requests failed: {first['what']} "
                     f"ran out first (at {first['at_s']:g} s), and the failures kept the load "
                     f"generator busy; fix that first ({first['cure'] or 'see the report'}); "
                     "more --workers would only send more failing requests")
        out.append(w)
    return out


def failing_line(error_rate: float, first: dict | None) -> str | None:
    """The last line of a run's summary when more than 1 % of its requests failed."""
    if error_rate <= ERROR_RATE_SAID:
        return None
    return f"{error_rate:.1%} of HTTP requests failed; {sentence(first)}"
