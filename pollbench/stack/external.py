"""A service pollbench did not start (``pollbench run --target URL`` without ``--agent``):
asked once, in its own protocol, before any load is sent.

    probe_target("http://127.0.0.1:9000", "nchan")   # UserError in one line, or None

Nothing about its processes is visible from here: what the run can say of it is what a
client sees (:data:`NOT_MEASURED`).
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

from loadtests.protocols import BadAnswer, Protocol, load_protocol
from pollbench.errors import UserError

# why every figure of the stack reads "not measured" in such a run
NOT_MEASURED = "not started by pollbench: its processes are not visible to the run"


class ProbeAnswer:
    """An answer in the form protocols read (:class:`loadtests.protocols.Answer`)."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def json(self) -> Any:
        return json.loads(self.body)


def probe_target(url: str, protocol: str, timeout_s: float = 5.0) -> None:
    """Send the protocol's probe requests to ``url``; refuse, in one line, a target that does
    not answer or answers something that is not the protocol."""
    try:
        proto: Protocol = load_protocol(protocol)()
    except ValueError as e:
        raise UserError(f"--protocol: {e}") from None
    parts = urlsplit(url)
    for req in proto.probe():
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80,
                                          timeout=timeout_s)
        try:
            headers = dict(req.headers)
            if req.body is not None:
                headers["Content-Type"] = req.content_type
            conn.request(req.method, req.target, body=req.body, headers=headers)
            resp = conn.getresponse()
            answer = ProbeAnswer(resp.status, {k.lower(): v for k, v in resp.getheaders()},
                                 resp.read())
        except (OSError, http.client.HTTPException) as e:
            raise UserError(f"--target {url} does not answer {req.method} {req.target} "
                            f"({e or type(e).__name__}): start the service first, or check "
                            "the URL") from None
        finally:
            conn.close()
        try:
            proto.read_probe(req, answer)
        except BadAnswer as e:
            raise UserError(f"--target {url} does not speak the {protocol} protocol: {e} "
                            "(choose --protocol)") from None
