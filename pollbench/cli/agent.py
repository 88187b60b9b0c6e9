"""``pollbench agent``: a target host that a controller on another host drives.

It starts idle.  Through signed control requests (the control token) a controller starts the
stack with the profile, knobs, backends, loop and state of its run or sweep cell, stops it,
checks a config with ``nginx -t``, and injects faults; anyone with the read token reads the
stack's description, clock and files.  One stack at a time, under a lease the controller
renews: a controller that vanishes loses the stack when the lease runs out, and the host is
idle again.  See docs/cli.md, "Several machines"."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("agent", help="a target host that controllers drive (sweeps, faults) "
                       "through signed requests", description=__doc__)
    p.add_argument("--bind", default="127.0.0.1",
                   help="address nginx and the agent listen on (default 127.0.0.1; another "
                        "address of this host lets load hosts in)")
    p.add_argument("--agent-port", type=int, default=None, help="the agent's port (default 9100)")
    p.add_argument("--port", type=int, default=8080, help="nginx port of every stack (default 8080)")
    p.add_argument("--backend-port", type=int, default=8000,
                   help="first backend port (default 8000)")
    p.add_argument("--control-token", default=None,
                   help="the token that starts and stops stacks, 16+ characters (default: "
                        "$POLLBENCH_AGENT_TOKEN, else a new one, printed once)")
    p.add_argument("--read-token", default=None,
                   help="a token that only reads (default: $POLLBENCH_AGENT_READ_TOKEN, else a "
                        "new one, printed once)")
    p.add_argument("--port-sets", type=int, default=4,
                   help="each new stack on the next of this many port sets (nginx --port+k, "
                        "backends --backend-port+16k) that no TIME_WAIT socket holds, as a "
                        "local sweep's fresh ports (default 4; 1: always the same ports)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder of the stacks' run folders (default results/<time>-agent)")
    p.set_defaults(func=handle)


def handle(a) -> int:
    from pollbench.actions.lab import agent_command
    from pollbench.stack.nginx_config import check_listen_address
    from pollbench.stack.spec import StackSpec

    base = StackSpec(bind=check_listen_address(a.bind), port=a.port, backend_port=a.backend_port)
    return agent_command(base, a.agent_port, a.out, a.control_token, a.read_token,
                         a.port_sets)
