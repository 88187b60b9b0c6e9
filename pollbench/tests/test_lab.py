"""A target host a controller drives (``pollbench agent``): only a request signed with the
control token changes anything; a stack is started from typed settings, kept for the same
holder, refused to another, and stopped when its lease runs out."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import replace

import psutil
import pytest

from analysis.signing import TIME_HEADER, sign_headers
from pollbench.actions.lab import BACKENDS_PER_SET, Lab, spec_from_wire
from pollbench.stack.agent import Agent, new_token
from pollbench.stack.net import answers, find_free_ports
from pollbench.stack.processes import wait_until
from pollbench.stack.remote import AgentClient, AgentRefused, Session, spec_to_wire
from pollbench.stack.spec import StackSpec

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def send(url: str, method: str, path: str, body: bytes, headers: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url + path, data=body if method != "GET" else None,
                                 method=method, headers=headers)
    try:
        with OPENER.open(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def lab(tmp_path):
    backend_port = find_free_ports(2 * BACKENDS_PER_SET + 2)  # two port sets
    base = StackSpec(port=backend_port + 2 * BACKENDS_PER_SET, backend_port=backend_port)
    lab = Lab(tmp_path / "agent", base, port_sets=2)
    tokens = {"control": new_token(), "read": new_token()}
    agent = Agent(tmp_path / "agent", tokens, lab.info, control=lab)
    lab.agent = agent
    agent.start()
    try:
        yield lab, agent, tokens
    finally:
        agent.stop()
        lab.close()


def children_started() -> list[str]:
    return [" ".join(p.cmdline()[:4]) for p in psutil.Process().children(recursive=True)
            if p.is_running()]


def test_no_unsigned_forged_replayed_stale_or_read_only_request_starts_anything(lab, caplog):
    lab, agent, tokens = lab
    url, path = agent.url, "/v1/stack"
    good = json.dumps({"holder": "ctl-test-1", "stack": {"profile": "seed"}}).encode()
    control, read = tokens["control"], tokens["read"]
    caplog.set_level(logging.WARNING, logger="pollbench")
    cases = {
        "unsigned": (good, {}),
        "bearer token (the old way: the token travels)": (good, {"Authorization":
                                                                  f"Bearer {control}"}),
        "unknown token": (good, sign_headers("z" * 32, "POST", path, good)),
        "altered body": (good.replace(b"seed", b"longpoll"),
                         sign_headers(control, "POST", path, good)),
        "another path": (good, sign_headers(control, "POST", "/v1/lease", good)),
        "stale": (good, sign_headers(control, "POST", path, good, now=time.time() - 120)),
        "from the future": (good, sign_headers(control, "POST", path, good,
                                               now=time.time() + 120)),
    }
    for what, (body, headers) in cases.items():
        status, answer = send(url, "POST", path, body, headers)
        assert status == 401, (what, answer)
    assert "stale timestamp" in send(url, "POST", path, good, cases["stale"][1])[1]["error"]
    # a valid request's signature, sent again, is a replay
    bad_knob = json.dumps({"holder": "ctl-test-1",
                           "stack": {"nginx": {"worker_connections": 10**9}}}).encode()
    headers = sign_headers(control, "POST", path, bad_knob)
    status, answer = send(url, "POST", path, bad_knob, headers)
    assert status == 400 and "worker_connections" in answer["error"], answer
    status, answer = send(url, "POST", path, bad_knob, headers)
    assert status == 401 and "replayed" in answer["error"]
    # the read token reads, and cannot control
    assert send(url, "GET", "/v1/info", b"", sign_headers(read, "GET", "/v1/info"))[0] == 200
    status, answer = send(url, "POST", path, good, sign_headers(read, "POST", path, good))
    assert status == 403 and "control token" in answer["error"]
    refusals = [r.getMessage() for r in caplog.records if "agent: refused" in r.getMessage()]
    assert len(refusals) == len(cases) + 3, refusals  # one line each (+ stale again, replay, read)
    # values out of range or of the wrong kind, never a path or raw text
    client = AgentClient(url, control)
    for stack, said in (({"profile": "../../etc/x"}, "must be a name"),
                        ({"profile": "/tmp/evil.toml"}, "must be a name"),
                        ({"profile": "nosuch"}, "unknown profile"),
                        ({"nginx": {"worker_connections": "1024; include /etc/passwd"}},
                         "worker_connections"),
                        ({"nginx": {"no_such_knob": 1}}, "unknown nginx knob"),
                        ({"backends": 500}, "backends"), ({"loop": "thread"}, "unknown --loop"),
                        ({"port": 80}, "unknown stack setting"),
                        ({"backends": True}, "must be int")):
        with pytest.raises(AgentRefused, match=said):
            client.call("POST", path, {"holder": "ctl-test-1", "stack": stack})
    with pytest.raises(AgentRefused, match="reload into a shipped profile's name"):
        client.call("POST", path, {"holder": "ctl-test-1", "stack": {},
                                   "faults": ["1s:reload:/tmp/x.toml"]})
    with pytest.raises(AgentRefused, match="there is no backend-7"):
        client.call("POST", path, {"holder": "ctl-test-1", "stack": {},
                                   "faults": ["1s:kill:backend-7"]})
    assert lab.current is None
    assert send(url, "GET", "/v1/info", b"",
                sign_headers(read, "GET", "/v1/info"))[1]["state"] == "idle"
    assert children_started() == []  # no nginx, no backend was started
    assert not lab.root.exists() or not any(lab.root.iterdir())  # no run folder either


def test_a_skewed_clock_is_named_with_its_size():
    from analysis.signing import Refused, Verifier

    v = Verifier({"control": "c" * 20})
    headers = sign_headers("c" * 20, "GET", "/v1/time", now=1000.0)
    with pytest.raises(Refused, match=r"stale timestamp: \+45\.0 s") as e:
        v.verify("GET", "/v1/time", b"", headers, now=955.0)
    assert e.value.skew_s == pytest.approx(45.0)
    assert v.verify("GET", "/v1/time", b"", sign_headers("c" * 20, "GET", "/v1/time",
                                                        now=980.0), now=955.0) == "control"
    assert headers[TIME_HEADER] == "1000.000"


def test_a_stack_description_crosses_the_wire_unchanged_but_the_agent_keeps_its_ports():
    spec = StackSpec(profile="longpoll", nginx_overrides={"upstream_keepalive": 16,
                                                          "worker_shutdown_timeout": 2},
                     backends=2, loop="uvloop", state="redis", max_hold_s=60.0,
                     delivery_delay_ms=3.0, port=1234, backend_port=2345)
    base = StackSpec(port=18080, backend_port=18000, bind="10.0.0.5")
    wire = json.loads(json.dumps(spec_to_wire(spec)))
    assert spec_from_wire(wire, base) == replace(spec, port=18080, backend_port=18000,
                                                 bind="10.0.0.5")
    from pollbench.errors import UserError

    with pytest.raises(UserError, match="name of a profile shipped"):
        spec_to_wire(StackSpec(profile="/tmp/mine.toml"))
    with pytest.raises(UserError, match="--cpus sets up this host's stack"):
        spec_to_wire(StackSpec(cpus=(1,)))


def test_a_stack_is_kept_for_its_holder_refused_to_another_and_stopped_when_the_lease_lapses(
        lab):
    lab, agent, tokens = lab
    client = AgentClient(agent.url, tokens["control"])
    mine = Session(client, lease_s=60)
    info = mine.ensure(StackSpec(profile="keepalive", backends=2))
    assert info["state"] == "running" and info["reused"] is False
    assert info["stack"]["profile"] == "keepalive" and info["stack"]["backends"] == 2
    url = f"http://127.0.0.1:{info['stack']['port']}"
    assert answers(f"{url}/healthz")
    first = info["run_dir"]
    assert mine.ensure(StackSpec(profile="keepalive", backends=2))["reused"] is True
    other = Session(client, lease_s=3)
    with pytest.raises(AgentRefused, match="held by another controller") as e:
        other.ensure(StackSpec(), wait_s=0)
    assert e.value.status == 409
    mine.close()  # stopped: idle, and the port is free
    assert lab.current is None and not answers(f"{url}/healthz")
    assert children_started() == []
    # a controller that stops renewing (its renewer is stopped as if it were killed)
    info = other.ensure(StackSpec())
    assert info["run_dir"] != first
    # the next port set: no socket of the stack before (TIME_WAIT) meets this one
    assert {info["stack"]["port"], int(url.rsplit(":", 1)[1])} == {lab.base.port,
                                                                  lab.base.port + 1}
    url = f"http://127.0.0.1:{info['stack']['port']}"
    assert answers(f"{url}/healthz")
    thread, stop = other._renewer
    stop.set()
    thread.join()
    lapsed_from = time.monotonic()
    assert wait_until(lambda: lab.current is None, 10, interval=0.1)
    lapsed = time.monotonic() - lapsed_from
    assert lapsed <= 3 + 1.5, lapsed  # the lease (3 s) and the watchdog's half second
    assert "ran out" in lab.last["why"] and not answers(f"{url}/healthz")
    assert children_started() == []
    with pytest.raises(AgentRefused, match="no stack runs"):
        client.call("POST", "/v1/lease", {"holder": other.holder, "lease_s": 3})


def test_renewals_go_on_while_a_sweep_replaces_its_stack(lab):
    """A sweep's next cell needs another stack: the agent stops the old one and starts the
    new, and a renewal sent in between would find no stack; the session holds its renewals
    back during a start, so the lease is never reported lost."""
    lab, agent, tokens = lab
    session = Session(AgentClient(agent.url, tokens["control"]), lease_s=2)  # renews each 0.5 s
    try:
        first = session.ensure(StackSpec(backends=1))
        for backends in (2, 1, 2):  # each a replacement, a second or more long
            info = session.ensure(StackSpec(backends=backends))
            assert info["reused"] is False and info["stack"]["backends"] == backends
        renewed_from = lab.current.expires
        assert wait_until(lambda: lab.current.expires > renewed_from + 0.9, 5)  # 2 renewals
        assert session.lost is None and lab.current is not None
        assert lab.current.run_dir.name != first["run_dir"]
    finally:
        session.close()
    assert lab.current is None and children_started() == []
