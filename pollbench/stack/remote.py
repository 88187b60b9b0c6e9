"""The controller's side of the agent (:mod:`pollbench.stack.agent`): reach it, measure the
clock offset to it, and pull the target side of a run into the local run folder.

Every failure is one :class:`~pollbench.errors.UserError` line that says what to fix:
an agent that does not answer, a wrong token, something else than a pollbench agent.
Every request has a timeout; files are written atomically (a partial download never
looks complete).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pollbench.errors import UserError
from pollbench.stack.agent import AGENT_FILES, API
from pollbench.stack.clock import Offset, measure
from pollbench.stack.net import OPENER


def check_agent_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or not parts.port or \
            parts.path not in ("", "/") or parts.query:
        raise UserError(f"--agent {url!r} is not an agent URL: give http://HOST:PORT (what "
                        "pollbench up printed)")
    return f"http://{parts.hostname}:{parts.port}"


class AgentClient:
    def __init__(self, url: str, token: str, timeout: float = 5.0):
        self.url = check_agent_url(url)
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

    def fetch(self, key: str, run_dir: Path) -> Path | None:
        """Download one target-side file into ``run_dir`` at its usual place; None when the
        agent has not written it (a run without an error log, say)."""
        dest = run_dir / AGENT_FILES[key]
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        try:
            with self._open(f"{API}/files/{key}") as resp, part.open("wb") as f:
                while chunk := resp.read(1 << 16):
                    f.write(chunk)
        except FileNotFoundError:
            return None
        os.replace(part, dest)
        return dest

    def fetch_all(self, run_dir: Path) -> dict[str, str | None]:
        """Every target-side file the agent serves; key -> local path (None: not written)."""
        got = {}
        for key in AGENT_FILES:
            path = self.fetch(key, run_dir)
            got[key] = None if path is None else str(path.relative_to(run_dir))
        return got
