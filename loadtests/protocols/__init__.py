"""The protocol seam: how a push service is spoken, in one small class per protocol.

A protocol says three things and nothing more: how a subscriber polls a channel from its
cursor (and what an empty answer means), how a message is published, and how an answer
is read.  Everything else lives once, in :mod:`loadtests.users`: the subscriber loop, the
publisher's open-model schedule, the stamp the publisher puts in every payload (publisher
id, sequence per channel, send time), the accounting (lost, duplicate, out of order,
latency) and the live figures.  A protocol that cannot give a figure says so in
:attr:`Protocol.gives`, and the figure reads "not measured", never 0.

    class MyApi(Protocol):
        name = "myapi"
        def poll(self, channel, cursor):
            return Request("GET", f"/events/{channel}?after={cursor or ''}")
        def read_poll(self, resp, cursor):
            if resp.status == 204:
                return Poll((), cursor)
            if resp.status != 200:
                raise BadAnswer(f"HTTP {resp.status} from the service")
            events = resp.json()
            return Poll([Delivered(stamp=read_stamp(e["data"])) for e in events],
                        events[-1]["id"] if events else cursor)
        def publish(self, channel, body):
            return Request("POST", f"/events/{channel}", body)

Built in: ``pollbench`` (the reference target's API, :mod:`loadtests.protocols.pollbench`),
``nchan`` (nginx's pub/sub module, :mod:`loadtests.protocols.nchan`) and ``socketio``
(Engine.IO v4 long-polling, :mod:`loadtests.protocols.socketio`); any other as
``module:Class`` (:func:`load_protocol`).  Standard library only (plus the light
``analysis`` modules): the CLI imports this to check a protocol before anything starts.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple
from typing import Protocol as _Readable

# What a protocol may give beyond the publisher's stamp, each named in run.json's
# "accounting" and in every "not measured" reason.
SERVER_TIME = "server_time"   # each message carries the server's publish time
SERVER_SEQ = "server_seq"     # each message carries the server's sequence in its channel
GAP_SIGNAL = "gap_signal"     # the server names what a slow subscriber missed
EPOCHS = "epochs"             # the server names the lifetime of a channel's state
TASKS = "tasks"               # background tasks with a polled result (pollbench's own)
CAPABILITIES = (SERVER_TIME, SERVER_SEQ, GAP_SIGNAL, EPOCHS, TASKS)

STAMP_KEY = "pb"  # the payload's stamp: {"pb": [publisher id, seq in its channel, send time]}


class BadAnswer(Exception):
    """An answer with an unexpected status or body; its text is the cause it is counted
    under (:func:`analysis.limits.answer_cause`: "HTTP 503 from backend: too many waiting
    polls"), so Locust's failures table groups it the same way.  ``session_lost``: the
    subscriber's session is gone (the server forgot it): it starts over from
    :meth:`Protocol.new_cursor`, and what it missed meanwhile shows in its stamps."""

    def __init__(self, text: str, session_lost: bool = False) -> None:
        super().__init__(text)
        self.session_lost = session_lost


class Answer(_Readable):
    """What a protocol reads: :class:`loadtests.leanhttp.Response` (and the probe's)."""
    status: int
    body: bytes

    def header(self, name: str, default: str | None = None) -> str | None: ...

    def json(self) -> Any: ...


class Request(NamedTuple):
    """One request a protocol asks for; the user class sends it on its own connection.
    (A tuple: one is made per poll, and a tuple costs a third of a frozen dataclass.)"""
    method: str
    target: str
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"


class Delivered(NamedTuple):
    """One message as received: the publisher's stamp (None: the payload had none), and
    what the server adds where the protocol gives it (None: it does not)."""
    stamp: tuple[str, int, float] | None
    server_seq: int | None = None
    server_ts: float | None = None


class Poll(NamedTuple):
    """One poll's answer: its messages (none: the hold timed out), the cursor to poll from
    next, and the server's own signals where the protocol has them."""
    messages: Sequence[Delivered]
    cursor: Any
    epoch: str | None = None                  # EPOCHS: the channel state's lifetime
    dropped: tuple[int, int] | None = None    # GAP_SIGNAL: server seqs it no longer had
    at_seq: int | None = None  # SERVER_SEQ: where the channel is (a new subscriber's start)
    # requests the subscriber sends, in order, before its next poll (a session's connect,
    # a pong); each answer is read by Protocol.read_sent
    send: tuple[Request, ...] = ()


class Published(NamedTuple):
    """A publish the server accepted, with what it said of it (None: it did not say)."""
    server_seq: int | None = None
    epoch: str | None = None
    server_ts: float | None = None


class Protocol:
    """How one service is spoken.  Subclass it, set :attr:`name`, implement :meth:`poll`,
    :meth:`read_poll` and :meth:`publish`; the rest has defaults.  Instances are made once
    per load-generator process and must hold no per-subscriber state (the cursor is the
    subscriber's, handed in and out)."""

    name: ClassVar[str] = ""
    #: what the target gives beyond the stamp (CAPABILITIES); a figure that needs one it
    #: lacks reads "not measured"
    gives: ClassVar[frozenset[str]] = frozenset()
    #: Locust's row names: a poll, a poll that timed out empty, a publish
    poll_name: ClassVar[str] = "/sub/[channel]"
    timeout_name: ClassVar[str] = "/sub/[channel] (timeout)"
    publish_name: ClassVar[str] = "/pub/[channel]"
    send_name: ClassVar[str] = "[session request]"  # the row of a Poll.send request

    def __init__(self, poll_timeout_s: float = 20.0) -> None:
        self.poll_timeout_s = poll_timeout_s

    def channel(self, index: int) -> str:
        """The name of channel ``index`` (0 ..); the publisher and subscribers agree on it."""
        return f"ch{index}"

    def new_cursor(self, channel: str) -> Any:
        """A new subscriber's cursor, and a lost session's (None by default: "from now
        on").  A protocol with sessions starts its per-subscriber state here."""
        return None

    def read_sent(self, request: Request, resp: Answer) -> None:
        """The answer to a request of :attr:`Poll.send`: :class:`BadAnswer` unless 2xx."""
        if not 200 <= resp.status < 300:
            raise BadAnswer(f"HTTP {resp.status} to {request.method} {request.target}")

    def poll(self, channel: str, cursor: Any) -> Request:
        """The long poll of ``channel`` from ``cursor`` (None: a new subscriber)."""
        raise NotImplementedError

    def read_poll(self, resp: Answer, cursor: Any) -> Poll:
        """The poll's answer read; raise :class:`BadAnswer` for one the protocol does not
        allow (counted as a failed request under its text)."""
        raise NotImplementedError

    def publish(self, channel: str, body: bytes) -> Request:
        """The request that publishes ``body`` (JSON bytes with the stamp) on ``channel``."""
        raise NotImplementedError

    def read_publish(self, resp: Answer) -> Published:
        """A publish's answer read: accepted, or :class:`BadAnswer`.  Default: any 2xx."""
        if not 200 <= resp.status < 300:
            raise BadAnswer(f"HTTP {resp.status} to a publish")
        return Published()

    def probe(self) -> list[Request]:
        """Requests sent once before the load starts, in order; each answer must pass
        :meth:`read_probe`.  Default: publish one message on a channel of its own."""
        return [self.publish("pollbenchprobe", stamp_body("probe", 0, 0.0, 64))]

    def read_probe(self, request: Request, resp: Answer) -> None:
        """Raise :class:`BadAnswer` when an answer to the probe is not this protocol's."""
        self.read_publish(resp)


def stamp_body(publisher: str, seq: int, sent: float, size: int) -> bytes:
    """A published body: the stamp, padded to about ``size`` bytes."""
    head = json.dumps({STAMP_KEY: [publisher, seq, sent]}, separators=(",", ":"))
    pad = max(size - len(head) - 9, 0)
    return (head[:-1] + ',"pad":"' + "x" * pad + '"}').encode()


def read_stamp(payload: Any) -> tuple[str, int, float] | None:
    """The stamp of a payload (a decoded JSON object, or its bytes); None without one."""
    if isinstance(payload, (bytes, bytearray, str)):
        try:
            payload = json.loads(payload)
        except ValueError:
            return None
    try:
        pub, seq, sent = payload[STAMP_KEY]
        return str(pub), int(seq), float(sent)
    except (KeyError, TypeError, ValueError):
        return None


BUILT_IN = {"pollbench": "loadtests.protocols.pollbench:PollbenchProtocol",
            "nchan": "loadtests.protocols.nchan:NchanProtocol",
            "socketio": "loadtests.protocols.socketio:SocketIOProtocol"}
REQUIRED = ("poll", "read_poll", "publish")


def load_protocol(text: str) -> type[Protocol]:
    """A built-in protocol by name, or ``module:Class``; ValueError in one line naming what
    is wrong (not found, not importable, not a Protocol, a method missing)."""
    spec = BUILT_IN.get(text, text)
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise ValueError(f"protocol {text!r}: give one of {', '.join(BUILT_IN)} or "
                         "module:Class (a subclass of loadtests.protocols.Protocol)")
    try:
        module = _import(module_name)
    except Exception as e:  # a user's module may fail in any way: one line, its cause
        raise ValueError(f"protocol {text!r}: module {module_name} does not import "
                         f"({type(e).__name__}: {e})") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"protocol {text!r}: module {module_name} has no {class_name}")
    if not (isinstance(cls, type) and issubclass(cls, Protocol)):
        raise ValueError(f"protocol {text!r}: {class_name} is not a subclass of "
                         "loadtests.protocols.Protocol")
    missing = [m for m in REQUIRED if getattr(cls, m) is getattr(Protocol, m)]
    if missing:
        raise ValueError(f"protocol {text!r}: {class_name} does not implement "
                         + ", ".join(missing))
    unknown = sorted(set(cls.gives) - set(CAPABILITIES))
    if unknown:
        raise ValueError(f"protocol {text!r}: {class_name}.gives names unknown capabilities "
                         f"{', '.join(unknown)}; known: {', '.join(CAPABILITIES)}")
    return cls


def _import(module_name: str):
    """The module, looked for in the current directory too (a user's adapter beside their
    project file), as ``python -m`` would."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        here = os.getcwd()
        if e.name != module_name.split(".")[0] or here in sys.path:
            raise
        sys.path.append(here)
        return importlib.import_module(module_name)


def accounting(cls: type[Protocol]) -> dict:
    """run.json's "accounting": how this protocol's deliveries are judged and timed."""
    gives = set(cls.gives)
    return {
        "protocol": cls.name or cls.__name__,
        "gives": sorted(gives),
        "order": ("the server's sequence per channel (its gap and epoch signals too)"
                  if SERVER_SEQ in gives else "the publisher's stamp (sequence per channel)"),
        "latency": ("server publish time (its ts) -> receipt" if SERVER_TIME in gives
                    else "publisher send time (the stamp) -> receipt"),
        # Locust's rows of a held poll and of one that ended empty: held polls, never
        # counted as plain requests (analysis.figures.metric_groups)
        "poll_rows": [cls.poll_name, cls.timeout_name],
    }
