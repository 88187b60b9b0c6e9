"""Nchan, the nginx pub/sub module, long-polled (``nchan_subscriber longpoll``).

Wire facts (nchan 1.3.6 ``src/subscribers/longpoll.c``, ``src/util/nchan_msg.c``; checked on
this machine, see docs/targets.md):

* ``GET /sub/<ch>``: the cursor is two response headers, ``Last-Modified`` and ``Etag``, sent
  back as ``If-Modified-Since`` and ``If-None-Match`` on every poll (one alone is refused or
  ignored).  A new subscriber sends neither (``nchan_subscriber_first_message``: newest
  waits for the next message, oldest replays the buffer).
* A hold that times out is ``408`` with no body: an empty poll that keeps the old cursor.
* One message per answer, or with ``nchan_longpoll_multipart_response on`` every waiting
  message in one ``multipart/mixed`` body (the headers carry the last one's id).
* A cursor older than the buffer gets the oldest kept message with no error and no gap
  marker: only the publisher's sequence in the payload shows the loss (counted as lost by
  the seam); nginx's error log says ``Missed message for longpoll subscriber``.
* ``POST /pub/<ch>``: ``201`` when a subscriber was waiting, ``202`` when none was (both
  accepted), with a text body of the channel's counters (``queued messages: N``).

It gives no server time (``Last-Modified`` is whole seconds), no sequence, no gap signal and
no epoch: order and loss come from the publisher's stamp, latency from its send time.
"""

from __future__ import annotations

from typing import Any

from analysis.limits import answer_cause
from loadtests.protocols import (
    Answer,
    BadAnswer,
    Delivered,
    Poll,
    Protocol,
    Published,
    Request,
    read_stamp,
)


class NchanProtocol(Protocol):
    name = "nchan"
    gives = frozenset()
    poll_name = "/sub/[channel]"
    timeout_name = "/sub/[channel] (408 timeout)"
    publish_name = "/pub/[channel]"

    def poll(self, channel: str, cursor: Any) -> Request:
        if cursor is None:
            return Request("GET", f"/sub/{channel}")
        return Request("GET", f"/sub/{channel}", headers=(("If-Modified-Since", cursor[0]),
                                                          ("If-None-Match", cursor[1])))

    def read_poll(self, resp: Answer, cursor: Any) -> Poll:
        status = resp.status
        if status == 408:
            return Poll((), cursor)
        if status != 200:
            raise BadAnswer(answer_cause(status, resp.body, resp.header("server")))
        modified, etag = resp.header("last-modified"), resp.header("etag")
        if not modified or etag is None:
            raise BadAnswer("HTTP 200 from Nchan without Last-Modified and Etag (is gzip on "
                            "the subscriber location? it strips the Etag)")
        ctype = resp.header("content-type") or ""
        bodies = multipart_bodies(resp.body, ctype) if ctype.startswith("multipart/mixed") \
            else [resp.body]
        return Poll([Delivered(read_stamp(b)) for b in bodies], (modified, etag))

    def publish(self, channel: str, body: bytes) -> Request:
        return Request("POST", f"/pub/{channel}", body)

    def read_publish(self, resp: Answer) -> Published:
        if resp.status not in (201, 202):
            raise BadAnswer(answer_cause(resp.status, resp.body, resp.header("server")))
        return Published()

    def read_probe(self, request: Request, resp: Answer) -> None:
        if resp.status not in (201, 202) or b"queued messages" not in resp.body:
            raise BadAnswer(f"POST /pub/NAME answered HTTP {resp.status} without Nchan's "
                            "channel counters (queued messages: ...): not an Nchan publisher "
                            "location")


def multipart_bodies(body: bytes, content_type: str) -> list[bytes]:
    """The parts of a ``multipart/mixed`` body, their headers dropped (RFC 2046: parts
    between ``--boundary`` lines, each headers, a blank line, then its body)."""
    boundary = ""
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        raise BadAnswer("a multipart/mixed answer without a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):  # the closing delimiter
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk
        if chunk.startswith(b"\r\n"):  # a part with no headers: the blank line at once
            content = chunk[2:]
        else:
            content = chunk.partition(b"\r\n\r\n")[2]
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts
