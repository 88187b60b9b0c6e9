"""Faults as scenarios: the schedule's grammar, and a run that goes on through every kind of
fault, records each, accounts for them, and leaves no process behind."""

from __future__ import annotations

import json
import subprocess

import psutil
import pytest

from pollbench.stack.faults import Fault, parse_fault, schedule
from pollbench.tests.conftest import REPO, free_stack_ports, pollbench_cmd

# runs whole stacks (or reports on them): left out of the quick subset (-m 'not slow')
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("text, fault", [
    ("20s:kill=3s:backend-1", Fault(20.0, "kill", 3.0, "backend-1")),
    ("20s:kill", Fault(20.0, "kill", 2.0, "backend-0")),
    ("1.5s:stop=500ms", Fault(1.5, "stop", 0.5, "backend-0")),
    ("30:restart:backend-2", Fault(30.0, "restart", None, "backend-2")),
    ("30s:reload", Fault(30.0, "reload")),
    ("30s:reload:keepalive", Fault(30.0, "reload", None, "keepalive")),
    ("1m:upgrade", Fault(60.0, "upgrade")),
    ("*15s:reload", Fault(15.0, "reload", None, None, 15.0)),
])
def test_fault_texts_parse(text, fault):
    assert parse_fault(text) == fault


@pytest.mark.parametrize("text, says", [
    ("20s", "use AT:ACTION"), ("soon:kill", "is not a time"), ("5s:explode", "unknown action"),
    ("5s:reload=3s", "only kill and stop take a duration"), ("5s:kill:nginx", "is a backend"),
    ("5s:upgrade:x", "upgrade takes no target"), ("*0.5s:reload", "period of 1 s or more"),
])
def test_bad_fault_texts_say_what_is_wrong(text, says):
    with pytest.raises(ValueError, match=says):
        parse_fault(text)


def test_a_repeated_fault_is_expanded_within_the_run():
    times = [f.at_s for f in schedule([parse_fault("*10s:reload"), parse_fault("15s:kill")], 35)]
    assert times == [10, 15, 20, 30]


@pytest.mark.parametrize("fault, says", [
    ("30s:kill", "the run (--duration 10 s) is over"),
    ("2s:kill:backend-7", "there is no backend-7"),
    ("2s:teleport", "unknown action"),
])
def test_run_refuses_faults_it_cannot_do_before_starting(tmp_path, fault, says):
    port, backend_port = free_stack_ports()
    proc = subprocess.run(pollbench_cmd("run", "--duration", "10s", "--fault", fault, "--port",
                                        str(port), "--backend-port", str(backend_port),
                                        "--out", str(tmp_path / "r")),
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_a_run_goes_on_through_every_kind_of_fault_and_accounts_for_each(tmp_path):
    port, backend_port = free_stack_ports()
    out = tmp_path / "run"
    faults = ["3s:kill=1s:backend-1", "6s:stop=4s:backend-2", "11s:reload",
              "13s:upgrade", "15s:reload:keepalive", "16s:restart:backend-0"]
    # 40 channels: the ring is built on random ports, and each backend must hold some
    # every user started within 0.5 s: by the kill at 3 s each subscriber knows its channel's
    # epoch (one that joins later never saw the old epoch, so cannot count its change)
    args = ["run", "--users", "41", "--spawn-rate", "100", "--duration", "19s",
            "--publish-rate", "40",
            "--channels", "40", "--poll-timeout", "5", "--port", str(port),
            "--backend-port", str(backend_port), "--out", str(out)]
    for f in faults:
        args += ["--fault", f]
    proc = subprocess.run(pollbench_cmd(*args), capture_output=True, text=True, cwd=REPO,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete"
    records = info["faults"]
    assert [r["fault"] for r in records] == faults
    assert all(r["ok"] for r in records), records
    assert all(r["started_at"] <= r["ended_at"] for r in records)
    assert records[0]["ended_at"] - records[0]["started_at"] >= 1.0  # killed, down for 1 s
    assert "->" in records[3]["detail"]  # the upgrade names the old and the new master
    # nothing of this run is left running (the upgraded nginx master included)
    leftovers = [p.info for p in psutil.process_iter(["pid", "cmdline"])
                 if str(out) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []

    summary = json.loads((out / "report" / "summary.json").read_text())
    rows = summary["faults"]
    assert [r["fault"] for r in rows] == faults
    kill, stop, reload = rows[0], rows[1], rows[2]
    assert kill["epoch_changes"] >= 1  # channels on backend-1 lost their state
    assert kill["channels_recovered"] >= 1 and kill["recovery_max_s"] is not None
    assert any(s["backend"] == 2 and s["lasted_s"] >= 3 for s in summary["backend_stalls"])
    assert any("backend 2 did not answer /stats" in w for w in summary["warnings"])
    assert reload["old_workers"] >= 1
    assert stop["epoch_changes"] == 0  # a stall loses no state
    # every kind of loss is in lost_messages, here as in the run's own summary line
    m = summary["metrics"]
    assert m["lost_messages"]["value"] >= m["lost_epoch_messages"]["value"]
    assert info["loadgen"]["lost"] == m["lost_messages"]["value"]
    assert info["loadgen"]["lost_epoch"] == m["lost_epoch_messages"]["value"]
    html = (out / "report" / "report.html").read_text()
    assert "Injected faults" in html and "16s:restart:backend-0" in html


def independent_loss(events: list[dict], tail_s: float = 1.0) -> tuple[int, int]:
    """Lost messages counted from raw observations only (POLLBENCH_TRACE=1): what was
    published to each subscriber's channel after it joined, minus what it saw.  Messages
    published in its last ``tail_s`` before its last answer are in flight, not lost.
    Returns (lost, published)."""
    published: dict[str, list[tuple[str, int, float]]] = {}
    joins: dict[int, dict] = {}
    seen: dict[int, set[tuple[str, int]]] = {}
    last_at: dict[int, float] = {}
    for e in events:
        if e["kind"] == "trace_published":
            published.setdefault(e["channel"], []).append((e["epoch"], e["seq"], e["ts"]))
        elif e["kind"] == "trace_join":
            joins.setdefault(e["user"], e)
        elif e["kind"] == "trace_seen":
            seen.setdefault(e["user"], set()).update((e["epoch"], q) for q in e["seqs"])
            last_at[e["user"]] = max(last_at.get(e["user"], 0.0), e["at"])
    lost = 0
    for user, join in joins.items():
        end = last_at.get(user, join["at"]) - tail_s
        expected = {(ep, q) for ep, q, ts in published.get(join["channel"], [])
                    if ts < end and (ep != join["epoch"] or q > join["cursor"])}
        lost += len(expected - seen.get(user, set()))
    return lost, sum(len(v) for v in published.values())


@pytest.mark.parametrize("kind, faults", [
    ("kill", ("3s:kill=1s:backend-1", "6s:kill=1s:backend-2")),
    ("restart", ("3s:restart:backend-1", "6s:restart:backend-2")),
    ("stop", ("3s:stop=2s:backend-1",)),
    ("reload", ("3s:reload", "6s:reload:keepalive")),
    ("upgrade", ("4s:upgrade",)),
])
def test_lost_messages_equal_an_independent_count_for_each_fault_kind(tmp_path, monkeypatch,
                                                                      kind, faults):
    from analysis.figures import compute
    from analysis.load import load_run
    from pollbench.actions.run import run
    from pollbench.stack.loadgen import LoadSpec
    from pollbench.stack.spec import StackSpec

    monkeypatch.setenv("POLLBENCH_TRACE", "1")  # Locust inherits it: every seq is logged
    port, backend_port = free_stack_ports()
    # answers leave 300 ms after a poll is woken: a kill strands what was published meanwhile
    spec = StackSpec(port=port, backend_port=backend_port, delivery_delay_ms=300)
    load = LoadSpec(users=21, spawn_rate=200, duration_s=10, channels=20, publish_rate=100,
                    poll_timeout_s=5, faults=faults)
    out = tmp_path / "run"
    assert run(spec, load, out=out, report=False) == 0
    data = load_run(out)
    reported = compute(data).summary["metrics"]["lost_messages"]["value"]
    lost, published = independent_loss(data.events)
    assert published > 500
    assert reported == lost, (reported, lost)
    if kind == "kill":
        assert lost > 0  # the kills did strand messages: the count was exercised
