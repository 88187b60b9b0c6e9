"""``pollbench worker``: Locust workers on a load host for a controller's runs (see docs/cli.md,
"Several machines")."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("worker", help="Locust workers on this load host for another host's "
                                      "pollbench run", description=__doc__)
    p.add_argument("--master", required=True,
                   help="the controller's Locust master, HOST[:PORT] (port default 5557)")
    p.add_argument("--processes", type=int, default=1,
                   help="Locust worker processes on this host (about one per core; default 1)")
    p.add_argument("--max-runs", type=int, default=1000,
                   help="serve at most this many runs, then exit (default 1000)")
    p.add_argument("--once", action="store_true", help="serve one run, then exit")
    p.add_argument("--source-addresses", default="", metavar="LIST|CIDR",
                   help="this host's source addresses for the clients' connections, e.g. "
                        "10.0.0.5,10.0.0.6 or 10.0.1.0/28, each connection bound to the next "
                        "(each address has the whole ip_local_port_range to the target; "
                        "default: the kernel chooses one); wins over the run's own")
    p.set_defaults(func=handle)


def handle(a) -> int:
    from pollbench.actions.worker import worker

    return worker(a.master, a.processes, a.max_runs, a.once, a.source_addresses)
