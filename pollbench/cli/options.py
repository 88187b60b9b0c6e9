"""Command-line options shared by the commands that start the stack or a load, and their
translation into specs (refused in one line before anything starts)."""

from __future__ import annotations

import argparse
from dataclasses import replace

from pollbench.errors import UserError
from pollbench.stack import nginx_config
from pollbench.stack.backend_command import parse_env
from pollbench.stack.loadgen import DEFAULTS as D
from pollbench.stack.loadgen import SCENARIOS, SHAPES, LoadSpec, check_number, parse_duration
from pollbench.stack.nginx_config import ACCESS_LOGS
from pollbench.stack.processes import parse_cpu_placement
from pollbench.stack.spec import StackSpec
from target_app.app import AppConfig
from target_app.server import LOOPS


def add_stack_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("stack")
    g.add_argument("--profile", default=None,
                   help="nginx profile name (nginx/profiles/*.toml) or a .toml path (default "
                        "seed; nchan with --protocol nchan)")
    g.add_argument("--backends", type=int, default=None,
                   help="number of backend processes (default: the profile's, 4 in seed)")
    g.add_argument("--loop", default="asyncio", choices=LOOPS,
                   help="backends' event loop (default asyncio = epoll)")
    g.add_argument("--port", type=int, default=8080, help="nginx port on 127.0.0.1 (default 8080)")
    g.add_argument("--backend-port", type=int, default=8000,
                   help="first backend port; backends use consecutive ports (default 8000)")
    g.add_argument("--nginx", dest="nginx_binary", default=None,
                   help="nginx binary to run, or \"built\" for `pollbench nginx build`'s "
                        "(default: the profile's nginx_binary, else nginx on PATH)")
    g.add_argument("--max-hold", type=float, default=AppConfig.max_hold_s,
                   help="longest poll hold in the backends, s (below proxy_read_timeout; "
                        f"default {AppConfig.max_hold_s:g})")
    g.add_argument("--delivery-delay-ms", type=float, default=0.0,
                   help="the backends delay every delivery by this much (a known regression, "
                        "to see that a check or the history catches it; default 0)")
    g.add_argument("--burn-us", type=float, default=0.0, metavar="US",
                   help="every backend spends this many microseconds of CPU on each poll it "
                        "answers with messages (a known cost regression, to see that a check "
                        "catches it; default 0)")
    g.add_argument("--state", default=None, choices=("local", "redis"),
                   help="where channels and tasks live: local (one backend each; nginx routes "
                        "by key) or redis (shared; any backend answers). Default: the "
                        "profile's state, else local")
    g.add_argument("--redis", dest="redis_url", default=None, metavar="URL",
                   help="with --state redis: use this Redis (redis://HOST:PORT[/DB]) instead of "
                        "starting one; keys get a per-run prefix")
    g.add_argument("--redis-port", type=int, default=None,
                   help="port of the Redis the stack starts on 127.0.0.1 (default: a free one)")
    g.add_argument("--access-log", default="auto", choices=("auto", *ACCESS_LOGS),
                   help="nginx's access log: full (a line per request), sampled-N (every "
                        "request of one connection in N), off; auto (default): the profile's, "
                        "else for a run full unless that would pass 2 GiB, then sampled (see "
                        "docs/run-record.md)")
    g.add_argument("--prometheus", action="store_true",
                   help="also start Debian's prometheus (and prometheus-nginx-exporter) on "
                        "127.0.0.1, scraping every backend, nginx and the load generator "
                        "once a second; its data in the run folder (docs/metrics.md)")
    u = p.add_argument_group(
        "your own backends (or [backend] in the project file; docs/your-service.md)")
    u.add_argument("--backend-command", default=None, metavar="CMD",
                   help="start your service as the backends: the command of one backend, with "
                        "{port} (its port), {index}, {redis_url} (needs --state redis) and "
                        "{python}; started --backends times behind nginx (default: the "
                        "reference target)")
    u.add_argument("--backend-ready", default=None, metavar="PATH",
                   help="a path your backend answers 200 once ready (default /healthz)")
    u.add_argument("--backend-ready-timeout", type=float, default=None, metavar="S",
                   help="seconds a backend may take to get ready (default 30)")
    u.add_argument("--backend-metrics", default=None, metavar="PATH",
                   help="a path your backend serves Prometheus metrics on (--prometheus "
                        "scrapes it; default: none)")
    u.add_argument("--backend-env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment of your backends (repeatable)")
    u.add_argument("--backend-cwd", default=None, metavar="DIR",
                   help="working directory of your backends (default: the current one)")
    g.add_argument("--backend-max-connections", type=int, default=None, metavar="N",
                   help="open client connections each backend accepts; more are answered 503 "
                        f"(default {AppConfig.max_connections:,}; its held polls are capped "
                        "at it too)")


def profile_from_args(args: argparse.Namespace) -> str:
    """--profile, else the protocol's own (nchan's for --protocol nchan, socketio's for
    --protocol socketio), else seed."""
    if args.profile is not None:
        return args.profile
    protocol = getattr(args, "protocol", None)
    return protocol if protocol in ("nchan", "socketio") else "seed"


def spec_from_args(args: argparse.Namespace) -> StackSpec:
    access_log = getattr(args, "access_log", "auto")
    return StackSpec(profile=profile_from_args(args),
                     nginx_overrides={} if access_log == "auto" else {"access_log": access_log},
                     backends=args.backends, loop=args.loop, port=args.port,
                     backend_port=args.backend_port, nginx_binary=args.nginx_binary,
                     max_hold_s=args.max_hold, delivery_delay_ms=args.delivery_delay_ms,
                     burn_us=args.burn_us,
                     state=args.state, redis_url=args.redis_url, redis_port=args.redis_port,
                     backend_max_connections=_max_connections(args),
                     prometheus=getattr(args, "prometheus", False),
                     backend_command=backend_from_args(args))


def backend_from_args(args: argparse.Namespace):
    """The user's backend command: the project file's, each option given overriding it
    (``--backend-env`` adds), or the options' alone; None: the reference target."""
    from pollbench.stack.backend_command import BackendCommand

    command = getattr(args, "backend_command", None)
    base = getattr(args, "project_backend", None)
    if base is None:
        if command is None:
            return None
        base = BackendCommand(command)
    given = {k: v for k, v in (("command", command), ("ready", args.backend_ready),
                               ("ready_timeout_s", args.backend_ready_timeout),
                               ("cwd", args.backend_cwd),
                               ("metrics", getattr(args, "backend_metrics", None)))
             if v is not None}
    return replace(base, **given, env=base.env + parse_env(args.backend_env))


def _max_connections(args: argparse.Namespace) -> int | None:
    n = getattr(args, "backend_max_connections", None)
    if n is not None:
        check_number("--backend-max-connections", n, 1, 1_000_000)
    return n


def add_load_arguments(p: argparse.ArgumentParser, web_ui: bool = False) -> None:
    """The load's options; ``web_ui``: only those the web UI's start form takes as defaults
    (users, spawn rate, the custom parameters) and its worker processes."""
    g = p.add_argument_group("load" if not web_ui else "the start form's defaults")
    if not web_ui:
        g.add_argument("--scenario", default="channels", choices=sorted(SCENARIOS),
                       help="channels (subscribers + a publisher), tasks (task pollers), or "
                            "mixed")
        g.add_argument("--mix", default=None,
                       help="weights instead of --scenario, e.g. subscriber:9,tasks:1")
    g.add_argument("--protocol", default=None, metavar="NAME|module:Class",
                   help="how the target is spoken: pollbench (the reference target's API), "
                        "nchan (nginx's pub/sub module; its profile unless --profile says), "
                        "or module:Class, a subclass of loadtests.protocols.Protocol "
                        "(default: the profile's, else pollbench)")
    g.add_argument("--users", type=int, default=D.users,
                   help=f"simulated clients (default {D.users})")
    g.add_argument("--spawn-rate", type=float, default=None,
                   help=f"users started per second (default: all within {D.spawn_seconds:g} s)")
    if not web_ui:
        g.add_argument("--duration", default=f"{D.duration_s:g}s",
                       help=f"run time: 60, 60s, 2m, 1h30m (default {D.duration_s:g}s)")
        g.add_argument("--shape", default="constant", choices=SHAPES,
                       help="load shape over the run")
    g.add_argument("--workers", type=int, default=0,
                   help="Locust worker processes (0: one local process)")
    g.add_argument("--connection", default=D.connection,
                   help="client connections: keepalive, close (new one per request), every:K")
    g.add_argument("--retry-backoff", default=D.retry_backoff, metavar="MIN:MAX",
                   help="after a failure a client waits MIN s, doubling each failure in a row "
                        f"up to MAX s, with jitter (default {D.retry_backoff}); 0 retries at "
                        "once")
    g.add_argument("--source-addresses", default=D.source_addresses, metavar="LIST|CIDR|auto",
                   help="the load generator's source addresses, e.g. 127.0.0.1,127.0.0.2 or "
                        "127.0.0.0/28, each connection bound to the next: every address has "
                        "the whole ip_local_port_range to nginx (default auto: one address, "
                        "spread over loopback aliases when the users need more ports)")
    g.add_argument("--channels", type=int, default=D.channels,
                   help=f"channels to spread subscribers over (default {D.channels})")
    g.add_argument("--publish-rate", type=float, default=D.publish_rate,
                   help="messages/s over all channels, on a fixed schedule "
                        f"(default {D.publish_rate:g})")
    g.add_argument("--poll-timeout", type=float, default=D.poll_timeout_s,
                   help=f"seconds the server may hold each poll (default {D.poll_timeout_s:g})")
    g.add_argument("--task-duration-ms", type=int, default=D.task_duration_ms,
                   help=f"each task's duration (default {D.task_duration_ms})")
    if web_ui:
        return
    g.add_argument("--fault", dest="faults", action="append", default=[],
                   metavar="AT:ACTION[=D][:TARGET]",
                   help="inject a fault during the run (repeatable): kill=D, stop=D or restart "
                        "a backend-N, reload[:PROFILE] or upgrade nginx; AT from the load's "
                        "start, *AT repeats; e.g. 20s:kill=3s:backend-1, '*15s:reload'")
    g.add_argument("--cpus", default=None, metavar="LOADGEN/STACK",
                   help="CPU placement, e.g. 0/1: the load generator on CPU 0, nginx and the "
                        "backends on CPU 1 (default: no placement; see docs/accuracy.md)")


def load_from_args(args: argparse.Namespace) -> LoadSpec:
    """The load of ``add_load_arguments`` (either form: the web UI's takes LoadSpec's
    defaults for what it does not have)."""
    web_ui = not hasattr(args, "duration")
    return LoadSpec(scenario=getattr(args, "scenario", "channels"), mix=getattr(args, "mix", None),
                    users=args.users, spawn_rate=args.spawn_rate,
                    duration_s=D.duration_s if web_ui else parse_duration(args.duration),
                    shape=getattr(args, "shape", "constant"), workers=args.workers,
                    connection=args.connection, retry_backoff=args.retry_backoff,
                    source_addresses=args.source_addresses, channels=args.channels,
                    publish_rate=args.publish_rate, poll_timeout_s=args.poll_timeout,
                    task_duration_ms=args.task_duration_ms,
                    faults=tuple(getattr(args, "faults", ())),
                    protocol=_protocol(args))


def _protocol(args: argparse.Namespace) -> str:
    """--protocol, else what the profile's stack serves (a --target alone: pollbench)."""
    if getattr(args, "protocol", None):
        return args.protocol
    if getattr(args, "target", None) is not None and getattr(args, "agent", None) is None:
        return "pollbench"
    return nginx_config.serves(nginx_config.read_profile(profile_from_args(args)).knobs)


def place_cpus(spec: StackSpec, load: LoadSpec, text: str | None) -> tuple[StackSpec, LoadSpec]:
    """``--cpus LOADGEN/STACK`` into copies of both specs (refused in one line)."""
    if text is None:
        return spec, load
    try:
        loadgen_cpus, stack_cpus = parse_cpu_placement(text)
    except ValueError as e:
        raise UserError(f"--cpus {e}") from None
    return replace(spec, cpus=stack_cpus), replace(load, cpus=loadgen_cpus)


def add_remote_arguments(p) -> None:
    """The options of a run (or sweep) whose stack is on another host."""
    g = p.add_argument_group(
        "the target on another host (see docs/cli.md, \"Several machines\"): with pollbench "
        "agent there, the run's stack (a sweep's, each cell's) is started through it; with "
        "pollbench up --bind (runs only), the stack is up's")
    g.add_argument("--target", default=None,
                   help="alone (pollbench run): a service already running, http://ADDR:PORT, "
                        "measured as a client sees it (nothing is started; the stack's figures "
                        "read \"not measured\"); with --agent: nginx on the target host")
    g.add_argument("--agent", default=None, help="the target's agent, http://ADDR:PORT")
    g.add_argument("--agent-token", default=None,
                   help="the agent's token (default $POLLBENCH_AGENT_TOKEN): the control token "
                        "of pollbench agent, or the token of pollbench up")
    g.add_argument("--expect-workers", type=int, default=None,
                   help="Locust workers to wait for (pollbench worker on the load hosts)")
    g.add_argument("--master-bind", default="127.0.0.1",
                   help="address the Locust master listens on for workers (default 127.0.0.1: "
                        "give an address the load hosts reach)")
    g.add_argument("--master-port", type=int, default=5557,
                   help="the Locust master's port (default 5557)")
    g.add_argument("--workers-timeout", type=float, default=60.0,
                   help="seconds to wait for the workers before giving up (default 60)")
    g.add_argument("--agent-lease", type=float, default=30.0, metavar="S",
                   help="pollbench agent keeps the stack this long without word from this "
                        "controller, then stops it (renewed every S/4; default 30)")


def remote_from_args(a, external_ok: bool = False):
    """The RemoteTarget the options name, or None for a stack on this host (or, with
    ``external_ok``, for ``--target`` alone: a service already running)."""
    import os

    remote_opts = (a.target, a.agent, a.expect_workers)
    if all(v is None for v in remote_opts):
        return None
    if a.agent is None and a.expect_workers is None and external_ok:
        return None  # --target alone: a service already running (actions.external_run)
    if any(v is None for v in remote_opts):
        raise UserError("a run on another host needs --target, --agent and --expect-workers "
                        "together" + ("; --target alone measures a service already running"
                                      if external_ok else ""))
    from pollbench.actions.remote_run import RemoteTarget

    return RemoteTarget(a.target, a.agent,
                        a.agent_token or os.environ.get("POLLBENCH_AGENT_TOKEN", ""),
                        a.expect_workers, a.master_bind, a.master_port, a.workers_timeout,
                        a.agent_lease)


def project_run_args(project, argv: list[str]) -> argparse.Namespace:
    """``pollbench run``'s stack and load options as the project file sets them (``argv``:
    a few more, such as the ports), so that another command runs what ``run`` would."""
    p = argparse.ArgumentParser(prog="pollbench run (project)", add_help=False)
    add_stack_arguments(p)
    add_load_arguments(p)
    dests = {a.dest for a in p._actions}
    p.set_defaults(**{k: v for k, v in project.options.items() if k in dests},
                   project_backend=project.backend)
    return p.parse_args(argv)
