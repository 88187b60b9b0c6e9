"""Several hosts on one machine: Linux network namespaces joined by a bridge (root only).

For trying and testing runs across hosts (``pollbench up --bind``, ``pollbench worker``,
``pollbench run --target``) where there is one machine: each "host" is a namespace with its
own loopback and one address on a private /24; the bridge lives in a namespace of its own,
so nothing is added to the machine's own network and no traffic leaves the namespaces.

    with Hosts(["target", "controller", "w1"]) as hosts:
        hosts.address("target")                      # '10.213.7.1'
        subprocess.run(hosts.cmd("w1", ["ping", "-c1", hosts.address("target")]))
    # leaving the block kills every process still in the namespaces and deletes them

Every process started inside (``hosts.cmd``) runs in its namespace with the machine's
processes, files and clock: the clocks of the "hosts" are one clock (offsets are ~0).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess

from pollbench.errors import UserError


def available() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    return None


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise UserError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


class Hosts:
    def __init__(self, names: list[str]):
        if len(set(names)) != len(names) or not 1 <= len(names) <= 200:
            raise ValueError("1 to 200 distinct host names")
        self.tag = f"{random.randrange(16**4):04x}"
        self.net = f"10.{random.randrange(100, 250)}.{random.randrange(1, 250)}"
        self.names = list(names)
        self.bridge_ns = f"pb{self.tag}-br"
        self.created: list[str] = []

    def ns(self, name: str) -> str:
        return f"pb{self.tag}-{name}"

    def address(self, name: str) -> str:
        return f"{self.net}.{self.names.index(name) + 1}"

    def cmd(self, name: str, argv: list[str]) -> list[str]:
        """``argv`` run inside host ``name``."""
        return ["ip", "netns", "exec", self.ns(name), *argv]

    def __enter__(self) -> Hosts:
        why = available()
        if why:
            raise UserError(why)
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()

    def create(self) -> None:
        _ip("netns", "add", self.bridge_ns)
        self.created.append(self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        for i, name in enumerate(self.names):
            ns = self.ns(name)
            _ip("netns", "add", ns)
            self.created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            port = f"h{i}"
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port,
                "netns", self.bridge_ns)
            _ip("-n", ns, "addr", "add", f"{self.address(name)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", self.bridge_ns, "link", "set", port, "master", "br0")
            _ip("-n", self.bridge_ns, "link", "set", port, "up")

    def set_port_range(self, name: str, low: int, high: int) -> None:
        """Host ``name``'s ephemeral port range (``net.ipv4.ip_local_port_range``, one per
        namespace): the ports each (source, destination) pair of its connections can use."""
        if not 1024 <= low <= high <= 65535:
            raise ValueError("a port range within 1024-65535")
        proc = subprocess.run(self.cmd(name, ["sh", "-c", f"echo {low} {high} > "
                                              "/proc/sys/net/ipv4/ip_local_port_range"]),
                              capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise UserError(f"setting the port range in {self.ns(name)}: {proc.stderr.strip()}")

    def pids(self, ns: str) -> list[int]:
        proc = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                              timeout=30)
        return [int(p) for p in proc.stdout.split() if p.isdigit()]

    def destroy(self) -> None:
        """Kill what still runs inside, then delete the namespaces (the veths go with them)."""
        for ns in reversed(self.created):
            for pid in self.pids(ns):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.created.clear()
