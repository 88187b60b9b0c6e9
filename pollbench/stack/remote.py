"""The controller's side of the agent (:mod:`pollbench.stack.agent`): reach it, measure the
clock offset to it, and pull the target side of a run into the local run folder.

Every failure is one :class:`~pollbench.errors.UserError` line that says what to fix:
an agent that does not answer, a wrong token, something else than a pollbench agent.
Every request has a timeout; files are written atomically (a partial download never
looks complete).
"""

from __future__ import annotations

import csv
import io
import json
import re
import secrets
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from analysis.atomic import atomic_open, write_atomic
from analysis.clock import Offset, measure
from analysis.signing import sign_headers
from pollbench.errors import UserError
from pollbench.stack.agent import AGENT_FILES, API, NAME
from pollbench.stack.net import OPENER


class AgentRefused(UserError):
    """The agent understood a control request and said no (bad value, busy, read-only)."""

    def __init__(self, status: int, message: str, answer: dict):
        super().__init__(message)
        self.status, self.answer = status, answer


def _error_of(e: urllib.error.HTTPError) -> dict:
    try:
        answer = json.loads(e.read())
    except (OSError, ValueError):
        return {}
    return answer if isinstance(answer, dict) else {}


def check_http_url(option: str, url: str) -> str:
    """``http://HOST:PORT`` (nothing more), normalised; refused in one line naming
    ``option`` otherwise."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or not port or \
            parts.path not in ("", "/") or parts.query:
        raise UserError(f"{option} {url!r} must be http://HOST:PORT (what pollbench up printed)")
    return f"http://{parts.hostname}:{port}"


class AgentClient:
    def __init__(self, url: str, token: str, timeout: float = 5.0):
        self.url = check_http_url("--agent", url)
        self.token = token
        self.timeout = timeout

    def _open(self, path: str, method: str = "GET", body: Any = None,
              timeout: float | None = None):
        data = b"" if body is None else json.dumps(body).encode()
        headers = sign_headers(self.token, method, path, data)
        if body is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data if method != "GET" else None,
                                     method=method, headers=headers)
        try:
            return OPENER.open(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as e:
            answer = _error_of(e)
            if e.code == 401:
                skew = answer.get("agent_time")
                if "stale timestamp" in answer.get("error", "") and \
                        isinstance(skew, (int, float)):
                    raise UserError(f"the agent at {self.url} refused the request: its clock "
                                    f"is {skew - time.time():+.0f} s from this host's (more "
                                    "than 30 s): synchronise the clocks (NTP)") from None
                raise UserError(f"the agent at {self.url} refused the token: pass the one "
                                "pollbench up or pollbench agent printed (--agent-token)") \
                    from None
            if e.code == 404 and path.startswith(f"{API}/files/"):
                raise FileNotFoundError(path) from None
            if e.code in (400, 403, 405, 409) and answer.get("error"):
                raise AgentRefused(e.code, f"the agent at {self.url}: {answer['error']}",
                                   answer) from None
            raise UserError(f"the agent at {self.url} answered {e.code} to {path}: is it a "
                            "pollbench agent of the same version?") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(f"the agent at {self.url} does not answer ({reason}): is "
                            "pollbench up --bind (or pollbench agent) running there, and its "
                            "port open?") from None

    def call(self, method: str, path: str, body: dict | None = None,
             timeout: float | None = None) -> Any:
        """A control request (POST / DELETE with a JSON body); its JSON answer."""
        return self._json(path, method, body if body is not None else {}, timeout)

    def get_json(self, path: str) -> Any:
        return self._json(path)

    def _json(self, path: str, method: str = "GET", body: Any = None,
              timeout: float | None = None) -> Any:
        with self._open(path, method, body, timeout) as resp:
            raw = resp.read()
        try:
            return json.loads(raw)
        except ValueError:
            raise UserError(f"{self.url}{path} is not a pollbench agent's answer (not "
                            "JSON)") from None

    def info(self) -> dict:
        info = self.get_json(f"{API}/info")
        if not isinstance(info, dict) or "pollbench" not in info:
            raise UserError(f"{self.url} is not a pollbench agent (its /info names no "
                            "pollbench version)")
        return info

    def remote_time(self) -> float:
        answer = self.get_json(f"{API}/time")
        if not isinstance(answer, dict) or not isinstance(answer.get("time"), (int, float)):
            raise UserError(f"{self.url} is not a pollbench agent (its /time holds no time)")
        return float(answer["time"])

    def clock_offset(self, count: int = 16) -> Offset:
        """The agent's clock minus this host's, by ``count`` round trips."""
        return measure(self.remote_time, count)

    def sizes(self) -> dict[str, int | None]:
        """Each target-side file's size now (key -> bytes, None: not written yet)."""
        sizes = self.get_json(f"{API}/files")
        if not isinstance(sizes, dict):
            raise UserError(f"{self.url} is not a pollbench agent (its /files is no mapping)")
        return sizes

    def fetch(self, key: str, run_dir: Path, offset: int = 0, dest: Path | None = None
              ) -> Path | None:
        """Download one target-side file (from byte ``offset`` on) into ``run_dir`` at its
        usual place, or to ``dest``; None when the agent has not written it."""
        dest = dest or run_dir / AGENT_FILES[key]
        try:
            with self._open(f"{API}/files/{key}?offset={int(offset)}") as resp, \
                    atomic_open(dest) as f:
                while chunk := resp.read(1 << 16):
                    f.write(chunk)
        except FileNotFoundError:
            return None
        return dest


# the sample files a run keeps only the run's span of (the agent samples from up's start)
TIMED = {"processes": "csv", "stub_status": "csv", "backend_stats": "jsonl",
         "redis_info": "jsonl", "nginx_errors": "jsonl"}
# the logs a run keeps from the byte where they stood at its start
LOGS = ("nginx_access_log", "nginx_error_log")
SPAN_MARGIN_S = 2.0


def pull_run(client: AgentClient, run_dir: Path, at_start: dict[str, int | None],
             t0: float, t1: float) -> dict[str, str | None]:
    """The target side of a run that went from ``t0`` to ``t1`` into ``run_dir``: the
    rendered config, the logs written since ``at_start`` (:meth:`AgentClient.sizes`), and
    the samples taken in the run's span (2 s margin), merged with the local samples (this
    host's ``system`` row becomes ``controller-system``)."""
    got: dict[str, str | None] = {}
    staging = run_dir / ".agent"
    for key in AGENT_FILES:
        if key == "live":
            continue
        offset = (at_start.get(key) or 0) if key in LOGS else 0
        dest = staging / key if key in TIMED else None
        path = client.fetch(key, run_dir, offset=offset, dest=dest)
        if path is not None and key in TIMED:
            path = _keep_span(key, path, run_dir / AGENT_FILES[key], t0 - SPAN_MARGIN_S,
                              t1 + SPAN_MARGIN_S)
        got[key] = None if path is None else str(path.relative_to(run_dir))
    shutil.rmtree(staging, ignore_errors=True)
    return got


def _keep_span(key: str, fetched: Path, dest: Path, t0: float, t1: float) -> Path:
    if TIMED[key] == "jsonl":
        lines = [ln for ln in fetched.read_text().splitlines()
                 if ln.strip() and t0 <= json.loads(ln).get("time", 0) <= t1]
        write_atomic(dest, "".join(ln + "\n" for ln in lines))
        return dest
    with fetched.open(newline="") as f:
        remote = list(csv.reader(f))
    header, rows = remote[0], [r for r in remote[1:] if r and t0 <= float(r[0]) <= t1]
    if key == "processes" and dest.exists():  # this host's own samples (the load side)
        with dest.open(newline="") as f:
            local = list(csv.reader(f))[1:]
        # as many fields as the target's header (an agent of another version writes fewer
        # or more columns: a CPU time it lacks is left empty)
        width = len(header)
        rows += [([r[0], "controller-system" if r[1] == "system" else r[1], *r[2:]]
                  + [""] * width)[:width] for r in local if r]
        rows.sort(key=lambda r: float(r[0]))
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(header)
    w.writerows(rows)
    write_atomic(dest, out.getvalue())
    return dest


# -- a controller's hold on a target host that pollbench agent serves -------------------------

DEFAULT_LEASE_S = 30.0


def spec_to_wire(spec) -> dict:
    """A StackSpec as the agent's stack request states it (typed values only: no path, no
    address, no port: those are the agent's)."""
    if not NAME.fullmatch(spec.profile):
        raise UserError(f"--profile {spec.profile}: a stack on another host takes the name of "
                        "a profile shipped with pollbench (the agent reads no files of this host)")
    for value, option in ((spec.redis_url, "--redis"), (spec.cpus, "--cpus"),
                          (spec.prometheus or None, "--prometheus")):
        if value is not None:
            raise UserError(f"{option} sets up this host's stack; with --agent the stack is on "
                            "the target host")
    wire: dict[str, Any] = {"profile": spec.profile, "nginx": dict(spec.nginx_overrides),
                            "loop": spec.loop, "max_hold_s": spec.max_hold_s,
                            "delivery_delay_ms": spec.delivery_delay_ms,
                            "burn_us": spec.burn_us}
    for key, value in (("backends", spec.backends), ("nginx_binary", spec.nginx_binary),
                       ("state", spec.state),
                       ("backend_max_connections", spec.backend_max_connections)):
        if value is not None:
            wire[key] = value
    if spec.redis_overrides:
        wire["redis"] = dict(spec.redis_overrides)
    return wire


class Session:
    """This controller's hold on the stack of a ``pollbench agent``: start (or keep) the
    stack a run needs, renew the lease in a thread while it lives, arm and end faults, stop
    it.  ``holder`` names this controller to the agent."""

    def __init__(self, client: AgentClient, lease_s: float = DEFAULT_LEASE_S):
        self.client, self.lease_s = client, lease_s
        self.holder = re.sub(r"[^A-Za-z0-9_.:-]", "-",
                             f"{socket.gethostname()[:40]}-{secrets.token_hex(4)}")
        self._renewer: tuple[threading.Thread, threading.Event] | None = None
        # a renewal never goes out while a start is under way: the agent, between stopping
        # the old stack and starting the new one, has no stack to renew
        self._busy = threading.Lock()
        self.lost: str | None = None  # why the lease was lost (the agent said so)
        self.started = False

    def ensure(self, spec, faults: tuple[str, ...] | list[str] = (), cooldown_max_s: float = 0,
               wait_s: float = 120.0, log=None) -> dict:
        """The agent's /v1/info once the stack ``spec`` runs (started, or kept when this
        controller's running stack is the same); a stack another controller holds is waited
        for, at most ``wait_s`` (its lease runs out when that controller is gone)."""
        body = {"holder": self.holder, "lease_s": self.lease_s, "stack": spec_to_wire(spec),
                "faults": list(faults), "cooldown_max_s": cooldown_max_s}
        deadline = time.monotonic() + wait_s
        said = False
        while True:
            try:
                with self._busy:
                    info = self.client.call("POST", f"{API}/stack", body,
                                            timeout=cooldown_max_s + 120)
                    self.lost = None
                break
            except AgentRefused as e:
                if e.status != 409 or time.monotonic() > deadline:
                    raise
                if log is not None and not said:
                    log(f"{e} (waiting up to {wait_s:.0f} s for it)")
                    said = True
                time.sleep(min(2.0, max(0.2, float(e.answer.get("lease_left_s") or 1))))
        self.started = True
        self._start_renewing()
        return info

    def _start_renewing(self) -> None:
        if self._renewer is not None:
            return
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lease_s / 4):
                with self._busy:
                    try:
                        self.client.call("POST", f"{API}/lease",
                                         {"holder": self.holder, "lease_s": self.lease_s})
                    except AgentRefused as e:
                        self.lost = str(e)
                    except UserError:
                        pass  # one missed renewal: the lease is four of them long

        thread = threading.Thread(target=renew, name="pollbench-lease", daemon=True)
        thread.start()
        self._renewer = (thread, stop)

    def arm(self, faults: list[str], run_s: float, elapsed_s: float = 0.0) -> dict:
        """The faults, on schedule from a load that started ``elapsed_s`` ago."""
        return self.client.call("POST", f"{API}/faults", {
            "holder": self.holder, "faults": faults, "run_s": run_s, "elapsed_s": elapsed_s})

    def end_faults(self) -> list[dict]:
        answer = self.client.call("DELETE", f"{API}/faults", {"holder": self.holder},
                                  timeout=60)
        return list(answer.get("records") or [])

    def close(self) -> None:
        """Stop renewing and stop the stack (the target host is idle again)."""
        if self._renewer is not None:
            thread, stop = self._renewer
            stop.set()
            thread.join(10)
            self._renewer = None
        if self.started:
            self.started = False
            with self._busy:
                self.client.call("DELETE", f"{API}/stack", {"holder": self.holder}, timeout=60)
