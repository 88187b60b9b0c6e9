"""The master's view of its workers (several hosts): a worker it refused is not "lost"."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from loadtests.hosts import MasterWorkers, pollbench_version

# MasterWorkers imports Locust's runners: gevent patches this process's threads
pytestmark = pytest.mark.serial


class FakeMaster:
    def __init__(self) -> None:
        self.clients: dict[str, SimpleNamespace] = {}
        self.sent: list[tuple[str, dict, str]] = []

    def send_message(self, kind: str, data: dict, client_id: str) -> None:
        self.sent.append((kind, data, client_id))


def master_plumbing() -> MasterWorkers:
    return MasterWorkers(FakeMaster(), None)  # the master's state, without a Locust run


def hello(node: str, version: str) -> SimpleNamespace:
    return SimpleNamespace(node_id=node, data={"pollbench": version, "host": "h"})


def test_a_refused_worker_that_leaves_is_not_reported_lost():
    plumbing = master_plumbing()
    plumbing.on_hello(None, hello("node-old-version", "0.0.0-other"))
    assert plumbing.runner.sent and plumbing.runner.sent[0][2] == "node-old-version"
    plumbing.watch()  # the refused worker quit: it is gone from the master's clients
    assert plumbing.lost == []


def test_a_joined_worker_that_leaves_mid_run_is_lost_once():
    plumbing = master_plumbing()
    plumbing.on_hello(None, hello("node-abcdefgh", pollbench_version()))
    plumbing.test_started()
    plumbing.watch()
    plumbing.watch()
    assert plumbing.lost == ["worker-abcdefgh"]


def test_workers_that_quit_once_the_test_has_stopped_are_not_lost():
    """At a run's end Locust's master stops the test, tells every worker to quit and waits
    0.5 s before the session ends: a watch in that half second saw them gone and reported
    them "lost mid-run" (a fresh-clone CI run, four-namespace test)."""
    plumbing = master_plumbing()
    for node in ("node-aaaaaaaa", "node-bbbbbbbb"):
        plumbing.on_hello(None, hello(node, pollbench_version()))
    plumbing.runner.clients = {"node-aaaaaaaa": SimpleNamespace(id="node-aaaaaaaa",
                                                                 state="running")}
    plumbing.test_started()
    plumbing.watch()  # node-bbbbbbbb was killed mid-run
    plumbing.test_stopped()
    plumbing.runner.clients = {}  # the other one quit, as it was told to
    plumbing.watch()
    assert plumbing.lost == ["worker-bbbbbbbb"]
    plumbing.test_started()  # a next test of the same session (the web UI)
    plumbing.on_hello(None, hello("node-cccccccc", pollbench_version()))
    plumbing.watch()
    assert plumbing.lost == ["worker-bbbbbbbb", "worker-cccccccc"]
