"""pollbench's locustfile: ``locust -f loadtests/locustfile.py -H http://127.0.0.1:8080``.

Scenarios are user classes (pick them in the web UI's class picker, or name them
on the command line): ``ChannelSubscriber`` + ``Publisher`` (channels),
``TaskPoller`` (tasks).  Options prefixed ``--pb-`` tune them and show in the UI.
"""

from __future__ import annotations

import gc
import os

import locust.argument_parser
import locust.runners
from locust import events

from loadtests import memtrace
from loadtests.metrics import MetricsPlumbing
from loadtests.options import (
    DEFAULTS,
    SOURCE_ENV,
    parse_backoff,
    parse_connection_mode,
    parse_mix,
    parse_source_addresses,
)
from loadtests.protocols import TASKS, load_protocol
from loadtests.users import ChannelSubscriber, Publisher, TaskPoller

__all__ = ["ChannelSubscriber", "Publisher", "TaskPoller"]


def build_default_args_once() -> None:
    """Locust 2.47's worker tests each option a spawn message carries against
    ``argument_parser.default_args_dict()``, called inside the comprehension's condition
    (runners.py, ``handle_message``): a whole argument parser is built and parsed ~75 times
    per spawn message, ~0.3 s of CPU, and the master sends one a second to every worker
    while users spawn.  py-spy on a worker spawning 50 users/s at 26,000 held polls: 73 % of
    its CPU there; with 6 workers that alone ran this 2-core machine out while 100,000
    subscribers started.  Its answer cannot change within a process (Locust's own options,
    before any custom ones): build it once, hand out copies."""
    original = locust.argument_parser.default_args_dict
    if getattr(original, "built_once", False):
        return
    built: dict = {}

    def default_args_dict() -> dict:
        if not built:
            built.update(original())
        return dict(built)

    default_args_dict.built_once = True  # type: ignore[attr-defined]
    locust.argument_parser.default_args_dict = default_args_dict


build_default_args_once()


@events.init_command_line_parser.add_listener
def add_options(parser) -> None:
    g = parser  # (argument groups do not take include_in_web_ui)
    g.add_argument("--pb-out", default="", include_in_web_ui=False,
                   help="folder for lossless latency data and progress (pollbench sets it)")
    g.add_argument("--pb-protocol", default="pollbench", include_in_web_ui=False,
                   help="how the target is spoken: pollbench, nchan, or module:Class (a "
                        "subclass of loadtests.protocols.Protocol)")
    g.add_argument("--pb-channels", type=int, default=DEFAULTS.channels,
                   help="channels subscribers spread over")
    g.add_argument("--pb-publish-rate", type=float, default=DEFAULTS.publish_rate,
                   help="messages per second, all channels together (fixed schedule)")
    g.add_argument("--pb-message-bytes", type=int, default=DEFAULTS.message_bytes,
                   help="size of a published body")
    g.add_argument("--pb-poll-timeout", type=float, default=DEFAULTS.poll_timeout_s,
                   help="seconds the server may hold each poll")
    g.add_argument("--pb-task-duration-ms", type=int, default=DEFAULTS.task_duration_ms,
                   help="each task's duration")
    g.add_argument("--pb-task-payload-bytes", type=int, default=DEFAULTS.task_payload_bytes,
                   help="each result's size")
    g.add_argument("--pb-retry-backoff", default=DEFAULTS.retry_backoff,
                   help="after a failure wait MIN:MAX s with exponential back-off and jitter; "
                        "0 retries at once")
    g.add_argument("--pb-connection", default=DEFAULTS.connection,
                   help="keepalive, close (new connection per request) or every:K")
    g.add_argument("--pb-source-addresses", default="", include_in_web_ui=False,
                   help="the clients' source addresses, a list or CIDR range, each connection "
                        "bound to the next (default: the kernel chooses; a load host's "
                        f"${SOURCE_ENV} wins)")
    g.add_argument("--pb-mix", default="", include_in_web_ui=False,
                   help="user class weights, e.g. ChannelSubscriber:9,TaskPoller:1")
    g.add_argument("--pb-tests", default="", include_in_web_ui=False,
                   help="web UI: a folder per test started in the UI (pollbench ui sets it)")
    g.add_argument("--pb-live", default="", include_in_web_ui=False,
                   help="the target-side sample file, rewritten each second (pollbench sets it): "
                        "the web UI tab's and the Prometheus endpoint's CPU figures")
    g.add_argument("--pb-metrics-port", type=int, default=0, include_in_web_ui=False,
                   help="serve the run's live figures for Prometheus on 127.0.0.1:PORT/metrics "
                        "(pollbench sets it; 0: none)")
    g.add_argument("--pb-agent", default="", include_in_web_ui=False,
                   help="the target host's agent (pollbench run --agent): each worker measures "
                        "its clock offset to it")
    g.add_argument("--pb-agent-token", default="", include_in_web_ui=False,
                   help="the agent's token")
    g.add_argument("--pb-heartbeat-liveness", type=int, default=locust.runners.HEARTBEAT_LIVENESS,
                   include_in_web_ui=False,
                   help="the master marks a worker missing after this many s without its "
                        "heartbeat (Locust's 3; pollbench's local --processes: 30)")
    g.add_argument("--pb-max-poll-timeout", type=float, default=float("inf"),
                   include_in_web_ui=False,
                   help="the longest --pb-poll-timeout the stack holds (its --max-hold; "
                        "pollbench ui passes it; default: not checked here)")


# Collect less often: with thousands of users a gen-0 pass runs every few hundred
# requests and the older generations hold every user's greenlet and client.
GC_THRESHOLDS = (50_000, 20, 100)


@events.spawning_complete.add_listener
def freeze_spawned_users(user_count, **_kw) -> None:
    # Everything built while spawning lives for the whole test: move it out of the
    # collector's view so full collections stop walking it (see GC_PAUSE in the HDR log).
    gc.collect()
    gc.freeze()


@events.init.add_listener
def on_init(environment, **_kw) -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    memtrace.install()
    memtrace.install_stats()
    opts = environment.parsed_options
    if opts is not None:
        locust.runners.HEARTBEAT_LIVENESS = opts.pb_heartbeat_liveness
        parse_connection_mode(opts.pb_connection)  # fail at start, not in every user
        parse_backoff(opts.pb_retry_backoff)
        parse_source_addresses(os.environ.get(SOURCE_ENV) or opts.pb_source_addresses)
        protocol = load_protocol(opts.pb_protocol)  # fail at start, not in every user
        if TASKS not in protocol.gives:  # the web UI's class picker offers what it can run
            for table in (environment.available_user_classes,
                          getattr(environment, "available_user_tasks", None)):
                if table:
                    table.pop(TaskPoller.__name__, None)
            environment.user_classes = [c for c in environment.user_classes
                                        if c is not TaskPoller]
        classes = {c.__name__: c for c in (ChannelSubscriber, TaskPoller)}
        for name, weight in parse_mix(opts.pb_mix).items():
            classes[name].weight = weight
    plumbing = MetricsPlumbing(environment, opts.pb_out if opts else None,
                               opts.pb_tests if opts else None, opts.pb_live if opts else None,
                               opts.pb_metrics_port if opts else 0)
    environment.pollbench = plumbing
    if plumbing.live is not None:
        from loadtests.webui import install

        install(environment, plumbing.live, plumbing.tests.dir if plumbing.tests is not None else None)
