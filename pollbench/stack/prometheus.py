"""A real Prometheus beside the stack, on request (``--prometheus``): Debian's ``prometheus``
server scraping every backend's ``/metrics``, nginx through Debian's
``prometheus-nginx-exporter`` (stub_status) and the load generator's endpoint, once a
second; its config rendered into the run folder and its data kept there.

    jobs = scrape_jobs(backend_ports=[8000, 8001], exporter_port=9113, loadgen_port=9200)
    text = render_config(jobs)           # prometheus.yml; every target 127.0.0.1:<int>

Nothing a user typed reaches the file: targets are built from port numbers checked here.
The servers bind to 127.0.0.1 and are children of the stack (stopped with it, Ctrl-C
included, and watched like nginx: an unexpected exit fails the run).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from pollbench.errors import UserError

PROMETHEUS = "prometheus"
NGINX_EXPORTER = "prometheus-nginx-exporter"
SCRAPE_INTERVAL_S = 1
INSTALL = ("apt-get install prometheus prometheus-nginx-exporter (or: bash "
           "scripts/bootstrap.sh --prometheus)")


def find_binaries() -> tuple[str, str]:
    """The two servers' paths; a one-line UserError naming what to install."""
    found = [shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists()
                                    else None) for name in (PROMETHEUS, NGINX_EXPORTER)]
    missing = [name for name, path in zip((PROMETHEUS, NGINX_EXPORTER), found, strict=True)
               if path is None]
    if missing:
        raise UserError(f"--prometheus needs {' and '.join(missing)} on PATH: {INSTALL}")
    return found[0], found[1]  # type: ignore[return-value]


def version(binary: str) -> str | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else None


def _port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"not a port: {port!r}")
    return port


def scrape_jobs(backend_ports: list[int], exporter_port: int,
                loadgen_port: int | None = None) -> dict[str, list[str]]:
    """job -> targets: ``backend`` (each process; none when the backends serve no metrics),
    ``nginx`` (the exporter), ``loadgen``."""
    jobs = {"backend": [f"127.0.0.1:{_port(p)}" for p in backend_ports]} if backend_ports else {}
    jobs["nginx"] = [f"127.0.0.1:{_port(exporter_port)}"]
    if loadgen_port is not None:
        jobs["loadgen"] = [f"127.0.0.1:{_port(loadgen_port)}"]
    return jobs


# a metrics path as a Prometheus config takes it unquoted (and the only kind pollbench writes)
PLAIN_PATH = re.compile(r"/[A-Za-z0-9._~/%-]*")


def is_plain_path(path: str) -> bool:
    return PLAIN_PATH.fullmatch(path) is not None


def render_config(jobs: dict[str, list[str]], interval_s: int = SCRAPE_INTERVAL_S,
                  paths: dict[str, str] | None = None) -> str:
    """``paths``: a job's metrics path where it is not /metrics (checked: an HTTP path)."""
    paths = paths or {}
    lines = ["# rendered by pollbench (--prometheus): every component, once a second",
             "global:", f"  scrape_interval: {int(interval_s)}s",
             f"  scrape_timeout: {int(interval_s)}s", f"  evaluation_interval: {int(interval_s)}s",
             "scrape_configs:"]
    for job, targets in jobs.items():
        lines.append(f"  - job_name: {job}")
        if job in paths:
            if not is_plain_path(paths[job]):
                raise ValueError(f"metrics path {paths[job]!r} is not a plain HTTP path")
            lines.append(f"    metrics_path: '{paths[job]}'")
        lines += ["    static_configs:",
                  "      - targets: [" + ", ".join(f"'{t}'" for t in targets) + "]"]
    return "\n".join(lines) + "\n"


def prometheus_cmd(binary: str, config: Path, data: Path, port: int) -> list[str]:
    return [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{_port(port)}",
            "--storage.tsdb.retention.time=30d", "--log.level=warn"]


def exporter_cmd(binary: str, stub_status_url: str, port: int) -> list[str]:
    # "--flag=value": Debian 12's exporter (0.11, Go's flag package) and later ones
    # (kingpin) both read it
    return [binary, f"--nginx.scrape-uri={stub_status_url}",
            f"--web.listen-address=127.0.0.1:{_port(port)}"]
