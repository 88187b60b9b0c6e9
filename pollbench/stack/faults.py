"""Faults injected into a running stack on a schedule: ``pollbench run --fault AT:ACTION[:TARGET]``.

    --fault 20s:kill=3s:backend-1     SIGKILL backend 1 at 20 s, start it again 3 s later
    --fault 20s:stop=10s              SIGSTOP backend 0 for 10 s, then SIGCONT (a stall)
    --fault 30s:restart:backend-2     graceful restart: SIGTERM (held polls are answered), start
    --fault 30s:reload                nginx reload (SIGHUP to the master), same config
    --fault 30s:reload:keepalive      nginx reload into another profile's config (a changed config)
    --fault 40s:upgrade               nginx binary upgrade: USR2, WINCH the old master, QUIT it
    --fault 20s:kill=2s:redis         SIGKILL the stack's Redis (--state redis), start it again
    --fault '*15s:reload'             every 15 s (15 s, 30 s, ...) until the run ends

AT counts from the start of the load (Locust's launch).  The run goes on through every
fault; each one is recorded in run.json (``faults``) with its exact start and end times.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

ACTIONS = {
    "kill": "SIGKILL a backend (or redis), start it again after D (default 2 s)",
    "stop": "SIGSTOP a backend (or redis) for D (default 5 s), then SIGCONT",
    "restart": "graceful backend (or redis) restart: SIGTERM, then start it again",
    "reload": "nginx reload (SIGHUP); TARGET: a profile to reload into",
    "upgrade": "nginx binary upgrade (USR2, WINCH, QUIT: nginx's documented procedure)",
}
BACKEND_ACTIONS = ("kill", "stop", "restart")
DEFAULT_DURATION_S = {"kill": 2.0, "stop": 5.0}
MAX_FAULTS = 1000
_TIME = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")


@dataclass(frozen=True)
class Fault:
    at_s: float
    action: str
    duration_s: float | None = None
    target: str | None = None      # backend-N or redis (process actions), a profile (reload)
    every_s: float | None = None   # repeated every this many seconds

    @property
    def backend(self) -> int:
        """The backend index a kill, stop or restart targets."""
        return int((self.target or "backend-0").split("-")[1])

    def text(self) -> str:
        at = f"*{self.every_s:g}s" if self.every_s else f"{self.at_s:g}s"
        action = self.action + (f"={self.duration_s:g}s" if self.duration_s is not None else "")
        return f"{at}:{action}" + (f":{self.target}" if self.target else "")


def _seconds(text: str, what: str) -> float:
    m = _TIME.match(text.strip())
    if not m:
        raise ValueError(f"{what} {text!r} is not a time: use e.g. 20s, 1.5s, 500ms or 2m")
    value = float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
    if value > 7 * 24 * 3600:
        raise ValueError(f"{what} {text!r} is longer than a week")
    return value


def parse_fault(text: str) -> Fault:
    """``AT:ACTION[=D][:TARGET]`` -> Fault; ValueError says what is wrong and the form."""
    form = "use AT:ACTION[=D][:TARGET], e.g. 20s:kill=3s:backend-1 or *15s:reload"
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ValueError(f"{text!r}: {form}")
    at_text, action_text = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    every = at_text.startswith("*")
    at = _seconds(at_text[1:] if every else at_text, "time")
    if every and at < 1:
        raise ValueError(f"{text!r}: a repeated fault needs a period of 1 s or more")
    action, eq, dur_text = action_text.partition("=")
    if action not in ACTIONS:
        raise ValueError(f"{text!r}: unknown action {action!r}; choose one of "
                         f"{', '.join(ACTIONS)}")
    duration = None
    if eq:
        if action not in DEFAULT_DURATION_S:
            raise ValueError(f"{text!r}: only kill and stop take a duration (=D)")
        duration = _seconds(dur_text, "duration")
    elif action in DEFAULT_DURATION_S:
        duration = DEFAULT_DURATION_S[action]
    if action in BACKEND_ACTIONS:
        target = target or "backend-0"
        if not re.fullmatch(r"backend-\d{1,2}|redis", target):
            raise ValueError(f"{text!r}: the target of {action} is a backend, e.g. backend-1, "
                             "or redis")
    elif action == "upgrade" and target:
        raise ValueError(f"{text!r}: upgrade takes no target")
    elif action == "reload" and target and not re.fullmatch(r"[A-Za-z0-9_-]+|.+\.toml", target):
        raise ValueError(f"{text!r}: the target of reload is a profile name or a .toml path")
    return Fault(at, action, duration, target, at if every else None)


def schedule(faults: tuple[Fault, ...] | list[Fault], run_s: float) -> list[Fault]:
    """Every occurrence within ``run_s``, in time order (repeated faults expanded)."""
    out: list[Fault] = []
    for f in faults:
        if f.every_s:
            t = f.every_s
            while t < run_s and len(out) < MAX_FAULTS:
                out.append(Fault(t, f.action, f.duration_s, f.target))
                t += f.every_s
        else:
            out.append(f)
    return sorted(out, key=lambda f: f.at_s)


class FaultInjector(threading.Thread):
    """Runs the schedule against a Stack (its ``inject`` does each action); records each
    fault: what, when it was due, when it started and ended (epoch s), and what happened."""

    def __init__(self, stack, faults: list[Fault], started: float, log=print):
        super().__init__(name="pollbench-faults", daemon=True)
        self.stack, self.faults, self.started, self.log = stack, faults, started, log
        self.records: list[dict] = []
        self._halt = threading.Event()
        self._no_more = threading.Event()  # set by halt() and by close()

    def halt(self) -> None:
        """No fault starts after this; one under way ends early (a stop resumes at once)."""
        self._halt.set()
        self._no_more.set()

    def close(self) -> None:
        """No fault starts after this (the load has ended), but the thread stays until
        :meth:`halt`: a process it started again lives as long as the stack."""
        self._no_more.set()

    def stop(self) -> None:
        self.halt()
        self.join(30)

    def run(self) -> None:
        for fault in self.faults:
            delay = self.started + fault.at_s - time.monotonic()
            if self._no_more.wait(max(delay, 0)):
                break
            record = {"fault": fault.text(), "action": fault.action, "target": fault.target,
                      "at_s": fault.at_s, "duration_s": fault.duration_s,
                      "started_at": time.time(), "ended_at": None, "detail": ""}
            self.records.append(record)
            self.log(f"fault at {fault.at_s:g}s: {fault.text()}")
            try:
                record["detail"] = self.stack.inject(fault, self._halt) or ""
                record["ok"] = True
            except Exception as e:  # a fault that could not be injected is recorded, not fatal
                record["detail"], record["ok"] = f"failed: {e}", False
                self.log(f"fault {fault.text()} could not be injected: {e}")
            record["ended_at"] = time.time()
        # Stay alive until the run ends: a process started from a thread gets its
        # PR_SET_PDEATHSIG signal when that thread exits (a restarted backend would die).
        self._halt.wait()
