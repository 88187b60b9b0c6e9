"""What stack to start: a :class:`StackSpec` as the user asked for it, resolved once into a
:class:`ResolvedStack` that holds everything the stack needs and is then only read.

    spec = StackSpec(profile="seed", backends=4)
    resolved = spec.resolve()     # every check that needs no process; refused in one line
    resolved.settings["worker_connections"], resolved.nginx_path, resolved.backend_ports

Specs are frozen: a variant is ``dataclasses.replace(spec, port=...)``, never an edit.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from pollbench.errors import UserError
from pollbench.stack import nginx_build, nginx_config, redis_server
from pollbench.stack.backend_command import BackendCommand
from pollbench.stack.loadgen import check_number
from pollbench.stack.net import PortClaim, PortTaken, address_here, find_free_ports, port_free
from target_app.app import AppConfig
from target_app.server import LOOPS, SELECT_MAX_CONNECTIONS, ConfigError, check_config


def find_nginx(binary: str) -> str:
    path = shutil.which(nginx_build.resolve_binary(binary)) or shutil.which(binary,
                                                                           path="/usr/sbin")
    if path is None:
        raise UserError(f"nginx not found ({binary!r}): install it with "
                        "`apt-get install -y nginx-light` (Debian) or pass --nginx PATH")
    return path


def check_event_method(binary_path: str, method: str | None) -> None:
    """Refuse ``use poll;`` / ``use select;`` before start when this nginx lacks the module."""
    if method in (None, "epoll") or nginx_build.supports(binary_path, method):
        return
    raise UserError(f"nginx knob use: {method!r} is not supported by {binary_path} (built "
                    f"without --with-{method}_module; Debian's nginx has only epoll): run "
                    "`pollbench nginx build` and choose that nginx with --nginx built or "
                    "nginx_binary = \"built\" in the profile or sweep")


@dataclass(frozen=True)
class StackSpec:
    profile: str = "seed"
    nginx_overrides: dict[str, Any] = field(default_factory=dict)
    backends: int | None = None  # None: the profile's count
    loop: str = "asyncio"
    port: int = 8080
    backend_port: int = 8000
    nginx_binary: str | None = None  # None: the profile's nginx_binary, else "nginx" on PATH
    max_hold_s: float = AppConfig.max_hold_s
    delivery_delay_ms: float = 0.0
    burn_us: float = 0.0  # CPU each backend spends on every answered poll (a known regression)
    backend_max_connections: int | None = None
    cpus: tuple[int, ...] | None = None  # nginx and backends run only here (None: anywhere)
    # the address nginx listens on (backends stay on 127.0.0.1): pollbench up --bind
    bind: str = "127.0.0.1"
    # where channels and tasks live: "local" or "redis" (None: the profile's state, else local)
    state: str | None = None
    redis_url: str | None = None      # --redis URL: a server of the user's (none is started)
    redis_port: int | None = None     # the started Redis' port (None: a free one)
    redis_overrides: dict[str, Any] = field(default_factory=dict)  # [redis] knobs (sweeps)
    # --prometheus: a Prometheus server and nginx's exporter beside the stack (stack.prometheus)
    prometheus: bool = False
    # the user's own backends (None: the reference target, target_app)
    backend_command: BackendCommand | None = None

    @cached_property
    def _profile(self) -> nginx_config.Profile:
        return nginx_config.read_profile(self.profile)  # the file is read once per spec

    def settings(self) -> dict[str, Any]:
        """The validated nginx settings: the profile's, then the overrides and --backends."""
        overrides = dict(self.nginx_overrides)
        if self.backends is not None:
            overrides["backends"] = self.backends
        return nginx_config.profile_settings(self._profile, self.profile, overrides)

    def state_name(self) -> str:
        """The state asked for: --state, else the profile's state, else "local"."""
        return self.state or self._profile.state or "local"

    def redis_settings(self) -> dict[str, Any]:
        """The validated [redis] knobs: the profile's, then the overrides."""
        raw = {**(self._profile.redis or {}), **self.redis_overrides}
        return redis_server.validate_redis(raw, where="" if self.redis_overrides
                                           else f"profile {self.profile}")

    def nginx_name(self) -> str:
        """The nginx asked for: --nginx, else the profile's nginx_binary, else "nginx"."""
        return self.nginx_binary or self._profile.nginx_binary or "nginx"

    def app_config(self) -> AppConfig:
        cfg = AppConfig(max_hold_s=self.max_hold_s, loop_name=self.loop,
                        default_hold_s=min(AppConfig.default_hold_s, self.max_hold_s),
                        delivery_delay_ms=self.delivery_delay_ms, burn_us=self.burn_us)
        if self.backend_max_connections is not None:
            cfg.max_connections = self.backend_max_connections
        cfg.state = self.state_name()
        if self.loop == "asyncio-select" and self.backend_max_connections is None:
            # select() cannot go past fd 1024; cap instead of crashing under load.
            cfg.max_connections = SELECT_MAX_CONNECTIONS
        cfg.max_waiters = min(cfg.max_waiters, cfg.max_connections)
        return cfg

    def resolve(self, check_ports: bool = True, claim: bool = False) -> ResolvedStack:
        """Every check that needs no process, then what the stack needs, resolved once.

        ``claim``: also claim the ports for this process (:class:`PortClaim`) before checking
        that they are free; the caller releases them (``resolved.release()``) when done."""
        if self.loop not in LOOPS:
            raise UserError(f"unknown --loop {self.loop!r}; choose one of {', '.join(LOOPS)}")
        check_number("--max-hold", self.max_hold_s, 0, 3600, above=True)
        check_number("--delivery-delay-ms", self.delivery_delay_ms, 0, 60_000)
        check_number("--burn-us", self.burn_us, 0, 1_000_000)
        nginx_config.check_listen_address(self.bind)
        if not address_here(self.bind):
            raise UserError(f"--bind {self.bind} is not an address of this host (nothing can "
                            "listen on it): give one of its own addresses (ip -brief addr), "
                            "or 0.0.0.0 for all")
        settings = self.settings()
        for what, port in (("--port", self.port), ("--backend-port", self.backend_port)):
            if not 1024 <= port <= 65535:
                raise UserError(f"{what} {port} must be from 1024 to 65535")
        ports = tuple(self.backend_port + i for i in range(settings["backends"]))
        if self.port in ports:
            raise UserError(f"--port {self.port} collides with the backend ports "
                            f"{ports[0]}-{ports[-1]}")
        if settings["nchan"]:
            nginx_config.find_nchan_module()  # one line saying what to install
            if self.backend_command is not None:
                raise UserError(f"profile {self.profile} is Nchan (nginx alone, no backends): "
                                "a backend command needs a profile with backends")
        if ports and ports[-1] > 65535:
            raise UserError(f"backend ports run past 65535 (from {self.backend_port})")
        if self.max_hold_s >= settings["proxy_read_timeout"]:
            raise UserError(f"the longest poll hold ({self.max_hold_s:g} s) must be below nginx's "
                            f"proxy_read_timeout ({settings['proxy_read_timeout']} s), or held "
                            "polls turn into 504s and mark backends down")
        state = self.state_name()
        if state not in nginx_config.STATES:
            raise UserError(f"unknown --state {state!r}; choose one of "
                            f"{', '.join(nginx_config.STATES)}")
        if self.backend_command is not None:
            self.backend_command.check(state)
        redis_settings = self.redis_settings()
        redis_port: int | None = None
        redis_binary = None
        if self.redis_url is not None and state != "redis":
            raise UserError("--redis URL needs --state redis (or a profile with state = "
                            "\"redis\")")
        if state == "redis" and self.redis_url is None:
            # an internal port (the backends get its URL): a free one unless --redis-port
            redis_port = self.redis_port if self.redis_port is not None else \
                find_free_ports(1, exclude={self.port, *ports})
            if not 1024 <= redis_port <= 65535:
                raise UserError(f"--redis-port {redis_port} must be from 1024 to 65535")
            if redis_port in (self.port, *ports):
                raise UserError(f"the Redis port {redis_port} collides with nginx's or a "
                                "backend's: choose --redis-port")
            redis_binary = redis_server.find_redis_server()
        elif self.redis_url is not None:
            redis_server.check_url(self.redis_url)
            why = redis_server.ping(self.redis_url)
            if why is not None:
                raise UserError(f"--redis {self.redis_url}: Redis does not answer ({why})")
        app = self.app_config()
        try:
            check_config(replace(app, redis_url=app.redis_url or "redis://127.0.0.1:0"))
        except ConfigError as e:
            raise UserError(str(e)) from None
        nginx_path = find_nginx(self.nginx_name())
        check_event_method(nginx_path, settings["use"])
        own_ports = [self.port, *ports, *([redis_port] if redis_port is not None else [])]
        prometheus_ports: tuple[int, int, int] | None = None
        if self.prometheus:
            from pollbench.stack import prometheus

            prometheus.find_binaries()  # one line naming what to install, before anything
            base = find_free_ports(3, exclude=set(own_ports))
            prometheus_ports = (base, base + 1, base + 2)  # server, nginx exporter, loadgen
            own_ports += list(prometheus_ports)
        claimed = None
        if claim:
            try:
                claimed = PortClaim(own_ports)
            except PortTaken as e:
                raise UserError(f"{e} (wait for it, or choose --port / --backend-port)") from None
        if check_ports:
            for host, port in [(self.bind, self.port),
                               *(("127.0.0.1", p) for p in own_ports[1:])]:
                if not port_free(port, host):
                    if claimed is not None:
                        claimed.release()
                    raise UserError(f"port {port} is already in use on {host} "
                                    "(stop what holds it, or choose --port / --backend-port)")
        return ResolvedStack(self, settings, self.nginx_name(), nginx_path, ports, app, claimed,
                             state, redis_settings, redis_port, redis_binary, prometheus_ports)


@dataclass(frozen=True)
class ResolvedStack:
    """A checked :class:`StackSpec` with everything derived from it: read, never changed."""
    spec: StackSpec
    settings: dict[str, Any]      # validated nginx knobs (backends included)
    nginx_name: str               # as asked: a path, "nginx" or "built"
    nginx_path: str               # the binary that runs
    backend_ports: tuple[int, ...]
    app_config: AppConfig
    claim: PortClaim | None = None  # the ports, held for this process (resolve(claim=True))
    state: str = "local"
    redis_settings: dict[str, Any] = field(default_factory=dict)  # validated [redis] knobs
    redis_port: int | None = None     # the Redis this stack starts (None: none started)
    redis_binary: str | None = None
    # --prometheus: (Prometheus, nginx exporter, load generator endpoint) ports, else None
    prometheus_ports: tuple[int, int, int] | None = None

    @property
    def redis_url(self) -> str | None:
        """The Redis the backends use: the one started here, or --redis URL (None: local)."""
        if self.state != "redis":
            return None
        if self.redis_port is not None:
            return f"redis://127.0.0.1:{self.redis_port}/0"
        return self.spec.redis_url

    def release(self) -> None:
        """Give the claimed ports back (the run is over)."""
        if self.claim is not None:
            self.claim.release()

    @property
    def port(self) -> int:
        return self.spec.port

    @property
    def url(self) -> str:
        """Where this host reaches nginx (all interfaces: through loopback)."""
        host = "127.0.0.1" if self.spec.bind == "0.0.0.0" else self.spec.bind
        return f"http://{host}:{self.spec.port}"

    @property
    def backend_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.backend_ports]

    @property
    def stats_urls(self) -> list[str]:
        """The backends whose /stats the sampler reads: the reference target's (a user's
        backends have none of theirs: those figures read "not measured")."""
        return self.backend_urls if self.spec.backend_command is None else []

    @property
    def ready_path(self) -> str:
        """The path that answers once a backend (and nginx before it) is ready."""
        cmd = self.spec.backend_command
        return "/healthz" if cmd is None else cmd.ready

    @property
    def ready_timeout_s(self) -> float:
        """How long a backend may take to answer :attr:`ready_path`."""
        cmd = self.spec.backend_command
        return 15.0 if cmd is None else cmd.ready_timeout_s
