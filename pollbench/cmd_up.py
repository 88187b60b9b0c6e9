"""``pollbench up``: start backends and nginx, print the URLs, stop everything on Ctrl-C."""

from __future__ import annotations

import time
from pathlib import Path

from pollbench.rundir import new_run_dir
from pollbench.stack import Stack, StackSpec
from pollbench.stack_args import add_stack_arguments, spec_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("up", help="start the stack (backends + nginx) until Ctrl-C",
                       description=__doc__)
    add_stack_arguments(p)
    p.add_argument("--out", type=Path, default=None, help="run folder (default results/<time>-up)")
    p.set_defaults(func=lambda a: up(spec_from_args(a), out=a.out))


def up(spec: StackSpec, out: Path | None = None, ready_file: Path | None = None) -> int:
    spec.validate()  # fail before creating anything
    run_dir = new_run_dir(f"up-{spec.profile}", out)
    with Stack(spec, run_dir) as stack:
        print(f"run folder:   {run_dir}")
        print(f"nginx:        {stack.url}/  (stub_status: {stack.url}/nginx_status)")
        for i, url in enumerate(stack.backend_urls):
            print(f"backend {i}:    {url}/  (stats: {url}/stats)")
        print(f"try:          curl -s '{stack.url}/channels/demo?timeout=10'   "
              f"(and in another shell: curl -s -XPOST {stack.url}/channels/demo -d '{{\"hi\": 1}}')")
        print("Ctrl-C stops everything.", flush=True)
        while True:
            time.sleep(0.5)
            stack.check_alive()
