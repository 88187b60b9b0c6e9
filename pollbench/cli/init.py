"""``pollbench init``: write a commented project file (pollbench.toml) in the current
directory, for your own service: its backend command, protocol, default load and
thresholds.  An existing file is never overwritten."""

from __future__ import annotations

from pathlib import Path

TEMPLATE = '''\
# pollbench's project file (docs/your-service.md).  `pollbench run`, `ui`, `sweep` and
# `check` in this folder read it; options on the command line win over it.

# How your service is spoken: pollbench, nchan, socketio, or module:Class (your own
# subclass of loadtests.protocols.Protocol, importable from here).
protocol = "{protocol}"
# The nginx profile in front of it: a name (pollbench's nginx/profiles/) or a .toml path
# relative to this file.  socketio: sticky on the session, rooms shared through Redis.
profile = "{profile}"
# backends = 4

# The default load of `pollbench run`.
users = 200
channels = 10
publish-rate = 20
duration = "30s"

[backend]
# Started once per backend behind nginx.  {{port}}: this backend's port on 127.0.0.1,
# {{index}}: 0, 1, ..., {{redis_url}}: the stack's Redis (needs state redis: the socketio
# profile has it), {{python}}: the Python running pollbench.
command = "{command}"
# a path that answers 200 once a backend is ready, and how long it may take
ready = "/healthz"
ready-timeout = 30
# where the command runs, relative to this file
cwd = "."
# env = {{ LOG_LEVEL = "warning" }}
# a path your backends serve Prometheus metrics on (`--prometheus` scrapes it)
# metrics = "/metrics"

[thresholds]
# `pollbench run` exits 1 naming the first one crossed (a figure the run could not
# measure is said so, and crosses nothing).
delivery-p99-ms = 250
lost-messages = 0
error-rate = 0.01
# cpu-ms-per-delivery = 2.0

[check]
# `pollbench check`: your base revision and the working tree in alternation, each
# repetition this long, judged after this warm-up.
duration = "5s"
warmup = "1s"
# repeat = 22
'''


def add_parser(sub) -> None:
    p = sub.add_parser("init", help="write a commented project file (pollbench.toml) here",
                       description=__doc__)
    p.add_argument("--protocol", default="socketio",
                   help="how your service is spoken (default socketio)")
    p.add_argument("--command", default="{python} app.py --port {port} --redis {redis_url}",
                   help="the command that starts one backend (default: a Python app taking "
                        "--port and --redis)")
    p.add_argument("--file", type=Path, default=Path("pollbench.toml"),
                   help="where to write it (default ./pollbench.toml; never overwritten)")
    p.set_defaults(func=handle)


def handle(a) -> int:
    from pollbench.errors import UserError
    from pollbench.records.rundir import write_atomic
    from pollbench.stack.project import check_protocol_name, read

    if a.file.exists():
        raise UserError(f"{a.file} exists; pollbench init never overwrites (edit it, or "
                        "remove it first)")
    if '"' in a.command or "\\" in a.command:
        raise UserError("--command: write it without double quotes or backslashes (use "
                        "single quotes inside), or edit the file afterwards")
    check_protocol_name(a.protocol)
    profile = a.protocol if a.protocol in ("nchan", "socketio") else "seed"
    text = TEMPLATE.format(protocol=a.protocol, profile=profile, command=a.command)
    write_atomic(a.file, text)
    read(a.file)  # what it wrote reads back (a test holds it to that too)
    print(f"wrote {a.file}: edit [backend] command, then `pollbench run` here")
    return 0
