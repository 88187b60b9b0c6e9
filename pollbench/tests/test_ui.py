"""``pollbench ui`` in a real headless browser, as its user drives it: the form opens with
``pollbench run``'s defaults and refuses what it refuses, a test starts, the "Long polling"
tab's figures move and match the lossless data, the stopped test gets its run folder and a
report the UI links to, and Ctrl-C writes the test still running."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request

import psutil
import pytest

from analysis.hdr import merged, read_hdr_log, summary_ms
from pollbench.records.runinfo import validate_run_json
from pollbench.stack.net import find_free_ports
from pollbench.stack.processes import wait_until
from pollbench.tests.children import stop_process
from pollbench.tests.conftest import REPO, Output, free_stack_ports, pollbench_cmd

# runs whole stacks (or reports on them): left out of the quick subset (-m 'not slow')
pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]


def tab_figures(page) -> dict[str, tuple[str, str]]:
    """The "Long polling" table as {figure: (now, this test)}."""
    rows = page.locator("table tbody tr")
    figures = {}
    for i in range(rows.count()):
        cells = rows.nth(i).locator("td").all_inner_texts()
        if len(cells) >= 3:
            figures[cells[0]] = (cells[1], cells[2])
    return figures


def moving_tab(page) -> dict[str, tuple[str, str]]:
    """Opens the "Long polling" tab of a started test; its figures once deliveries are
    counted and have moved on (the tab follows the test: Locust's UI polls every 2 s)."""
    page.click("text=Long polling")
    page.wait_for_selector("td:has-text('delivery latency p99 (ms)')", timeout=20000)
    assert wait_until(lambda: tab_figures(page).get("deliveries", ("", "-"))[1] not in
                      ("-", "0"), 20)
    first = number(tab_figures(page)["deliveries"][1])
    assert wait_until(lambda: number(tab_figures(page)["deliveries"][1]) > first, 20)
    return tab_figures(page)


def number(text: str) -> float:
    return float(text.replace(",", ""))


def start_ui(out) -> tuple[subprocess.Popen, Output, int, int]:
    """``pollbench ui`` on free ports, once it says it is ready: (process, its output, the
    first backend's port, the web UI's port)."""
    port, backend_port = free_stack_ports()
    web_port = find_free_ports(1, 33000, 36000)
    proc = subprocess.Popen(
        pollbench_cmd("ui", "--port", str(port), "--backend-port", str(backend_port),
                      "--web-port", str(web_port), "--out", str(out)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    output = Output(proc)
    if not output.wait_for("Ctrl-C", 60):
        proc.kill()
        raise AssertionError(output.wait_closed(10))
    return proc, output, backend_port, web_port


def test_web_ui_long_polling_tab_per_test_runs_and_reports(tmp_path):
    if not shutil.which(CHROMIUM):
        pytest.fail("chromium is needed for the web UI test: scripts/bootstrap.sh --test "
                    "installs it (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    out = tmp_path / "ui"
    proc, output, _, web_port = start_ui(out)
    base = f"http://127.0.0.1:{web_port}"
    try:
        assert f"web UI:     {base}/" in output.text(), output.text()
        # the UI listens on loopback only
        listeners = {c.laddr for c in psutil.net_connections("tcp") if c.status == "LISTEN"}
        assert ("127.0.0.1", web_port) in listeners and ("0.0.0.0", web_port) not in listeners

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/", timeout=30000)
            # the form opens with pollbench run's defaults: 200 users within 5 s
            assert page.input_value('input[name="userCount"]') == "200"
            assert page.input_value('input[name="spawnRate"]') == "40"
            # what pollbench run refuses, the form refuses in the same words
            page.fill('input[name="userCount"]', "1")
            page.click('button[type="submit"]')
            page.wait_for_selector("text=--users must be at least 2 for the channels scenario",
                                   timeout=10000)
            assert not (out / "tests").exists()  # nothing started

            page.fill('input[name="userCount"]', "30")
            page.fill('input[name="spawnRate"]', "30")
            page.click('button[type="submit"]')
            page.wait_for_selector("td:has-text('DELIVERY')", timeout=45000)
            page.wait_for_selector("td:has-text('TASK')", timeout=45000)
            figures = moving_tab(page)
            assert number(figures["deliveries/s"][0]) > 0
            assert number(figures["HTTP requests/s (real requests only)"][0]) > 0
            assert figures["duplicate messages"][1] == "0"
            assert any(k.startswith("held polls, backend-") for k in figures)
            assert "nginx connections active / reading / writing / waiting" in figures
            assert "CPU % loadgen (one core = 100)" in figures
            # this test's deliveries priced in each component's CPU time (the sampler's)
            assert number(figures["cost per 1,000 deliveries, stack (CPU-s)"][1]) > 0
            assert number(figures["cost per 1,000 deliveries, load generator (CPU-s)"][1]) > 0
            # what ran out first, in the words of a run's report (the sampler's watch)
            ran_out = figures["what ran out first (this session)"][0]
            assert ran_out == "no limit was reached" or " ran out first, at " in ran_out
            # above the table, a drawn chart of delivery latency over time
            chart = page.locator("#pollbench-chart svg polyline[data-quantile='p99']")
            chart.first.wait_for(timeout=10000)
            assert len(chart.first.get_attribute("points").split()) >= 2
            page.screenshot(path=str(out / "ui-long-polling-tab.png"), full_page=True)

            page.click("text=Stop")
            test_dir = out / "tests" / "001"
            assert wait_until(lambda: (test_dir / "report" / "report.html").exists(), 60), \
                "the stopped test got no report"
            # after the stop the tab holds the test's final figures: those of the lossless log
            page.reload()
            page.click("text=Long polling")
            page.wait_for_selector("td:has-text('delivery latency p99 (ms)')", timeout=20000)
            assert wait_until(lambda: tab_figures(page).get("deliveries", ("", "-"))[1] not in
                              ("-", "0"), 10)
            figures = tab_figures(page)
            lossless = summary_ms(merged(read_hdr_log(test_dir / "metrics" /
                                                      "latency.hdr.jsonl"), "DELIVERY"))
            assert number(figures["deliveries"][1]) == lossless["count"]
            for q in ("p50", "p95", "p99", "max"):
                shown = number(figures[f"delivery latency {q} (ms)"][1])
                assert abs(shown - lossless[q]) <= 0.0051, (q, shown, lossless[q])

            # the UI links to the finished test's report (Download Data -> the reports page)
            page.click("text=Download Data")
            page.click("text=Long-poll reports of this session's finished tests")
            page.click("text=test 001")
            page.wait_for_load_state()
            assert page.url.endswith("/pollbench/reports/001/report.html")
            assert "Delivery latency" in page.inner_text("body")
            browser.close()

        record = json.loads((test_dir / "run.json").read_text())
        validate_run_json(record)
        assert record["kind"] == "ui-test" and record["complete"]
        assert record["parameters"]["users"] == 30
        assert record["exit"]["reason"] == "stopped in the web UI"
        # a web UI test says what ran out first and why requests failed, as a run does
        assert set(record["limits"]) == {"first", "reached"}
        assert isinstance(record["failures"], list)
        summary = json.loads((test_dir / "report" / "summary.json").read_text())
        assert summary["metrics"]["delivery_latency_count"]["value"] > 0

        # a second test, still running at Ctrl-C, is written too
        form = urllib.parse.urlencode({"user_count": 10, "spawn_rate": 10,
                                       "user_classes": "TaskPoller"}).encode()
        with urllib.request.urlopen(f"{base}/swarm", form, timeout=10) as answer:
            assert json.loads(answer.read())["success"]
        assert wait_until(lambda: (out / "tests" / "002" / "test.json").exists(), 10)
        # quit while it runs, once it has recorded something
        assert wait_until(lambda: progress_of(out / "tests" / "002").get("requests", 0) > 0, 30)
    finally:
        stop_process(proc, signal.SIGINT, 120)  # killed when Ctrl-C does not end it
        tail = output.wait_closed(10)
    assert proc.returncode == 0, tail
    second = json.loads((out / "tests" / "002" / "run.json").read_text())
    assert second["exit"]["reason"] == "ended: the session ended"
    assert second["parameters"]["user_classes"] == ["TaskPoller"]
    assert (out / "tests" / "002" / "report" / "report.html").exists()
    session = json.loads((out / "run.json").read_text())
    validate_run_json(session)
    assert session["kind"] == "ui" and session["tests"] == ["tests/001", "tests/002"]
    assert not [p for p in session["pids"].values() if psutil.pid_exists(p)]


def progress_of(test_dir) -> dict:
    try:
        return json.loads((test_dir / "metrics" / "progress.json").read_text())
    except (OSError, ValueError):
        return {}


def test_a_ui_session_that_fails_is_recorded_as_failed_not_stopped_by_the_user(tmp_path):
    """A backend dying under the UI ends the session with exit 3, and run.json says so
    (it used to say exit 0, "stopped by the user")."""
    out = tmp_path / "ui"
    proc, output, backend_port, _ = start_ui(out)
    try:
        wanted = ["--port", str(backend_port + 1)]
        backend = next(p for p in psutil.process_iter(["cmdline"])
                       if "target_app" in (p.info["cmdline"] or [])
                       and any(p.info["cmdline"][i:i + 2] == wanted
                               for i in range(len(p.info["cmdline"]))))
        backend.kill()
        assert proc.wait(30) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and info["exit"]["code"] == 3
    assert "backend-1 exited unexpectedly" in info["exit"]["reason"]
