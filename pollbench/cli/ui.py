"""``pollbench ui``: the stack plus Locust's web UI on 127.0.0.1, to start tests and watch them live.

Scenarios are selectable in the UI's class picker (ChannelSubscriber,
Publisher, TaskPoller); the form opens with ``pollbench run``'s defaults (200
users), and the "Long polling" tab shows delivery latency from the lossless
data, rates, lost and duplicate messages, held polls, nginx's connections,
connection reuse and CPU per component while the test runs.  The session is
recorded in a run folder (kind "ui"); each test stopped in the UI becomes a run
folder of its own under tests/NNN with its report.  Ctrl-C stops every process
and writes what is pending.
"""

from __future__ import annotations

from pathlib import Path

from pollbench.cli.history import add_history_argument
from pollbench.cli.options import (
    add_load_arguments,
    add_stack_arguments,
    load_from_args,
    spec_from_args,
)


def add_parser(sub) -> None:
    p = sub.add_parser("ui", help="start the stack and Locust's web UI (127.0.0.1)",
                       description=__doc__)
    add_stack_arguments(p)
    add_load_arguments(p, web_ui=True)
    p.add_argument("--web-port", type=int, default=8089, help="web UI port (default 8089)")
    p.add_argument("--web-host", default="127.0.0.1",
                   help="address the web UI binds (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--out", type=Path, default=None, help="run folder (must not exist)")
    add_history_argument(p)
    p.set_defaults(func=handle)


def handle(a) -> int:
    from pollbench.actions.ui import ui

    return ui(spec_from_args(a), a.web_port, a.web_host, out=a.out, load=load_from_args(a))
