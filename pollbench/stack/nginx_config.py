"""nginx settings: typed, range-checked knobs, named profiles, and the rendered config.

Every value that reaches ``nginx.conf`` passes through a :class:`Knob` first, so
only integers in range, booleans and names from a fixed list are ever written:
a value such as ``"1; include /etc/passwd"`` is refused, never pasted.

    >>> settings = load_profile("keepalive")
    >>> text = render(settings, RenderPaths.for_prefix("/tmp/run"), listen_port=8080,
    ...               backend_ports=[8000, 8001, 8002, 8003])
    >>> "keepalive 32;" in text and 'proxy_set_header Connection "";' in text
    True
"""

from __future__ import annotations

import re
import resource
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from pollbench.errors import UserError
from pollbench.paths import MIME_TYPES, NGINX_DIR, PROFILES_DIR, STATIC_ROOT, TEMPLATE
from pollbench.records.inputs import read_toml

PROXY_NEXT_UPSTREAM_CHOICES = ("error", "timeout", "invalid_header", "http_500", "http_502",
                               "http_503", "http_504", "http_403", "http_404", "http_429",
                               "non_idempotent", "off")
BALANCE_CHOICES = ("key-hash", "arg-hash", "round-robin", "least-conn", "ip-hash", "random")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
EVENT_METHODS = ("epoll", "poll", "select")


@dataclass(frozen=True)
class Knob:
    name: str
    kind: str  # "int", "bool", "choice", "choices" (a list drawn from choices), "int-or-auto",
    #            "name" (a lower-case identifier: [a-z][a-z0-9_]*, at most 32)
    doc: str
    lo: int | None = None
    hi: int | None = None
    choices: tuple[str, ...] = ()
    nullable: bool = True  # None = directive not written; nginx's own default applies
    component: str = "nginx"  # named in every refusal: "nginx knob X: ..."

    def check(self, value: Any) -> Any:
        """Return the value normalised, or raise UserError naming the knob and what is allowed."""
        if value is None:
            if self.nullable:
                return None
            raise UserError(f"{self.component} knob {self.name}: a value is required ({self.allowed()})")
        if self.kind in ("int", "int-or-auto"):
            if self.kind == "int-or-auto" and value == "auto":
                return "auto"
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"{self.component} knob {self.name}: {value!r} is not allowed; "
                                f"{self.allowed()}")
            assert self.lo is not None and self.hi is not None  # every int knob has a range
            if not self.lo <= value <= self.hi:
                raise UserError(f"{self.component} knob {self.name}: {value} is out of range; {self.allowed()}")
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise UserError(f"{self.component} knob {self.name}: {value!r} is not allowed; {self.allowed()}")
            return value
        if self.kind == "name":
            if not isinstance(value, str) or not _NAME.fullmatch(value):
                raise UserError(f"{self.component} knob {self.name}: {value!r} is not allowed; "
                                f"{self.allowed()}")
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise UserError(f"{self.component} knob {self.name}: {value!r} is not allowed; {self.allowed()}")
            return value
        if self.kind == "choices":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not value or any(v not in self.choices for v in value):
                raise UserError(f"{self.component} knob {self.name}: {value!r} is not allowed; {self.allowed()}")
            if "off" in value and len(value) > 1:
                raise UserError(f"{self.component} knob {self.name}: 'off' cannot be combined with others")
            return list(dict.fromkeys(value))
        raise AssertionError(self.kind)

    def allowed(self) -> str:
        if self.kind == "int":
            return f"allowed: a whole number from {self.lo} to {self.hi}"
        if self.kind == "int-or-auto":
            return f"allowed: \"auto\" or a whole number from {self.lo} to {self.hi}"
        if self.kind == "bool":
            return "allowed: true or false"
        if self.kind == "name":
            return "allowed: a lower-case name ([a-z][a-z0-9_]*, at most 32 characters)"
        if self.kind == "choice":
            return "allowed: " + ", ".join(self.choices)
        return "allowed: a list drawn from " + ", ".join(self.choices)


ACCESS_LOGS = ("full", "sampled-10", "sampled-100", "sampled-1000", "off")

KNOBS: dict[str, Knob] = {k.name: k for k in [
    Knob("backends", "int", "number of Tornado backend processes (0 only with nchan)", 0, 64,
         nullable=False),
    Knob("worker_processes", "int-or-auto", "nginx worker processes", 1, 64, nullable=False),
    Knob("worker_connections", "int", "connections per worker; a proxied poll costs 2", 16, 65535,
         nullable=False),
    Knob("fit_workers", "bool", "the run raises worker_processes as far as the load's held "
         "polls need, each worker within its descriptors and worker_connections, and says so "
         "(unset: the profile's count, warned about when short)"),
    Knob("worker_rlimit_nofile", "int", "fd limit per worker (cannot pass the hard limit)", 64,
         1048576),
    Knob("worker_shutdown_timeout", "int", "after a reload, old workers close held connections "
         "after this many s (unset: they wait for every poll to end)", 1, 3600),
    Knob("use", "choice", "event method; poll/select need an nginx built with them",
         choices=EVENT_METHODS),
    Knob("multi_accept", "bool", "accept all pending connections at once"),
    Knob("accept_mutex", "bool", "workers take turns accepting"),
    Knob("epoll_events", "int", "events fetched per epoll_wait", 1, 65536),
    Knob("listen_backlog", "int", "listen() backlog (net.core.somaxconn caps it)", 1, 65535),
    Knob("reuseport", "bool", "a listening socket per worker (SO_REUSEPORT)"),
    Knob("keepalive_timeout", "int", "client keep-alive idle timeout, s (0 disables)", 0, 3600),
    Knob("keepalive_requests", "int", "requests per client connection", 1, 10_000_000),
    Knob("upstream_keepalive", "int", "idle upstream connections cached per worker (0 = off)", 0,
         100000),
    Knob("upstream_keepalive_requests", "int", "requests per upstream connection", 1, 10_000_000),
    Knob("upstream_keepalive_timeout", "int", "idle upstream connection timeout, s", 1, 3600),
    Knob("upstream_sources", "int", "source addresses of nginx's connections to the backends, "
         "127.0.0.1 to 127.0.0.N (proxy_bind): each has the whole ip_local_port_range to a "
         "backend; unset: one (pollbench sets it when the held polls per backend need more)",
         1, 254),
    Knob("proxy_buffering", "bool", "buffer upstream responses"),
    Knob("proxy_read_timeout", "int", "longest wait for the backend, s (> the app's max hold)",
         1, 3600, nullable=False),
    Knob("proxy_next_upstream", "choices", "when to try the next backend",
         choices=PROXY_NEXT_UPSTREAM_CHOICES),
    Knob("max_fails", "int", "failures before a backend is marked down (0 = never)", 0, 1000),
    Knob("fail_timeout", "int", "how long a backend stays down, s", 1, 3600),
    Knob("balance", "choice", "how requests are spread over backends: key-hash (the reference "
         "target's channel / task routing), arg-hash (sticky on a query argument the client "
         "sends, hash_arg), round-robin, least-conn, ip-hash (the first three octets of the "
         "client address), random", choices=BALANCE_CHOICES, nullable=False),
    Knob("hash_arg", "name", "with balance = arg-hash: the query argument hashed (consistent), "
         "e.g. lb: every request of a client that sends &lb=<its key> reaches one backend "
         "(other balances ignore it)"),
    Knob("gzip", "bool", "gzip responses (seed: on)", nullable=False),
    Knob("access_log", "choice", "nginx's access log: every request (full), every request of "
         "one connection in N (sampled-N), or none (off); unset: full", choices=ACCESS_LOGS),
    # Nchan (libnginx-mod-nchan): nginx holds the polls itself, no backends
    Knob("nchan", "bool", "nginx is the target: Nchan's pub/sub locations /pub/<ch> and "
         "/sub/<ch> (long-poll), no backends (backends = 0)"),
    Knob("nchan_subscriber_timeout", "int", "Nchan: a held poll ends 408 after this many s "
         "(below the client's 300 s network timeout)", 1, 240),
    Knob("nchan_message_buffer_length", "int", "Nchan: messages kept per channel; a "
         "subscriber further behind skips to the oldest kept (counted lost)", 1, 100_000),
    Knob("nchan_message_timeout", "int", "Nchan: a message is kept this many s (must outlast "
         "the run: Nchan 1.3.6 crashes a worker when every message of a polled channel has "
         "expired)", 60, 7 * 24 * 3600),
    Knob("nchan_longpoll_multipart", "bool", "Nchan: every waiting message in one "
         "multipart/mixed answer (off: one message per answer)"),
    Knob("nchan_shared_memory_mb", "int", "Nchan: shared memory for messages and channels, "
         "MiB (all workers)", 8, 8192),
    Knob("nchan_first_message", "choice", "Nchan: what a new subscriber gets first: the next "
         "message (newest) or the buffered backlog (oldest)", choices=("newest", "oldest")),
]}
NCHAN_KNOBS = tuple(k for k in KNOBS if k.startswith("nchan_"))
# Where Debian's libnginx-mod-nchan puts the module: loaded by its absolute path (a relative
# load_module resolves against `nginx -p`'s run folder and fails there).
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
# Nchan's own default message timeout (1 h), against which a run's length is checked
NCHAN_DEFAULT_MESSAGE_TIMEOUT = 3600


def find_nchan_module() -> str:
    """The Nchan module's path, or a one-line refusal saying what to install."""
    if not NCHAN_MODULE.is_file():
        raise UserError(f"the Nchan module is not installed ({NCHAN_MODULE}): "
                        "apt-get install -y libnginx-mod-nchan (scripts/bootstrap.sh does)")
    return safe_path(NCHAN_MODULE)


def serves(settings: Mapping[str, Any]) -> str:
    """The protocol a stack of these settings serves: "nchan" or "pollbench"."""
    return "nchan" if settings.get("nchan") else "pollbench"

# The seed configuration's values; every knob the seed does not set is None (nginx default).
SEED = {
    "backends": 4, "worker_processes": 1, "worker_connections": 1024, "use": "epoll",
    "keepalive_timeout": 65, "proxy_read_timeout": 200, "proxy_next_upstream": ["error"],
    "gzip": True, "balance": "key-hash",
}


def _knob_defaults() -> dict[str, Any]:
    return {name: SEED.get(name) for name in KNOBS}


def apply_knobs(table: Mapping[str, Knob], settings: Mapping[str, Any], out: dict[str, Any],
                prefix: str, component: str) -> dict[str, Any]:
    """Check each of ``settings`` against its knob in ``table`` into ``out``; an unknown name
    or a bad value is refused in one line starting with ``prefix``."""
    for name, value in settings.items():
        knob = table.get(name)
        if knob is None:
            raise UserError(f"{prefix}unknown {component} knob {name!r}; known knobs: "
                            + ", ".join(sorted(table)))
        try:
            out[name] = knob.check(value)
        except UserError as e:
            raise UserError(prefix + str(e)) from None
    return out


def validate(settings: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Check every knob and the rules between knobs; return a complete settings dict."""
    prefix = f"{where}: " if where else ""
    out = apply_knobs(KNOBS, settings, _knob_defaults(), prefix, "nginx")
    problems = []
    if out["nchan"]:
        if out["backends"] != 0:
            problems.append("nchan = true serves without backends: set backends = 0 (it is "
                            f"{out['backends']})")
    else:
        if out["backends"] < 1:
            problems.append("backends = 0 needs nchan = true (nginx alone must be the target)")
        problems += [f"{k} needs nchan = true" for k in NCHAN_KNOBS if out[k] is not None]
    if out["balance"] == "arg-hash" and out["hash_arg"] is None:
        problems.append("balance = arg-hash needs hash_arg, the query argument to hash "
                        "(e.g. hash_arg = \"lb\")")
    if not out["upstream_keepalive"]:
        for dep in ("upstream_keepalive_requests", "upstream_keepalive_timeout"):
            if out[dep] is not None:
                problems.append(f"{dep} needs upstream_keepalive > 0")
    if out["epoll_events"] is not None and out["use"] not in (None, "epoll"):
        problems.append(f"epoll_events applies only with use = epoll (use is {out['use']})")
    if out["use"] == "select" and out["worker_connections"] > 1024:
        problems.append("use = select cannot watch more than 1024 descriptors (FD_SETSIZE): set "
                        f"worker_connections to 1024 or less (it is {out['worker_connections']})")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = out["worker_rlimit_nofile"]
    if nofile is not None and hard != resource.RLIM_INFINITY and nofile > hard:
        problems.append(f"worker_rlimit_nofile {nofile} exceeds this machine's hard limit {hard}")
    effective_nofile = nofile or resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if out["worker_connections"] > effective_nofile:
        problems.append(f"worker_connections {out['worker_connections']} exceeds the open-file "
                        f"limit {effective_nofile}: raise worker_rlimit_nofile (max {hard})")
    if problems:
        raise UserError(prefix + "; ".join(problems))
    return out


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


PROFILE_KEYS = {"description", "extends", "nginx_binary", "state", "nginx", "redis"}
STATES = ("local", "redis")


@dataclass(frozen=True)
class Profile:
    """A profile file read once, its ``extends`` chain followed: knobs not yet validated."""
    path: Path
    knobs: dict[str, Any]
    nginx_binary: str | None  # the nearest nginx_binary along the chain
    state: str | None = None  # the nearest state along the chain ("local" / "redis")
    redis: dict[str, Any] | None = None  # [redis] knobs along the chain, not yet validated


def _read_profile_toml(path: Path) -> dict[str, Any]:
    data = read_toml(path, f"profile {path}", PROFILE_KEYS)
    for table in ("nginx", "redis"):
        if not isinstance(data.get(table, {}), dict):
            raise UserError(f"profile {path}: [{table}] must be a table of knobs")
    if data.get("state") is not None and data["state"] not in STATES:
        raise UserError(f"profile {path}: state {data['state']!r} is not allowed; allowed: "
                        + ", ".join(STATES))
    binary = data.get("nginx_binary")
    if binary is not None and (not isinstance(binary, str) or not binary):
        raise UserError(f"profile {path}: nginx_binary must be a path or \"built\"")
    base = data.get("extends")
    if base is not None and (not isinstance(base, str) or not base):
        raise UserError(f"profile {path}: extends must be a profile name or a .toml path "
                        f"(it is {base!r})")
    return data


def read_profile(name_or_path: str) -> Profile:
    """The profile and every profile it extends, each file read once; a loop is refused."""
    chain: list[dict[str, Any]] = []
    seen: list[Path] = []
    path = profile_path(name_or_path)
    while True:
        if path.resolve() in seen:
            loop = " -> ".join(str(p) for p in [*seen, path.resolve()])
            raise UserError(f"profile {name_or_path}: extends loops back on itself ({loop}); "
                            "remove the extends that closes the loop")
        seen.append(path.resolve())
        data = _read_profile_toml(path)
        chain.append(data)
        if not data.get("extends"):
            break
        path = profile_path(data["extends"])
    knobs: dict[str, Any] = {}
    redis: dict[str, Any] = {}
    for data in reversed(chain):  # the base first, each child overriding it
        knobs.update(data.get("nginx", {}))
        redis.update(data.get("redis", {}))
    binary = next((d["nginx_binary"] for d in chain if d.get("nginx_binary")), None)
    state = next((d["state"] for d in chain if d.get("state")), None)
    return Profile(profile_path(name_or_path), knobs, binary, state, redis)


def profile_nginx_binary(name_or_path: str) -> str | None:
    """The ``nginx_binary`` a profile (or one it extends) names, or None."""
    return read_profile(name_or_path).nginx_binary


def profile_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix != ".toml":
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name_or_path) or \
                not (PROFILES_DIR / f"{name_or_path}.toml").is_file():
            raise UserError(f"unknown profile {name_or_path!r}; choose one of "
                            f"{', '.join(profile_names())} or give a path to a .toml file")
        path = PROFILES_DIR / f"{name_or_path}.toml"
    elif not path.is_file():
        raise UserError(f"profile file {name_or_path} does not exist")
    return path


def load_profile(name_or_path: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A profile's validated settings, with ``overrides`` applied."""
    return profile_settings(read_profile(name_or_path), name_or_path, overrides)


def profile_settings(profile: Profile, name: str,
                     overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    raw = {**profile.knobs, **(overrides or {})}
    # with overrides (a sweep cell, --backends) the value may not come from the profile
    return validate(raw, where="" if overrides else f"profile {name}")


_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./+-]*$")


def safe_path(path: Path) -> str:
    text = str(path)
    if not _SAFE_PATH.match(text):
        raise UserError(f"path {text!r} cannot go into nginx.conf: use a folder whose absolute "
                        "path has only letters, digits and _ . / + -")
    return text


@dataclass(frozen=True)
class RenderPaths:
    prefix: str
    static_root: str
    mime_types: str

    @classmethod
    def for_prefix(cls, prefix: Path | str, static_root: Path = STATIC_ROOT) -> RenderPaths:
        return cls(safe_path(Path(prefix).resolve()), safe_path(static_root.resolve()),
                   safe_path(MIME_TYPES))


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return " ".join(value)
    return str(value)


def check_listen_address(address: str) -> str:
    """The address nginx listens on (``--bind``): one IPv4 address, as nginx writes it."""
    import ipaddress

    try:
        parsed = ipaddress.IPv4Address(str(address))
    except ValueError:
        raise UserError(f"--bind {address!r} is not an IPv4 address of this host (e.g. "
                        "10.0.0.5; 0.0.0.0 for every interface)") from None
    return str(parsed)


def render(settings: Mapping[str, Any], paths: RenderPaths, listen_port: int,
           backend_ports: list[int], run_as_root: bool | None = None,
           listen_address: str = "127.0.0.1") -> str:
    """Render nginx.conf from validated settings (call :func:`validate` first)."""
    import os

    settings = validate(settings)  # idempotent; guarantees nothing unchecked is rendered
    listen_address = check_listen_address(listen_address)
    for port in [listen_port, *backend_ports]:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise UserError(f"port {port!r} must be a whole number from 1 to 65535")
    if len(backend_ports) != settings["backends"]:
        raise UserError(f"{len(backend_ports)} backend ports given for {settings['backends']} "
                        "backends")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(NGINX_DIR)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["nginx"] = _fmt
    template = env.get_template(TEMPLATE.name)
    if run_as_root is None:
        run_as_root = os.geteuid() == 0
    return template.render(s=settings, paths=paths, listen_port=listen_port,
                           backend_ports=backend_ports, run_as_root=run_as_root,
                           listen_address=listen_address,
                           nchan_module=find_nchan_module() if settings["nchan"] else None,
                           upstream_split=upstream_split(settings["upstream_sources"] or 1))


def upstream_split(count: int) -> list[tuple[str, str]]:
    """split_clients' lines for ``count`` upstream source addresses: (share, address), the
    last one ``*`` (the rest); [] for one address (nginx's own choice, no proxy_bind)."""
    if count <= 1:
        return []
    share = f"{int(10000 / count) / 100:.2f}%"
    return [(share if i < count else "*", f"127.0.0.{i}") for i in range(1, count + 1)]
