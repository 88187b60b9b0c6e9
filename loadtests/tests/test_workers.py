"""The master's view of its workers (several hosts): a worker it refused is not "lost"."""

from __future__ import annotations

from types import SimpleNamespace

from loadtests.hosts import MasterWorkers, pollbench_version


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
    plumbing.watch()
    plumbing.watch()
    assert plumbing.lost == ["worker-abcdefgh"]
