"""Loopback HTTP and port helpers for the stack, the sampler, the UI and sweeps (stdlib only)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with OPENER.open(url, timeout=timeout) as resp:
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


def address_here(host: str) -> bool:
    """Whether something on this host can listen on ``host`` (one of its addresses)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, 0))
        except OSError as e:
            return e.errno != errno.EADDRNOTAVAIL
    return True


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def find_free_ports(count: int, start: int = 20000, stop: int = 32000,
                    exclude: set[int] | frozenset[int] = frozenset()) -> int:
    """First port of ``count`` consecutive free ports (tests run beside a stack on 8000-8080);
    none of them in ``exclude`` (ports about to be taken)."""
    for _ in range(200):
        base = random.randrange(start, stop - count)
        if all(base + i not in exclude and port_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports between {start} and {stop}")


def _netns() -> str:
    """This process's network namespace ("net-4026531840"): a port is only taken within it."""
    try:
        return "".join(c if c.isalnum() else "-" for c in os.readlink("/proc/self/ns/net")
                       ).strip("-")
    except OSError:
        return "net"


# one folder per network namespace: a claim in another namespace is not a collision
LOCK_DIR = Path(tempfile.gettempdir()) / "pollbench-ports" / _netns()


class PortClaim:
    """Ports claimed for one run with an exclusive lock file each (``flock``), so that two
    pollbench processes started at the same instant cannot both pass the "port free" check:
    the second is refused in one line naming the first.  Released by :meth:`release` or when
    the process ends (the kernel drops the locks with the file descriptors)."""

    def __init__(self, ports: list[int]):
        self._files: list = []
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        try:
            for port in sorted(set(ports)):
                f = open(LOCK_DIR / f"{port}.lock", "a+")  # noqa: SIM115 (held until release)
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    f.seek(0)
                    holder = f.read().strip() or "another process"
                    f.close()
                    raise PortTaken(port, holder) from None
                f.seek(0)
                f.truncate()
                f.write(f"pollbench pid {os.getpid()}")
                f.flush()
                self._files.append(f)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        for f in self._files:
            f.close()  # closing drops the lock
        self._files.clear()


class PortTaken(Exception):
    def __init__(self, port: int, holder: str):
        super().__init__(f"port {port} is claimed by another pollbench run ({holder})")
        self.port = port


PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_PORT_RANGE = (32768, 60999)  # Linux's default, where the file cannot be read


def local_port_range(path: Path = PORT_RANGE_FILE) -> tuple[int, int]:
    """This host's (this network namespace's) ephemeral port range, as the kernel has it: the
    ports one (source address, destination address and port) pair can use at once."""
    try:
        low, high = (int(x) for x in path.read_text().split()[:2])
    except (OSError, ValueError):
        return DEFAULT_PORT_RANGE
    return (low, high) if 0 < low <= high <= 65535 else DEFAULT_PORT_RANGE


def can_bind_source(address: str) -> str | None:
    """Why a connection cannot be bound to the local ``address`` (None: it can).  Binds
    without taking a port (IP_BIND_ADDRESS_NO_PORT), as the load generator does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
            s.bind((address, 0))
        except OSError as e:
            return e.strerror or str(e)
    return None
