"""``pollbench ui``: the stack plus Locust's web UI on 127.0.0.1, to start tests and watch them live.

Scenarios are selectable in the UI's class picker (ChannelSubscriber,
Publisher, TaskPoller); the DELIVERY / TASK rows show long-poll delivery and
task turnaround while the test runs.  Everything is recorded in a run folder
like ``pollbench run``'s (kind "ui"), and Ctrl-C stops every process.
"""

from __future__ import annotations

from pathlib import Path

from pollbench.cli.options import add_stack_arguments, spec_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("ui", help="start the stack and Locust's web UI (127.0.0.1)",
                       description=__doc__)
    add_stack_arguments(p)
    p.add_argument("--web-port", type=int, default=8089, help="web UI port (default 8089)")
    p.add_argument("--web-host", default="127.0.0.1",
                   help="address the web UI binds (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--out", type=Path, default=None, help="run folder (must not exist)")
    p.set_defaults(func=handle)


def handle(a) -> int:
    from pollbench.actions.ui import ui

    return ui(spec_from_args(a), a.web_port, a.web_host, out=a.out)
