"""The target host's agent: what a controller on another host needs of the stack, over HTTP.

When the target runs on its own host (``pollbench up --bind ADDR``, or ``pollbench agent``),
the load side can no longer read the stack's processes, logs and status pages itself.  The
agent serves them to whoever signs with one of its tokens:

    GET /v1/info             the agent's pollbench version and the stack it serves (JSON)
    GET /v1/time             this host's clock, {"time": <unix seconds>}: the controller
                             measures each clock offset with NTP-style round trips to it
    GET /v1/files            each target-side file's size now ({key: bytes or null}): the
                             controller notes them at a run's start and later fetches
                             only what was written since
    GET /v1/files/<key>      one of the run folder's target-side files, by key
                             (:data:`AGENT_FILES`); ``?offset=N`` from byte N on

``pollbench agent`` adds the control requests (POST / DELETE, the control token only) of
:mod:`pollbench.actions.lab`: start a stack, stop it, check a config, inject faults.

Every request is signed (:mod:`analysis.signing`: an HMAC over method, path, body digest,
timestamp and nonce; the token never travels): an unsigned, forged, replayed or stale one
gets 401 and one line in the agent's log; a control request signed with the read token
403; any other path 404.  Files are looked up by key, never by a path the client sends, so
nothing outside the run folder's known files can be read.  Binds 127.0.0.1 unless told
otherwise.  Standard library only: it runs in the ``up`` process.
"""

from __future__ import annotations

import json
import re
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
from analysis.signing import MIN_TOKEN_CHARS, Refused, Verifier
from pollbench.log import log

API = "/v1"
# key -> path in the run folder: the target side of a run, and nothing else
AGENT_FILES = {key: RUN_FILES[key] for key in (
    "nginx_conf", "nginx_access_log", "nginx_error_log", "processes", "stub_status",
    "backend_stats")} | {"live": LIVE_FILE, "redis_info": REDIS_INFO_FILE,
                         "nginx_errors": NGINX_ERRORS_FILE, "process_limits": PROCESS_LIMITS_FILE}
CHUNK = 1 << 16
# what a control request may name a profile or a binary by: a name, never a path
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_BODY = 1 << 20  # a control request is a few hundred bytes of JSON
READ, CONTROL = "read", "control"


class Control:
    """What answers the control requests (:class:`pollbench.actions.lab.Lab`)."""

    def handle(self, method: str, path: str, body: Any) -> tuple[int, dict]:
        raise NotImplementedError


def new_token() -> str:
    """A token for one agent: 32 random bytes as hex.  (URL-safe base64 starts with "-" one
    time in 64, and ``--agent-token -...`` then reads as an option, not as the token.)"""
    return secrets.token_hex(32)


class Agent:
    """The agent's HTTP server, in a daemon thread of the process that owns the stack."""

    def __init__(self, run_dir: Path, token: str | dict[str, str],
                 info: dict[str, Any] | Callable[[], dict], host: str = "127.0.0.1",
                 port: int = 0, control: Control | None = None):
        """``token``: the read token, or {"read": ..., "control": ...} (with ``control``,
        what answers the control requests)."""
        tokens = {READ: token} if isinstance(token, str) else dict(token)
        if any(len(t) < MIN_TOKEN_CHARS for t in tokens.values()):
            raise ValueError(f"an agent token needs at least {MIN_TOKEN_CHARS} characters")
        self.verifier = Verifier(tokens)
        self.tokens = tokens
        self.control = control
        self.run_dir = Path(run_dir)
        handler = type("Handler", (_Handler,), {"agent": self})
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
        """The strongest token it holds (control, else read)."""
        return self.tokens.get(CONTROL) or self.tokens[READ]


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

    def _role(self, body: bytes) -> str | None:
        """The signing token's role, or None after answering 401 (and one log line)."""
        try:
            return self.agent.verifier.verify(self.command, self.path, body, self.headers)
        except Refused as e:
            log.warning(f"agent: refused {self.command} {self.path[:200]} from "
                        f"{self.client_address[0]}: {e}")
            self._json(401, {"error": str(e), "agent_time": time.time()})
            return None

    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        if self._role(b"") is None:
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
        elif self.agent.control is not None and parts.path.startswith(f"{API}/"):
            self._json(*self.agent.control.handle("GET", parts.path, None))
        else:
            self._json(404, {"error": f"no such endpoint: {parts.path}"})

    def _control(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            self._json(400, {"error": f"a request body must be 0 to {MAX_BODY} bytes"})
            return
        body = self.rfile.read(length) if length else b""
        role = self._role(body)
        if role is None:
            return
        if self.agent.control is None:
            self._json(405, {"error": "this agent is read-only (pollbench up): pollbench agent "
                                      "takes control requests"})
            return
        if role != CONTROL:
            log.warning(f"agent: refused {self.command} {self.path[:200]} from "
                        f"{self.client_address[0]}: signed with the read token")
            self._json(403, {"error": "the read token cannot change anything: sign with the "
                                      "control token"})
            return
        try:
            parsed = json.loads(body) if body else {}
        except ValueError:
            self._json(400, {"error": "the body is not JSON"})
            return
        if not isinstance(parsed, dict):
            self._json(400, {"error": "the body must be a JSON object"})
            return
        self._json(*self.agent.control.handle(self.command, urlsplit(self.path).path, parsed))

    do_POST = do_DELETE = _control  # noqa: N815

    def _refuse_method(self) -> None:
        self._json(405, {"error": "GET, POST or DELETE only"})

    do_PUT = do_PATCH = _refuse_method  # noqa: N815

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
