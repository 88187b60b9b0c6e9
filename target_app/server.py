"""Run target processes: ``python -m target_app`` (4 processes on 127.0.0.1:8000-8003).

Each process listens on 127.0.0.1 (``--address`` to change) at consecutive
ports, with ``xheaders`` on so nginx's X-Real-IP / X-Scheme are honoured.
SIGTERM (or Ctrl-C) stops accepting, answers every held poll with 204 and exits
within a few seconds.  With ``--processes N > 1`` this process is a small
supervisor that starts N single-process children and forwards signals to them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import selectors
import signal
import subprocess
import sys
import time

import tornado.netutil

from target_app.app import STATES, AppConfig, PollHTTPServer, make_app
from target_app.store import Unavailable

LOOPS = ("asyncio", "asyncio-poll", "asyncio-select", "uvloop")
# select() cannot watch a descriptor numbered FD_SETSIZE (1024) or above.  A process has a
# few dozen other fds open (std streams, listening socket, selector, logs), so stay clear.
SELECT_MAX_CONNECTIONS = 1000

log = logging.getLogger("target_app")


class ConfigError(Exception):
    """A configuration that would fail under load; the message says what to change."""


def loop_factory(name: str):
    if name == "asyncio":
        return asyncio.new_event_loop  # epoll on Linux
    if name == "asyncio-poll":
        return lambda: asyncio.SelectorEventLoop(selectors.PollSelector())
    if name == "asyncio-select":
        return lambda: asyncio.SelectorEventLoop(selectors.SelectSelector())
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise ConfigError("--loop uvloop needs the uvloop package (pip install uvloop)") from None
        return uvloop.new_event_loop
    raise ConfigError(f"unknown --loop {name!r}; choose one of {', '.join(LOOPS)}")


def check_config(config: AppConfig) -> None:
    if config.loop_name == "asyncio-select" and config.max_connections > SELECT_MAX_CONNECTIONS:
        raise ConfigError(
            f"--loop asyncio-select cannot watch file descriptors above 1024 (FD_SETSIZE): set "
            f"--max-connections to {SELECT_MAX_CONNECTIONS} or less (it is {config.max_connections})")
    if config.max_waiters > config.max_connections:
        raise ConfigError(f"--max-waiters ({config.max_waiters}) cannot exceed --max-connections "
                          f"({config.max_connections}): every waiting poll holds a connection")
    if config.state not in STATES:
        raise ConfigError(f"unknown --state {config.state!r}; choose one of {', '.join(STATES)}")
    if config.state == "redis" and not config.redis_url:
        raise ConfigError("--state redis needs --redis-url redis://HOST:PORT[/DB]")
    if config.default_hold_s > config.max_hold_s:
        raise ConfigError(f"--default-hold ({config.default_hold_s}) exceeds --max-hold "
                          f"({config.max_hold_s})")


# A broadcast to 10,000 held polls allocates ~half a million objects, and the held polls live
# long enough to be promoted: with CPython's default thresholds (700, 10, 10) one backend made
# 103 full collections in two minutes, 52 s of pauses, up to 830 ms each, all of it delivery
# latency.  Young collections 70x rarer let a poll's short-lived objects die before they are
# looked at; a full collection then needs 250 million allocations (minutes of such load).
# Every pause is still counted in /stats (gc).
GC_THRESHOLDS = (50_000, 50, 100)


def watch_gc(stats) -> None:
    """Record every collection's pause: at 10,000 waiters a full one can take ~0.5 s."""
    started = [0.0]

    def callback(phase, info):
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pause_ms = (time.perf_counter() - started[0]) * 1000
            gen = info["generation"]
            stats.gc_collections[gen] = stats.gc_collections.get(gen, 0) + 1
            stats.gc_pause_total_ms += pause_ms
            stats.gc_pause_max_ms = max(stats.gc_pause_max_ms, pause_ms)

    gc.callbacks.append(callback)


async def serve(config: AppConfig, port: int, address: str, backlog: int) -> None:
    app = make_app(config)
    service = app.settings["service"]
    try:
        await service.state.start()
    except Unavailable as e:
        raise ConfigError(str(e)) from None
    server = PollHTTPServer(app, xheaders=True, stats=service.stats,
                            max_connections=config.max_connections,
                            refuse_body_above=max(config.max_body_bytes * 4, 1 << 20),
                            idle_connection_timeout=3600)
    sockets = tornado.netutil.bind_sockets(port, address=address, backlog=backlog)
    server.add_sockets(sockets)
    watch_gc(service.stats)
    # Everything allocated so far lives for the whole run: keep it out of every collection.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    log.info("target_app backend %d listening on %s:%d (loop %s, pid %s)",
             config.backend_index, address, port, config.loop_name, os.getpid())
    print(f"ready http://{address}:{port}", flush=True)
    await stopping.wait()

    log.info("stopping: answering %d held polls", service.waiting)
    server.stop()
    service.wake_everyone()
    for _ in range(50):  # let the woken handlers write their 204s
        if service.waiting == 0:
            break
        await asyncio.sleep(0.02)
    try:
        await asyncio.wait_for(server.close_all_connections(), timeout=3)
    except TimeoutError:
        log.warning("some connections did not close within 3 s")
    await service.state.stop()


def build_parser() -> argparse.ArgumentParser:
    d = AppConfig()
    p = argparse.ArgumentParser(prog="python -m target_app", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8000, help="first port (default 8000)")
    p.add_argument("--processes", type=int, default=4,
                   help="processes on consecutive ports (default 4: 8000-8003)")
    p.add_argument("--index", type=int, default=0, help="index of this backend (for /stats)")
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--loop", default="asyncio", choices=LOOPS)
    p.add_argument("--backlog", type=int, default=4096,
                   help="listen backlog (Tornado's default 128 overflows in reconnect storms)")
    p.add_argument("--max-hold", type=float, default=d.max_hold_s,
                   help="longest poll hold in seconds; keep it below nginx's proxy_read_timeout")
    p.add_argument("--default-hold", type=float, default=d.default_hold_s)
    p.add_argument("--max-waiters", type=int, default=d.max_waiters)
    p.add_argument("--max-connections", type=int, default=d.max_connections)
    p.add_argument("--max-channels", type=int, default=d.max_channels)
    p.add_argument("--channel-buffer", type=int, default=d.channel_buffer_len)
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--result-ttl", type=float, default=d.result_ttl_s)
    p.add_argument("--max-results", type=int, default=d.max_results)
    p.add_argument("--delivery-delay-ms", type=float, default=0.0,
                   help="inject a fixed delay into every delivery (regression tests only)")
    p.add_argument("--burn-us", type=float, default=0.0,
                   help="spend this many microseconds of CPU on every poll answered with "
                        "messages (a known cost regression; tests only)")
    p.add_argument("--state", default=d.state, choices=STATES,
                   help="where channels and tasks live: local (this process) or redis (shared "
                        "by every process; needs --redis-url)")
    p.add_argument("--redis-url", default=os.environ.get("TARGET_APP_REDIS_URL", d.redis_url),
                   help="redis://[USER:PASSWORD@]HOST:PORT[/DB] for --state redis (default: "
                        "$TARGET_APP_REDIS_URL, which keeps a password out of the process list)")
    p.add_argument("--redis-prefix", default=d.redis_prefix,
                   help="prefix of every Redis key (default pb:)")
    return p


def config_from_args(args: argparse.Namespace, index: int) -> AppConfig:
    return AppConfig(
        max_hold_s=args.max_hold, default_hold_s=args.default_hold,
        max_waiters=args.max_waiters, max_connections=args.max_connections,
        max_channels=args.max_channels, channel_buffer_len=args.channel_buffer,
        max_body_bytes=args.max_body_bytes, result_ttl_s=args.result_ttl,
        max_results=args.max_results, delivery_delay_ms=args.delivery_delay_ms,
        burn_us=args.burn_us,
        loop_name=args.loop, backend_index=index, state=args.state,
        redis_url=args.redis_url, redis_prefix=args.redis_prefix)


def supervise(args: argparse.Namespace, argv: list[str]) -> int:
    """Start one child per port; forward SIGTERM/SIGINT; exit when all have exited."""
    base = [a for a in argv]
    children = []
    for i in range(args.processes):
        cmd = [sys.executable, "-m", "target_app", *base, "--processes", "1",
               "--port", str(args.port + i), "--index", str(args.index + i)]
        children.append(subprocess.Popen(cmd))

    def forward(signum, _frame):
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [c.wait() for c in children]
    return max(codes, default=0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = config_from_args(args, args.index)
    try:
        check_config(config)
        factory = loop_factory(args.loop)
    except ConfigError as e:
        print(f"target_app: error: {e}", file=sys.stderr)
        return 2
    if args.processes < 1:
        print("target_app: error: --processes must be 1 or more", file=sys.stderr)
        return 2
    if args.processes > 1:
        return supervise(args, argv)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(config, args.port, args.address, args.backlog))
    except ConfigError as e:  # found at start: Redis unreachable
        print(f"target_app: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"target_app: error: cannot listen on {args.address}:{args.port}: {e.strerror}",
              file=sys.stderr)
        return 1
    return 0
