"""The stack alone (``pollbench up``): start it, print the URLs, stop everything on Ctrl-C."""

from __future__ import annotations

import time
from pathlib import Path

from pollbench.records.rundir import new_run_dir
from pollbench.stack.spec import ResolvedStack, StackSpec
from pollbench.stack.stack import Stack


def up(spec: StackSpec, out: Path | None = None) -> int:
    resolved = spec.resolve(claim=True)  # fail before creating anything; ports held
    try:
        return _up(resolved, out)
    finally:
        resolved.release()


def _up(resolved: ResolvedStack, out: Path | None) -> int:
    spec = resolved.spec
    run_dir = new_run_dir(f"up-{spec.profile}", out)
    with Stack(resolved, run_dir) as stack:
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
