"""Fixtures that start real processes on free ports (so tests run beside a stack on 8000-8080)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pollbench.stack.net import find_free_ports
from pollbench.tests.children import Output, stop_process

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="session")
def history_of_the_tests(tmp_path_factory):
    """Runs made by tests go to a history of their own, never to the checkout's results/."""
    import os

    url = f"sqlite:///{tmp_path_factory.mktemp('history') / 'history.sqlite'}"
    previous = os.environ.get("POLLBENCH_HISTORY")
    os.environ["POLLBENCH_HISTORY"] = url
    yield url
    if previous is None:
        os.environ.pop("POLLBENCH_HISTORY", None)
    else:
        os.environ["POLLBENCH_HISTORY"] = previous


def pollbench_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pollbench", *args]


def run_cmd(out, *args: str) -> list[str]:
    """``pollbench run`` on free ports into ``out``, with ``args``."""
    port, backend_port = free_stack_ports()
    return pollbench_cmd("run", "--port", str(port), "--backend-port", str(backend_port),
                         "--out", str(out), *args)


def free_stack_ports(backends: int = 4) -> tuple[int, int]:
    base = find_free_ports(backends + 1)
    return base + backends, base  # nginx port, first backend port


class UpProcess:
    def __init__(self, proc: subprocess.Popen, out: Path, port: int, backend_port: int,
                 backends: int):
        self.proc, self.out, self.port = proc, out, port
        self.output = Output(proc)
        self.backend_urls = [f"http://127.0.0.1:{backend_port + i}" for i in range(backends)]
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture
def stack_up(tmp_path):
    """``pollbench up`` as a user runs it, on free ports; yields once the stack answers."""
    started: list[UpProcess] = []

    def start(*extra: str, backends: int = 4) -> UpProcess:
        port, backend_port = free_stack_ports(backends)
        out = tmp_path / f"up-{len(started)}"
        proc = subprocess.Popen(
            pollbench_cmd("up", "--port", str(port), "--backend-port", str(backend_port),
                          "--out", str(out), *extra),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        up = UpProcess(proc, out, port, backend_port, backends)
        started.append(up)
        if not up.output.wait_for("Ctrl-C stops everything", 30) or proc.poll() is not None:
            proc.kill()
            raise AssertionError("pollbench up did not start:\n" + up.output.wait_closed(10))
        return up

    yield start
    for up in started:
        stop_process(up.proc)
