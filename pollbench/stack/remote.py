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
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from analysis.atomic import atomic_open, write_atomic
from analysis.clock import Offset, measure
from pollbench.errors import UserError
from pollbench.stack.agent import AGENT_FILES, API
from pollbench.stack.net import OPENER


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

    def _open(self, path: str):
        req = urllib.request.Request(self.url + path,
                                     headers={"Authorization": f"Bearer {self.token}"})
        try:
            return OPENER.open(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            if e.code == 401:
                raise UserError(f"the agent at {self.url} refused the token: pass the one "
                                "pollbench up printed (--agent-token)") from None
            if e.code == 404 and path.startswith(f"{API}/files/"):
                raise FileNotFoundError(path) from None
            raise UserError(f"the agent at {self.url} answered {e.code} to {path}: is it a "
                            "pollbench agent of the same version?") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(f"the agent at {self.url} does not answer ({reason}): is "
                            "pollbench up --bind running there, and its port open?") from None

    def get_json(self, path: str) -> Any:
        with self._open(path) as resp:
            body = resp.read()
        try:
            return json.loads(body)
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
        rows += [[r[0], "controller-system" if r[1] == "system" else r[1], *r[2:]]
                 for r in local if r]
        rows.sort(key=lambda r: float(r[0]))
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(header)
    w.writerows(rows)
    write_atomic(dest, out.getvalue())
    return dest
