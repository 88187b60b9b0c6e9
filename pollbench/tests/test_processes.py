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
