"""The Locust command line for a run or the web UI (Locust runs as a subprocess: it monkey-patches)."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from loadtests import options as loadtest_options
from loadtests.options import DEFAULTS, check_load
from loadtests.protocols import TASKS, Protocol, load_protocol
from loadtests.protocols import accounting as protocol_accounting
from pollbench.errors import UserError
from pollbench.paths import LOCUSTFILE, SHAPESFILE
from pollbench.stack.faults import Fault, parse_fault, schedule

SCENARIOS = {
    "channels": ["ChannelSubscriber", "Publisher"],
    "tasks": ["TaskPoller"],
    "mixed": ["ChannelSubscriber", "Publisher", "TaskPoller"],
}
SHAPES = loadtest_options.SHAPES
# A week is the longest soak (the other bounds of a load: loadtests.options.check_load).
MAX_DURATION_S = 7 * 24 * 3600.0
LOCAL_HEARTBEAT_LIVENESS_S = 30  # s without a heartbeat before a local worker is missing
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def check_number(name: str, value: float, lo: float | None = None, hi: float | None = None,
                 *, above: bool = False) -> None:
    """The one check for a number a user gives (:func:`loadtests.options.check_number`, which
    the web UI's form uses too), refused as a UserError naming the option, the range and the
    value, e.g. ``--publish-rate must be a finite number from 0 to 100000 (it is nan)``."""
    try:
        loadtest_options.check_number(name, value, lo, hi, above=above)
    except ValueError as e:
        raise UserError(str(e)) from None


def parse_duration(text: str) -> float:
    """'60', '60s', '2m', '1h30m', '1m30s' -> seconds."""
    m = _DURATION.match(str(text).strip())
    if not m or not any(m.groups()):
        raise UserError(f"duration {text!r} does not parse: use seconds (60, 60s) or 2m, 1h30m")
    h, mins, s = m.groups()
    seconds = int(h or 0) * 3600 + int(mins or 0) * 60 + float(s or 0)
    if seconds <= 0:
        raise UserError(f"duration {text!r} must be more than 0 seconds")
    return seconds


SOURCE_ENV = loadtest_options.SOURCE_ENV  # a load host's own source addresses, for Locust


def parse_sources(text: str) -> list[str]:
    """``--source-addresses`` as :func:`loadtests.options.parse_source_addresses` reads it,
    refused as a UserError."""
    try:
        return loadtest_options.parse_source_addresses(text)
    except ValueError as e:
        raise UserError(f"--source-addresses {e}") from None


def parse_mix(text: str) -> dict[str, int]:
    """``--mix`` as :func:`loadtests.options.parse_mix` reads it, refused as a UserError."""
    try:
        return loadtest_options.parse_mix(text)
    except ValueError as e:
        raise UserError(f"--mix {e}") from None


@dataclass(frozen=True)
class LoadSpec:
    scenario: str = "channels"
    mix: str | None = None
    users: int = DEFAULTS.users
    spawn_rate: float | None = None  # None: every user within DEFAULTS.spawn_seconds
    duration_s: float = DEFAULTS.duration_s
    shape: str = "constant"
    workers: int = 0
    connection: str = DEFAULTS.connection
    retry_backoff: str = DEFAULTS.retry_backoff
    channels: int = DEFAULTS.channels
    publish_rate: float = DEFAULTS.publish_rate
    message_bytes: int = DEFAULTS.message_bytes
    poll_timeout_s: float = DEFAULTS.poll_timeout_s
    task_duration_ms: int = DEFAULTS.task_duration_ms
    task_payload_bytes: int = DEFAULTS.task_payload_bytes
    cpus: tuple[int, ...] | None = None  # the load generator runs only here (None: anywhere)
    # "auto" (resolved by the preflight: one address unless the users need more ports), or a
    # list / CIDR range ("" after resolving: the kernel chooses)
    source_addresses: str = DEFAULTS.source_addresses
    faults: tuple[str, ...] = ()  # --fault AT:ACTION[=D][:TARGET] (pollbench.stack.faults)
    # how the target is spoken: pollbench, nchan or module:Class (loadtests.protocols)
    protocol: str = "pollbench"

    def protocol_class(self) -> type[Protocol]:
        """The protocol's class, refused in one line (not found, not a Protocol ...)."""
        try:
            return load_protocol(self.protocol)
        except ValueError as e:
            raise UserError(f"--protocol: {e}") from None

    def fault_schedule(self) -> list[Fault]:
        """Every fault occurrence in the run, in time order (refused in one line if bad)."""
        parsed = []
        for text in self.faults:
            try:
                fault = parse_fault(text)
            except ValueError as e:
                raise UserError(f"--fault {e}") from None
            if fault.at_s >= self.duration_s:
                raise UserError(f"--fault {text!r}: at {fault.at_s:g} s the run (--duration "
                                f"{self.duration_s:g} s) is over")
            parsed.append(fault)
        return schedule(parsed, self.duration_s)

    def effective_spawn_rate(self) -> float:
        return self.spawn_rate if self.spawn_rate is not None else \
            max(self.users / DEFAULTS.spawn_seconds, 1.0)

    def user_classes(self) -> list[str]:
        if self.mix:
            classes = list(parse_mix(self.mix))
            return classes + ["Publisher"] if "ChannelSubscriber" in classes else classes
        return SCENARIOS[self.scenario]

    def accounting(self) -> dict:
        """run.json's "accounting": how the protocol's deliveries are judged and timed."""
        return protocol_accounting(self.protocol_class())

    def validate(self, max_hold_s: float) -> None:
        if self.scenario not in SCENARIOS:
            raise UserError(f"unknown scenario {self.scenario!r}; choose one of "
                            f"{', '.join(SCENARIOS)}")
        protocol = self.protocol_class()
        if "TaskPoller" in self.user_classes() and TASKS not in protocol.gives:
            raise UserError(f"the {self.protocol} protocol has no background tasks: use "
                            "--scenario channels")
        if self.mix:
            parse_mix(self.mix)
        check_number("--duration", self.duration_s, 0, MAX_DURATION_S, above=True)
        if self.shape not in SHAPES:
            raise UserError(f"unknown shape {self.shape!r}; choose one of {', '.join(SHAPES)}")
        if self.workers < 0 or self.workers > 64:
            raise UserError(f"--workers must be from 0 to 64 (it is {self.workers})")
        try:
            check_load(users=self.users, spawn_rate=self.spawn_rate,
                       user_classes=self.user_classes(), channels=self.channels,
                       publish_rate=self.publish_rate, poll_timeout_s=self.poll_timeout_s,
                       max_poll_timeout_s=max_hold_s, task_duration_ms=self.task_duration_ms,
                       connection=self.connection, message_bytes=self.message_bytes,
                       task_payload_bytes=self.task_payload_bytes,
                       retry_backoff=self.retry_backoff)
        except ValueError as e:
            raise UserError(str(e)) from None
        self.fault_schedule()
        self.sources()

    def sources(self) -> list[str]:
        """The source addresses asked for ([] for "auto" before the preflight resolved it,
        and for the kernel's choice); refused in one line if the text is bad."""
        return [] if self.source_addresses == "auto" else parse_sources(self.source_addresses)

    def locust_options(self) -> list[str]:
        """The pollbench options the locustfile defines (``--pb-*``)."""
        opts = ["--pb-channels", str(self.channels), "--pb-publish-rate", f"{self.publish_rate:g}",
                "--pb-message-bytes", str(self.message_bytes),
                "--pb-poll-timeout", f"{self.poll_timeout_s:g}",
                "--pb-task-duration-ms", str(self.task_duration_ms),
                "--pb-task-payload-bytes", str(self.task_payload_bytes),
                "--pb-connection", self.connection,
                "--pb-retry-backoff", self.retry_backoff, "--pb-protocol", self.protocol]
        if self.sources():
            opts += ["--pb-source-addresses", ",".join(self.sources())]
        if self.mix:
            opts += ["--pb-mix", ",".join(f"{k}:{v}" for k, v in parse_mix(self.mix).items())]
        return opts

    def headless_cmd(self, host: str, out: Path, csv_prefix: Path, html: Path,
                     json_file: Path, extra: tuple[str, ...] = ()) -> list[str]:
        """``extra``: more Locust options (a master's, for workers on other hosts)."""
        files = str(LOCUSTFILE)
        cmd = [sys.executable, "-m", "locust"]
        if self.shape != "constant":
            files += f",{SHAPESFILE}"
            shape = ["--pb-shape", self.shape, "--pb-shape-users", str(self.users),
                     "--pb-shape-seconds", f"{self.duration_s:g}",
                     "--pb-shape-spawn-rate", f"{self.effective_spawn_rate():g}"]
            load = ["-t", f"{int(self.duration_s + 0.999)}s"]
        else:
            shape = []
            load = ["-u", str(self.users), "-r", f"{self.effective_spawn_rate():g}",
                    "-t", f"{int(self.duration_s + 0.999)}s"]
        cmd += ["-f", files, "--headless", "-H", host, *load, *shape,
                "--csv", str(csv_prefix), "--csv-full-history", "--html", str(html),
                "--json-file", str(json_file), "--only-summary", "--exit-code-on-error", "0",
                "--pb-out", str(out), *self.locust_options()]
        if self.workers:
            # Locust's 3 s without a heartbeat marks a worker missing, and the master hands
            # its users to the others, and back when it heals: on 2 cores shared with the
            # stack, 6 workers opening 100,000 connections missed it for seconds at a time
            # and 125,914 users ran of the 100,001 asked.  These workers are this host's
            # processes, watched as such: 30 s.
            cmd += ["--processes", str(self.workers), "--pb-heartbeat-liveness",
                    str(LOCAL_HEARTBEAT_LIVENESS_S)]
        return cmd + list(extra) + self.user_classes()
