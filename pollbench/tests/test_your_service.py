"""Your service in your repository: backends from your command, Socket.IO long-polling, the
project file with thresholds, `pollbench init`, and `check` against your base revision
(examples/socketio/ is the service)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.protocols import BadAnswer, load_protocol, stamp_body
from pollbench.records.runinfo import validate_run_json
from pollbench.tests.conftest import REPO, free_stack_ports, pollbench_cmd
from pollbench.tests.test_check import git

EXAMPLE = REPO / "examples" / "socketio"


class Answer:
    def __init__(self, status: int, body: bytes):
        self.status, self.body = status, body


def copy_example(dest: Path, **edits: str) -> Path:
    """examples/socketio/ in a folder of its own, the project file's lines replaced."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(EXAMPLE / "app.py", dest / "app.py")
    text = (EXAMPLE / "pollbench.toml").read_text()
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    (dest / "pollbench.toml").write_text(text)
    return dest


def pollbench(cwd: Path, *args: str, timeout: float = 240, **env: str
              ) -> subprocess.CompletedProcess:
    return subprocess.run(pollbench_cmd(*args), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})


def free_ports(backends: int = 4) -> list[str]:
    """--port and --backend-port free here (never the defaults: a test beside a stack, or
    beside another test's claim of them, must not collide)."""
    port, backend_port = free_stack_ports(backends)
    return ["--port", str(port), "--backend-port", str(backend_port)]


# -- the Socket.IO protocol, on its own ----------------------------------------------------

def test_socketio_opens_a_session_joins_and_answers_every_ping_before_the_next_poll():
    proto = load_protocol("socketio")()
    cur = proto.new_cursor("ch3")
    hello = proto.poll("ch3", cur)
    assert hello.method == "GET" and "EIO=4" in hello.target and "room=ch3" in hello.target
    assert f"lb={cur.lb}" in hello.target and "sid=" not in hello.target
    opened = proto.read_poll(Answer(200, b'0{"sid":"S1","pingInterval":25000}'), cur)
    assert opened.messages == () and [r.body for r in opened.send] == [b"40"]
    assert all(f"lb={cur.lb}" in r.target and "sid=S1" in r.target for r in opened.send)
    cur = opened.cursor
    # three events and a ping in one body: three messages, one pong
    stamps = [stamp_body("p", i, 1.0, 40).decode() for i in (1, 2, 3)]
    body = "\x1e".join(['40{"sid":"x"}', *(f'42["msg",{s}]' for s in stamps), "2",
                        '42["other",{}]']).encode()
    got = proto.read_poll(Answer(200, body), cur)
    assert [m.stamp[1] for m in got.messages] == [1, 2, 3]
    assert [r.body for r in got.send] == [b"3"] and got.cursor.connected
    # the next poll is on the session, and one GET at a time
    assert "sid=S1" in proto.poll("ch3", got.cursor).target


def test_a_session_the_server_forgot_starts_over_and_counts_its_cause():
    proto = load_protocol("socketio")()
    cur = proto.read_poll(Answer(200, b'0{"sid":"S1"}'), proto.new_cursor("ch0")).cursor
    with pytest.raises(BadAnswer, match="Invalid session") as e:
        proto.read_poll(Answer(400, b'"Invalid session S1"'), cur)
    assert e.value.session_lost
    for body in (b"1", b'41'):
        with pytest.raises(BadAnswer) as e:
            proto.read_poll(Answer(200, body), cur)
        assert e.value.session_lost


# -- the project file, init, and refusals before anything starts ---------------------------

def test_init_writes_a_project_file_that_reads_back_and_is_never_overwritten(tmp_path):
    first = pollbench(tmp_path, "init")
    assert first.returncode == 0, first.stderr
    from pollbench.stack.project import read

    project = read(tmp_path / "pollbench.toml")
    assert project.options["protocol"] == "socketio" and project.backend is not None
    assert project.thresholds["delivery_p99_ms"] == 250
    before = (tmp_path / "pollbench.toml").read_text()
    again = pollbench(tmp_path, "init", "--protocol", "nchan")
    assert again.returncode == 2 and "never overwrites" in again.stderr
    assert (tmp_path / "pollbench.toml").read_text() == before


@pytest.mark.parametrize("edit, expected", [
    ({'users = 200': 'userz = 200'}, "unknown key 'userz'"),
    ({'delivery-p99-ms = 250': 'delivery-p98-ms = 250'}, "unknown threshold 'delivery-p98-ms'"),
    ({'error-rate = 0.01': 'error-rate = 5'}, "error-rate is a fraction"),
    ({'--redis {redis_url}': '--redis {redis}'}, "unknown placeholder {redis}"),
    ({'profile = "socketio"': 'profile = "seed"'}, "uses {redis_url}: add --state redis"),
    ({'{python} app.py': 'no-such-server app.py'}, "'no-such-server' is not found on PATH"),
    ({'ready = "/healthz"': 'ready = "healthz"'}, "must be an HTTP path"),
    ({'ready = "/healthz"': 'ready = "/healthz"\nmetrics = "/m\'etrics"'},
     "metrics path \"/m'etrics\" must be an HTTP path"),
])
def test_a_bad_project_file_is_refused_in_one_line_before_anything_starts(tmp_path, edit,
                                                                           expected):
    folder = copy_example(tmp_path / "app", **edit)
    proc = pollbench(folder, "run", "--duration", "5s", *free_ports(), timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("pollbench: error")]
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert not (folder / "results").exists()  # refused before any run folder


NEVER_READY = """\
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
print('listening, but /healthz is not served yet', flush=True)
HTTPServer(('127.0.0.1', int(sys.argv[sys.argv.index('--port') + 1])),
           BaseHTTPRequestHandler).serve_forever()
"""


@pytest.mark.slow
@pytest.mark.parametrize("app, says", [
    ("import sys\nprint('cannot bind: address in use')\nsys.exit(3)\n",
     ["backend-0 exited at start with code 3", "cannot bind: address in use"]),
    (NEVER_READY, ["backend-0 did not answer http://127.0.0.1:", "/healthz within 2 s",
                   '"GET /healthz HTTP/1.1" 501']),  # what it printed last
])
def test_a_backend_command_that_exits_or_never_gets_ready_is_refused_with_its_last_lines(
        tmp_path, app, says):
    folder = copy_example(tmp_path / "app")
    (folder / "app.py").write_text(app)
    port, backend_port = free_stack_ports()
    proc = pollbench(folder, "run", "--duration", "5s", "--port", str(port), "--backend-port",
                     str(backend_port), "--backend-ready-timeout", "2", timeout=90)
    assert proc.returncode == 3, proc.stderr
    for text in says:
        assert text in proc.stderr
    runs = list((folder / "results").glob("*"))  # the failed run still leaves its logs
    assert len(runs) == 1 and (runs[0] / "logs" / "backend-0.log").is_file()
    info = json.loads((runs[0] / "run.json").read_text())
    assert info["status"] == "failed"
    import psutil  # every backend started from the folder was stopped

    assert not [p for p in psutil.process_iter(["cwd"]) if p.info["cwd"] == str(folder)]


# -- the example app, measured as a user would ----------------------------------------------

@pytest.mark.slow
def test_run_with_no_options_measures_the_example_behind_nginx_with_nothing_lost(tmp_path):
    folder = copy_example(tmp_path / "app", **{'duration = "20s"': 'duration = "8s"'})
    (folder / ".gitignore").write_text("results/\n")
    git(folder, "init", "-q", "-b", "main")
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", "the app")
    port, backend_port = free_stack_ports()
    proc = pollbench(folder, "run", "--port", str(port), "--backend-port", str(backend_port))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    assert run_dir.parent == folder / "results"  # your runs in your project
    info = json.loads((run_dir / "run.json").read_text())
    validate_run_json(info)
    assert info["status"] == "complete" and info["parameters"]["protocol"] == "socketio"
    assert info["stack"]["backends"] == 4 and info["stack"]["state"] == "redis"
    assert info["stack"]["backend_command"]["command"].startswith("{python} app.py")
    assert info["stack"]["nginx"]["balance"] == "arg-hash"
    # the commit measured is yours (history and compare key on it), pollbench's beside it
    assert info["git"]["commit"] == git(folder, "rev-parse", "HEAD").strip()
    assert info["git"]["dirty"] is False and info["pollbench_git"] != info["git"]
    assert info["thresholds"]["crossed"] == [] and len(info["thresholds"]["limits"]) == 3
    lg = info["loadgen"]
    assert lg["delivered"] > 1000 and lg["lost"] == 0 and lg["duplicates"] == 0
    assert lg["http_failures"] == 0
    # every backend was sampled and priced: their CPU is in the cost per delivery
    assert info["cost"]["figures"]["cpu_per_kdelivery_backends"] > 0
    assert (run_dir / "report" / "report.html").is_file()
    from analysis.figures import compute
    from analysis.load import load_run

    summary = compute(load_run(run_dir)).summary
    assert "cpu_per_kdelivery_backends" not in summary["not_measured"]
    assert summary["backend_stalls"] == []  # no /stats to read is not a stall ...
    assert "no /stats" in summary["not_measured"]["backend_stalls"]  # ... it is unknown
    for i in range(4):
        assert (run_dir / "logs" / f"backend-{i}.log").stat().st_size > 0


@pytest.mark.slow
def test_faults_and_prometheus_work_on_your_backends(tmp_path):
    """A kill and a stall of the user's backends, as of the reference target's; --prometheus
    scrapes nginx and the load generator (the example serves no metrics: no backend job),
    and the load generator's endpoint prices every backend's CPU."""
    from pollbench.stack.processes import wait_until
    from pollbench.tests.children import Output
    from pollbench.tests.test_prometheus import query

    folder = copy_example(tmp_path / "app", **{'duration = "20s"': 'duration = "14s"'})
    proc = subprocess.Popen(
        pollbench_cmd("run", *free_ports(), "--prometheus", "--no-report",
                      "--fault", "4s:kill=2s:backend-1", "--fault", "9s:stop=2s:backend-2",
                      "--threshold", "lost-messages=1000000", "--threshold", "error-rate=1",
                      "--threshold", "delivery-p99-ms=100000"),
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = Output(proc)
    try:
        assert output.wait_for("Prometheus: http://", 90), output.text()
        url = re.search(r"Prometheus: (http://127\.0\.0\.1:\d+)", output.text()).group(1)

        def up_jobs() -> list[str]:
            try:
                return sorted(r["metric"]["job"] for r in query(url, "up")
                              if r["value"][1] == "1")
            except OSError:
                return []

        assert wait_until(lambda: up_jobs() == ["loadgen", "nginx"], 20), query(url, "up")

        def components() -> set[str]:
            return {r["metric"]["component"] for r in
                    query(url, "pollbench_loadgen_component_cpu_seconds_total")}

        assert wait_until(lambda: {"backend-1", "backend-3", "nginx"} <= components(), 20), \
            components()
    finally:
        proc.wait(120)
    assert proc.returncode == 0, output.text()[-3000:]
    run_dir = Path(output.text().strip().splitlines()[-1])
    info = json.loads((run_dir / "run.json").read_text())
    assert "job_name: backend" not in (run_dir / "prometheus" / "prometheus.yml").read_text()
    kill, stop = info["faults"]
    assert kill["ok"] and "restarted as pid" in kill["detail"]
    assert stop["ok"] and "stopped for 2 s" in stop["detail"]
    # the killed backend forgot its sessions: their next polls are answered Invalid session
    causes = {f["cause"]: f for f in info["failures"]}
    assert causes["HTTP 400 from Engine.IO: Invalid session"]["source"] == "Engine.IO"
    assert info["loadgen"]["delivered"] > 1000
    log = (run_dir / "logs" / "backend-1.log").read_text()  # both starts kept in one log
    assert log.count("# pollbench started:") == 2 and "GET /metrics" not in log


@pytest.mark.slow
def test_the_web_ui_long_polling_tab_measures_your_service(tmp_path):
    """`pollbench ui` in the example's folder: the start form offers what the protocol can
    run (no task pollers), the "Long polling" tab's figures move, what Socket.IO cannot give
    reads "not measured", and the stopped test gets its report."""
    import signal

    from pollbench.stack.net import find_free_ports
    from pollbench.stack.processes import wait_until
    from pollbench.tests.children import Output, stop_process
    from pollbench.tests.test_ui import CHROMIUM, CHROMIUM_ARGS, moving_tab, number

    folder = copy_example(tmp_path / "app")
    web_port = find_free_ports(1, 33000, 36000)
    proc = subprocess.Popen(pollbench_cmd("ui", *free_ports(), "--web-port", str(web_port)),
                            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    output = Output(proc)
    try:
        assert output.wait_for("Ctrl-C", 90), output.text()
        assert "your backends serve none" in output.text()
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{web_port}/", timeout=30000)
            assert page.input_value('input[name="userCount"]') == "200"  # the project's
            html = page.content()
            assert "ChannelSubscriber" in html and "TaskPoller" not in html
            page.fill('input[name="userCount"]', "40")
            page.fill('input[name="spawnRate"]', "40")
            page.click('button[type="submit"]')
            page.wait_for_selector("td:has-text('DELIVERY')", timeout=45000)
            figures = moving_tab(page)
            assert figures["lost: never delivered (gap in seq)"][1] == "0"
            assert figures["epoch changes"][1].startswith("not measured")
            assert not [k for k in figures if k.startswith("errors:")], figures
            assert number(figures["cost per 1,000 deliveries, backends (CPU-s)"][1]) > 0
            page.click("text=Stop")
            test_dir = next((folder / "results").glob("*-ui-*")) / "tests" / "001"
            assert wait_until(lambda: (test_dir / "report" / "report.html").exists(), 60)
            browser.close()
    finally:
        stop_process(proc, signal.SIGINT, 120)
        tail = output.wait_closed(10)
    assert proc.returncode == 0, tail
    record = json.loads((test_dir / "run.json").read_text())
    assert record["parameters"]["protocol"] == "socketio"
    assert record["parameters"]["user_classes"] == ["ChannelSubscriber", "Publisher"]
    assert record["loadgen"]["lost"] == 0 and record["loadgen"]["delivered"] > 0


@pytest.mark.slow
def test_a_crossed_threshold_exits_1_naming_it_and_the_measured_figure(tmp_path):
    folder = copy_example(tmp_path / "app", **{'duration = "20s"': 'duration = "6s"',
                                               'delivery-p99-ms = 250': 'delivery-p99-ms = 1'})
    (folder / "pollbench.toml").write_text((folder / "pollbench.toml").read_text().replace(
        "[backend]", "backends = 2\n\n[backend]"))
    port, backend_port = free_stack_ports(2)
    proc = pollbench(folder, "run", "--port", str(port), "--backend-port", str(backend_port),
                     "--no-report", EMIT_DELAY_MS="5")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "threshold crossed: delivery-p99-ms" in proc.stderr
    assert "crossed its threshold 1" in proc.stderr
    # the command line wins over the file
    proc = pollbench(folder, "run", "--port", str(port), "--backend-port", str(backend_port),
                     "--no-report", "--threshold", "delivery-p99-ms=5000")
    assert proc.returncode == 0, proc.stderr[-3000:]


# -- the check in your repository -------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.serial
def test_check_in_your_repository_catches_a_delay_per_emit_and_passes_an_a_a(tmp_path):
    """The whole path: a repository of the example app with two commits, the second adding
    a delay to every emit; `pollbench check --baseline-ref HEAD~1` there names delivery
    latency and exits 1, and `--baseline-ref HEAD` (A/A) exits 0."""
    repo = copy_example(tmp_path / "repo", **{'duration = "5s"': 'duration = "3s"'})
    (repo / "pollbench.toml").write_text((repo / "pollbench.toml").read_text().replace(
        "[backend]", "backends = 2\n\n[backend]"))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the app")
    app = (repo / "app.py").read_text()
    slow = app.replace('os.environ.get("EMIT_DELAY_MS", "0")', 'os.environ.get("EMIT_DELAY_MS", "15")')
    assert slow != app
    (repo / "app.py").write_text(slow)
    git(repo, "commit", "-q", "-am", "every emit waits 15 ms")
    port, backend_port = free_stack_ports(2)
    common = ("--repeat", "10", "--format", "json", "--port", str(port), "--backend-port",
              str(backend_port))
    proc = pollbench(repo, "check", "--baseline-ref", "HEAD~1", *common, timeout=420)
    assert proc.returncode == 1, proc.stderr[-3000:]
    verdict = json.loads(proc.stdout[proc.stdout.index("{"):])
    metrics = {m["metric"]: m for m in verdict["metrics"]}
    assert metrics["delivery_latency_p50"]["status"] == "regression"
    assert metrics["lost_messages"]["status"] == "ok"
    assert "at HEAD~1" in proc.stdout and "the working tree" in proc.stdout  # the sides named
    proc = pollbench(repo, "check", "--baseline-ref", "HEAD", *common, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_the_example_app_imports_with_the_pinned_packages():
    proc = subprocess.run([sys.executable, "-c", "import app; app.make_app(None)"],
                          cwd=EXAMPLE, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_a_users_own_adapter_loaded_by_module_and_class_measures_their_api(tmp_path):
    """examples/events/: a made-up API and the adapter of docs/your-service.md, loaded as
    adapter:EventsApi from the project's folder (not importable from anywhere else)."""
    folder = tmp_path / "events"
    shutil.copytree(REPO / "examples" / "events", folder)
    text = (folder / "pollbench.toml").read_text().replace('duration = "20s"',
                                                           'duration = "6s"')
    (folder / "pollbench.toml").write_text(text)
    port, backend_port = free_stack_ports(1)
    proc = pollbench(folder, "run", "--port", str(port), "--backend-port", str(backend_port),
                     "--no-report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((Path(proc.stdout.strip().splitlines()[-1]) / "run.json").read_text())
    assert info["accounting"]["protocol"] == "events"
    assert info["accounting"]["order"].startswith("the publisher's stamp")
    lg = info["loadgen"]
    assert lg["delivered"] > 500 and lg["lost"] == 0 and lg["http_failures"] == 0


def test_the_worked_adapter_in_the_docs_is_the_one_the_tests_run_and_under_60_lines():
    adapter = (REPO / "examples" / "events" / "adapter.py").read_text()
    assert len(adapter.splitlines()) < 60
    import textwrap

    code = textwrap.indent(adapter[adapter.index("from loadtests"):].rstrip(), "    ")
    assert code in (REPO / "docs" / "your-service.md").read_text()  # as a code block


@pytest.mark.parametrize("spec, expected", [
    ("nosuchmodule:X", "module nosuchmodule does not import"),
    ("adapter:Nope", "module adapter has no Nope"),
    ("adapter:Half", "Half does not implement read_poll, publish"),
])
def test_a_users_adapter_that_does_not_load_is_refused_in_one_line(tmp_path, spec, expected):
    folder = tmp_path / "events"
    shutil.copytree(REPO / "examples" / "events", folder)
    with open(folder / "adapter.py", "a") as f:
        f.write("\n\nclass Half(Protocol):\n    def poll(self, channel, cursor):\n"
                "        return Request('GET', '/')\n")
    proc = pollbench(folder, "run", "--protocol", spec, "--duration", "5s", *free_ports(1),
                     timeout=60)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("pollbench: error")]
    assert len(lines) == 1 and expected in lines[0], proc.stderr


@pytest.mark.slow
def test_a_project_runs_against_its_service_already_running_with_target(tmp_path):
    """`--target URL` in a project's folder: the project's protocol and load apply, its
    stack settings (backends = 1) are left aside instead of refused, and the stack's own
    figures read "not measured"."""
    folder = tmp_path / "events"
    shutil.copytree(REPO / "examples" / "events", folder)
    port = free_stack_ports(0)[0]
    server = subprocess.Popen([sys.executable, "server.py", "--port", str(port)], cwd=folder,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        from pollbench.stack.net import answers
        from pollbench.stack.processes import wait_until

        assert wait_until(lambda: answers(f"http://127.0.0.1:{port}/healthz"), 15)
        proc = pollbench(folder, "run", "--target", f"http://127.0.0.1:{port}", "--users",
                         "50", "--duration", "4s", "--no-report")
        assert proc.returncode == 0, proc.stderr[-3000:]
        refused = pollbench(folder, "run", "--target", f"http://127.0.0.1:{port}",
                            "--backends", "2", "--duration", "4s", timeout=60)
        assert refused.returncode == 2 and "--backends shape(s) a stack" in refused.stderr
    finally:
        server.terminate()
        server.wait(10)
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    info = json.loads((run_dir / "run.json").read_text())
    assert info["stack"]["external"] and info["accounting"]["protocol"] == "events"
    assert info["loadgen"]["lost"] == 0 and info["loadgen"]["delivered"] > 0
    from analysis.figures import compute
    from analysis.load import load_run

    summary = compute(load_run(run_dir)).summary
    assert "cpu_per_kdelivery_stack" not in summary["metrics"]
    assert "not started by pollbench" in summary["not_measured"]["cpu_per_kdelivery_stack"]


def test_your_backends_metrics_path_is_the_one_prometheus_scrapes():
    from pollbench.stack.prometheus import render_config, scrape_jobs

    text = render_config(scrape_jobs([8000, 8001], 9113, 9200), paths={"backend": "/prom"})
    backend_job = text[text.index("job_name: backend"):text.index("job_name: nginx")]
    assert "metrics_path: '/prom'" in backend_job and "'127.0.0.1:8001'" in backend_job
    assert text.count("metrics_path") == 1  # nginx's and the load generator's: /metrics
    assert "job_name: backend" not in render_config(scrape_jobs([], 9113, 9200))
