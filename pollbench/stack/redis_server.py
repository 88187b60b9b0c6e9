"""Redis as a stack component (``--state redis``): typed knobs, a config rendered into the run
folder, the server found, started, waited for and sampled, like nginx.

    settings = validate_redis({"io_threads": 2})          # refused in one line if out of range
    text = render_redis(settings, port=7999, run_dir=Path("/tmp/run"))
    url = check_url("redis://127.0.0.1:6379/0")          # --redis URL: a server of yours

Persistence is off by default (``save ""``, ``appendonly no``): a Redis restart then loses
the shared state, which the target reports as a new epoch (the loss is counted exactly).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pollbench.errors import UserError
from pollbench.stack.nginx_config import Knob, apply_knobs, safe_path

REDIS_KNOBS: dict[str, Knob] = {k.name: k for k in [
    Knob("io_threads", "int", "threads for socket writes (1 = the main thread only)", 1, 16,
         component="redis", nullable=False),
    Knob("hz", "int", "background task frequency (expiry, timeouts), per s", 1, 500,
         component="redis", nullable=False),
    Knob("appendonly", "bool", "append-only file persistence (fsync every second)",
         component="redis", nullable=False),
    Knob("maxclients", "int", "most client connections at once", 16, 100000,
         component="redis", nullable=False),
]}
# Redis 7.0's own defaults, written out so the rendered file says what runs.
REDIS_DEFAULTS = {"io_threads": 1, "hz": 10, "appendonly": False, "maxclients": 10000}


def validate_redis(settings: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Every [redis] knob checked; a complete settings dict (defaults filled in)."""
    return apply_knobs(REDIS_KNOBS, settings, dict(REDIS_DEFAULTS),
                       f"{where}: " if where else "", "redis")


def render_redis(settings: Mapping[str, Any], port: int, run_dir: Path) -> str:
    """redis.conf for one run: loopback only, data in ``run_dir/redis``, log on stdout."""
    s = validate_redis(settings)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise UserError(f"redis port {port!r} must be a whole number from 1 to 65535")
    data_dir = safe_path(Path(run_dir).resolve() / "redis")
    return "\n".join([
        "# Rendered by pollbench for one run's shared state -- edit the profile's [redis].",
        "bind 127.0.0.1",
        "protected-mode yes",
        f"port {port}",
        "daemonize no",
        'logfile ""',
        f"dir {data_dir}",
        "# persistence off unless the profile asks: a restart is a new epoch (state lost)",
        'save ""',
        f"appendonly {'yes' if s['appendonly'] else 'no'}",
        "appendfsync everysec",
        f"io-threads {s['io_threads']}",
        f"hz {s['hz']}",
        f"maxclients {s['maxclients']}",
        "# a stalled pub/sub reader must not be cut off mid-run (it is measured instead)",
        "client-output-buffer-limit pubsub 0 0 0",
        "",
    ])


def find_redis_server() -> str:
    path = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")
    if path is None:
        raise UserError("redis-server not found: install it with `apt-get install -y "
                        "redis-server` (scripts/bootstrap.sh does), or use --redis URL")
    return path


def check_url(url: str) -> str:
    """``--redis URL``: redis://HOST:PORT[/DB] (no other scheme, no path beyond the DB)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "redis" or not parts.hostname or port is None or \
            not re.fullmatch(r"(/\d{1,2})?/?", parts.path or ""):
        raise UserError(f"--redis {url!r} is not a Redis URL: use redis://HOST:PORT[/DB], "
                        "e.g. redis://127.0.0.1:6379/0")
    return url


def display_url(url: str) -> str:
    """The URL without its user and password (for screens and run.json)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path}"


def ping(url: str, timeout: float = 2.0) -> str | None:
    """None if the server at ``url`` answers PING, else why not (one line)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
        return None
    except redis.RedisError as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    finally:
        client.close()


def info(url: str, timeout: float = 1.0) -> dict[str, Any]:
    """What the sampler keeps of INFO each second (ops, clients, memory, pub/sub, CPU)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        raw = client.info()
    finally:
        client.close()
    keep = ("instantaneous_ops_per_sec", "total_commands_processed", "connected_clients",
            "blocked_clients", "used_memory", "used_memory_rss", "pubsub_channels",
            "used_cpu_sys", "used_cpu_user", "total_net_input_bytes", "total_net_output_bytes",
            "rejected_connections", "evicted_keys", "redis_version", "uptime_in_seconds")
    out = {k: raw[k] for k in keep if k in raw}
    out["keys"] = sum(v.get("keys", 0) for k, v in raw.items()
                      if k.startswith("db") and isinstance(v, dict))
    return out
