"""Loopback HTTP and port helpers for the stack, the sampler, the UI and sweeps (stdlib only)."""

from __future__ import annotations

import json
import random
import socket
import urllib.error
import urllib.request
from typing import Any

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with _opener.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get_json(url: str, timeout: float = 2.0) -> Any:
    status, body = http_get(url, timeout)
    if status != 200:
        raise OSError(f"GET {url} answered {status}")
    return json.loads(body)


def answers(url: str, timeout: float = 1.0) -> bool:
    """True when ``url`` answers 200 now."""
    try:
        return http_get(url, timeout=timeout)[0] == 200
    except OSError:
        return False


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def find_free_ports(count: int, start: int = 20000, stop: int = 32000) -> int:
    """First port of ``count`` consecutive free ports (tests run beside a stack on 8000-8080)."""
    for _ in range(200):
        base = random.randrange(start, stop - count)
        if all(port_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports between {start} and {stop}")
