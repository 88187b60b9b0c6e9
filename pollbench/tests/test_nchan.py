"""Nchan (nginx's pub/sub module) as a target: nginx alone, no backends, spoken through the
protocol seam (loadtests/protocols/nchan.py).  Needs Debian's libnginx-mod-nchan
(scripts/bootstrap.sh installs it)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.request

import pytest

from analysis.limits import count_nginx_errors
from pollbench.records.runinfo import validate_run_json
from pollbench.stack.nginx_config import NCHAN_MODULE
from pollbench.tests.conftest import REPO, pollbench_cmd, run_cmd

pytestmark = pytest.mark.skipif(not NCHAN_MODULE.is_file(),
                                reason="needs libnginx-mod-nchan (scripts/bootstrap.sh)")

BEHIND = textwrap.dedent('''
    import argparse, json, sys, time, urllib.request
    import locust  # monkey-patches, as in a real run
    import gevent
    from locust.env import Environment
    from loadtests.metrics import MetricsPlumbing
    from loadtests.users import ChannelSubscriber, Publisher

    url, published_while_behind = sys.argv[1], int(sys.argv[2])
    opts = argparse.Namespace(pb_connection="keepalive", pb_poll_timeout=20.0, pb_channels=1,
                              pb_retry_backoff="0.1:5", pb_protocol="nchan",
                              pb_message_bytes=64)
    env = Environment(user_classes=[ChannelSubscriber, Publisher], parsed_options=opts)
    env.create_local_runner()
    env.pollbench = plumbing = MetricsPlumbing(env, None)
    ChannelSubscriber.host = Publisher.host = url
    sub, pub = ChannelSubscriber(env), Publisher(env)
    sub.on_start()
    pub.on_start()

    def subscribers() -> int:
        with urllib.request.urlopen(url + "/nchan_status", timeout=5) as r:
            text = r.read().decode()
        return int(text.split("subscribers: ")[1].split()[0])

    first = gevent.spawn(sub.poll)    # a new subscriber waits for the next message
    deadline = time.time() + 20
    while subscribers() < 1 and time.time() < deadline:  # until Nchan holds its poll
        gevent.sleep(0.01)
    pub.publish("ch0")                # seq 1: the subscriber gets it
    first.join(timeout=10)
    for _ in range(published_while_behind):  # seqs 2 ..: the subscriber does not poll
        pub.publish("ch0")
    for _ in range(5):                # the buffer's 5: the oldest kept first
        sub.poll()
    counters = plumbing.recorder.cut()["counters"]
    print(json.dumps(counters))
''')


@pytest.mark.slow
def test_a_subscriber_behind_nchans_buffer_is_reported_losing_exactly_what_it_never_saw(
        stack_up, tmp_path):
    """Nchan hands a cursor older than its buffer the oldest kept message, with no error and
    no gap marker; the publisher's stamps must show exactly the messages skipped, and
    nginx's error log says it too."""
    profile = tmp_path / "nchan5.toml"
    profile.write_text('extends = "nchan"\n[nginx]\nnchan_message_buffer_length = 5\n')
    up = stack_up("--profile", str(profile), backends=0)
    proc = subprocess.run([sys.executable, "-c", BEHIND, up.url, "20"], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counters = json.loads(proc.stdout.strip().splitlines()[-1])
    # 21 published; seen: 1, then 17 .. 21 (the 5 kept): 2 .. 16 never arrived
    assert counters["published"] == 21
    assert counters["delivered"] == 6
    assert counters["lost_silent"] == 15
    assert "duplicate" not in counters and "reordered" not in counters
    error_log = (up.out / "nginx" / "logs" / "error.log").read_text().splitlines()
    assert count_nginx_errors(error_log).get("nchan_missed", 0) >= 1


@pytest.mark.slow
def test_a_run_against_nchan_delivers_everything_and_prices_nginx_alone(tmp_path):
    """``pollbench run --protocol nchan``: nginx holds the polls itself; no message is lost
    or repeated, nginx's cost per delivery is measured, and the backends' figures read "not
    measured" (there are none), never 0."""
    out = tmp_path / "run"
    proc = subprocess.run(run_cmd(out, "--protocol", "nchan", "--users", "201",
                                  "--channels", "10", "--publish-rate", "20", "--duration",
                                  "12s", "--no-report"),
                          capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "run.json").read_text())
    validate_run_json(record)
    assert record["status"] == "complete"
    assert record["stack"]["backends"] == 0 and record["stack"]["nginx"]["nchan"] is True
    assert record["accounting"]["protocol"] == "nchan"
    assert record["accounting"]["latency"].startswith("publisher send time")
    lg = record["loadgen"]
    assert lg["delivered"] > 1000 and lg["lost"] == 0 and lg["duplicates"] == 0
    assert lg["http_failures"] == 0
    figures = record["cost"]["figures"]
    assert figures["cpu_per_kdelivery_nginx"] > 0
    assert "cpu_per_kdelivery_backends" not in figures
    conf = (out / "nginx" / "nginx.conf").read_text()
    assert f"load_module {NCHAN_MODULE};" in conf and "proxy_pass" not in conf
    assert "lost 0  duplicates 0" in proc.stdout + proc.stderr
    from analysis.figures import compute
    from analysis.load import load_run

    summary = compute(load_run(out)).summary
    assert "cpu_per_kdelivery_backends" not in summary["metrics"]
    assert summary["not_measured"]["cpu_per_kdelivery_backends"].startswith("no backends")
    assert "epoch" in summary["not_measured"]["lost_epoch_messages"]


def test_nchan_knobs_are_typed_and_a_mismatched_protocol_is_refused_before_anything_starts(
        tmp_path):
    def refused(*args: str) -> str:
        proc = subprocess.run(pollbench_cmd("run", "--out", str(tmp_path / "never"), *args),
                              capture_output=True, text=True, timeout=60, cwd=REPO)
        assert proc.returncode == 2, proc.stderr
        assert not (tmp_path / "never").exists()
        return proc.stderr.strip().splitlines()[-1]

    bad = tmp_path / "bad.toml"
    bad.write_text('extends = "nchan"\n[nginx]\nnchan_subscriber_timeout = "30; include x"\n')
    assert "nginx knob nchan_subscriber_timeout" in refused("--profile", str(bad))
    seed_with = tmp_path / "seedwith.toml"
    seed_with.write_text('extends = "seed"\n[nginx]\nnchan_message_buffer_length = 10\n')
    assert "nchan_message_buffer_length needs nchan = true" in \
        refused("--profile", str(seed_with))
    assert "--protocol nchan does not speak to profile seed" in \
        refused("--protocol", "nchan", "--profile", "seed")
    assert "no background tasks" in refused("--protocol", "nchan", "--scenario", "tasks")
    short = tmp_path / "short.toml"
    short.write_text('extends = "nchan"\n[nginx]\nnchan_message_timeout = 60\n')
    assert "must outlast the run" in refused("--profile", str(short), "--duration", "2m")


def test_nchan_status_answers_on_the_stack_pollbench_up_starts(stack_up):
    up = stack_up("--profile", "nchan", backends=0)
    with urllib.request.urlopen(f"{up.url}/nchan_status", timeout=5) as resp:
        assert b"nchan version" in resp.read()
    assert "/sub/demo" in up.output.text()
