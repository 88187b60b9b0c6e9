"""Signed requests to the target host's agent: the token never travels.

Each request carries, in headers, a timestamp, a nonce, the token's public key id (the first
16 hex digits of its SHA-256: which token signed, not the token) and an HMAC-SHA256, made
with the token, over the method, the path with its query, the SHA-256 of the body, the
timestamp and the nonce::

    headers = sign_headers(token, "POST", "/v1/stack", body)
    role = verifier.verify("POST", "/v1/stack", body, headers)   # or raises Refused

The agent (:class:`Verifier`) refuses a timestamp more than ``window_s`` away from its
clock, a nonce it has seen within twice that window, an unknown key id and a wrong
signature.  What it does not protect (a benchmark network, not the internet): the
requests and answers are not encrypted, and the answers are not signed.

Standard library only: the Locust side (``loadtests.hosts``) signs its clock requests too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

KEY_HEADER = "X-Pollbench-Key"
TIME_HEADER = "X-Pollbench-Time"
NONCE_HEADER = "X-Pollbench-Nonce"
SIGNATURE_HEADER = "X-Pollbench-Signature"
WINDOW_S = 30.0
MAX_NONCES = 200_000  # ~1,600 signed requests a second for the whole window: far more than any controller sends
MIN_TOKEN_CHARS = 16


def key_id(token: str) -> str:
    """A token's public name: which token signed a request (the token cannot be found from it)."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _message(method: str, path: str, body: bytes, stamp: str, nonce: str) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join((method.upper(), path, digest, stamp, nonce)).encode()


def signature(token: str, method: str, path: str, body: bytes, stamp: str, nonce: str) -> str:
    return hmac.new(token.encode(), _message(method, path, body, stamp, nonce),
                    hashlib.sha256).hexdigest()


def sign_headers(token: str, method: str, path: str, body: bytes = b"",
                 now: float | None = None) -> dict[str, str]:
    """The headers that sign one request (``path`` with its query string, as sent)."""
    stamp = f"{time.time() if now is None else now:.3f}"
    nonce = secrets.token_hex(16)
    return {KEY_HEADER: key_id(token), TIME_HEADER: stamp, NONCE_HEADER: nonce,
            SIGNATURE_HEADER: signature(token, method, path, body, stamp, nonce)}


class Refused(Exception):
    """A request whose signature does not hold; the text says why, in one line (for the
    agent's log and the 401's body).  ``skew_s``: for a stale timestamp, how far off."""

    def __init__(self, reason: str, skew_s: float | None = None):
        super().__init__(reason)
        self.skew_s = skew_s


class Verifier:
    """Checks signed requests against named tokens (role -> token, e.g. "read", "control")."""

    def __init__(self, tokens: Mapping[str, str], window_s: float = WINDOW_S,
                 max_nonces: int = MAX_NONCES):
        for role, token in tokens.items():
            if len(token) < MIN_TOKEN_CHARS:
                raise ValueError(f"the {role} token needs at least {MIN_TOKEN_CHARS} characters")
        self._by_key = {key_id(t): (role, t.encode()) for role, t in tokens.items()}
        if len(self._by_key) != len(tokens):
            raise ValueError("each role needs a token of its own")
        self.window_s = window_s
        self.max_nonces = max_nonces
        self._nonces: OrderedDict[str, float] = OrderedDict()  # nonce -> when seen (monotonic)
        self._lock = threading.Lock()

    def verify(self, method: str, path: str, body: bytes, headers: Any,
               now: float | None = None) -> str:
        """The role of the token that signed the request (``headers``: anything with
        ``.get``); Refused otherwise."""
        key, stamp = headers.get(KEY_HEADER), headers.get(TIME_HEADER)
        nonce, sig = headers.get(NONCE_HEADER), headers.get(SIGNATURE_HEADER)
        if not (key and stamp and nonce and sig):
            raise Refused(f"unsigned request (needs {KEY_HEADER}, {TIME_HEADER}, "
                          f"{NONCE_HEADER}, {SIGNATURE_HEADER})")
        if key not in self._by_key:
            raise Refused("signed with a token this agent does not know")
        role, token = self._by_key[key]
        try:
            when = float(stamp)
        except ValueError:
            raise Refused("the timestamp is not a number") from None
        if not 16 <= len(nonce) <= 64:
            raise Refused("the nonce must have 16 to 64 characters")
        expected = hmac.new(token, _message(method, path, body, stamp, nonce),
                            hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, sig):
            raise Refused("wrong signature (not made with the token, or the request was altered)")
        now = time.time() if now is None else now
        skew = when - now
        if abs(skew) > self.window_s:
            raise Refused(f"stale timestamp: {skew:+.1f} s from the agent's clock (more than "
                          f"{self.window_s:g} s: a replay, or clocks that need NTP)", skew)
        with self._lock:
            mono = time.monotonic()
            while self._nonces and next(iter(self._nonces.values())) < mono - 2 * self.window_s:
                self._nonces.popitem(last=False)
            if nonce in self._nonces:
                raise Refused("replayed request (its nonce was used already)")
            if len(self._nonces) >= self.max_nonces:
                raise Refused("too many signed requests within the window: slow down")
            self._nonces[nonce] = mono
        return role
