"""The stack under test: N target_app backends behind a real nginx, from one run folder.

    spec = StackSpec(profile="seed", backends=4)
    spec.validate()                       # every check that needs no process
    with Stack(spec, run_dir) as stack:   # renders, nginx -t, starts, waits for health
        print(stack.url)
    # leaving the block stops nginx and the backends, whatever happened inside

Layout of the run folder: ``nginx/nginx.conf`` (rendered), ``nginx/logs/``
(error log and the JSON access log), ``logs/backend-<i>.log``, ``logs/nginx.log``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pollbench import nginx_config
from pollbench.errors import RunFailed, UserError, check_number
from pollbench.processes import Child, ChildGroup, spawn, wait_until
from target_app.app import AppConfig
from target_app.server import LOOPS, ConfigError, check_config

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with _opener.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get_json(url: str, timeout: float = 2.0) -> Any:
    status, body = http_get(url, timeout)
    if status != 200:
        raise OSError(f"GET {url} answered {status}")
    return json.loads(body)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def find_free_ports(count: int, start: int = 20000, stop: int = 32000) -> int:
    """First port of ``count`` consecutive free ports (tests run beside a stack on 8000-8080)."""
    import random

    for _ in range(200):
        base = random.randrange(start, stop - count)
        if all(port_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports between {start} and {stop}")


def find_nginx(binary: str) -> str:
    from pollbench.nginx_build import resolve_binary

    path = shutil.which(resolve_binary(binary)) or shutil.which(binary, path="/usr/sbin")
    if path is None:
        raise UserError(f"nginx not found ({binary!r}): install it with "
                        "`apt-get install -y nginx-light` (Debian) or pass --nginx PATH")
    return path


def check_event_method(binary_path: str, method: str | None) -> None:
    """Refuse ``use poll;`` / ``use select;`` before start when this nginx lacks the module."""
    from pollbench.nginx_build import supports

    if method in (None, "epoll") or supports(binary_path, method):
        return
    raise UserError(f"nginx knob use: {method!r} is not supported by {binary_path} (built "
                    f"without --with-{method}_module; Debian's nginx has only epoll): run "
                    "`pollbench nginx build` and choose that nginx with --nginx built or "
                    "nginx_binary = \"built\" in the profile or sweep")


class ConfigRefused(UserError):
    """``nginx -t`` said no: the message has all of nginx's output, ``summary`` its first error."""

    def __init__(self, conf: Path, stderr: str):
        lines = stderr.strip().splitlines() or ["(no output)"]
        self.summary = next((ln.strip() for ln in lines if "[emerg]" in ln), lines[0].strip())
        super().__init__(f"nginx -t refused the rendered config {conf}:\n{stderr.strip()}")


@dataclass
class StackSpec:
    profile: str = "seed"
    nginx_overrides: dict[str, Any] = field(default_factory=dict)
    backends: int | None = None  # None: the profile's count
    loop: str = "asyncio"
    port: int = 8080
    backend_port: int = 8000
    nginx_binary: str | None = None  # None: the profile's nginx_binary, else "nginx" on PATH
    max_hold_s: float = 120.0
    delivery_delay_ms: float = 0.0
    backend_max_connections: int | None = None
    cpus: tuple[int, ...] | None = None  # nginx and backends run only here (None: anywhere)

    def settings(self) -> dict[str, Any]:
        overrides = dict(self.nginx_overrides)
        if self.backends is not None:
            overrides["backends"] = self.backends
        return nginx_config.load_profile(self.profile, overrides)

    def app_config(self) -> AppConfig:
        cfg = AppConfig(max_hold_s=self.max_hold_s, loop_name=self.loop,
                        default_hold_s=min(AppConfig.default_hold_s, self.max_hold_s),
                        delivery_delay_ms=self.delivery_delay_ms)
        if self.backend_max_connections is not None:
            cfg.max_connections = self.backend_max_connections
        if self.loop == "asyncio-select" and self.backend_max_connections is None:
            # select() cannot go past fd 1024; cap instead of crashing under load.
            from target_app.server import SELECT_MAX_CONNECTIONS

            cfg.max_connections = SELECT_MAX_CONNECTIONS
        cfg.max_waiters = min(cfg.max_waiters, cfg.max_connections)
        return cfg

    def nginx_name(self) -> str:
        """The nginx asked for: --nginx, else the profile's nginx_binary, else "nginx"."""
        return (self.nginx_binary or nginx_config.profile_nginx_binary(self.profile)
                or "nginx")

    def nginx_path(self) -> str:
        return find_nginx(self.nginx_name())

    def backend_ports(self) -> list[int]:
        return [self.backend_port + i for i in range(self.settings()["backends"])]

    def validate(self, check_ports: bool = True) -> dict[str, Any]:
        """Every check that needs no process.  Returns the validated nginx settings."""
        if self.loop not in LOOPS:
            raise UserError(f"unknown --loop {self.loop!r}; choose one of {', '.join(LOOPS)}")
        check_number("--max-hold", self.max_hold_s, 0, 3600, above=True)
        check_number("--delivery-delay-ms", self.delivery_delay_ms, 0, 60_000)
        settings = self.settings()
        for what, port in (("--port", self.port), ("--backend-port", self.backend_port)):
            if not 1024 <= port <= 65535:
                raise UserError(f"{what} {port} must be from 1024 to 65535")
        ports = [self.backend_port + i for i in range(settings["backends"])]
        if self.port in ports:
            raise UserError(f"--port {self.port} collides with the backend ports "
                            f"{ports[0]}-{ports[-1]}")
        if ports[-1] > 65535:
            raise UserError(f"backend ports run past 65535 (from {self.backend_port})")
        if self.max_hold_s >= settings["proxy_read_timeout"]:
            raise UserError(f"the longest poll hold ({self.max_hold_s:g} s) must be below nginx's "
                            f"proxy_read_timeout ({settings['proxy_read_timeout']} s), or held "
                            "polls turn into 504s and mark backends down")
        try:
            check_config(self.app_config())
        except ConfigError as e:
            raise UserError(str(e)) from None
        check_event_method(self.nginx_path(), settings["use"])
        if check_ports:
            for port in [self.port, *ports]:
                if not port_free(port):
                    raise UserError(f"port {port} is already in use on 127.0.0.1 "
                                    "(stop what holds it, or choose --port / --backend-port)")
        return settings


class Stack:
    """Starts backends then nginx from ``run_dir``; stops them on exit, Ctrl-C included."""

    def __init__(self, spec: StackSpec, run_dir: Path):
        self.spec = spec
        self.run_dir = Path(run_dir)
        self.group = ChildGroup()
        self.backends: list[Child] = []
        self.nginx: Child | None = None
        self.settings: dict[str, Any] = {}
        self.exit_codes: dict[str, int | None] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.spec.port}"

    @property
    def backend_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.spec.backend_ports()]

    @property
    def prefix(self) -> Path:
        return self.run_dir / "nginx"

    @property
    def access_log(self) -> Path:
        return self.prefix / "logs" / "access.jsonl"

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def render(self, check_ports: bool = True) -> Path:
        self.settings = self.spec.validate(check_ports=check_ports)
        for sub in ("logs", "temp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        text = nginx_config.render(self.settings, nginx_config.RenderPaths.for_prefix(self.prefix),
                                   self.spec.port, self.spec.backend_ports())
        conf = self.prefix / "nginx.conf"
        conf.write_text(text)
        return conf

    def nginx_cmd(self, conf: Path) -> list[str]:
        return [self.spec.nginx_path(), "-p", str(self.prefix), "-c", str(conf)]

    def test_config(self, conf: Path) -> None:
        proc = subprocess.run([*self.nginx_cmd(conf), "-t"], capture_output=True, text=True)
        (self.run_dir / "logs" / "nginx-t.log").write_text(proc.stderr)
        if proc.returncode != 0:
            raise ConfigRefused(conf, proc.stderr)

    def start(self) -> None:
        conf = self.render()
        self.test_config(conf)
        cfg = self.spec.app_config()
        for i, port in enumerate(self.spec.backend_ports()):
            cmd = [sys.executable, "-m", "target_app", "--processes", "1", "--port", str(port),
                   "--index", str(i),
                   "--loop", self.spec.loop, "--max-hold", str(cfg.max_hold_s),
                   "--default-hold", str(cfg.default_hold_s),
                   "--max-connections", str(cfg.max_connections),
                   "--max-waiters", str(cfg.max_waiters),
                   "--delivery-delay-ms", str(cfg.delivery_delay_ms)]
            self.backends.append(self.group.add(
                spawn(f"backend-{i}", cmd, self.run_dir / "logs" / f"backend-{i}.log",
                      cpus=self.spec.cpus)))
        for child, url in zip(self.backends, self.backend_urls, strict=True):
            self._wait_healthy(child, f"{url}/healthz", 15)
        self.nginx = self.group.add(spawn("nginx", [*self.nginx_cmd(conf), "-g", "daemon off;"],
                                          self.run_dir / "logs" / "nginx.log",
                                          cpus=self.spec.cpus))
        self._wait_healthy(self.nginx, f"{self.url}/healthz", 10)

    def _wait_healthy(self, child: Child, url: str, timeout: float) -> None:
        def healthy() -> bool:
            if not child.alive():
                return True
            try:
                return http_get(url, timeout=1)[0] == 200
            except OSError:
                return False

        ok = wait_until(healthy, timeout)
        if not child.alive():
            error_log = self.prefix / "logs" / "error.log"
            tail = child.log_tail()
            if child.name == "nginx" and error_log.exists():
                tail += "\n" + "\n".join(error_log.read_text().splitlines()[-5:])
            raise RunFailed(f"{child.name} exited at start with code {child.popen.returncode}; "
                            f"last lines of {child.log_path}:\n{tail}")
        if not ok:
            raise RunFailed(f"{child.name} did not answer {url} within {timeout:g} s; "
                            f"last lines of {child.log_path}:\n{child.log_tail()}")

    def check_alive(self) -> None:
        dead = self.group.dead()
        if dead:
            c = dead[0]
            raise RunFailed(f"{c.name} exited unexpectedly with code {c.popen.returncode}; "
                            f"last lines of {c.log_path}:\n{c.log_tail()}")

    def pids(self) -> dict[str, int]:
        return {c.name: c.pid for c in self.group.children if c.alive()}

    def stop(self) -> dict[str, int | None]:
        if self.group.children:
            self.exit_codes.update(self.group.stop_all())
            self.group.children.clear()
        return self.exit_codes
