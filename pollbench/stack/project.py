"""The project file in a user's repository: ``pollbench.toml``, or ``[tool.pollbench]`` in
``pyproject.toml`` (as Locust reads ``[tool.locust]``).  ``run``, ``ui``, ``sweep`` and
``check`` read it from the current directory (or ``--project FILE``); options on the
command line win over it.

    protocol = "socketio"          # top level: the options of `pollbench run`, dashes or not
    profile = "socketio"           # a profile name, or a .toml path relative to this file
    users = 200
    duration = "20s"

    [backend]                      # the user's service, started once per backend
    command = "{python} app.py --port {port} --redis {redis_url}"
    ready = "/healthz"
    ready-timeout = 30
    cwd = "."                      # relative to this file
    env = { LOG_LEVEL = "warning" }

    [thresholds]                   # `pollbench run` exits 1 when one is crossed
    delivery-p99-ms = 250
    lost-messages = 0
    error-rate = 0.01
    cpu-ms-per-delivery = 2.0

    [check]                        # `pollbench check`: each repetition's length, warm-up, count
    duration = "5s"
    warmup = "1s"
    repeat = 12

Every key and value is checked when the file is read, refused in one line naming the file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pollbench.errors import UserError
from pollbench.records.inputs import read_toml
from pollbench.stack.backend_command import BackendCommand

FILE_NAMES = ("pollbench.toml", "pyproject.toml")
# top-level keys -> the argparse dest they set (the options of run / ui / sweep / check)
OPTIONS = {
    "protocol": "protocol", "profile": "profile", "backends": "backends", "state": "state",
    "loop": "loop", "users": "users", "spawn_rate": "spawn_rate", "duration": "duration",
    "channels": "channels", "publish_rate": "publish_rate", "poll_timeout": "poll_timeout",
    "scenario": "scenario", "mix": "mix", "connection": "connection", "workers": "workers",
    "retry_backoff": "retry_backoff", "shape": "shape", "port": "port",
    "backend_port": "backend_port",
}
TABLES = ("backend", "thresholds", "check")
BACKEND_KEYS = {"command", "ready", "ready_timeout", "cwd", "env", "metrics"}
CHECK_KEYS = {"duration", "warmup", "repeat"}


@dataclass(frozen=True)
class Threshold:
    name: str      # as written in the file and --threshold
    metric: str    # the summary's metric
    unit: str
    scale: float = 1.0  # the metric's value times this is in the threshold's unit


# what a threshold is written as -> the figure it bounds (a run's summary, analysis.figures)
THRESHOLDS = {t.name: t for t in (
    Threshold("delivery_p99_ms", "delivery_latency_p99", "ms"),
    Threshold("delivery_p50_ms", "delivery_latency_p50", "ms"),
    Threshold("lost_messages", "lost_messages", "messages"),
    Threshold("duplicate_messages", "duplicate_messages", "messages"),
    Threshold("error_rate", "error_rate", "of requests"),
    # CPU-s per 1,000 deliveries is CPU-ms per delivery
    Threshold("cpu_ms_per_delivery", "cpu_per_kdelivery_stack", "CPU-ms per delivery"),
)}


@dataclass(frozen=True)
class Project:
    path: Path
    options: dict[str, Any] = field(default_factory=dict)   # argparse dest -> value
    backend: BackendCommand | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    check: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.path.parent


def check_protocol_name(text: str) -> None:
    """A protocol name or ``module:Class`` that loads (UserError in one line if not)."""
    from loadtests.protocols import load_protocol

    try:
        load_protocol(text)
    except ValueError as e:
        raise UserError(str(e)) from None


def _key(k: str) -> str:
    return k.replace("-", "_")


def find(folder: Path) -> Path | None:
    """The project file of ``folder``: pollbench.toml, else a pyproject.toml with
    [tool.pollbench]; None when it has neither."""
    own = folder / FILE_NAMES[0]
    if own.is_file():
        return own
    py = folder / FILE_NAMES[1]
    if py.is_file():
        try:
            data = tomllib.loads(py.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError):
            return None  # not ours to judge: a project without [tool.pollbench]
        if isinstance(data.get("tool"), dict) and "pollbench" in data["tool"]:
            return py
    return None


def read(path: Path) -> Project:
    """The project file read and checked (refused in one line naming the file)."""
    path = Path(path).resolve()
    where = f"project file {path}"
    data = read_toml(path, where, None)  # its keys are checked below, dashes or not
    if path.name == FILE_NAMES[1]:
        tool = (data.get("tool") or {}).get("pollbench")
        where += " [tool.pollbench]"
        if not isinstance(tool, dict):
            raise UserError(f"{where}: missing; add a [tool.pollbench] table")
        data = tool
    options: dict[str, Any] = {}
    for raw, value in data.items():
        key = _key(raw)
        if key in TABLES:
            if not isinstance(value, dict):
                raise UserError(f"{where}: {raw} must be a table ([{raw}])")
            continue
        if key not in OPTIONS:
            raise UserError(f"{where}: unknown key {raw!r}; known keys: "
                            + ", ".join(sorted(k.replace("_", "-") for k in OPTIONS))
                            + ", and the tables [backend], [thresholds], [check]")
        if isinstance(value, (dict, list)):
            raise UserError(f"{where}: {raw} must be a single value (it is {value!r})")
        if key == "profile" and isinstance(value, str) and value.endswith(".toml"):
            value = str((path.parent / value).resolve())  # relative to the file
        if key == "duration" and isinstance(value, (int, float)):
            value = f"{value}s"
        options[OPTIONS[key]] = value
    tables = {t: {_key(k): v for k, v in data.get(t, data.get(t.replace("_", "-"), {})).items()}
              for t in TABLES}
    return Project(path, options, _backend(where, tables["backend"], path.parent),
                   _thresholds(where, tables["thresholds"]), _check(where, tables["check"]))


def _backend(where: str, table: dict[str, Any], folder: Path) -> BackendCommand | None:
    if not table:
        return None
    unknown = sorted(set(table) - BACKEND_KEYS)
    if unknown:
        raise UserError(f"{where}: [backend] has unknown key {unknown[0]!r}; known: "
                        + ", ".join(sorted(k.replace("_", "-") for k in BACKEND_KEYS)))
    command = table.get("command")
    if not isinstance(command, str) or not command.strip():
        raise UserError(f"{where}: [backend] needs command = \"...\" (the command that starts "
                        "one backend, with {port})")
    ready = table.get("ready", "/healthz")
    timeout = table.get("ready_timeout", 30)
    cwd = table.get("cwd", ".")
    env = table.get("env", {})
    metrics = table.get("metrics")
    if metrics is not None and not isinstance(metrics, str):
        raise UserError(f"{where}: [backend] metrics must be an HTTP path such as \"/metrics\"")
    if not isinstance(ready, str):
        raise UserError(f"{where}: [backend] ready must be an HTTP path such as \"/healthz\"")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise UserError(f"{where}: [backend] ready-timeout must be a number of seconds")
    if not isinstance(cwd, str):
        raise UserError(f"{where}: [backend] cwd must be a folder (relative to the file)")
    if not isinstance(env, dict) or not all(isinstance(v, (str, int, float)) and
                                            not isinstance(v, bool) for v in env.values()):
        raise UserError(f"{where}: [backend] env must be a table of NAME = \"value\"")
    return BackendCommand(command, ready, float(timeout), tuple(
        (str(k), str(v)) for k, v in env.items()), str((folder / cwd).resolve()), metrics)


def _thresholds(where: str, table: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in table.items():
        out[key] = check_threshold(where + " [thresholds]", key, value)
    return out


def check_threshold(where: str, key: str, value: Any) -> float:
    key = _key(key)
    if key not in THRESHOLDS:
        raise UserError(f"{where}: unknown threshold {key.replace('_', '-')!r}; known: "
                        + ", ".join(k.replace("_", "-") for k in THRESHOLDS))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise UserError(f"{where}: {key.replace('_', '-')} must be a number >= 0 (it is "
                        f"{value!r})")
    if key == "error_rate" and value > 1:
        raise UserError(f"{where}: error-rate is a fraction from 0 to 1 (it is {value})")
    return float(value)


def parse_thresholds(items: list[str]) -> dict[str, float]:
    """``--threshold NAME=VALUE`` (repeatable)."""
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        try:
            value: float | None = float(text)
        except ValueError:
            value = None
        if not sep or value is None:
            raise UserError(f"--threshold {item!r}: give NAME=NUMBER, e.g. delivery-p99-ms=250")
        out[_key(name)] = check_threshold("--threshold", name, value)
    return out


def _check(where: str, table: dict[str, Any]) -> dict[str, Any]:
    from pollbench.stack.loadgen import parse_duration

    unknown = sorted(set(table) - CHECK_KEYS)
    if unknown:
        raise UserError(f"{where}: [check] has unknown key {unknown[0]!r}; known: "
                        + ", ".join(sorted(CHECK_KEYS)))
    out: dict[str, Any] = {}
    for key in ("duration", "warmup"):
        if key in table:
            value = table[key]
            try:
                out[f"{key}_s"] = parse_duration(f"{value}s" if isinstance(value, (int, float))
                                                 and not isinstance(value, bool) else value)
            except (UserError, ValueError, TypeError):
                raise UserError(f"{where}: [check] {key} must be a duration such as \"5s\" "
                                f"(it is {value!r})") from None
    if "repeat" in table:
        if isinstance(table["repeat"], bool) or not isinstance(table["repeat"], int):
            raise UserError(f"{where}: [check] repeat must be a whole number")
        out["repeat"] = table["repeat"]
    return out


def crossed(summary: dict, thresholds: dict[str, float]) -> tuple[list[str], list[str]]:
    """(the thresholds a run's summary crosses, one line each naming the measured figure;
    the thresholds whose figure the run did not measure, said so: they cross nothing)."""
    lines: list[str] = []
    unknown: list[str] = []
    metrics = summary.get("metrics") or {}
    unmeasured = summary.get("not_measured") or {}
    for key, limit in thresholds.items():
        t = THRESHOLDS[key]
        name = key.replace("_", "-")
        if t.metric in unmeasured:
            unknown.append(f"{name}: not measured ({unmeasured[t.metric]})")
            continue
        value = (metrics.get(t.metric) or {}).get("value")
        if value is None:
            unknown.append(f"{name}: not measured (the run has no {t.metric})")
            continue
        value *= t.scale
        if value > limit:
            lines.append(f"{name} {_num(value)} {t.unit} crossed its threshold {_num(limit)}")
    return lines, unknown


def _num(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1 else f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
