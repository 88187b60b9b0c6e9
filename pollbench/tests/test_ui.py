"""``pollbench ui`` in a real headless browser: the page loads, a test starts, custom rows appear."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess

import psutil
import pytest

from pollbench.stack.net import find_free_ports
from pollbench.tests.conftest import REPO, free_stack_ports, pollbench_cmd

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]


def test_web_ui_starts_a_test_and_shows_delivery_and_task_rows(tmp_path):
    if not shutil.which(CHROMIUM):
        pytest.fail("chromium is needed for the web UI test: scripts/bootstrap.sh --test "
                    "installs it (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    port, backend_port = free_stack_ports()
    web_port = find_free_ports(1, 33000, 36000)
    out = tmp_path / "ui"
    proc = subprocess.Popen(
        pollbench_cmd("ui", "--port", str(port), "--backend-port", str(backend_port),
                      "--web-port", str(web_port), "--out", str(out)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        assert "web UI:     http://127.0.0.1:" in "".join(lines), "".join(lines)
        # the UI listens on loopback only
        listeners = {c.laddr for c in psutil.net_connections("tcp") if c.status == "LISTEN"}
        assert ("127.0.0.1", web_port) in listeners and ("0.0.0.0", web_port) not in listeners

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"http://127.0.0.1:{web_port}/", timeout=30000)
            page.fill('input[name="userCount"]', "20")
            page.fill('input[name="spawnRate"]', "20")
            page.click('button[type="submit"]')
            page.wait_for_selector("td:has-text('DELIVERY')", timeout=45000)
            page.wait_for_selector("td:has-text('TASK')", timeout=45000)
            page.screenshot(path=str(out / "ui-screenshot.png"), full_page=True)
            text = page.inner_text("body")
            browser.close()
        assert "publish -> receive" in text and "submit -> result" in text
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    assert proc.returncode == 0
    record = json.loads((out / "run.json").read_text())
    assert record["kind"] == "ui"
    assert not [p for p in record["pids"].values() if psutil.pid_exists(p)]
    # what the browser started was recorded losslessly too
    assert "DELIVERY" in (out / "metrics" / "latency.hdr.jsonl").read_text()
