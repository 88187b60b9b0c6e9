"""Backends from the user's own command: their service, started N times behind the seed's
nginx exactly as the reference target's backends are (sampled, faults, logs, stopped with
the stack).

    cmd = BackendCommand("{python} app.py --port {port} --redis {redis_url}", ready="/healthz")
    cmd.check(state="redis")                  # one line naming what is wrong, no process
    cmd.argv(port=8000, index=0, redis_url="redis://127.0.0.1:6390/0")

Placeholders: ``{port}`` (this backend's port on 127.0.0.1), ``{index}`` (0 ..),
``{redis_url}`` (the stack's Redis: needs state redis), ``{python}`` (the Python running
pollbench).  The command is split like a shell would (``shlex``) but never run by one: each
word is one argument, placeholders filled in after the split.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from pollbench.errors import UserError
from pollbench.stack.prometheus import is_plain_path

PLACEHOLDERS = ("port", "index", "redis_url", "python")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class BackendCommand:
    command: str
    ready: str = "/healthz"          # an HTTP path that answers 200 once a backend is ready
    ready_timeout_s: float = 30.0    # how long a backend may take to get ready
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None           # None: the current directory
    metrics: str | None = None       # an HTTP path serving Prometheus metrics (None: none)

    def words(self) -> list[str]:
        try:
            words = shlex.split(self.command)
        except ValueError as e:
            raise UserError(f"backend command {self.command!r} does not parse ({e}): quote it "
                            "as a shell would") from None
        if not words:
            raise UserError("backend command is empty: give the command that starts one "
                            "backend, e.g. \"{python} app.py --port {port}\"")
        return words

    def check(self, state: str) -> None:
        """Every refusal that needs no process, in one line each."""
        words = self.words()
        unknown = sorted({m for w in words for m in _PLACEHOLDER.findall(w)}
                         - set(PLACEHOLDERS))
        if unknown:
            raise UserError(f"backend command: unknown placeholder {{{unknown[0]}}}; known: "
                            + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS))
        if "{port}" not in self.command:
            raise UserError("backend command must listen on {port} (each backend gets its own "
                            "port on 127.0.0.1): put {port} in it")
        if "{redis_url}" in self.command and state != "redis":
            raise UserError("backend command uses {redis_url}: add --state redis (or state = "
                            "\"redis\" in the project file) so the stack starts a Redis")
        if not self.ready.startswith("/") or any(c.isspace() for c in self.ready):
            raise UserError(f"backend ready path {self.ready!r} must be an HTTP path such as "
                            "/healthz")
        if self.metrics is not None and not is_plain_path(self.metrics):
            raise UserError(f"backend metrics path {self.metrics!r} must be an HTTP path such "
                            "as /metrics")
        if not 0 < self.ready_timeout_s <= 600:
            raise UserError(f"backend ready timeout {self.ready_timeout_s:g} s must be above 0 "
                            "and at most 600")
        for name, _ in self.env:
            if not _ENV_NAME.fullmatch(name):
                raise UserError(f"backend env: {name!r} is not an environment variable name")
        cwd = self.workdir()
        if not cwd.is_dir():
            raise UserError(f"backend working directory {cwd} does not exist")
        program = self.argv(0, 0, None)[0]
        found = (cwd / program).is_file() if "/" in program else shutil.which(program)
        if not found:
            raise UserError(f"backend command: {program!r} is not found"
                            + (f" in {cwd}" if "/" in program else " on PATH"))

    def workdir(self) -> Path:
        return Path(self.cwd or os.getcwd()).resolve()

    def argv(self, port: int, index: int, redis_url: str | None) -> list[str]:
        values = {"port": str(port), "index": str(index), "redis_url": redis_url or "",
                  "python": sys.executable}
        return [_PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), w)
                for w in self.words()]

    def environment(self, redis_url: str | None) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **dict(self.env)}
        if redis_url is not None:
            env["POLLBENCH_REDIS_URL"] = redis_url
        return env

    def record(self) -> dict:
        """What run.json says of it."""
        return {"command": self.command, "ready": self.ready,
                "ready_timeout_s": self.ready_timeout_s, "cwd": str(self.workdir()),
                "metrics": self.metrics,
                "env": sorted(name for name, _ in self.env)}


def parse_env(items: list[str]) -> tuple[tuple[str, str], ...]:
    """``--backend-env NAME=VALUE`` (repeatable) into pairs; refused in one line."""
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not _ENV_NAME.fullmatch(name):
            raise UserError(f"--backend-env {item!r}: give NAME=VALUE")
        out.append((name, value))
    return tuple(out)
