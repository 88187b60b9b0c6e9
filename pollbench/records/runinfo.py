"""run.json: what a run was (parameters, versions, host) and how it ended.

The format carries one integer version; readers (analysis.load.read_info) check it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import psutil

from pollbench.paths import SCHEMAS_DIR

SCHEMA_PATH = SCHEMAS_DIR / "run.schema.json"

STATUS_RUNNING, STATUS_COMPLETE, STATUS_INCOMPLETE, STATUS_FAILED = (
    "running", "complete", "incomplete", "failed")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def software_versions(nginx_binary: str) -> dict:
    try:
        nginx_v = subprocess.run([nginx_binary, "-V"], capture_output=True, text=True,
                                 timeout=10).stderr.strip()
    except OSError as e:
        nginx_v = f"unavailable: {e}"
    return {
        "pollbench": _version("pollbench"), "python": sys.version.split()[0],
        "tornado": _version("tornado"), "locust": _version("locust"),
        "uvloop": _version("uvloop"), "hdrhistogram": _version("hdrhistogram"),
        "nginx": nginx_v.splitlines()[0] if nginx_v else None, "nginx_V": nginx_v,
    }


def host_info() -> dict:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import resource

    return {
        "hostname": platform.node(), "kernel": platform.release(), "os": platform.platform(),
        "cpu_model": model, "cpu_count": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "open_files_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
    }


def validate_run_json(data: dict) -> None:
    import jsonschema  # only tests and tools validate; a run does not pay for the import

    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.validate(data, schema)
