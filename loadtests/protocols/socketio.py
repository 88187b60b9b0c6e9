"""Socket.IO over Engine.IO v4 long-polling (python-socketio, socket.io, any v4 server).

A subscriber is a session: a handshake ``GET /socket.io/?EIO=4&transport=polling`` opens it
(``0{"sid": ...}``), a ``POST 40`` joins the default namespace, and from then on exactly one
``GET ...&sid=S`` is held at a time.  Its answer holds one or more packets joined by
``\\x1e``: events (``42["msg", {...}]``, counted one message each), the server's ping ``2``
(answered by a ``POST 3`` before the next poll, or the server closes the session) and a
close ``1`` or disconnect ``41`` (the session is gone: the subscriber starts a new one and
its stamps count what it missed).

The room is the channel, named in the handshake (``&room=ch3``; the app joins it in its
connect handler).  Every request carries ``&lb=<key>``, one key per session, so that
``hash $arg_lb consistent`` (nginx knob ``balance = "arg-hash"``) keeps a session on one
backend; without stickiness a request that reaches another process is answered
``400 "Invalid session"``, counted under that cause.  Publishing is the app's own HTTP
endpoint (``POST /publish/<room>``, the stamped JSON as the event's data).

The server holds a poll until a packet is due, at most its ping interval (25 s by default):
``--poll-timeout`` does not apply.  A client that gave up on a held GET leaves it queued on
a Tornado server, where it swallows the next packet: the client's read timeout (300 s)
and nginx's ``proxy_read_timeout`` (200 s) both outlast ping interval + ping timeout.
Every POST carries one packet (at most 16 are allowed; a 17-packet POST is dropped whole).
"""

from __future__ import annotations

import itertools
import json
import os
from typing import NamedTuple

from loadtests.protocols import Answer, BadAnswer, Delivered, Poll, Protocol, Request, read_stamp

SEP = "\x1e"  # Engine.IO v4: packets in one polling body
TEXT = "text/plain;charset=UTF-8"
EVENT = "msg"  # the event the example app emits, and the one counted

_keys = itertools.count()


class Session(NamedTuple):
    """A subscriber's cursor: its routing key, and its session once the handshake is done."""
    lb: str
    sid: str | None = None
    connected: bool = False


class SocketIOProtocol(Protocol):
    name = "socketio"
    poll_name = "/socket.io/ GET"
    timeout_name = "/socket.io/ GET (no message)"
    publish_name = "/publish/[room]"
    send_name = "/socket.io/ POST"
    path = "/socket.io/"

    def new_cursor(self, channel: str) -> Session:
        return Session(f"{os.getpid()}-{next(_keys)}")

    def _url(self, cur: Session, channel: str | None = None) -> str:
        url = f"{self.path}?EIO=4&transport=polling&lb={cur.lb}"
        if cur.sid is not None:
            url += f"&sid={cur.sid}"
        if channel is not None:
            url += f"&room={channel}"
        return url

    def poll(self, channel: str, cursor: Session) -> Request:
        return Request("GET", self._url(cursor, channel if cursor.sid is None else None))

    def read_poll(self, resp: Answer, cursor: Session) -> Poll:
        cur = cursor
        body = resp.body.decode("utf-8", "replace")
        if resp.status != 200:
            raise BadAnswer(refused(resp.status, body), session_lost=resp.status == 400)
        if cur.sid is None:  # the handshake: open packet, then CONNECT
            if not body.startswith("0"):
                raise BadAnswer(f"no Engine.IO open packet (got {body[:40]!r})",
                                session_lost=True)
            try:
                sid = json.loads(body[1:].split(SEP)[0])["sid"]
            except (ValueError, KeyError, TypeError):
                raise BadAnswer("an Engine.IO open packet without a sid",
                                session_lost=True) from None
            opened = Session(cur.lb, str(sid))
            return Poll((), opened, send=(self._post(opened, "40"),))
        messages = []
        send = []
        connected = cur.connected
        for packet in body.split(SEP):
            kind = packet[:1]
            if kind == "4":
                sio = packet[1:2]
                if sio == "2":  # an event: ["name", data]
                    try:
                        name, data = json.loads(packet[2:])[:2]
                    except (ValueError, TypeError):
                        raise BadAnswer("a Socket.IO event that is not a JSON list") from None
                    if name == EVENT:
                        messages.append(Delivered(read_stamp(data)))
                elif sio == "0":
                    connected = True
                elif sio in ("1", "4"):  # disconnect, connect error
                    raise BadAnswer(f"Socket.IO {'disconnect' if sio == '1' else 'connect error'}"
                                    f" {packet[2:60]}", session_lost=True)
            elif kind == "2":
                send.append(self._post(cur, "3"))  # pong, before the next poll
            elif kind == "1":
                raise BadAnswer("Engine.IO close packet", session_lost=True)
        return Poll(messages, cur._replace(connected=connected), send=tuple(send))

    def _post(self, cur: Session, packet: str) -> Request:
        return Request("POST", self._url(cur), packet.encode(), content_type=TEXT)

    def read_sent(self, request: Request, resp: Answer) -> None:
        if resp.status != 200:
            raise BadAnswer(refused(resp.status, resp.body.decode("utf-8", "replace")),
                            session_lost=resp.status == 400)

    def publish(self, channel: str, body: bytes) -> Request:
        return Request("POST", f"/publish/{channel}", body)


def refused(status: int, body: str) -> str:
    """A refusal's cause, one per kind (a session's id left out: failures group by it)."""
    text = body.strip().strip('"')
    if text.startswith("Invalid session"):
        text = "Invalid session"
    return f"HTTP {status} from Engine.IO: {text[:60]}"
