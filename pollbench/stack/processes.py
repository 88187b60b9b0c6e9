"""Child processes that cannot outlive pollbench.

Every child starts in its own session (a terminal's Ctrl-C reaches only
pollbench, which then stops the children in order) and with PR_SET_PDEATHSIG,
so even a ``kill -9`` of pollbench takes the children with it.  Output goes to
a log file in the run folder, which is kept whatever happens.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pollbench.log import log

_PR_SET_PDEATHSIG = 1



def die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """'0', '0,2', '1-3', '0,2-3' -> sorted CPU numbers; ValueError names what is wrong."""
    cpus: set[int] = set()
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ValueError(f"{text!r} is not a CPU list (use e.g. 0, 0,2 or 1-3)")
        first, last = int(lo), int(hi) if dash else int(lo)
        if last < first:
            raise ValueError(f"{text!r}: range {part} runs backwards")
        cpus.update(range(first, last + 1))
    return tuple(sorted(cpus))


def parse_cpu_placement(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """'LOADGEN/STACK', e.g. '0/1': the load generator's CPUs and nginx + backends' CPUs.

    Both sides must be CPUs this process may use, and must not share one (the point
    of placing them is that they stop competing)."""
    loadgen, slash, stack = text.partition("/")
    if not slash:
        raise ValueError(f"{text!r}: give LOADGEN/STACK CPU lists, e.g. 0/1 or 0/1-3")
    a, b = parse_cpu_list(loadgen), parse_cpu_list(stack)
    allowed = os.sched_getaffinity(0)
    outside = sorted(set(a + b) - allowed)
    if outside:
        raise ValueError(f"{text!r}: CPU {outside[0]} is not available here "
                         f"(available: {','.join(map(str, sorted(allowed)))})")
    if set(a) & set(b):
        raise ValueError(f"{text!r}: the load generator and the stack share CPU "
                         f"{sorted(set(a) & set(b))[0]}; give them separate CPUs")
    return a, b


@dataclass
class Child:
    name: str
    popen: subprocess.Popen
    log_path: Path
    stop_signal: int = signal.SIGTERM
    exit_code: int | None = field(default=None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def stop(self, timeout: float = 6.0) -> int | None:
        """Ask politely (its stop signal to the whole process group), then SIGKILL."""
        if self.alive():
            signal_group(self.popen.pid, self.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                signal_group(self.popen.pid, signal.SIGKILL)
                try:
                    self.popen.wait(5)
                except subprocess.TimeoutExpired:
                    # not gone 5 s after SIGKILL (stuck in the kernel): say so, and let the
                    # other children be stopped all the same
                    log.warning(f"{self.name} (pid {self.popen.pid}) did not exit after "
                                "SIGKILL")
        # The group may still hold grandchildren (nginx workers, Locust workers).
        signal_group(self.popen.pid, signal.SIGKILL)
        self.exit_code = self.popen.returncode
        return self.exit_code


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


_OPEN_FILES: dict | None = None  # raise_open_files' answer, once per process


def raise_open_files() -> dict:
    """Raise this process's open-files limit as far as it goes, once: the soft limit to the
    hard one and, as root, the hard limit to ``fs.nr_open``; every process pollbench starts
    inherits it.  Returns what it found: ``limit`` (the soft limit now), ``before``, ``hard``
    and, when the hard limit could not be raised, ``refused`` (why)."""
    import resource

    global _OPEN_FILES
    if _OPEN_FILES is not None:
        return _OPEN_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    out: dict = {"before": soft}
    if os.geteuid() == 0:
        try:
            nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            nr_open = hard
        if nr_open > hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nr_open, nr_open))
                hard = nr_open
            except (OSError, ValueError) as e:
                out["refused"] = (f"raising the hard limit {hard:,} to fs.nr_open {nr_open:,} "
                                  f"was refused ({e}: no CAP_SYS_RESOURCE here)")
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out.update(limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard=hard)
    _OPEN_FILES = out
    return out


def open_files_line(found: dict) -> str:
    """raise_open_files' answer in one line."""
    raised = "" if found["limit"] == found["before"] else f" (raised from {found['before']:,})"
    return (f"open files per process started: {found['limit']:,}{raised}"
            + (f"; {found['refused']}" if found.get("refused") else ""))


def spawn(name: str, cmd: list[str], log_path: Path, *, env: dict | None = None,
          cwd: Path | None = None, stop_signal: int = signal.SIGTERM,
          cpus: tuple[int, ...] | None = None) -> Child:
    """Start ``cmd``; with ``cpus``, it and every process it forks run only on those CPUs."""
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def setup() -> None:  # in the child, before exec: children inherit the affinity
        die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)

    log.debug(f"starting {name}: {' '.join(cmd)} (output: {log_path})")
    with open(log_path, "ab", buffering=0) as out:
        out.write(f"# pollbench started: {' '.join(cmd)}\n".encode())
        popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                 start_new_session=True, preexec_fn=setup)
    return Child(name, popen, log_path, stop_signal)


class ChildGroup:
    """Children stopped in reverse start order (load generator, then nginx, then backends)."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def add(self, child: Child) -> Child:
        self.children.append(child)
        return child

    def dead(self) -> list[Child]:
        return [c for c in self.children if not c.alive()]

    def stop_all(self) -> dict[str, int | None]:
        codes = {}
        for child in reversed(self.children):
            codes[child.name] = child.stop()
        return codes


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
