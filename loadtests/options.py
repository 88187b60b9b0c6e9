"""Option parsing shared by the locustfile and the orchestrator (no locust import here), and
the load's defaults and shapes: the one place each is written (``pollbench run``'s options,
its LoadSpec and the locustfile's ``--pb-*`` options all read them from here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoadDefaults:
    """What a load is when nothing says otherwise."""
    users: int = 200
    duration_s: float = 60.0
    channels: int = 10
    publish_rate: float = 20.0
    message_bytes: int = 64
    poll_timeout_s: float = 20.0
    task_duration_ms: int = 500
    task_payload_bytes: int = 64
    connection: str = "keepalive"
    spawn_seconds: float = 5.0  # every user started within this long
    # after a failed poll or request a client waits MIN, then twice as long each failure in a
    # row up to MAX (s), each wait drawn from [half, all] of it (jitter); "0" retries at once
    retry_backoff: str = "0.1:5"
    # the load generator's source addresses: "auto" (the kernel's choice, spread over
    # loopback aliases when the users need more ports than one address has), or a list
    source_addresses: str = "auto"


DEFAULTS = LoadDefaults()

# Load shapes as data: each is a list of stages (end of stage as a fraction of the run, users
# as a fraction of the shape's users); loadtests/shapes.py follows them.
STAGES: dict[str, list[tuple[float, float]]] = {
    "constant": [(1.0, 1.0)],
    # ten equal steps up over 90 % of the run, then hold
    "ramp": [(0.09 * i, 0.1 * i) for i in range(1, 11)] + [(1.0, 1.0)],
    "steps": [(0.25, 0.25), (0.5, 0.5), (0.75, 0.75), (1.0, 1.0)],
    # a third of the users, then everyone for a fifth of the run, then back
    "spike": [(0.4, 0.33), (0.6, 1.0), (1.0, 0.33)],
    # half the users while warming up, then everyone for a long hold
    "soak": [(0.05, 0.5), (1.0, 1.0)],
}
SHAPES = tuple(STAGES)


def parse_connection_mode(text: str) -> int:
    """keepalive -> 0 (never close), close -> 1 (close after every request), every:K -> K."""
    if text == "keepalive":
        return 0
    if text == "close":
        return 1
    if text.startswith("every:") and text[6:].isdigit() and int(text[6:]) >= 1:
        return int(text[6:])
    raise ValueError(f"connection mode must be keepalive, close or every:K (K >= 1), not {text!r}")


MAX_BACKOFF_S = 600.0


def parse_backoff(text: str) -> tuple[float, float]:
    """'MIN:MAX' seconds (0 < MIN <= MAX <= 600) -> (MIN, MAX); '0' -> (0, 0): retry at once.
    ValueError says what is wrong."""
    if text.strip() == "0":
        return 0.0, 0.0
    lo, sep, hi = text.partition(":")
    try:
        low, high = float(lo), float(hi)
    except ValueError:
        low = high = float("nan")
    if not sep or not (0 < low <= high <= MAX_BACKOFF_S):
        raise ValueError(f"retry back-off must be MIN:MAX seconds with 0 < MIN <= MAX <= "
                         f"{MAX_BACKOFF_S:g} (e.g. 0.1:5), or 0 to retry at once; not {text!r}")
    return low, high


class Backoff:
    """Exponential back-off with jitter, as long-poll clients do it (Socket.IO's reconnection:
    1 s doubling to 5 s, +-50 %; CometD's: 1 s more each time, up to 60 s): the n-th failure in
    a row waits a draw from [d/2, d], d = min(MAX, MIN * 2^(n-1)); a success starts over."""

    __slots__ = ("low", "high", "rng", "failures")  # one per user

    def __init__(self, low: float, high: float, rng) -> None:
        self.low, self.high, self.rng = low, high, rng
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        if self.high <= 0:
            return 0.0
        d = min(self.high, self.low * 2 ** min(self.failures - 1, 60))
        return d * (0.5 + 0.5 * self.rng.random())

    def reset(self) -> None:
        self.failures = 0


MAX_SOURCE_ADDRESSES = 4096
# A load host's own source addresses (pollbench worker --source-addresses sets it for its
# Locust processes): they win over the run's --pb-source-addresses, which the master sends
# to every worker alike.
SOURCE_ENV = "POLLBENCH_SOURCE_ADDRESSES"


def parse_source_addresses(text: str) -> list[str]:
    """'127.0.0.1,127.0.0.2' or '127.0.0.0/29' (or both, comma-separated) -> the IPv4
    addresses, in order, each once; '' -> [] (the kernel chooses).  A CIDR range gives its
    host addresses (127.0.0.0/29: .1 to .6; a /32 or /31: every address).  ValueError says
    what is wrong."""
    import ipaddress

    out: dict[str, None] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if "/" in part:
                net = ipaddress.IPv4Network(part, strict=False)
                hosts = list(net.hosts()) if net.num_addresses <= 1 << 16 else None
                if hosts is None:
                    raise ValueError("range")
                found = [str(a) for a in hosts]
            else:
                found = [str(ipaddress.IPv4Address(part))]
        except ValueError:
            raise ValueError(f"{part!r} is not an IPv4 address or CIDR range (use e.g. "
                             "127.0.0.1,127.0.0.2 or 127.0.0.0/28)") from None
        for addr in found:
            out[addr] = None
        if len(out) > MAX_SOURCE_ADDRESSES:
            raise ValueError(f"more than {MAX_SOURCE_ADDRESSES} addresses; each holds "
                             "tens of thousands of connections, a few are enough")
    return list(out)


MIX_ALIASES = {"subscriber": "ChannelSubscriber", "tasks": "TaskPoller", "poller": "TaskPoller"}
MIXABLE = ("ChannelSubscriber", "TaskPoller")


def parse_mix(text: str) -> dict[str, int]:
    """'subscriber:9,tasks:1' (or the class names) -> {'ChannelSubscriber': 9, 'TaskPoller': 1}.

    The one parser of ``--mix`` (pollbench) and ``--pb-mix`` (the locustfile); ValueError
    says what is wrong.  An empty text is no mix."""
    weights: dict[str, int] = {}
    if not text.strip():
        return weights
    for part in text.split(","):
        name, _, weight = part.strip().partition(":")
        cls = MIX_ALIASES.get(name, name)
        if cls not in MIXABLE or not weight.isdigit() or int(weight) < 1:
            raise ValueError(f"{text!r}: use NAME:WEIGHT pairs with NAME subscriber or tasks "
                             "and WEIGHT a whole number >= 1, e.g. subscriber:9,tasks:1")
        weights[cls] = int(weight)
    return weights


# Bounds of a load: beyond them a run is a typo, not a benchmark.  What a host holds is the
# capacity check's to say (users per Locust process against its descriptors: --workers).
MAX_USERS = 1_000_000
MAX_PUBLISH_RATE = 100_000.0
MAX_TASK_DURATION_MS = 600_000
MAX_BODY_BYTES = 1_000_000


def check_number(name: str, value: float, lo: float | None = None, hi: float | None = None,
                 *, above: bool = False) -> None:
    """The one check for a number a user gives: finite and within [lo, hi] (``above``: > lo).

    Raises ValueError naming the option, the range and the value, e.g.
    ``--publish-rate must be a finite number from 0 to 100000 (it is nan)``."""
    ok = value == value and value not in (float("inf"), float("-inf"))  # NaN != NaN
    if ok and lo is not None:
        ok = value > lo if above else value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        def g(bound: float) -> str:  # 1000000, not 1e+06
            return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"

        if lo is not None and hi is not None:
            what = f" from {g(lo)} to {g(hi)}" if not above else \
                f" above {g(lo)} and at most {g(hi)}"
        elif lo is not None:
            what = f" above {g(lo)}" if above else f", {g(lo)} or more"
        else:
            what = f" at most {g(hi)}" if hi is not None else ""
        shown = value if isinstance(value, int) else f"{value:g}"
        raise ValueError(f"{name} must be a finite number{what} (it is {shown})")


def check_load(*, users: int, spawn_rate: float | None, user_classes: list[str], channels: int,
               publish_rate: float, poll_timeout_s: float, max_poll_timeout_s: float,
               task_duration_ms: int, connection: str, message_bytes: int = 64,
               task_payload_bytes: int = 64, retry_backoff: str = DEFAULTS.retry_backoff
               ) -> None:
    """The rules of a load, shared by ``pollbench run`` and the web UI's start form (the same
    message in both): ValueError naming the first value to fix."""
    if users < 1:
        raise ValueError(f"--users must be 1 or more (it is {users})")
    check_number("--users", users, 1, MAX_USERS)
    if spawn_rate is not None:
        check_number("--spawn-rate", spawn_rate, 0, MAX_USERS, above=True)
    check_number("--publish-rate", publish_rate, 0, MAX_PUBLISH_RATE)
    try:
        parse_connection_mode(connection)
    except ValueError as e:
        raise ValueError(f"--connection: {e}") from None
    try:
        parse_backoff(retry_backoff)
    except ValueError as e:
        raise ValueError(f"--retry-backoff: {e}") from None
    if channels < 1:
        raise ValueError(f"--channels must be 1 or more (it is {channels})")
    check_number("--poll-timeout", poll_timeout_s, 0, max_poll_timeout_s)  # up to --max-hold
    if not 0 <= task_duration_ms <= MAX_TASK_DURATION_MS:
        raise ValueError(f"--task-duration-ms must be from 0 to {MAX_TASK_DURATION_MS}")
    check_number("--message-bytes", message_bytes, 0, MAX_BODY_BYTES)
    check_number("--task-payload-bytes", task_payload_bytes, 0, MAX_BODY_BYTES)
    if "Publisher" in user_classes and users < 2:
        raise ValueError("--users must be at least 2 for the channels scenario "
                         "(one user is the publisher)")
