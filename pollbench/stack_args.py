"""Command-line options shared by every subcommand that starts the stack."""

from __future__ import annotations

import argparse

from pollbench.stack import StackSpec
from target_app.server import LOOPS


def add_stack_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("stack")
    g.add_argument("--profile", default="seed",
                   help="nginx profile name (nginx/profiles/*.toml) or a .toml path (default seed)")
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
    g.add_argument("--max-hold", type=float, default=120.0,
                   help="longest poll hold in the backends, s (below proxy_read_timeout)")


def spec_from_args(args: argparse.Namespace) -> StackSpec:
    return StackSpec(profile=args.profile, backends=args.backends, loop=args.loop, port=args.port,
                     backend_port=args.backend_port, nginx_binary=args.nginx_binary,
                     max_hold_s=args.max_hold)
