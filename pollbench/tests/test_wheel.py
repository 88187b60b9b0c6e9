"""An installed wheel works away from the checkout: its data files (nginx template,
profiles, sweeps, static files, schemas) travel as package data.

The wheel is built with ``python -m build`` from a copy of the working tree (setuptools'
build/ folder would otherwise keep files the tree no longer has), installed into a fresh
venv outside the checkout (dependencies come from this environment through a .pth line;
nothing is downloaded), and run from an empty folder.  One slow test installs it as a user
would, dependencies resolved from the package index, beside other pandas and numpy versions.
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
from pollbench.tests.children import Child
from pollbench.tests.conftest import REPO, free_stack_ports

SKIP = shutil.ignore_patterns(".git", ".venv", ".tox", "results", "build", "*.egg-info",
                              "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel-build")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=SKIP)
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                           "--outdir", str(root / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return next((root / "dist").glob("pollbench-*.whl"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory, wheel) -> tuple[Path, Path]:
    """(the venv's bin folder, an empty working folder outside the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
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
    with Child([bin_dir / "pollbench", "up", "--port", str(port), "--backend-port",
                str(backend_port), "--out", str(work / "up")], cwd=work) as proc:
        assert wait_until(lambda: proc.poll() is not None
                          or answers(f"http://127.0.0.1:{port}/healthz"), 30)
        assert proc.poll() is None, proc.output.text()
        assert answers(f"http://127.0.0.1:{port}/healthz")
        assert answers(f"http://127.0.0.1:{port}/robots.txt")  # static files from the wheel
        proc.stop(signal.SIGINT, 30)
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


# Versions inside pyproject.toml's ranges, other than the lock's (pandas 3.1.1 with numpy 2.4):
# what a load host that already has pandas and numpy for other work may hold.
OTHER_PANDAS, OTHER_NUMPY = "2.2.3", "2.2.6"


@pytest.mark.slow
def test_the_wheel_installs_beside_other_pandas_and_numpy_and_works_with_them(wheel, tmp_path):
    """``pip install pollbench-*.whl`` on a host that already holds other pandas and numpy
    (within the ranges): pip keeps them, and a report is written with them.  The
    dependencies come from the package index, resolved against pyproject.toml's ranges (the
    lock is not applied: a user's pip does not know it)."""
    import os

    from analysis.synthetic import make_run

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PIP_CONSTRAINT"}

    def pip(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                               "-q", "--disable-pip-version-check", "--no-compile", *args],
                              capture_output=True, text=True, timeout=900, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    def versions() -> list[str]:
        return subprocess.run([python, "-c", "import pandas, numpy; print(pandas.__version__, "
                               "numpy.__version__)"], capture_output=True, text=True,
                              check=True).stdout.split()

    pip(f"pandas=={OTHER_PANDAS}", f"numpy=={OTHER_NUMPY}")
    pip(str(wheel))
    assert versions() == [OTHER_PANDAS, OTHER_NUMPY]  # pip kept what the host had
    run = make_run(tmp_path / "run", delivery_ms=[5.0] * 200, request_ms=[2.0] * 200)
    proc = subprocess.run([venv / "bin" / "pollbench", "report", str(run)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (run / "report" / "report.html").is_file()
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert summary["metrics"]["delivery_latency_p50"]["value"] == pytest.approx(5.0, rel=0.01)
