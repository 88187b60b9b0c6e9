"""What the sampler records of each process."""

from __future__ import annotations

import subprocess
import sys

import psutil

from pollbench.stack import sampler
from pollbench.stack.sampler import open_fds

HOLD_FILES = "import sys; fs = [open(sys.argv[1], 'rb') for _ in range(3000)]; " \
             "print('ready', flush=True); sys.stdin.read()"


def test_a_process_open_descriptors_are_counted_exactly(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with subprocess.Popen([sys.executable, "-c", HOLD_FILES, str(path)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        check(child, monkeypatch)


def check(child: subprocess.Popen, monkeypatch) -> None:
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        proc = psutil.Process(child.pid)
        listed = proc.num_fds()  # psutil lists /proc/PID/fd
        assert listed >= 3000
        assert open_fds(proc) == listed
        # a kernel that does not give the count (size 0) still gets it, by the listing
        real_stat = sampler.os.stat
        monkeypatch.setattr(sampler.os, "stat", lambda p, *a, **k: type(
            "S", (), {"st_size": 0})() if str(p).endswith("/fd") else real_stat(p, *a, **k))
        assert open_fds(proc) == listed
    finally:
        child.kill()
        child.wait()
