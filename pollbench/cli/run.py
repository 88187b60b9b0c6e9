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
    add_remote_arguments,
    add_stack_arguments,
    load_from_args,
    place_cpus,
    remote_from_args,
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
    p.add_argument("--min-free-disk", default="1G", metavar="SIZE",
                   help="free space the run folder's disk must keep (e.g. 500M, 2G; default "
                        "1G): a run whose estimate would pass it is refused, one that reaches "
                        "it stops, incomplete")
    p.add_argument("--max-error-rate", type=float, default=None, metavar="R",
                   help="exit 1 when more than this fraction of the HTTP requests failed "
                        "(0.01 = 1 %%; for scripts; default: off)")
    p.add_argument("--threshold", dest="thresholds", action="append", default=[],
                   metavar="NAME=VALUE",
                   help="exit 1 when the run crosses it, naming it and the measured figure "
                        "(repeatable; also [thresholds] in the project file): delivery-p99-ms, "
                        "delivery-p50-ms, lost-messages, duplicate-messages, error-rate, "
                        "cpu-ms-per-delivery")
    add_history_argument(p)
    add_remote_arguments(p)
    p.set_defaults(func=handle)


def handle(a) -> int:
    from pollbench.errors import UserError
    from pollbench.stack.disk import parse_size

    if a.max_error_rate is not None:
        from pollbench.stack.loadgen import check_number

        check_number("--max-error-rate", a.max_error_rate, 0, 1)
    from pollbench.stack.project import parse_thresholds

    thresholds = {**a.project_thresholds, **parse_thresholds(a.thresholds)}
    remote = remote_from_args(a, external_ok=True)
    if remote is not None:
        if a.prometheus:
            raise UserError("--prometheus starts a Prometheus beside a stack of this host; with "
                            "--target the stack is on another host (scrape it from there)")
        from pollbench.actions.remote_run import run_remote

        return run_remote(remote, load_from_args(a), out=a.out, report=a.report,
                          max_error_rate=a.max_error_rate,
                          min_free_disk=parse_size(a.min_free_disk), stack=spec_from_args(a))
    if a.target is not None:  # a service already running: nothing of it is started
        # (the project file's stack, for the runs that start one, is left aside here)
        own = a.project_options

        def given(dest: str) -> bool:
            value = getattr(a, dest)
            return value is not None and not (dest in own and own[dest] == value)
        stack_options = [o for o, asked in (("--profile", given("profile")),
                                            ("--prometheus", a.prometheus),
                                            ("--backends", given("backends")),
                                            ("--state", given("state")),
                                            ("--fault", bool(a.faults)),
                                            ("--cpus", a.cpus is not None)) if asked]
        if stack_options:
            raise UserError(f"{', '.join(stack_options)} shape(s) a stack pollbench starts; "
                            f"--target {a.target} alone is a service it did not start (add "
                            "--agent for a target host that pollbench agent serves)")
        from pollbench.actions.external_run import run_external

        return run_external(a.target, load_from_args(a), out=a.out, report=a.report,
                            max_error_rate=a.max_error_rate,
                            min_free_disk=parse_size(a.min_free_disk), thresholds=thresholds)
    from pollbench.actions.run import run

    spec, load = place_cpus(spec_from_args(a), load_from_args(a), a.cpus)
    return run(spec, load, out=a.out, report=a.report, max_error_rate=a.max_error_rate,
               min_free_disk=parse_size(a.min_free_disk), thresholds=thresholds)
