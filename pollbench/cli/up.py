"""``pollbench up``: start backends and nginx, print the URLs, stop everything on Ctrl-C."""

from __future__ import annotations

from pathlib import Path

from pollbench.cli.options import add_stack_arguments, spec_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("up", help="start the stack (backends + nginx) until Ctrl-C",
                       description=__doc__)
    add_stack_arguments(p)
    p.add_argument("--out", type=Path, default=None, help="run folder (default results/<time>-up)")
    p.set_defaults(func=handle)


def handle(a) -> int:
    from pollbench.actions.up import up

    return up(spec_from_args(a), out=a.out)
