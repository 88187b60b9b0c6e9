"""Will the load fit the stack?  Checked before anything starts, from the resolved stack and
the load: a load that cannot fit gets one warning line per limit, naming the limit, the need,
what allows it, and a shipped profile that holds it.  The run goes on: seeing where a
configuration stops holding is a legitimate experiment.

The needs are estimates of the steady state (every user holding a poll at once):

* nginx: a proxied poll costs two connections in one worker (client and upstream); the
  workers together allow ``worker_processes x worker_connections``.
* descriptors: an nginx worker needs about one per connection (``worker_rlimit_nofile``,
  or the limit it inherits); a Locust process one per user it runs.
* Redis (the stack's own, with shared state): each backend may hold its command pool and
  its fan-out subscription, against ``maxclients``.
* backends: each holds at most ``max_waiters`` polls and ``max_connections`` connections;
  round-robin (or any balance with shared state) spreads the polls evenly, a key hash puts
  a channel's subscribers on one backend.
* local ports: every connection from one source address to one destination address and
  port needs a port of its own from the kernel's ``ip_local_port_range`` (read, not
  assumed), on both hops: the load generator to nginx, and nginx to each backend.  More
  source addresses lift it (``--source-addresses``; the nginx knob ``upstream_sources``):
  the preflight chooses them on loopback when the load needs them.
"""

from __future__ import annotations

import bisect
import math
import os
import resource
import zlib
from typing import Any

from pollbench.errors import UserError
from pollbench.stack import nginx_config
from pollbench.stack.loadgen import LoadSpec

# Users that hold a long poll most of the time (the publisher does not).
POLLERS = ("ChannelSubscriber", "TaskPoller")


def held_polls(load: LoadSpec) -> int:
    """Users that hold a poll at once (every user but a publisher)."""
    classes = load.user_classes()
    if not any(c in POLLERS for c in classes):
        return 0
    return max(load.users - (1 if "Publisher" in classes else 0), 0)


# Of one pair's ports, the share a load may plan to hold at once: the rest for connections
# being replaced (a re-poll's new connection before the old one is gone), TIME_WAIT, the
# sampler's requests.
PORT_SHARE = 0.9
MAX_LOOPBACK_SOURCES = 254  # 127.0.0.1 to 127.0.0.254


def usable_ports(port_range: tuple[int, int]) -> int:
    return max(int((port_range[1] - port_range[0] + 1) * PORT_SHARE), 1)


def loadgen_connections(load: LoadSpec) -> int:
    """Connections the load generator holds at once: one per user (a publisher's requests in
    flight and the odd reconnect are in the margin)."""
    return load.users + 16


def sources_needed(connections: int, port_range: tuple[int, int]) -> int:
    """Source addresses that hold ``connections`` to one destination (1 or more)."""
    return max(math.ceil(connections / usable_ports(port_range)), 1)


# Of one pair's ports, the share a run's chosen addresses fill: Linux's connect() looks for a
# free port among the even ones first, and once they are taken (half the range) it scans
# all of them for every new connection.  From one address to one listener here, connect()
# cost 19 us of CPU up to 12,000 connections, 255 us at 12,000-15,000, 811 us at
# 15,000-18,000 of 28,232 ports; spread over 4 addresses 19-21 us throughout.  With 100,000
# subscribers on 4 addresses (89 % each) it took 61 % of a Locust worker's CPU while they
# started.
CONNECT_SHARE = 0.4


def sources_to_use(connections: int, port_range: tuple[int, int]) -> int:
    """Source addresses the run spreads ``connections`` to one destination over, so that each
    pair's ports stay below :data:`CONNECT_SHARE` in use (1 or more)."""
    per_source = max(int((port_range[1] - port_range[0] + 1) * CONNECT_SHARE), 1)
    return max(math.ceil(connections / per_source), 1)


def loopback_sources(count: int) -> list[str]:
    """127.0.0.1 .. 127.0.0.COUNT: loopback aliases that need no set-up (all of 127/8 is
    this host's)."""
    return [f"127.0.0.{i}" for i in range(1, min(count, MAX_LOOPBACK_SOURCES) + 1)]


def chash_ring(servers: list[str]) -> tuple[list[int], list[int]]:
    """nginx's ``hash KEY consistent`` ring over ``servers`` ("127.0.0.1:8000", as the
    upstream block writes them): 160 points a server, each the CRC32 of "host\\0port"
    followed by the previous point's 4 bytes (little-endian), sorted, repeats dropped
    (ngx_http_upstream_hash_module.c, ngx_http_upstream_init_chash).  Returns the points'
    hashes and the index of each point's server."""
    points: dict[int, int] = {}
    for index, server in enumerate(servers):
        host, _, port = server.rpartition(":")
        base = zlib.crc32(host.encode() + b"\0" + port.encode())
        previous = 0
        for _ in range(160):
            previous = zlib.crc32(previous.to_bytes(4, "little"), base)
            points.setdefault(previous, index)  # a repeat keeps the first (after the sort)
    hashes = sorted(points)
    return hashes, [points[h] for h in hashes]


def chash_backend(key: str, ring: tuple[list[int], list[int]]) -> int:
    """The backend index nginx's consistent hash sends ``key`` to: the first point at or
    after the key's CRC32, around the ring."""
    hashes, owners = ring
    return owners[bisect.bisect_left(hashes, zlib.crc32(key.encode())) % len(hashes)]


def polls_per_backend(settings: dict[str, Any], state: str, load: LoadSpec,
                      backend_port: int | None = None) -> int:
    """The most polls one backend holds: even spread, except a key hash with local state,
    which puts a channel's subscribers on one backend: counted from the hash nginx itself
    uses over the channels' names (``backend_port``: the first backend's port, which the
    ring is built from; without it, the channels shared out evenly)."""
    polls = held_polls(load)
    backends = int(settings["backends"])
    if backends == 0:  # nginx is the target (nchan): no backend holds a poll
        return 0
    hashed = state == "local" and settings.get("balance") == "key-hash"
    if not hashed:
        return math.ceil(polls / backends)
    if "ChannelSubscriber" not in load.user_classes():
        return math.ceil(polls / backends)  # task ids: random keys, even
    channels = max(load.channels, 1)
    if backend_port is None:
        return math.ceil(polls / min(backends, channels))
    ring = chash_ring([f"127.0.0.1:{backend_port + i}" for i in range(backends)])
    per_channel = math.ceil(polls / channels)  # subscriber i polls channel i % channels
    held = [0] * backends
    for i in range(min(channels, polls)):  # (the reference target's names: ch0, ch1, ...)
        held[chash_backend(f"ch{i}", ring)] += per_channel
    return max(held)


def port_warnings(settings: dict[str, Any], state: str, load: LoadSpec,
                  port_range: tuple[int, int], target: str = "nginx",
                  backend_port: int | None = None) -> list[str]:
    """Each hop whose busiest (source, destination) pair needs more ports than the range
    gives, naming the option that spreads it."""
    out = []
    ports = port_range[1] - port_range[0] + 1
    have = (f"ip_local_port_range {port_range[0]}-{port_range[1]} gives {ports:,} ports per "
            "(source address, destination) pair")
    sources = max(len(load.sources()), 1)
    per_source = math.ceil(loadgen_connections(load) / sources)
    if per_source > usable_ports(port_range):
        need = sources_needed(loadgen_connections(load), port_range)
        out.append(f"the load generator holds about {per_source:,} connections to {target} "
                   f"from each of its {sources} source address(es); {have}: expect \"no free "
                   f"local port\" failures: --source-addresses with {need} or more of this "
                   "host's addresses spreads them (auto does on a loopback target)")
    if held_polls(load) and settings["backends"]:
        upstream = int(settings.get("upstream_sources") or 1)
        per_pair = math.ceil(polls_per_backend(settings, state, load, backend_port) / upstream)
        if per_pair > usable_ports(port_range):
            out.append(f"nginx holds about {per_pair:,} connections to one backend from each "
                       f"of its {upstream} source address(es); {have}: expect 502s "
                       "(\"Cannot assign requested address\"; set the nginx knob "
                       "upstream_sources)")
    return out


def nginx_capacity(settings: dict[str, Any]) -> tuple[int, int]:
    """(workers, connections all workers allow)."""
    workers = settings["worker_processes"]
    if workers == "auto":
        workers = os.cpu_count() or 1
    return int(workers), int(workers) * int(settings["worker_connections"])


def nginx_need(polls: int, proxied: bool = True) -> int:
    # with every poll held, the idle upstream keep-alive pool is (nearly) empty: its
    # connections carry the polls; a few more for the sampler's and publishers' requests.
    # Not proxied (nchan holds the poll in nginx): one connection a poll.
    return (2 if proxied else 1) * polls + 16


# Descriptors a Locust process keeps for itself beyond one per user (its logs, the metrics
# writer's files, the web UI, the master's sockets); a worker planned at its limit less these.
LOCUST_SPARE_FDS = 64
# Of an nginx worker's descriptors, the share a run plans to hold at once (the rest for a
# broadcast's transients: the re-polls' new connections before the old ones are closed).
NGINX_FD_SHARE = 0.9


def locust_fd_limit() -> int:
    """The open-files limit a Locust process runs with (Locust raises a soft limit under
    10,000 to 10,000, within the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(soft, min(10_000, hard))


def locust_processes_for(users: int) -> int:
    """How many Locust processes hold ``users`` sockets, each within its descriptor limit."""
    per_process = max(locust_fd_limit() - LOCUST_SPARE_FDS, 1)
    return max(math.ceil(users / per_process), 1)


def nginx_fd_limit(settings: dict[str, Any]) -> int:
    return int(settings.get("worker_rlimit_nofile") or
               resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def nginx_connections_per_worker(settings: dict[str, Any]) -> int:
    """The connections one nginx worker holds: its share of its descriptors and its
    worker_connections, whichever is fewer."""
    return min(int(nginx_fd_limit(settings) * NGINX_FD_SHARE), int(settings["worker_connections"]))


def nginx_workers_for(need: int, settings: dict[str, Any]) -> int:
    """nginx workers whose descriptors and worker_connections hold ``need`` connections."""
    return max(math.ceil(need / max(nginx_connections_per_worker(settings), 1)), 1)


def fitting_profile(polls: int, state: str, current: str, serves: str = "pollbench"
                    ) -> str | None:
    """A shipped profile whose nginx holds ``polls`` (the smallest such), same state, same
    target (``serves``: pollbench's backends or nchan)."""
    best: tuple[int, str] | None = None
    for name in nginx_config.profile_names():
        if name == current:
            continue
        try:  # each file read once: its state and its settings
            profile = nginx_config.read_profile(name)
            if (profile.state or "local") != state:
                continue
            settings = nginx_config.profile_settings(profile, name)
        except UserError:  # a profile that does not load is no advice
            continue
        _, allowed = nginx_capacity(settings)
        if nginx_config.serves(settings) != serves:
            continue
        if nginx_need(polls, not settings["nchan"]) <= allowed and \
                (best is None or allowed < best[0]):
            best = (allowed, name)
    return best[1] if best else None


def redis_warnings(backends: int, maxclients: int | None) -> list[str]:
    """The stack's own Redis against its maxclients: every backend process may hold its
    command pool and its fan-out subscription at once (the sampler adds one)."""
    from target_app.shared import REDIS_CONNECTIONS_PER_BACKEND

    if maxclients is None:
        return []
    need = backends * REDIS_CONNECTIONS_PER_BACKEND + 1
    if need <= maxclients:
        return []
    return [f"the backends may open about {need:,} Redis connections ({backends} x "
            f"{REDIS_CONNECTIONS_PER_BACKEND}: each one's pool and its subscription); Redis' "
            f"maxclients is {maxclients:,}: expect 503 \"shared state unavailable\" under load "
            "(raise maxclients in the [redis] knobs)"]


def warnings_for(settings: dict[str, Any], profile: str, state: str, load: LoadSpec,
                 max_waiters: int, max_connections: int,
                 redis_maxclients: int | None = None,
                 backend_port: int | None = None) -> list[str]:
    out = redis_warnings(int(settings["backends"]), redis_maxclients)
    polls = held_polls(load)
    if polls == 0:
        return out
    workers, allowed = nginx_capacity(settings)
    proxied = not settings["nchan"]
    need = nginx_need(polls, proxied)
    if need > allowed:
        other = fitting_profile(polls, state, profile, nginx_config.serves(settings))
        per_poll = "x 2, client and upstream" if proxied else "held in nginx itself"
        out.append(
            f"this load needs about {need:,} nginx connections ({polls:,} held polls "
            f"{per_poll}); profile {profile} allows {allowed:,} ({workers} worker(s) x "
            f"{settings['worker_connections']:,} worker_connections): expect failures "
            "(\"worker_connections are not enough\")"
            + (f"; --profile {other} holds it" if other else
               "; raise worker_processes or worker_connections"))
    nofile = nginx_fd_limit(settings)
    per_worker = math.ceil(need / workers)
    if per_worker > nofile:
        out.append(f"each nginx worker needs about {per_worker:,} descriptors; its limit is "
                   f"{nofile:,}: expect \"Too many open files\" (set worker_rlimit_nofile)")
    per_backend = polls_per_backend(settings, state, load, backend_port)
    if per_backend > max_waiters:
        out.append(f"about {per_backend:,} polls would wait on one backend; each holds at most "
                   f"{max_waiters:,} (the target's max_waiters): the rest get 503")
    elif per_backend > max_connections:
        out.append(f"about {per_backend:,} connections on one backend; each accepts at most "
                   f"{max_connections:,}: the rest get 503")
    locust_processes = max(load.workers, 1)
    per_locust = math.ceil(load.users / locust_processes) + LOCUST_SPARE_FDS
    soft = locust_fd_limit()
    if per_locust > soft:
        need = locust_processes_for(load.users)
        out.append(f"each Locust process would hold about {per_locust:,} sockets; the limit is "
                   f"{soft:,} per process: add --workers (--workers {need} holds "
                   f"{load.users:,} users)")
    return out
