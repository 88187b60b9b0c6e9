"""The target host's agent: token, the run's own files only, the clock; and clock offsets."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from analysis.clock import combine, estimate, measure, too_uncertain
from pollbench.stack.agent import AGENT_FILES, Agent, new_token

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str, token: str | None = None, method: str = "GET") -> tuple[int, bytes]:
    """A request signed with ``token`` (None: unsigned)."""
    from urllib.parse import urlsplit

    from analysis.signing import sign_headers

    req = urllib.request.Request(url, method=method, data=b"" if method != "GET" else None)
    if token is not None:
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        for k, v in sign_headers(token, method, path).items():
            req.add_header(k, v)
    try:
        with OPENER.open(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def agent(tmp_path):
    run = tmp_path / "run"
    (run / "nginx" / "logs").mkdir(parents=True)
    (run / "nginx" / "logs" / "access.jsonl").write_text('{"status": 200}\n' * 3)
    (run / "nginx" / "nginx.conf").write_text("events {}\n")
    (tmp_path / "secret.txt").write_text("not for the controller")
    token = new_token()
    with Agent(run, token, {"pollbench": "test", "backends": 4}) as a:
        yield a, token


def test_every_endpoint_needs_a_request_signed_with_the_token(agent):
    a, token = agent
    for path in ("/v1/time", "/v1/info", "/v1/files/nginx_access_log"):
        assert get(a.url + path)[0] == 401
        assert get(a.url + path, "wrong-" + token)[0] == 401
        assert get(a.url + path, token)[0] == 200
    status, body = get(a.url + "/v1/time")
    assert status == 401 and b"unsigned request" in body
    req = urllib.request.Request(a.url + "/v1/time", headers={"Authorization": f"Bearer {token}"})
    with pytest.raises(urllib.error.HTTPError) as e:  # the token itself is no key any more
        OPENER.open(req, timeout=5)
    e.value.close()
    assert e.value.code == 401


def test_only_the_runs_known_files_are_served_read_only(agent):
    a, token = agent
    status, body = get(a.url + "/v1/files/nginx_access_log", token)
    assert status == 200 and body == b'{"status": 200}\n' * 3
    assert get(a.url + "/v1/files/nginx_access_log?offset=16", token)[1] == \
        b'{"status": 200}\n' * 2
    assert json.loads(get(a.url + "/v1/info", token)[1]) == {"pollbench": "test", "backends": 4}
    for path in ("/v1/files/../secret.txt", "/v1/files/..%2Fsecret.txt", "/v1/files/secret.txt",
                 "/v1/files/%2Fetc%2Fpasswd", "/etc/passwd", "/v1/files/"):
        status, body = get(a.url + path, token)
        assert status == 404 and b"not for the controller" not in body, path
    assert get(a.url + "/v1/files/processes", token)[0] == 404  # known, not written yet
    assert get(a.url + "/v1/files/nginx_access_log?offset=-1", token)[0] == 400
    status, body = get(a.url + "/v1/files/nginx_access_log", token, method="POST")
    assert status == 405 and b"read-only (pollbench up)" in body
    assert set(AGENT_FILES) >= {"nginx_access_log", "nginx_error_log", "nginx_conf", "processes",
                                "stub_status", "backend_stats"}


def test_the_agent_binds_loopback_unless_told_and_refuses_short_tokens(tmp_path):
    with Agent(tmp_path, new_token(), {}) as a:
        assert a.url.startswith("http://127.0.0.1:")
    with pytest.raises(ValueError, match="16 characters"):
        Agent(tmp_path, "short", {})


def test_the_offset_is_the_shortest_round_trips_midpoint():
    # the remote clock is 250 ms ahead; delays are asymmetric, the shortest exchange wins
    exchanges = [(0.0, 0.25 + 0.030, 0.040), (1.0, 1.25 + 0.001, 1.004), (2.0, 2.25 + 0.02, 2.1)]
    o = estimate(exchanges)
    assert abs(o.offset_s - 0.25) <= o.uncertainty_s == pytest.approx(0.002)
    assert o.exchanges == 3
    with pytest.raises(ValueError, match="no usable clock exchange"):
        estimate([(1.0, 5.0, 0.5)])


def test_offsets_before_and_after_a_run_combine_with_their_drift():
    before = estimate([(0.0, 0.1005, 0.001)])
    after = estimate([(100.0, 100.1025, 100.001)])  # drifted 2 ms apart during the run
    both = combine(before, after)
    assert both.offset_s == pytest.approx(0.101)
    assert both.uncertainty_s == pytest.approx(0.0005 + 0.001)


def test_the_offset_to_an_agent_on_this_host_is_zero_within_its_uncertainty(agent):
    a, token = agent
    o = measure(lambda: json.loads(get(a.url + "/v1/time", token)[1])["time"], count=8)
    assert abs(o.offset_s) <= o.uncertainty_s + 1e-4 and o.uncertainty_s < 0.05


def test_an_uncertain_clock_is_flagged_against_the_p50():
    o = estimate([(0.0, 0.0, 0.004)])  # +-2 ms
    assert too_uncertain(o, 10.0) is not None and "+-2.00 ms" in too_uncertain(o, 10.0)
    assert too_uncertain(o, 40.0) is None


def test_the_controller_pulls_the_target_side_and_says_what_is_wrong(agent, tmp_path):
    import time

    from pollbench.errors import UserError
    from pollbench.stack.net import find_free_ports
    from pollbench.stack.remote import AgentClient, pull_run

    a, token = agent
    client = AgentClient(a.url, token)
    assert client.info()["pollbench"] == "test"
    assert abs(client.clock_offset(4).offset_s) < 0.05
    local = tmp_path / "local-run"
    at_start = client.sizes()  # the run starts: the logs so far are not its own
    with (a.run_dir / "nginx" / "logs" / "access.jsonl").open("a") as f:
        f.write('{"status": 204}\n')
    got = pull_run(client, local, at_start, time.time() - 5, time.time() + 5)
    assert got["nginx_access_log"] == "nginx/logs/access.jsonl" and got["processes"] is None
    assert (local / "nginx" / "logs" / "access.jsonl").read_text() == '{"status": 204}\n'
    assert (local / "nginx" / "nginx.conf").read_text() == "events {}\n"
    assert not list(local.rglob("*.part"))
    with pytest.raises(UserError, match="refused the token"):
        AgentClient(a.url, "x" * 20).info()
    with pytest.raises(UserError, match="does not answer"):
        AgentClient(f"http://127.0.0.1:{find_free_ports(1)}", token, timeout=1).info()
    for bad in ("ftp://h:1", "http://h", "http://h:1/x", "h:1"):
        with pytest.raises(UserError, match="must be http://HOST:PORT"):
            AgentClient(bad, token)


def test_an_agent_failing_before_the_load_leaves_the_run_failed_not_running(tmp_path):
    """The agent's first calls come after run.json says "running": if they fail, the record
    must still end (it used to stay "running" for ever)."""
    from types import SimpleNamespace

    from pollbench.actions import remote_run
    from pollbench.actions.runloop import base_parameters, drive
    from pollbench.errors import UserError
    from pollbench.records.rundir import write_json_atomic
    from pollbench.records.runrecord import record_start
    from pollbench.stack.loadgen import LoadSpec

    class VanishedAgent:
        url = "http://127.0.0.1:9"

        def clock_offset(self):
            raise UserError("agent http://127.0.0.1:9 does not answer: connection refused")

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    load = LoadSpec(users=10, duration_s=5)
    record = record_start("run", base_parameters(load), {"stack": {}, "software": {}, "host": {}})
    record["distributed"] = {}
    write_json_atomic(run_dir / "run.json", record)
    remote = SimpleNamespace(master_bind="127.0.0.1", master_port=5557, expect_workers=1,
                             workers_timeout_s=5, token="x" * 16)
    with pytest.raises(UserError):
        side = remote_run.RemoteSide(remote, VanishedAgent(), "http://127.0.0.1:8080", run_dir)
        drive(side, load, run_dir, record, report=False, history_source="run")
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and "does not answer" in info["exit"]["reason"]


def test_a_generated_token_can_be_typed_after_agent_token():
    """A printed token is pasted after --agent-token: it must never look like an option (a
    URL-safe one started with "-" one time in 64 and broke a test at random)."""
    from pollbench.cli import build_parser

    for _ in range(500):
        token = new_token()
        assert not token.startswith("-") and len(token) >= 16
    args = build_parser().parse_args(["run", "--target", "http://127.0.0.1:8080", "--agent",
                                      "http://127.0.0.1:9100", "--agent-token", token,
                                      "--expect-workers", "1"])
    assert args.agent_token == token
