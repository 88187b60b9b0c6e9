"""run.json: what a run was (parameters, versions, host) and how it ended.

The format carries one integer version; readers (analysis.load.read_info) check it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import psutil

from pollbench.paths import LOADTESTS, NGINX_DIR, SCHEMAS_DIR

SCHEMA_PATH = SCHEMAS_DIR / "run.schema.json"

STATUS_RUNNING, STATUS_COMPLETE, STATUS_INCOMPLETE, STATUS_FAILED, STATUS_VOID = (
    "running", "complete", "incomplete", "failed", "void")  # void: ran its course, measured nothing


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def software_versions(nginx_binary: str | None, redis_binary: str | None = None) -> dict:
    """Versions of what the run used; ``redis_binary``: the redis-server it started.
    ``nginx_binary`` None: no nginx of the run's (a service pollbench did not start)."""
    nginx_v = ""
    try:
        if nginx_binary is not None:
            nginx_v = subprocess.run([nginx_binary, "-V"], capture_output=True, text=True,
                                     timeout=10).stderr.strip()
    except OSError as e:
        nginx_v = f"unavailable: {e}"
    redis_v = None
    if redis_binary is not None:
        try:  # "Redis server v=7.0.15 sha=... malloc=jemalloc-5.3.0 bits=64 build=..."
            out = subprocess.run([redis_binary, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout
            redis_v = next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())
        except (OSError, subprocess.SubprocessError) as e:
            redis_v = f"unavailable: {e}"
    return {
        "pollbench": _version("pollbench"), "python": sys.version.split()[0],
        "tornado": _version("tornado"), "locust": _version("locust"),
        "uvloop": _version("uvloop"), "hdrhistogram": _version("hdrhistogram"),
        "redis_py": _version("redis"),
        "nginx": nginx_v.splitlines()[0] if nginx_v else None, "nginx_V": nginx_v or None,
        "redis_server": redis_v,
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


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


# What makes two machines' figures comparable (pyperf's metadata is the model): the
# machine itself, its CPU and its frequency policy, and the software that is measured.
FINGERPRINT_FIELDS = ("machine_id", "cpu_model", "cpu_count", "memory_gib", "kernel",
                      "cpu_governor", "cpu_freq_khz", "python", "nginx", "locust", "pollbench")


def git_info(repo: Path | None) -> dict | None:
    """The checkout's commit, branch and whether tracked files were changed (None outside a
    git checkout, e.g. an installed wheel)."""
    if repo is None:
        return None

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(status) if status is not None else None}


def _source_files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The files under ``root`` a run executes or renders (tests and caches left out)."""
    return sorted(f for f in root.rglob("*") if f.is_file() and f.suffix in suffixes and
                  not {"tests", "__pycache__"} & set(f.relative_to(root).parts))


def yardstick(software: dict, nginx_settings: dict, parameters: dict) -> str:
    """A digest of what the yardstick of ``cpu_relative_backends`` (analysis.cost) does: the
    load generator's code and versions, nginx's binary, template and settings, and the load.
    Two runs with the same digest ran the same yardstick; a change to any of these changes
    its CPU, which that ratio would read as a change of the backends' cost."""
    h = hashlib.sha256()
    for root, suffixes in ((LOADTESTS, (".py",)), (NGINX_DIR, (".j2", ".toml", ".types"))):
        for f in _source_files(root, suffixes):
            h.update(f"{root.name}/{f.relative_to(root).as_posix()}\0".encode())
            h.update(f.read_bytes())
    h.update(json.dumps([software.get(k) for k in ("nginx_V", "locust", "python")],
                        sort_keys=True).encode())
    h.update(json.dumps([nginx_settings, parameters], sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def machine_fingerprint(software: dict) -> dict:
    """This machine's fingerprint: its fields and ``fingerprint``, a digest of them.

    ``machine_id`` is a digest of /etc/machine-id (else of the hostname): a baseline is
    valid only on the machine that recorded it, not on another of the same kind."""
    host = host_info()
    ident = _read("/etc/machine-id") or platform.node()
    cpufreq = "/sys/devices/system/cpu/cpu0/cpufreq/"
    low, high = _read(cpufreq + "scaling_min_freq"), _read(cpufreq + "scaling_max_freq")
    fields = {
        "machine_id": hashlib.sha256(ident.encode()).hexdigest()[:12],
        "cpu_model": host["cpu_model"], "cpu_count": host["cpu_count"],
        "memory_gib": round(host["memory_bytes"] / 2**30, 1), "kernel": host["kernel"],
        "cpu_governor": _read(cpufreq + "scaling_governor"),
        "cpu_freq_khz": f"{low}-{high}" if low and high else None,
        "python": software.get("python"), "nginx": software.get("nginx"),
        "locust": software.get("locust"), "pollbench": software.get("pollbench"),
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return {"fingerprint": digest, **fields}


def fingerprint_differences(recorded: dict, current: dict) -> list[str]:
    """The fields in which two fingerprints differ, as ``field: recorded -> current``."""
    return [f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in FINGERPRINT_FIELDS
            if recorded.get(k) != current.get(k)]


def validate_run_json(data: dict) -> None:
    import jsonschema  # only tests and tools validate; a run does not pay for the import

    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.validate(data, schema)
