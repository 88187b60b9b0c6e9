"""``pollbench run --target URL`` alone: a service pollbench did not start.

A stand-in service, written here, speaks Nchan's long-poll wire and serves every channel the
same stamped messages, wrongly by a known rule: it drops every 7th, repeats every 5th and
swaps every 11th with the next.  pollbench must count each exactly, from the publisher's
stamps alone, and say "not measured" for every figure of a stack it cannot see."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from pollbench.records.runinfo import validate_run_json
from pollbench.stack.net import find_free_ports
from pollbench.tests.children import Output, stop_process
from pollbench.tests.conftest import REPO, pollbench_cmd

pytestmark = pytest.mark.slow

STAND_IN = textwrap.dedent('''
    import json, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    SEQS = list(range(1, 26))
    SERVED = []
    for seq in SEQS:
        if seq % 7 == 0:
            continue                      # dropped: 7, 14, 21
        SERVED.append(seq)
        if seq % 5 == 0:
            SERVED.append(seq)            # repeated: 5, 10, 15, 20, 25
    i = 0
    while i < len(SERVED) - 1:            # swapped with the next: 11, 22
        if SERVED[i] % 11 == 0:
            SERVED[i], SERVED[i + 1] = SERVED[i + 1], SERVED[i]
            i += 1
        i += 1

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def reply(self, status, body=b"", headers=()):
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if not self.path.startswith("/sub/"):
                return self.reply(404)
            etag = self.headers.get("If-None-Match")
            index = 0 if etag is None else int(etag) + 1
            if index >= len(SERVED):      # nothing new: hold, then an empty 408
                time.sleep(1.0)
                return self.reply(408, headers=[("Etag", etag or "0")])
            body = json.dumps({"pb": ["stand-in", SERVED[index], time.time()]}).encode()
            self.reply(200, body, [("Last-Modified", "Sun, 06 Dec 2026 10:00:00 GMT"),
                                   ("Etag", str(index))])

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.reply(202, b"queued messages: 0\\n")

    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()
''')


@pytest.fixture
def stand_in():
    port = find_free_ports(1)
    proc = subprocess.Popen([sys.executable, "-c", STAND_IN, str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = Output(proc)
    assert output.wait_for("ready", 20), output.text()
    yield f"http://127.0.0.1:{port}"
    stop_process(proc)


def test_a_service_that_drops_repeats_and_swaps_is_counted_exactly_from_the_stamps(
        stand_in, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        pollbench_cmd("run", "--target", stand_in, "--protocol", "nchan", "--users", "5",
                      "--spawn-rate", "50", "--channels", "2", "--publish-rate", "0",
                      "--duration", "6s", "--out", str(out)),
        capture_output=True, text=True, timeout=120, cwd=REPO)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, said[-3000:]
    record = json.loads((out / "run.json").read_text())
    validate_run_json(record)
    assert record["stack"]["external"] is True and record["stack"]["url"] == stand_in
    assert record["accounting"]["order"].startswith("the publisher's stamp")
    lg = record["loadgen"]
    subscribers = 4  # 5 users, one of them the publisher
    # each subscriber sees the 25 stamps less 7, 14, 21 (lost), 5 repeats, 2 swaps
    assert lg["delivered"] == 22 * subscribers
    assert lg["lost"] == 3 * subscribers
    assert lg["duplicates"] == 5 * subscribers
    assert lg["reordered"] == 2 * subscribers
    assert f"lost {3 * subscribers}  duplicates {5 * subscribers}  out of order " \
           f"{2 * subscribers}" in said
    # the stack's figures are not measured, never 0; the client's are
    assert "stack not measured (not started by pollbench" in said
    summary = json.loads((out / "report" / "summary.json").read_text())
    for name in ("cpu_per_kdelivery_stack", "cpu_per_kdelivery_nginx", "cpu_percent_nginx",
                 "requests_per_connection_upstream"):
        assert name not in summary["metrics"]
        assert summary["not_measured"][name].startswith("not started by pollbench")
    assert summary["metrics"]["cpu_per_kdelivery_loadgen"]["value"] > 0
    assert summary["metrics"]["requests_per_connection_client"]["value"] > 1
    report = (out / "report" / "report.html").read_text()
    assert "not measured: not started by pollbench" in report
    assert not (out / "nginx").exists()  # nothing of a stack was made


def test_a_target_that_is_down_or_speaks_another_protocol_is_refused_in_one_line(
        stand_in, tmp_path):
    def refused(*args: str) -> str:
        proc = subprocess.run(pollbench_cmd("run", "--duration", "5s", "--out",
                                            str(tmp_path / "never"), *args),
                              capture_output=True, text=True, timeout=60, cwd=REPO)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert not (tmp_path / "never").exists()
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    nobody = f"http://127.0.0.1:{find_free_ports(1)}"
    assert "does not answer POST /pub/pollbenchprobe" in refused("--target", nobody,
                                                                 "--protocol", "nchan")
    assert "does not speak the pollbench protocol" in refused("--target", stand_in)
    assert "--profile shape(s) a stack pollbench starts" in refused(
        "--target", stand_in, "--protocol", "nchan", "--profile", "nchan")
    assert "module nosuchmodule does not import" in refused(
        "--target", stand_in, "--protocol", "nosuchmodule:Thing")
    assert "does not implement poll, read_poll, publish" in refused(
        "--target", stand_in, "--protocol", "loadtests.protocols:Protocol")
