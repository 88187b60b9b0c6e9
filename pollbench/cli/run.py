"""``pollbench run``: start the stack, run Locust headless, stop everything, keep a complete record.

The run folder (never an existing one) holds: ``run.json`` (parameters, versions,
host, CPU per component, warnings, exit status), the rendered nginx config and
every process's log, Locust's CSVs / HTML / JSON, the lossless latency data
(``metrics/``), and samples of CPU/memory, stub_status and backend /stats
(``samples/``).  Ctrl-C or a failure still writes run.json, marked incomplete.
"""

from __future__ import annotations

from pathlib import Path

from pollbench.cli.history import add_history_argument
from pollbench.cli.options import (
    add_load_arguments,
    add_stack_arguments,
    load_from_args,
    place_cpus,
    spec_from_args,
)


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run one benchmark end to end and record it in results/",
                       description=__doc__)
    add_stack_arguments(p)
    add_load_arguments(p)
    p.add_argument("--out", type=Path, default=None, help="run folder (must not exist)")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="skip the HTML report at the end (pollbench report RUN makes it later)")
    add_history_argument(p)
    p.set_defaults(func=handle)


def handle(a) -> int:
    from pollbench.actions.run import run

    spec, load = place_cpus(spec_from_args(a), load_from_args(a), a.cpus)
    return run(spec, load, out=a.out, report=a.report)
