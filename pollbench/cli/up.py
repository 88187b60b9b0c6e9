"""``pollbench up``: start backends and nginx, print the URLs, stop everything on Ctrl-C.

On its own host (``--bind ADDR``) it also starts the agent a controller reads (see docs/cli.md,
"Several machines")."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pollbench.cli.options import add_stack_arguments, spec_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("up", help="start the stack (backends + nginx) until Ctrl-C",
                       description=__doc__)
    add_stack_arguments(p)
    p.add_argument("--out", type=Path, default=None, help="run folder (default results/<time>-up)")
    g = p.add_argument_group("the target on its own host")
    g.add_argument("--bind", default="127.0.0.1",
                   help="address nginx and the agent listen on (default 127.0.0.1; another "
                        "address of this host lets load hosts in)")
    g.add_argument("--agent-port", type=int, default=None,
                   help="the agent's port (default 9100 with --bind; the agent starts with "
                        "--bind or this)")
    g.add_argument("--agent-token", default=None,
                   help="the agent's token, 16+ characters (default: $POLLBENCH_AGENT_TOKEN, "
                        "else a new one, printed once)")
    p.set_defaults(func=handle)


def handle(a) -> int:
    from pollbench.actions.up import up
    from pollbench.stack.nginx_config import check_listen_address

    spec = replace(spec_from_args(a), bind=check_listen_address(a.bind))
    return up(spec, out=a.out, agent_port=a.agent_port, agent_token=a.agent_token)
