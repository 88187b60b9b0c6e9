"""The nginx that `pollbench nginx build` makes (poll and select) serves through the stack;
Debian's nginx with `use poll;` is refused before anything starts.

The build is cached (~/.cache/pollbench or $POLLBENCH_CACHE): the first test session on a
machine builds it once (about 30 s plus apt), later ones reuse it.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request

import pytest

from pollbench.actions.sweepfile import check_cells, load_sweep
from pollbench.stack import nginx_build
from pollbench.stack.net import OPENER, http_get
from pollbench.stack.processes import wait_until
from pollbench.tests.conftest import REPO, free_stack_ports, pollbench_cmd


@pytest.fixture(scope="session")
def built_nginx():
    return nginx_build.ensure_built()


def profile(tmp_path, method: str, binary: str | None = None):
    path = tmp_path / f"{method}.toml"
    path.write_text('extends = "seed"\n' + (f'nginx_binary = "{binary}"\n' if binary else "")
                    + f'[nginx]\nuse = "{method}"\n')
    return path


def get(url: str, timeout: float = 10):
    return http_get(url, timeout)  # never through a proxy


def test_build_is_cached_and_offers_poll_and_select(built_nginx):
    assert built_nginx.is_file()
    assert nginx_build.event_methods(str(built_nginx)) == {"epoll", "poll", "select"}
    started = time.monotonic()
    again = nginx_build.build(quiet=True)  # cached: no rebuild
    assert again == built_nginx and time.monotonic() - started < 5
    out = subprocess.run(pollbench_cmd("nginx", "which"), capture_output=True, text=True,
                         cwd=REPO)
    assert out.returncode == 0 and str(built_nginx) in out.stdout and "poll" in out.stdout


@pytest.mark.parametrize("method,via", [("poll", "--nginx"), ("select", "profile")])
def test_built_nginx_serves_through_the_stack_with_poll_and_select(
        built_nginx, stack_up, tmp_path, method, via):
    if via == "--nginx":
        up = stack_up("--profile", str(profile(tmp_path, method)), "--nginx", "built")
    else:  # the profile names the built nginx itself
        up = stack_up("--profile", str(profile(tmp_path, method, "built")))
    error_log = (up.out / "nginx" / "logs" / "error.log").read_text()
    assert f'using the "{method}" event method' in error_log
    # a long poll held through nginx and answered by a publish through nginx
    answer = {}

    def poll():
        answer["r"] = get(f"{up.url}/channels/ev?timeout=10")

    t = threading.Thread(target=poll)
    t.start()
    # publish once the poll is held by a backend (its /stats counts it)
    assert wait_until(lambda: sum(json.loads(get(f"{u}/stats")[1])["long_polls_waiting"]
                                  for u in up.backend_urls) >= 1, 10)
    req = urllib.request.Request(f"{up.url}/channels/ev", data=b'{"hi": 1}', method="POST")
    assert OPENER.open(req, timeout=5).status == 201
    t.join(15)
    status, body = answer["r"]
    assert status == 200 and json.loads(body)["messages"][0]["data"] == {"hi": 1}
    assert get(f"{up.url}/healthz")[0] == 200


def test_debian_nginx_with_use_poll_is_refused_before_start(tmp_path):
    out = tmp_path / "run"
    port, backend_port = free_stack_ports()
    proc = subprocess.run(pollbench_cmd("up", "--profile", str(profile(tmp_path, "poll")),
                                        "--out", str(out), "--port", str(port),
                                        "--backend-port", str(backend_port)),
                          capture_output=True, text=True, cwd=REPO, timeout=30)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "nginx knob use: 'poll' is not supported by /" in line
    assert "Debian's nginx has only epoll" in line and "pollbench nginx build" in line
    assert not out.exists()


def test_built_names_what_to_run_when_nothing_is_built(tmp_path):
    env = dict(os.environ, POLLBENCH_CACHE=str(tmp_path / "empty-cache"))
    proc = subprocess.run(pollbench_cmd("up", "--nginx", "built", "--out", str(tmp_path / "r")),
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=30)
    assert proc.returncode == 2 and "run `pollbench nginx build`" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_nginx_event_method_sweep_checks_with_the_built_nginx(built_nginx):
    s = load_sweep("nginx-event-method")
    check_cells(s, *free_stack_ports())  # every cell, incl. use = poll / select, passes nginx -t
    assert {c.stack.settings()["use"] for c in s.cells} == {"epoll", "poll", "select"}
