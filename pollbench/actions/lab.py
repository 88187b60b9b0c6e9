"""A target host a controller drives (``pollbench agent``): the stack is started, changed and
stopped through the agent's signed control requests, one stack at a time, under a lease.

    POST   /v1/stack   {"holder", "lease_s", "stack": {...}, "faults": [...], "cooldown_max_s"}
                       start the stack (or keep the running one when the holder asks for the
                       same stack again); answers /v1/info
    DELETE /v1/stack   {"holder"}: stop it; the host is idle
    POST   /v1/lease   {"holder", "lease_s"}: renew the lease
    POST   /v1/check   {"stack": {...}}: render the config and run ``nginx -t`` on it
    POST   /v1/faults  {"holder", "faults": ["20s:kill=3s:backend-1", ...], "run_s",
                       "elapsed_s"}: the load started elapsed_s ago; inject these on schedule
    DELETE /v1/faults  {"holder"}: the load has ended; no fault starts after this; answers
                       {"records": [...]} (times on this host's clock)
    GET    /v1/faults  the records so far

The stack is described by typed values only (:func:`spec_from_wire`: a shipped profile's
name, knobs validated as a profile's are, a loop, a backend count ...), never by nginx
text, paths or commands; ports and the address are the agent's own.  A controller that
stops renewing its lease (killed, cut off) loses the stack when the lease runs out: the
agent stops it and is idle again.  Every process is started from one long-lived thread
(a child started from a thread gets PR_SET_PDEATHSIG when that thread exits).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pollbench import __version__
from pollbench.errors import RunFailed, UserError
from pollbench.log import log
from pollbench.records.rundir import new_run_dir
from pollbench.records.runinfo import host_info
from pollbench.stack import nginx_config
from pollbench.stack.agent import API, NAME, Agent, Control
from pollbench.stack.faults import Fault, FaultInjector, parse_fault, schedule
from pollbench.stack.preflight import check_fault_targets, preflight
from pollbench.stack.sampler import Sampler
from pollbench.stack.spec import ResolvedStack, StackSpec
from pollbench.stack.stack import ConfigRefused, Stack

DEFAULT_LEASE_S = 30.0
# like a local sweep's "fresh-ports": each new stack on a set of ports (of PORT_SETS) that
# no TIME_WAIT socket of an earlier stack holds; a set leaves room for this many backends
PORT_SETS = 4
BACKENDS_PER_SET = 16
MAX_LEASE_S = 3600.0
MAX_COOLDOWN_S = 300.0
WATCH_EVERY_S = 0.5
_HOLDER = re.compile(r"[A-Za-z0-9_.:-]{8,80}")
# wire key -> (StackSpec field, type)
WIRE = {"profile": ("profile", str), "nginx": ("nginx_overrides", dict),
        "backends": ("backends", int), "loop": ("loop", str),
        "nginx_binary": ("nginx_binary", str), "state": ("state", str),
        "max_hold_s": ("max_hold_s", float), "delivery_delay_ms": ("delivery_delay_ms", float),
        "burn_us": ("burn_us", float),
        "backend_max_connections": ("backend_max_connections", int),
        "redis": ("redis_overrides", dict)}
SCALAR = (bool, int, float, str)


def port_set(base: StackSpec, k: int, spec: StackSpec | None = None) -> StackSpec:
    """``spec`` (default: ``base``) on the agent's port set ``k``."""
    return replace(spec or base, port=base.port + k,
                   backend_port=base.backend_port + k * BACKENDS_PER_SET)


def all_ports(base: StackSpec, sets: int) -> tuple[list[int], list[int]]:
    """(nginx ports, backend ports) of ``sets`` port sets."""
    return ([base.port + k for k in range(sets)],
            list(range(base.backend_port, base.backend_port + sets * BACKENDS_PER_SET)))


def spec_from_wire(wire: Any, base: StackSpec) -> StackSpec:
    """A controller's stack description -> the agent's StackSpec (its own ports and address).
    Every value is typed and checked here or by :meth:`StackSpec.resolve`; UserError names
    the key."""
    if not isinstance(wire, dict):
        raise UserError("stack must be a JSON object")
    unknown = sorted(set(wire) - set(WIRE))
    if unknown:
        raise UserError(f"unknown stack setting(s) {', '.join(unknown)}; known: "
                        + ", ".join(sorted(WIRE)))
    kwargs: dict[str, Any] = {}
    for key, value in wire.items():
        attr, kind = WIRE[key]
        if value is None and key in ("backends", "nginx_binary", "state",
                                     "backend_max_connections"):
            kwargs[attr] = None
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise UserError(f"stack setting {key} must be {kind.__name__} (it is {value!r})")
        if isinstance(value, dict):
            bad = [k for k, v in value.items() if not isinstance(v, SCALAR)]
            if bad:
                raise UserError(f"stack setting {key}: {bad[0]} must be a number, a string or "
                                "true/false")
            if key == "nginx":
                unknown = sorted(set(value) - set(nginx_config.KNOBS))
                if unknown:
                    raise UserError(f"unknown nginx knob(s) {', '.join(unknown)}; known: "
                                    + ", ".join(sorted(nginx_config.KNOBS)))
        if key in ("profile", "nginx_binary") and not NAME.fullmatch(str(value)):
            raise UserError(f"stack setting {key} {value!r} must be a name (letters, digits, "
                            "_ and -): the agent takes no paths")
        if key == "state" and value not in ("local", "redis"):
            raise UserError(f"state {value!r} must be local or redis")
        kwargs[attr] = value
    spec = replace(base, **kwargs)
    if spec.profile not in nginx_config.profile_names():
        raise UserError(f"unknown profile {spec.profile!r}; the agent has "
                        + ", ".join(nginx_config.profile_names()))
    return spec


def faults_from_wire(texts: Any) -> list[Fault]:
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts) or \
            len(texts) > 100:
        raise UserError("faults must be a list of up to 100 --fault texts")
    out = []
    for text in texts:
        try:
            fault = parse_fault(text)
        except ValueError as e:
            raise UserError(f"fault {e}") from None
        if fault.action == "reload" and fault.target and not NAME.fullmatch(fault.target):
            raise UserError(f"fault {text!r}: reload into a shipped profile's name (the agent "
                            "takes no paths)")
        out.append(fault)
    return out


@dataclass
class Current:
    """The stack the lab runs now, and who holds it."""

    resolved: ResolvedStack
    stack: Stack
    sampler: Sampler
    run_dir: Path
    wire: dict
    holder: str
    expires: float  # time.monotonic()
    record: dict
    started_at: float = field(default_factory=time.time)
    injector: FaultInjector | None = None
    dirty: bool = False  # faults were injected: the next start gets a fresh stack
    alive: bool = True
    problem: str | None = None


class Lab(Control):
    def __init__(self, root: Path, base: StackSpec, agent: Agent | None = None,
                 clock: Callable[[], float] = time.monotonic, port_sets: int = PORT_SETS):
        self.root = Path(root)
        self.base = base
        self.port_sets = port_sets
        self._last_set = port_sets - 1
        self.agent = agent
        self.clock = clock
        self.current: Current | None = None
        self.last: dict | None = None  # what happened to the previous stack
        self.fault_records: list[dict] = []
        self._lock = threading.RLock()  # the state, held briefly
        self._op = threading.Lock()  # one start / stop / arm at a time (never inside _lock)
        # every process is started (and stopped) from this one thread, which lives as long
        # as the lab
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pollbench-lab")
        self._closed = threading.Event()
        self._watch = threading.Thread(target=self._watchdog, name="pollbench-lab-watch",
                                       daemon=True)
        self._watch.start()

    # -- the agent's view ------------------------------------------------------------------

    def info(self) -> dict:
        with self._lock:
            cur = self.current
            out: dict[str, Any] = {"pollbench": __version__, "kind": "pollbench-agent",
                                   "controllable": True, "host": host_info(),
                                   "state": "running" if cur else "idle", "last": self.last}
            if cur is None:
                return {**out, "alive": True, "problem": None, "stack": None}
            return {**out, **cur.record, "alive": cur.alive, "problem": cur.problem,
                    "holder": cur.holder, "lease_left_s": round(cur.expires - self.clock(), 1),
                    "run_dir": cur.run_dir.name, "pids": cur.stack.pids(),
                    "url": cur.stack.url}

    def handle(self, method: str, path: str, body: Any) -> tuple[int, dict]:
        routes = {("POST", "stack"): self._start, ("DELETE", "stack"): self._stop_request,
                  ("POST", "lease"): self._renew, ("POST", "check"): self._check,
                  ("POST", "faults"): self._arm, ("DELETE", "faults"): self._end_faults,
                  ("GET", "faults"): lambda body: (200, {"records": self.fault_records})}
        fn = routes.get((method, path[len(API) + 1:] if path.startswith(API + "/") else ""))
        if fn is None:
            return 404, {"error": f"no such endpoint: {method} {path}"}
        try:
            return fn(body or {})
        except UserError as e:
            return 400, {"error": str(e).splitlines()[0]}
        except RunFailed as e:
            return 500, {"error": str(e).splitlines()[0]}

    # -- requests --------------------------------------------------------------------------

    def _holder(self, body: dict) -> str:
        holder = body.get("holder")
        if not isinstance(holder, str) or not _HOLDER.fullmatch(holder):
            raise UserError("holder must name the controller (8 to 80 letters, digits, _.:-)")
        return holder

    def _lease(self, body: dict) -> float:
        lease = body.get("lease_s", DEFAULT_LEASE_S)
        if isinstance(lease, bool) or not isinstance(lease, (int, float)) or \
                not 2 <= lease <= MAX_LEASE_S:
            raise UserError(f"lease_s must be from 2 to {MAX_LEASE_S:g} seconds")
        return float(lease)

    def _busy(self, holder: str) -> tuple[int, dict] | None:
        cur = self.current
        if cur is not None and cur.holder != holder:
            left = cur.expires - self.clock()
            return 409, {"error": f"the target is held by another controller ({cur.holder}) "
                                  f"for {max(left, 0):.0f} s more (its lease)",
                         "lease_left_s": round(max(left, 0), 1)}
        return None

    def _start(self, body: dict) -> tuple[int, dict]:
        holder, lease = self._holder(body), self._lease(body)
        unknown = sorted(set(body) - {"holder", "lease_s", "stack", "faults", "cooldown_max_s"})
        if unknown:
            raise UserError(f"unknown key(s) {', '.join(unknown)} in a stack request")
        spec = spec_from_wire(body.get("stack", {}), self.base)
        faults = faults_from_wire(body.get("faults", []))
        cooldown = body.get("cooldown_max_s", 0)
        if isinstance(cooldown, bool) or not isinstance(cooldown, (int, float)) or \
                not 0 <= cooldown <= MAX_COOLDOWN_S:
            raise UserError(f"cooldown_max_s must be from 0 to {MAX_COOLDOWN_S:g}")
        # every check before anything stops
        preflight(spec, faults=faults, check_ports=False).release()
        wire = {"stack": body.get("stack", {}), "upgrade": any(f.action == "upgrade"
                                                               for f in faults)}
        with self._op:
            with self._lock:
                busy = self._busy(holder)
                if busy:
                    return busy
                cur = self.current
                if cur is not None and cur.wire == wire and cur.alive and not cur.dirty:
                    cur.expires = self.clock() + lease
                    log.info(f"agent: {holder} keeps the running stack ({cur.run_dir.name})")
                    return 200, {**self.info(), "reused": True}
            self._exec.submit(self._do_stop, "replaced by a new stack").result()
            waited = self._exec.submit(self._do_start, spec, wire, holder, lease,
                                       float(cooldown)).result()
            return 200, {**self.info(), "reused": False, "cooldown": waited}

    def _stop_request(self, body: dict) -> tuple[int, dict]:
        holder = self._holder(body)
        with self._op:
            with self._lock:
                busy = self._busy(holder)
            if busy:
                return busy
            self._exec.submit(self._do_stop, f"stopped by {holder}").result()
        return 200, self.info()

    def _renew(self, body: dict) -> tuple[int, dict]:
        holder, lease = self._holder(body), self._lease(body)
        with self._lock:
            cur = self.current
            if cur is None:
                return 409, {"error": "no stack runs (its lease ran out, or it was stopped): "
                                      "start one", "last": self.last}
            busy = self._busy(holder)
            if busy:
                return busy
            cur.expires = self.clock() + lease
            return 200, {"lease_left_s": lease, "alive": cur.alive, "problem": cur.problem}

    def _check(self, body: dict) -> tuple[int, dict]:
        import tempfile

        spec = spec_from_wire(body.get("stack", {}), self.base)
        resolved = preflight(spec, check_ports=False).resolved
        with tempfile.TemporaryDirectory(prefix="pollbench-agent-check-") as tmp:
            stack = Stack(resolved, Path(tmp))
            try:
                stack.test_config(stack.render())
            except ConfigRefused as e:
                return 400, {"error": f"nginx -t refused the config: {e.summary}"}
        return 200, {"ok": True, "settings": resolved.settings}

    def _arm(self, body: dict) -> tuple[int, dict]:
        holder = self._holder(body)
        faults = faults_from_wire(body.get("faults", []))
        run_s = body.get("run_s", 3600)
        if isinstance(run_s, bool) or not isinstance(run_s, (int, float)) or \
                not 0 < run_s <= 7 * 24 * 3600:
            raise UserError("run_s must be the load's length in seconds")
        elapsed = body.get("elapsed_s", 0)
        if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)) or \
                not 0 <= elapsed <= 60:
            raise UserError("elapsed_s (how long ago the load started) must be 0 to 60 s")
        with self._op:
            with self._lock:
                cur = self.current
                busy = self._busy(holder)
            if cur is None:
                return 409, {"error": "no stack runs: start one before its faults"}
            if busy:
                return busy
            check_fault_targets(cur.resolved, faults)
            if cur.injector is not None:
                cur.injector.close()
            self.fault_records = []
            if faults:
                cur.dirty = True
                injector = FaultInjector(cur.stack, schedule(faults, float(run_s)),
                                         time.monotonic() - elapsed, log=log.info)
                self._exec.submit(injector.start).result()
                cur.injector = injector
                self.fault_records = injector.records
            return 200, {"armed": [f.text() for f in faults], "started_at": time.time()}

    def _end_faults(self, body: dict) -> tuple[int, dict]:
        holder = self._holder(body)
        with self._op:
            with self._lock:
                busy = self._busy(holder)
                cur = self.current
            if busy:
                return busy
            if cur is not None and cur.injector is not None:
                cur.injector.close()
                # a fault under way finishes (its process comes back) before the answer
                deadline = time.monotonic() + 30
                while any(r["ended_at"] is None for r in cur.injector.records) and \
                        time.monotonic() < deadline:
                    time.sleep(0.05)
            return 200, {"records": list(self.fault_records)}

    # -- the one thread that starts and stops processes ----------------------------------

    def _do_start(self, spec: StackSpec, wire: dict, holder: str, lease: float,
                  cooldown_max_s: float) -> dict:
        from pollbench.actions.run import target_record

        spec, waited = self._fresh_ports(spec, cooldown_max_s)
        resolved = spec.resolve(claim=True)
        try:
            run_dir = new_run_dir(f"agent-{spec.profile}", results=self.root)
            stack = Stack(resolved, run_dir,
                          detach_nginx=wire["upgrade"])
            try:
                stack.start()
            except BaseException:
                stack.stop()
                raise
        except BaseException:
            resolved.release()
            raise
        sampler = Sampler(run_dir / "samples", stack.pids, stack.url, stack.stats_urls,
                          redis_url=stack.redis_url)
        sampler.start()
        record = target_record(resolved)
        with self._lock:
            self.current = Current(resolved, stack, sampler, run_dir, wire, holder,
                                   self.clock() + lease, record)
            self.fault_records = []
            if self.agent is not None:
                self.agent.run_dir = run_dir
        log.info(f"agent: {holder} started a stack: profile {spec.profile}, "
                 f"{resolved.settings['backends']} backends -> {run_dir}")
        return waited

    def _do_stop(self, why: str) -> None:
        """Stop the stack; /v1/info says "running" (not alive, "stopping") until every
        process is down, then "idle"."""
        with self._lock:
            cur = self.current
            if cur is None:
                return
            cur.alive, cur.problem = False, f"stopping: {why}"
        if cur.injector is not None:
            cur.injector.halt()
        try:
            cur.stack.stop()
        finally:
            if cur.injector is not None:
                cur.injector.stop()
            cur.sampler.stop()
            cur.resolved.release()
            with self._lock:
                self.current = None
                self.last = {"run_dir": cur.run_dir.name, "holder": cur.holder,
                             "stopped_at": time.time(), "why": why}
        log.info(f"agent: stack {cur.run_dir.name} stopped ({why}); idle")

    def port_set(self, k: int, spec: StackSpec | None = None) -> StackSpec:
        return port_set(self.base, k, spec)

    def _fresh_ports(self, spec: StackSpec, max_s: float) -> tuple[StackSpec, dict]:
        """The next port set that no TIME_WAIT socket holds (waiting at most ``max_s`` for
        the one used longest ago when all have some; ``max_s`` 0: the next set at once)."""
        from pollbench.actions.sweep import time_wait_count

        backends = spec.settings()["backends"]
        if self.port_sets > 1 and backends > BACKENDS_PER_SET:
            raise UserError(f"{backends} backends: this agent's port sets leave room for "
                            f"{BACKENDS_PER_SET} (start pollbench agent with --port-sets 1)")
        started = time.monotonic()
        order = [(self._last_set + i) % self.port_sets for i in range(1, self.port_sets + 1)]

        def held(k: int) -> int:
            s = self.port_set(k, spec)
            return time_wait_count({s.port, *range(s.backend_port, s.backend_port + backends)})

        counts = {k: held(k) for k in order}
        choice = next((k for k in order if counts[k] == 0), order[0])
        left = counts[choice]
        while left and time.monotonic() - started < max_s:
            time.sleep(1.0)
            left = held(choice)
        self._last_set = choice
        chosen = self.port_set(choice, spec)
        return chosen, {"mode": "fresh-ports (on the target host)",
                        "ports": [chosen.port, chosen.backend_port],
                        "time_wait_on_port_sets": sum(counts.values()),
                        "time_wait_left": left,
                        "waited_s": round(time.monotonic() - started, 1)}

    def _watchdog(self) -> None:
        while not self._closed.wait(WATCH_EVERY_S):
            with self._lock:
                cur = self.current
                if cur is None:
                    continue
                if cur.alive:
                    try:
                        cur.stack.check_alive()
                    except Exception as e:
                        cur.alive, cur.problem = False, str(e).splitlines()[0]
                        log.warning(f"agent: the stack went down: {cur.problem}")
                if self.clock() <= cur.expires:
                    continue
            with self._op:  # (a request under way finishes first; then look again)
                with self._lock:
                    cur = self.current
                    expired = cur is not None and self.clock() > cur.expires
                if expired and cur is not None:
                    log.warning(f"agent: the lease of {cur.holder} ran out (no renewal): "
                                "stopping its stack")
                    self._exec.submit(self._do_stop,
                                      f"the lease of {cur.holder} ran out").result()

    def close(self) -> None:
        """Stop the stack (if any) and the lab's threads."""
        self._closed.set()
        self._watch.join(5)
        self._exec.submit(self._do_stop, "the agent stopped").result()
        self._exec.shutdown(wait=True)


READ_TOKEN_ENV = "POLLBENCH_AGENT_READ_TOKEN"


def agent_command(base: StackSpec, agent_port: int, out: Path | None,
                  control_token: str | None, read_token: str | None,
                  port_sets: int = PORT_SETS) -> int:
    """``pollbench agent``: serve control requests until Ctrl-C; every stack is stopped."""
    import os

    from pollbench.actions.up import DEFAULT_AGENT_PORT, TOKEN_ENV, check_token
    from pollbench.stack.agent import CONTROL, READ, new_token
    from pollbench.stack.net import address_here

    nginx_config.check_listen_address(base.bind)
    if not address_here(base.bind):
        raise UserError(f"--bind {base.bind} is not an address of this host: give one of its "
                        "own addresses (ip -brief addr), or 0.0.0.0 for all")
    port = agent_port or DEFAULT_AGENT_PORT
    if not 1024 <= port <= 65535:
        raise UserError(f"--agent-port {port} must be from 1024 to 65535")
    control = control_token or os.environ.get(TOKEN_ENV) or ""
    read = read_token or os.environ.get(READ_TOKEN_ENV) or ""
    control = check_token(control) if control else ""
    read = check_token(read) if read else ""
    if control and control == read:
        raise UserError("--read-token must differ from the control token")
    from pollbench.stack.net import port_free

    if not 1 <= port_sets <= 16:
        raise UserError(f"--port-sets {port_sets} must be from 1 to 16")
    nginx_ports, backend_ports = all_ports(base, port_sets)
    if port_sets == 1:
        backend_ports = backend_ports[:1]  # (resolve checks the stack's own count)
    if set(nginx_ports) & set(backend_ports):
        raise UserError(f"--port {base.port} and --backend-port {base.backend_port}: the "
                        f"{port_sets} port sets overlap (nginx {base.port}.."
                        f"{base.port + port_sets - 1}, backends {base.backend_port}.."
                        f"{base.backend_port + port_sets * BACKENDS_PER_SET - 1}): move them "
                        "apart")
    if max(nginx_ports + backend_ports) > 65535 or min(nginx_ports + backend_ports) < 1024:
        raise UserError("the stack's ports must be from 1024 to 65535")
    listen = "127.0.0.1" if base.bind == "0.0.0.0" else base.bind
    for p, on in [(p, listen) for p in nginx_ports] + [(p, "127.0.0.1") for p in backend_ports]:
        if not port_free(p, on):
            raise UserError(f"port {p} is already in use on {on}: stop what holds it, or "
                            "choose --port / --backend-port")
    root = new_run_dir("agent", out)
    lab = Lab(root, base, port_sets=port_sets)
    tokens = {CONTROL: control or new_token(), READ: read or new_token()}
    try:
        agent = Agent(root, tokens, lab.info, host=base.bind, port=port, control=lab)
    except OSError as e:
        lab.close()
        raise UserError(f"the agent cannot listen on {base.bind}:{port} ({e.strerror}): "
                        "choose --agent-port, or a --bind address of this host") from None
    lab.agent = agent
    host = base.bind if base.bind != "0.0.0.0" else "ADDR"
    print(f"folder:        {root}  (each stack a run folder in it)")
    print(f"agent:         http://{host}:{port}  (signed requests only; idle: no stack yet)")
    if not control:
        print(f"control token: {tokens[CONTROL]}  (shown once: starts and stops stacks)")
    if not read:
        print(f"read token:    {tokens[READ]}  (shown once: reads only)")
    print(f"stack:         nginx on {host}:{base.port}"
          + (f"..{base.port + port_sets - 1} (a fresh port set each new stack)"
             if port_sets > 1 else "") + f", backends on 127.0.0.1:{base.backend_port}+")
    print(f"controller:    pollbench run --target http://{host}:{base.port} --agent "
          f"http://{host}:{port} --agent-token TOKEN --expect-workers N --profile P ...")
    print("Ctrl-C stops everything.", flush=True)
    agent.start()
    try:
        while True:
            time.sleep(0.5)
    finally:
        agent.stop()
        lab.close()
