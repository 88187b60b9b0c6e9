"""The target host's agent: what a controller on another host needs of the stack, over HTTP.

When the target runs on its own host (``pollbench up --bind ADDR``), the load side can no
longer read the stack's processes, logs and status pages itself.  The agent serves them,
read-only, to whoever holds its token:

    GET /v1/info             the agent's pollbench version and the stack it serves (JSON)
    GET /v1/time             this host's clock, {"time": <unix seconds>}: the controller
                             measures each clock offset with NTP-style round trips to it
    GET /v1/files            each target-side file's size now ({key: bytes or null}): the
                             controller notes them at a run's start and later fetches
                             only what was written since
    GET /v1/files/<key>      one of the run folder's target-side files, by key
                             (:data:`AGENT_FILES`); ``?offset=N`` from byte N on

Every request needs ``Authorization: Bearer <token>`` (401 otherwise, compared in constant
time); any other path is 404, any other method 405.  Files are looked up by key, never by a
path the client sends, so nothing outside the run folder's known files can be read.  Binds
127.0.0.1 unless told otherwise.  Standard library only: it runs in the ``up`` process.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from analysis.catalog import LIVE_FILE, REDIS_INFO_FILE, RUN_FILES
from analysis.limits import NGINX_ERRORS_FILE, PROCESS_LIMITS_FILE

API = "/v1"
# key -> path in the run folder: the target side of a run, and nothing else
AGENT_FILES = {key: RUN_FILES[key] for key in (
    "nginx_conf", "nginx_access_log", "nginx_error_log", "processes", "stub_status",
    "backend_stats")} | {"live": LIVE_FILE, "redis_info": REDIS_INFO_FILE,
                         "nginx_errors": NGINX_ERRORS_FILE, "process_limits": PROCESS_LIMITS_FILE}
CHUNK = 1 << 16


def new_token() -> str:
    """A token for one agent: 32 random bytes as hex.  (URL-safe base64 starts with "-" one
    time in 64, and ``--agent-token -...`` then reads as an option, not as the token.)"""
    return secrets.token_hex(32)


class Agent:
    """The agent's HTTP server, in a daemon thread of the process that owns the stack."""

    def __init__(self, run_dir: Path, token: str, info: dict[str, Any] | Callable[[], dict],
                 host: str = "127.0.0.1", port: int = 0):
        if len(token) < 16:
            raise ValueError("an agent token needs at least 16 characters")
        self.run_dir = Path(run_dir)
        handler = type("Handler", (_Handler,), {"agent": self})
        self._token = token.encode()
        self.info_source = info  # set later by whoever builds the stack after binding
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="pollbench-agent",
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{host}:{port}"

    def start(self) -> Agent:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def info(self) -> dict[str, Any]:
        """What /v1/info answers (a callable is asked each time: the stack's state now)."""
        src = self.info_source
        return dict(src() if callable(src) else src)

    def sizes(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for key, rel in AGENT_FILES.items():
            try:
                out[key] = (self.run_dir / rel).stat().st_size
            except OSError:
                out[key] = None
        return out

    @property
    def token(self) -> str:
        return self._token.decode()

    def authorised(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer "):].strip().encode(), self._token)


class _Handler(BaseHTTPRequestHandler):
    agent: Agent
    server_version = "pollbench-agent"
    # keep-alive: a clock measurement's round trips then hold no TCP handshake
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40-ms delayed ACK

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        pass  # the agent is quiet; the stack's own logs say what happened

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _refuse_method(self) -> None:
        self._json(405, {"error": "the agent is read-only: GET only"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse_method  # noqa: N815

    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        if not self.agent.authorised(self.headers.get("Authorization")):
            self._json(401, {"error": "missing or wrong token (Authorization: Bearer TOKEN)"})
            return
        parts = urlsplit(self.path)
        if parts.path == f"{API}/time":
            self._json(200, {"time": time.time()})
        elif parts.path == f"{API}/info":
            self._json(200, self.agent.info())
        elif parts.path == f"{API}/files":
            self._json(200, self.agent.sizes())
        elif parts.path.startswith(f"{API}/files/"):
            self._file(parts.path[len(f"{API}/files/"):], parse_qs(parts.query))
        else:
            self._json(404, {"error": f"no such endpoint: {parts.path}"})

    def _file(self, key: str, query: dict[str, list[str]]) -> None:
        if key not in AGENT_FILES:
            self._json(404, {"error": f"no such file key {key!r}; known: "
                                      + ", ".join(sorted(AGENT_FILES))})
            return
        path = self.agent.run_dir / AGENT_FILES[key]
        try:
            offset = int(query.get("offset", ["0"])[0])
            if offset < 0:
                raise ValueError
        except ValueError:
            self._json(400, {"error": "offset must be a whole number of bytes >= 0"})
            return
        try:
            f = path.open("rb")
        except FileNotFoundError:
            self._json(404, {"error": f"{key} ({AGENT_FILES[key]}) is not written yet"})
            return
        with f:
            size = path.stat().st_size
            f.seek(min(offset, size))
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(max(size - offset, 0)))
            self.end_headers()
            left = max(size - offset, 0)
            while left > 0:  # the size when asked: a log still growing is cut there
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)
