"""An installed wheel works away from the checkout: its data files (nginx template,
profiles, sweeps, static files, schemas) travel as package data.

The wheel is built with ``python -m build`` from a copy of the working tree (setuptools'
build/ folder would otherwise keep files the tree no longer has), installed into a fresh
venv outside the checkout (dependencies come from this environment through a .pth line;
nothing is downloaded), and run from an empty folder.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from pollbench.stack.net import answers
from pollbench.stack.processes import wait_until
from pollbench.tests.conftest import REPO, free_stack_ports

SKIP = shutil.ignore_patterns(".git", ".venv", ".tox", "results", "build", "*.egg-info",
                              "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the venv's bin folder, an empty working folder outside the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=SKIP)
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                           "--outdir", str(root / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wheel = next((root / "dist").glob("pollbench-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    # install first: with the dependencies' path already in place pip could find this
    # checkout's editable pollbench there and call the wheel "already satisfied"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                           "--no-deps", "--no-index", "--ignore-installed", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert (Path(purelib) / "pollbench" / "paths.py").is_file(), proc.stdout + proc.stderr
    # the dependencies (tornado, locust, pandas ...) from this environment, after the venv's own
    Path(purelib, "deps-from-test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = root / "work"
    work.mkdir()
    return venv / "bin", work


def test_the_wheel_carries_its_data_and_runs_from_its_install(installed):
    bin_dir, work = installed
    probe = ("import json, pollbench, pollbench.paths as p, loadtests.webui as w; "
             "print(json.dumps({"
             "'module': pollbench.__file__, 'checkout': p.CHECKOUT, "
             "'template': p.TEMPLATE.is_file(), 'mime': p.MIME_TYPES.is_file(), "
             "'profiles': sorted(x.stem for x in p.PROFILES_DIR.glob('*.toml')), "
             "'sweeps': sorted(x.stem for x in p.SWEEPS_DIR.glob('*.toml')), "
             "'static': (p.STATIC_ROOT / 'static' / 'robots.txt').is_file(), "
             "'schema': (p.SCHEMAS_DIR / 'run.schema.json').is_file(), "
             "'chart': (w.STATIC / 'long-polling-chart.js').is_file()}, default=str))")
    proc = subprocess.run([bin_dir / "python", "-c", probe], capture_output=True, text=True,
                          cwd=work, timeout=60)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found["module"].startswith(str(bin_dir.parent)) and found["checkout"] is None
    assert found["template"] and found["mime"] and found["static"] and found["schema"]
    assert found["chart"]  # the web UI tab's chart script
    shipped = lambda folder: sorted(x.stem for x in (REPO / folder).glob("*.toml"))  # noqa: E731
    assert found["profiles"] == shipped("nginx/profiles")
    assert found["sweeps"] == shipped("sweeps")


def test_pollbench_up_from_the_wheel_serves_a_healthy_stack(installed):
    bin_dir, work = installed
    port, backend_port = free_stack_ports()
    proc = subprocess.Popen([bin_dir / "pollbench", "up", "--port", str(port), "--backend-port",
                             str(backend_port), "--out", str(work / "up")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=work)
    try:
        assert wait_until(lambda: proc.poll() is not None
                          or answers(f"http://127.0.0.1:{port}/healthz"), 30)
        assert proc.poll() is None, proc.stdout.read()
        assert answers(f"http://127.0.0.1:{port}/healthz")
        assert answers(f"http://127.0.0.1:{port}/robots.txt")  # static files from the wheel
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert (work / "up" / "nginx" / "nginx.conf").is_file()


def test_pollbench_run_from_the_wheel_records_a_complete_run_in_cwd_results(installed):
    bin_dir, work = installed
    port, backend_port = free_stack_ports()
    proc = subprocess.run([bin_dir / "pollbench", "run", "--port", str(port), "--backend-port",
                           str(backend_port), "--users", "10", "--duration", "4s",
                           "--publish-rate", "20", "--no-report"],
                          capture_output=True, text=True, cwd=work, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = list((work / "results").glob("*/run.json"))
    assert len(runs) == 1
    info = json.loads(runs[0].read_text())
    assert info["status"] == "complete" and info["loadgen"]["delivered"] > 0
