"""A run whose stack is on another host (``pollbench run --target ... --agent ...``).

This host is the controller: it runs the Locust master, waits for the workers that
``pollbench worker`` started on the load hosts, runs the load, then pulls the target side
(samples, logs, the rendered config) from the target's agent, and writes the same run folder
as a local run (:func:`pollbench.actions.run.run`), so ``report``, ``compare``, ``sweep``
and ``check`` read it unchanged.  run.json adds ``distributed`` (the target, the agent, the
workers: expected, joined, lost) and ``clock`` (each worker's offset to the target's clock,
and this host's).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from analysis.catalog import METRICS_DIR, PROGRESS_FILE, RUN_FILES
from analysis.clock import Offset, combine, run_offsets, too_uncertain
from analysis.saturation import Counts, counts_from_intervals, counts_from_rows
from pollbench import __version__
from pollbench.actions.runloop import Side, base_parameters, drive, run_label
from pollbench.errors import RunFailed, UserError
from pollbench.log import log
from pollbench.records.rundir import new_run_dir, write_json_atomic
from pollbench.records.runinfo import host_info
from pollbench.records.runrecord import record_start
from pollbench.stack import disk
from pollbench.stack.loadgen import LoadSpec
from pollbench.stack.net import OPENER, port_free
from pollbench.stack.nginx_config import check_listen_address
from pollbench.stack.processes import Child, ChildGroup
from pollbench.stack.remote import AgentClient, Session, check_http_url, pull_run
from pollbench.stack.sampler import Sampler
from pollbench.stack.spec import StackSpec

DEFAULT_MASTER_PORT = 5557
AGENT_CHECK_EVERY_S = 5.0
_WAITING = re.compile(r"Waiting for workers to be ready, (\d+) of (\d+) connected")


@dataclass(frozen=True)
class RemoteTarget:
    target: str  # http://ADDR:PORT: nginx on the target host, as the load hosts reach it
    agent: str  # http://ADDR:PORT: the target's agent
    token: str
    expect_workers: int
    master_bind: str = "127.0.0.1"
    master_port: int = DEFAULT_MASTER_PORT
    workers_timeout_s: float = 60.0
    lease_s: float = 30.0  # pollbench agent: how long the target keeps a stack unrenewed

    def check(self, load: LoadSpec) -> None:
        """Every refusal that needs no process and no network, one line each."""
        check_http_url("--target", self.target)
        check_http_url("--agent", self.agent)
        if not self.token:
            raise UserError("--agent needs the agent's token: --agent-token TOKEN (what pollbench "
                            "up printed) or $POLLBENCH_AGENT_TOKEN")
        if not 1 <= self.expect_workers <= 256:
            raise UserError(f"--expect-workers must be from 1 to 256 (it is "
                            f"{self.expect_workers})")
        check_listen_address(self.master_bind)
        if not 1024 <= self.master_port <= 65535:
            raise UserError(f"--master-port {self.master_port} must be from 1024 to 65535")
        if not 1 <= self.workers_timeout_s <= 3600:
            raise UserError("--workers-timeout must be from 1 to 3600 s")
        if not 2 <= self.lease_s <= 3600:
            raise UserError("--agent-lease must be from 2 to 3600 s")
        if load.workers:
            raise UserError("--workers starts worker processes on this host; with "
                            "--expect-workers they run on the load hosts (pollbench worker "
                            "--processes N there)")
        host = "127.0.0.1" if self.master_bind == "0.0.0.0" else self.master_bind
        if not port_free(self.master_port, host):
            raise UserError(f"--master-port {self.master_port} is in use on {host}: choose "
                            "another (and give it to pollbench worker --master HOST:PORT)")


def check_target(url: str) -> None:
    """The target answers /healthz as a pollbench stack does (through nginx)."""
    import urllib.error

    try:
        with OPENER.open(f"{url}/healthz", timeout=5) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise UserError(f"--target {url} is not a pollbench stack (its /healthz answered "
                        f"{e.code})") from None
    except ValueError:
        body = None
    except OSError as e:
        raise UserError(f"--target {url} does not answer /healthz ({e}): is pollbench up "
                        "--bind running there, and its port open?") from None
    if not isinstance(body, dict) or "backend_index" not in body:
        raise UserError(f"--target {url} is not a pollbench stack (its /healthz is not the "
                        "target app's)")


def run_remote(remote: RemoteTarget, load: LoadSpec, out: Path | None = None,
               report: bool = True, history_source: str = "run",
               max_error_rate: float | None = None,
               min_free_disk: int = disk.DEFAULT_FLOOR, stack: StackSpec | None = None,
               session: Session | None = None, warmup_s: float | None = None,
               cooldown_max_s: float = 0.0) -> int:
    """A run against a stack on another host.  With ``pollbench agent`` there, the stack
    ``stack`` (default: the default stack) is started through it first, or kept when
    ``session`` (a sweep's) runs the same one; a run's own session stops it at the end.
    Against ``pollbench up --bind`` the stack is the one up started."""
    remote.check(load)
    load.validate(3600.0)  # the target's own --max-hold is checked once the agent says it
    load.fault_schedule()  # each --fault's form (the agent checks its targets)
    target = check_http_url("--target", remote.target)
    client = session.client if session is not None else AgentClient(remote.agent, remote.token)
    info = client.info()
    if info.get("pollbench") != __version__:
        raise UserError(f"the target's agent runs pollbench {info.get('pollbench')}, this host "
                        f"{__version__}: install the same pollbench on every host")
    controllable = bool(info.get("controllable"))
    if not controllable and load.faults:
        raise UserError("--fault needs a target host that takes control requests: start "
                        "pollbench agent there (pollbench up --bind serves reads only)")
    own = None
    if controllable:
        if session is None:
            session = own = Session(client, remote.lease_s)
        info = session.ensure(stack or StackSpec(), load.faults, cooldown_max_s,
                              log=log.warning)
        # each new stack on a port set of its own (the agent's fresh ports): nginx's port now
        port = (info.get("stack") or {}).get("port")
        if isinstance(port, int):
            target = f"{target.rsplit(':', 1)[0]}:{port}"
    try:
        return _run_remote(remote, load, out, report, history_source, max_error_rate,
                           min_free_disk, client, info, target, session, warmup_s)
    finally:
        if own is not None:
            try:
                own.close()
            except UserError as e:
                log.warning(f"the target's stack could not be stopped ({e}); its lease "
                            "stops it")


def _run_remote(remote: RemoteTarget, load: LoadSpec, out: Path | None, report: bool,
                history_source: str, max_error_rate: float | None, min_free_disk: int,
                client: AgentClient, info: dict, target: str, session: Session | None,
                warmup_s: float | None) -> int:
    if not info.get("alive", True):
        raise UserError(f"the target's stack is down: {info.get('problem')}")
    load.validate(float(info.get("stack", {}).get("max_hold_s", 120.0)))
    check_target(target)
    label = run_label(load, info["stack"]["profile"])
    run_dir = new_run_dir(label, out)
    # the target host's stack, software and machine, as its agent describes them
    record = record_start("run", base_parameters(load),
                          {k: info.get(k) for k in ("stack", "software", "host", "machine",
                                                    "git")})
    record["parameters"]["workers"] = remote.expect_workers
    if warmup_s is not None:
        record["warmup_s"] = warmup_s
    record["distributed"] = {"target": target, "agent": client.url,
                             "master": f"{remote.master_bind}:{remote.master_port}",
                             "expect_workers": remote.expect_workers,
                             "controller": host_info(),
                             "agent_kind": "pollbench agent" if session is not None
                             else "pollbench up",
                             "target_run_dir": info.get("run_dir"),
                             "stack_reused": info.get("reused"),
                             "cooldown_on_target": info.get("cooldown")}
    write_json_atomic(run_dir / "run.json", record)
    log.info(f"pollbench run: {label} on {target}, {load.duration_s:g} s, waiting for "
          f"{remote.expect_workers} workers on {remote.master_bind}:{remote.master_port} -> "
          f"{run_dir}")
    # (the target host's own disk is its agent's: this one receives its logs at the end)
    return drive(RemoteSide(remote, client, target, run_dir, session, load), load, run_dir,
                 record, report, history_source, max_error_rate,
                 disk.DiskWatch(run_dir, min_free_disk))


class RemoteSide(Side):
    """A stack on another host: this host runs only the Locust master (the workers connect
    to it); the target is checked through its agent, and its side (samples, logs, the
    rendered config) pulled from the agent after the load."""

    def __init__(self, remote: RemoteTarget, client: AgentClient, target: str, run_dir: Path,
                 session: Session | None = None, load: LoadSpec | None = None):
        self.remote, self.client, self.url, self.run_dir = remote, client, target, run_dir
        self.session, self.load = session, load
        self.armed = False
        self.group = ChildGroup()
        self.extra_wait_s = remote.workers_timeout_s
        self.controller_before: Offset | None = None
        self.at_start: dict | None = None
        self.t0 = self.t1 = time.time()
        self._next_check = 0.0

    def start(self) -> None:
        # an agent that fails here still leaves run.json "failed", not "running" for ever
        self.controller_before = self.client.clock_offset()
        self.at_start = self.client.sizes()
        self.t0 = time.time()
        self._next_check = time.monotonic() + AGENT_CHECK_EVERY_S

    def locust_args(self) -> tuple[str, ...]:
        r = self.remote
        return ("--master", "--master-bind-host", r.master_bind,
                "--master-bind-port", str(r.master_port),
                "--expect-workers", str(r.expect_workers),
                "--expect-workers-max-wait", f"{r.workers_timeout_s:g}",
                "--pb-agent", self.client.url, "--pb-agent-token", r.token)

    def shown_command(self, cmd: list[str]) -> list[str]:
        return [a if a != self.remote.token else "<agent token>" for a in cmd]

    def pids(self) -> dict[str, int]:
        return {c.name: c.pid for c in self.group.children}

    def _arm_faults(self) -> None:
        """Once the test has started (the master writes progress.json from then on, after
        every worker joined), the agent injects the faults on schedule, counted from the
        test's start as the master's progress says it."""
        load = self.load
        if self.armed or self.session is None or load is None or not load.faults:
            return
        try:
            elapsed = float(json.loads((self.run_dir / METRICS_DIR / PROGRESS_FILE)
                                       .read_text())["elapsed_s"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # not started yet
        self.session.arm(list(load.faults), load.duration_s, max(0.0, min(elapsed, 60.0)))
        self.armed = True

    def check(self) -> None:
        self._arm_faults()
        if time.monotonic() > self._next_check:
            self._next_check += AGENT_CHECK_EVERY_S
            if self.session is not None and self.session.lost:
                raise RunFailed(f"the target's stack was lost: {self.session.lost}")
            state = self.client.info()
            if not state.get("alive", True):
                raise RunFailed(f"the target's stack went down: {state.get('problem')}")

    def load_ended(self, locust: Child) -> None:
        log_text = locust.log_path.read_text(errors="replace")
        if "Gave up waiting for workers to connect" in log_text:
            r = self.remote
            seen = _WAITING.findall(log_text)
            joined = int(seen[-1][0]) if seen else 0
            refused = _refusals(self.run_dir)
            raise RunFailed(
                f"only {joined} of {r.expect_workers} workers connected within "
                f"{r.workers_timeout_s:g} s" + (f"; refused: {refused[0]}" if refused else
                f": run `pollbench worker --master {r.master_bind}:{r.master_port}` on "
                f"each load host (and open port {r.master_port} to them)"))

    def stop(self, record: dict) -> dict[str, int | None]:
        exit_codes = self.group.stop_all()
        self.t1 = time.time()
        if self.armed and self.session is not None:
            try:
                record["faults"] = self._fault_records(self.session.end_faults())
            except UserError as e:
                record["warnings"].append(f"the faults' records could not be fetched: {e}")
        return exit_codes

    def _fault_records(self, records: list[dict]) -> list[dict]:
        """The agent's records with their times on this host's clock (the measured offset
        taken out); the target's own times kept beside them."""
        offset = self.controller_before.offset_s if self.controller_before else 0.0
        out = []
        for r in records:
            r = dict(r)
            for key in ("started_at", "ended_at"):
                if isinstance(r.get(key), (int, float)):
                    r[f"target_{key}"] = r[key]
                    r[key] = r[key] - offset
            out.append(r)
        return out

    def collect(self, record: dict, sampler: Sampler | None
                ) -> tuple[Counts, dict[str, float]] | None:
        own = super().collect(record, sampler)
        if self.at_start is None or self.controller_before is None:
            return own  # nothing to pull: the agent failed before the load
        return _collect(self.client, self.run_dir, record, self.at_start, self.t0, self.t1,
                        self.controller_before, own)


def _refusals(run_dir: Path) -> list[str]:
    return [e.get("reason", "") for e in _events(run_dir) if e.get("kind") == "worker_refused"]


def _events(run_dir: Path) -> list[dict]:
    from analysis.load import read_events

    return read_events(run_dir / RUN_FILES["events"], [])


def _collect(client: AgentClient, run_dir: Path, record: dict, at_start: dict, t0: float,
             t1: float, controller_before: Offset,
             own: tuple[Counts, dict[str, float]] | None
             ) -> tuple[Counts, dict[str, float]] | None:
    """After the load: the target side from the agent, the clocks, who joined and who was
    lost; returns the CPU counts the run is judged by (``own``: this host's samples, when
    the target's could not be pulled)."""
    import csv

    warnings = record["warnings"]
    try:
        record["distributed"]["pulled"] = pull_run(client, run_dir, at_start, t0, t1)
        controller = combine(controller_before, client.clock_offset())
    except UserError as e:
        warnings.append(f"the target side could not be fetched from the agent: {e}")
        controller = controller_before
    events = _events(run_dir)
    joined = [e for e in events if e.get("kind") == "worker_joined"]
    lost = [e for e in events if e.get("kind") == "worker_lost"]
    refused = [e for e in events if e.get("kind") == "worker_refused"]
    record["distributed"].update(
        workers_joined=[{"node": e.get("node"), "host": e.get("host"),
                         "source_addresses": e.get("source_addresses") or []} for e in joined],
        workers_lost=[{"node": e.get("node"), "host": e.get("host")} for e in lost],
        workers_refused=[e.get("reason") for e in refused])
    if lost:
        warnings.append(f"{len(lost)} Locust worker(s) lost mid-run ("
                        + ", ".join(f"{e.get('node')} on {e.get('host')}" for e in lost)
                        + "): their users stopped, so rates and counts cover less load than "
                          "asked")
    worker_cpu, worker_cpu_s, span = workers_cpu(run_dir)
    record["distributed"]["workers_cpu_percent"] = {
        k: round(v / span[k] * 100, 1) for k, v in worker_cpu_s.items() if span[k] > 0}
    record["distributed"]["workers_cpu_saturated_share"] = {
        k: round(sat / n, 3) for k, (n, sat) in worker_cpu.items() if n}
    workers = run_offsets(events)
    record["clock"] = {"controller": controller.as_dict(), "workers": workers}
    p50 = _delivery_p50(run_dir)
    for source, off in workers.items():
        warning = too_uncertain(Offset(off["offset_s"], off["uncertainty_s"],
                                       off["round_trip_s"], off["exchanges"]), p50)
        if warning:
            warnings.append(f"{source} ({off.get('host')}): {warning}")
    for ev in events:
        if ev.get("kind") == "clock" and ev.get("error"):
            warnings.append(f"{ev.get('source')} could not measure its clock offset to the "
                            f"target ({ev['error']}): its delivery latency is uncorrected and "
                            "unbounded")
    processes = run_dir / RUN_FILES["processes"]
    if not processes.exists():
        return own
    with processes.open(newline="") as f:
        rows = [r for r in list(csv.reader(f))[1:] if r]
    saturation, cpu_seconds = counts_from_rows(rows)
    # the workers' CPU (their own count, each second) is the load generator's too: a
    # saturated worker flags the run as a saturated local Locust does
    saturation.update({f"loadgen-{k}": v for k, v in worker_cpu.items()})
    cpu_seconds.update({f"loadgen-{k}": v for k, v in worker_cpu_s.items()})
    return saturation, cpu_seconds


def workers_cpu(run_dir: Path) -> tuple[Counts, dict[str, float], dict[str, float]]:
    """Each worker's CPU, from the ``cpu_ms`` it counts per 1-s interval (counters.jsonl),
    judged by the one saturation rule: (worker -> counts, worker -> CPU seconds, worker ->
    seconds covered)."""
    try:
        lines = (run_dir / RUN_FILES["counters"]).read_text().splitlines()
    except OSError:
        return {}, {}, {}
    rows = []
    for ln in lines:
        try:
            rows.append(json.loads(ln))
        except ValueError:
            continue
    return counts_from_intervals(rows)


def _delivery_p50(run_dir: Path) -> float:
    from analysis.hdr import merged, read_hdr_log, summary_ms

    try:
        s = summary_ms(merged(read_hdr_log(run_dir / RUN_FILES["latency_hdr"]), "DELIVERY"))
    except (OSError, ValueError):
        return 0.0
    return float(s["p50"]) if s.get("count") else 0.0
