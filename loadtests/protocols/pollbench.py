"""The reference target's API (docs/http-api.md): ``GET /channels/<name>?cursor=&epoch=``,
``POST /channels/<name>``.  It gives everything the seam can use: the server's sequence per
channel, its publish time, the range a slow subscriber missed (``dropped``) and the
lifetime of a channel's state (``epoch``), so its deliveries are judged by the server's
sequence and timed from the server's ``ts``."""

from __future__ import annotations

from typing import Any

from analysis.limits import answer_cause
from loadtests.protocols import (
    EPOCHS,
    GAP_SIGNAL,
    SERVER_SEQ,
    SERVER_TIME,
    TASKS,
    Answer,
    BadAnswer,
    Poll,
    Protocol,
    Published,
    Request,
)


class PollbenchProtocol(Protocol):
    name = "pollbench"
    gives = frozenset({SERVER_TIME, SERVER_SEQ, GAP_SIGNAL, EPOCHS, TASKS})
    poll_name = "/channels/[name]"
    timeout_name = "/channels/[name] (204 timeout)"
    publish_name = "/channels/[name]"

    def __init__(self, poll_timeout_s: float = 20.0) -> None:
        super().__init__(poll_timeout_s)
        self._timeout = f"?timeout={poll_timeout_s:g}"

    def poll(self, channel: str, cursor: Any) -> Request:
        if cursor is None:
            return Request("GET", f"/channels/{channel}{self._timeout}")
        return Request("GET", f"/channels/{channel}{self._timeout}&cursor={cursor[0]}"
                              f"&epoch={cursor[1]}")

    def read_poll(self, resp: Answer, cursor: Any) -> Poll:
        status = resp.status
        if status == 204:
            if cursor is None:  # "from now on" timed out: the headers say where the channel is
                epoch, at = resp.header("x-epoch"), int(resp.header("x-cursor") or "0")
                return Poll((), (at, epoch), epoch, None, at)
            return Poll((), cursor, cursor[1])
        if status != 200:
            raise BadAnswer(answer_cause(status, resp.body, resp.header("server")))
        try:
            data = resp.json()
            # plain tuples in Delivered's order (stamp, server_seq, server_ts): one a message
            messages = [(None, m["seq"], m["ts"]) for m in data["messages"]]
            epoch = data["epoch"]
            return Poll(messages, (data["cursor"], epoch), epoch,  # type: ignore[arg-type]
                        data.get("dropped"))
        except (ValueError, KeyError, TypeError):
            raise BadAnswer("invalid JSON in a 200 poll answer") from None

    def publish(self, channel: str, body: bytes) -> Request:
        return Request("POST", f"/channels/{channel}", body)

    def read_publish(self, resp: Answer) -> Published:
        if resp.status != 201:
            raise BadAnswer(answer_cause(resp.status, resp.body, resp.header("server")))
        try:
            got = resp.json()
            return Published(int(got["seq"]), got.get("epoch"), got.get("ts"))
        except (ValueError, KeyError, TypeError):
            raise BadAnswer("HTTP 201 to a publish without a seq") from None

    def probe(self) -> list[Request]:
        return [Request("GET", "/channels/pollbenchprobe?timeout=0")]

    def read_probe(self, request: Request, resp: Answer) -> None:
        if resp.status != 204 or resp.header("x-cursor") is None:
            raise BadAnswer(f"GET /channels/NAME?timeout=0 answered HTTP {resp.status} without "
                            "an X-Cursor header: not pollbench's channel API")
