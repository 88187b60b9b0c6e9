"""Child processes: CPU placement is applied before exec and inherited (pollbench/processes.py)."""

from __future__ import annotations

import os
import sys

import pytest

from pollbench.stack.processes import parse_cpu_list, parse_cpu_placement, spawn

PRINT_AFFINITY = ("import os, subprocess, sys; print(sorted(os.sched_getaffinity(0)));"
                  "subprocess.run([sys.executable, '-c', "
                  "'import os; print(sorted(os.sched_getaffinity(0)))'])")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_spawned_child_and_its_own_children_run_only_on_the_given_cpus(tmp_path):
    cpu = max(os.sched_getaffinity(0))
    child = spawn("probe", [sys.executable, "-c", PRINT_AFFINITY], tmp_path / "probe.log",
                  cpus=(cpu,))
    child.popen.wait(30)
    lines = (tmp_path / "probe.log").read_text().splitlines()
    assert lines[-2:] == [f"[{cpu}]", f"[{cpu}]"]  # the child and its grandchild
    free = spawn("free", [sys.executable, "-c", PRINT_AFFINITY], tmp_path / "free.log")
    free.popen.wait(30)
    assert (tmp_path / "free.log").read_text().splitlines()[-1] == \
        str(sorted(os.sched_getaffinity(0)))


def test_cpu_lists_and_placement_parse_and_refuse_clearly():
    assert parse_cpu_list("0,2-3") == (0, 2, 3)
    assert parse_cpu_list("1") == (1,)
    for bad, words in (("3-1", "runs backwards"), ("x", "not a CPU list"), ("", "not a CPU list")):
        with pytest.raises(ValueError, match=words):
            parse_cpu_list(bad)
    with pytest.raises(ValueError, match="LOADGEN/STACK"):
        parse_cpu_placement("0")
    with pytest.raises(ValueError, match="share CPU 0"):
        parse_cpu_placement("0/0-1")


def test_a_child_that_outlives_sigkill_does_not_stop_the_others_from_being_stopped(tmp_path):
    """A process stuck in the kernel survives SIGKILL for a while: stopping the group warns
    about it and still stops every other child (it used to raise TimeoutExpired)."""
    import subprocess

    from pollbench.stack.processes import Child, ChildGroup

    class Unkillable(subprocess.Popen):
        def wait(self, timeout=None):  # as a process in uninterruptible sleep answers
            raise subprocess.TimeoutExpired(self.args, timeout or 0)

        def poll(self):
            return None

    group = ChildGroup()
    other = group.add(spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"],
                            tmp_path / "sleeper.log"))
    stuck_popen = Unkillable([sys.executable, "-c", "import time; time.sleep(60)"],
                             start_new_session=True)
    group.add(Child("stuck", stuck_popen, tmp_path / "stuck.log"))
    try:
        group.stop_all()
        assert not other.alive()
    finally:
        subprocess.Popen.wait(stuck_popen, 10)  # SIGKILL reached it: reap it for real
