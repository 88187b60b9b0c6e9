"""A run folder -> DataFrames, with clear errors for damaged, partial or unknown inputs.

    run = load_run(Path("results/20261126-151456-channels-seed-200u"))
    run.hdr          # interval histograms (analysis.hdr)
    run.access       # nginx JSON access log, typed
    run.notes        # what was missing and which charts it costs

Only ``run.json`` is required.  Every other file is optional: a missing one
leaves an empty DataFrame and a note, and drops only the charts that need it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psutil

from analysis import catalog
from analysis.hdr import read_counters, read_hdr_log

SUPPORTED_SCHEMA_VERSIONS = catalog.SUPPORTED_RUN_SCHEMA_VERSIONS

# RunData field -> the run folder file it is read from
FILES = {field: catalog.RUN_FILES[key] for field, key in (
    ("hdr", "latency_hdr"), ("counters", "counters"), ("history", "locust_history"),
    ("access", "nginx_access_log"), ("stub_status", "stub_status"),
    ("processes", "processes"), ("backend_stats", "backend_stats"))}


# The fields of run.json the analysis reads, and the types they must have.
RUN_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "started_at": (int, float), "ended_at": (int, float, type(None)),
    "parameters": (dict,), "stack": (dict,), "status": (str,), "complete": (bool,),
    "warnings": (list,), "cpu": (dict,), "loadgen": (dict,), "host": (dict,),
    "software": (dict,), "files": (dict,), "exit": (dict,),
}


class AnalysisError(Exception):
    """An input that cannot be analysed; the message says what is wrong and what to do."""


@dataclass
class RunData:
    path: Path
    info: dict
    hdr: pd.DataFrame
    counters: pd.DataFrame
    history: pd.DataFrame
    access: pd.DataFrame
    stub_status: pd.DataFrame
    processes: pd.DataFrame
    backend_stats: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)  # metrics/events.jsonl (faults seen)

    @property
    def start(self) -> float:
        """When load began: the first load-generator interval (the stack starts before it)."""
        if not self.hdr.empty:
            return float(self.hdr["t0"].min())
        return float(self.info["started_at"])

    @property
    def end(self) -> float:
        return float(self.info.get("ended_at") or self.start)

    @property
    def complete(self) -> bool:
        return bool(self.info.get("complete"))


def read_info(path: Path) -> dict:
    run_json = path / "run.json"
    if not path.is_dir():
        raise AnalysisError(f"{path} is not a folder")
    if not run_json.is_file():
        raise AnalysisError(f"{path} is not a pollbench run folder: run.json is missing")
    try:
        info = json.loads(run_json.read_text())
    except ValueError as e:
        raise AnalysisError(f"{run_json} is corrupt ({e}); the run cannot be analysed") from None
    if not isinstance(info, dict) or not isinstance(info.get("schema_version"), int):
        raise AnalysisError(f"{run_json} has no integer schema_version: not a pollbench run")
    version = info["schema_version"]
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        if version > max(SUPPORTED_SCHEMA_VERSIONS):
            raise AnalysisError(f"{run_json} has schema_version {version}; this pollbench reads "
                                f"up to {max(SUPPORTED_SCHEMA_VERSIONS)}: upgrade pollbench")
        raise AnalysisError(f"{run_json} has schema_version {version}, which is no longer read; "
                            "rerun the benchmark with this pollbench")
    for key, types in RUN_JSON_TYPES.items():
        if key not in info:
            if key in ("started_at", "parameters", "stack"):
                raise AnalysisError(f"{run_json} lacks {key!r}; the run folder is damaged")
            continue
        value = info[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise AnalysisError(f"{run_json}: {key!r} must be {names} (it is {value!r:.60}); "
                                "the run folder is damaged")
    if info.get("status") == "running" and _writer_gone(info.get("writer")):
        # Killed (kill -9, power loss) before it could record its end: say so, not "running".
        info["status"], info["complete"] = "crashed", False
        info["exit"] = {"code": None, "reason": "crashed: the pollbench process that wrote "
                        "this run is gone and never recorded an end"}
    return info


def _writer_gone(writer: dict | None) -> bool:
    """Is the process that wrote run.json gone?  (Its pid and start time, against pid reuse.)"""
    if not isinstance(writer, dict) or "pid" not in writer:
        return False  # not recorded: cannot tell
    try:
        started = psutil.Process(writer["pid"]).create_time()
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False
    return abs(started - writer.get("started_at", started)) > 1.0


def _read_optional(path: Path, reader, what: str, notes: list[str], columns: list[str]):
    if not path.exists():
        notes.append(f"no {what} ({path.name} missing): its charts are left out")
        return pd.DataFrame(columns=columns)
    try:
        return reader(path)
    except (ValueError, KeyError, pd.errors.ParserError) as e:
        notes.append(f"{what} ({path.name}) is unreadable ({str(e)[:80]}): its charts are left out")
        return pd.DataFrame(columns=columns)


NUMERIC_ACCESS_FIELDS = ("msec", "connection", "connection_requests", "status",
                         "body_bytes_sent", "request_time", "upstream_connect_time",
                         "upstream_header_time", "upstream_response_time", "upstream_status")
_NUMBER = r"^-?[0-9]+(\.[0-9]+)?$"


def _arrow_numbers(col):
    """A JSON string column ("0.002", "-", "", "0.001, 0.002") -> float64 pandas Series.

    Casting runs in Arrow (C++); only the rare retried requests, whose upstream_* values
    are comma-separated, are split, keeping the last attempt (the one that answered)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_string(col.type):
        return col.cast(pa.float64()).to_pandas()
    clean = pc.if_else(pc.match_substring_regex(col, _NUMBER), col, pa.scalar(None, pa.string()))
    out = pc.cast(clean, pa.float64()).to_pandas()
    retried = pc.match_substring(col, ",").to_pandas().fillna(False).to_numpy(dtype=bool)
    if retried.any():
        raw = col.to_pandas()[retried]
        out[retried] = pd.to_numeric(raw.str.rsplit(",", n=1).str[-1].str.strip(),
                                     errors="coerce")
    return out


def read_access_log(path: Path) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.json as pj

    if path.stat().st_size == 0:
        return pd.DataFrame(columns=ACCESS_COLUMNS)
    try:
        table = pj.read_json(path)
    except pa.ArrowInvalid as e:
        raise ValueError(str(e)) from None
    df = pd.DataFrame({name: (_arrow_numbers(table.column(name))
                              if name in NUMERIC_ACCESS_FIELDS else table.column(name).to_pandas())
                       for name in table.column_names})
    df["time"] = df["msec"]
    return df


ACCESS_COLUMNS = ["time", "connection", "connection_requests", "status", "uri", "method",
                  "request_time", "upstream_addr", "upstream_status", "upstream_connect_time",
                  "upstream_header_time", "upstream_response_time"]


def read_backend_stats(path: Path) -> pd.DataFrame:
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        s = rec["stats"]
        rows.append({
            "time": rec["time"], "backend": rec["backend"],
            "connections_accepted": s["connections"]["accepted"],
            "connections_open": s["connections"]["open"],
            "requests": s["requests"],
            "requests_per_connection_mean": s["requests_per_connection"]["mean"],
            "closed_histogram": s["requests_per_connection"]["closed_histogram"],
            "long_polls_waiting": s["long_polls_waiting"],
            "messages_delivered": s["messages_delivered"],
            "gc_pause_max_ms": s["gc"]["pause_max_ms"],
        })
    return pd.DataFrame(rows)


def load_run(path: Path | str) -> RunData:
    path = Path(path)
    info = read_info(path)
    notes: list[str] = []
    if not info.get("complete"):
        notes.append(f"the run is {info.get('status', 'incomplete')} "
                     f"({info.get('exit', {}).get('reason', 'no reason recorded')}): figures "
                     "cover only what was recorded")
    f = {k: path / v for k, v in FILES.items()}
    hdr = _read_optional(f["hdr"], read_hdr_log, "lossless latency log", notes,
                         ["t0", "t1", "metric", "source", "count", "hist"])
    counters = _read_optional(f["counters"], read_counters, "counters", notes,
                              ["t0", "t1", "source", "counter", "value"])
    history = _read_optional(f["history"], pd.read_csv, "Locust history", notes,
                             ["Timestamp", "User Count", "Name", "Requests/s"])
    mode = ((info.get("stack") or {}).get("nginx") or {}).get("access_log") or "full"
    if mode == "off":
        access = pd.DataFrame(columns=ACCESS_COLUMNS)
        notes.append("nginx's access log was off (access_log = off): client -> nginx reuse "
                     "comes from stub_status's counters; no upstream timing chart")
    else:
        access = _read_optional(f["access"], read_access_log, "nginx access log", notes,
                                ACCESS_COLUMNS)
    if mode.startswith("sampled-"):
        notes.append(f"nginx's access log kept every request of one connection in "
                     f"{mode.split('-', 1)[1]} (access_log = {mode}): reuse per connection and "
                     "upstream timings are those connections'")
    stub = _read_optional(f["stub_status"], pd.read_csv, "stub_status samples", notes,
                          ["time", "active", "accepts", "handled", "requests"])
    procs = _read_optional(f["processes"], pd.read_csv, "process samples", notes,
                           ["time", "component", "pid", "cpu_percent", "rss_bytes", "num_fds"])
    backend = _read_optional(f["backend_stats"], read_backend_stats, "backend /stats samples",
                             notes, ["time", "backend", "connections_accepted", "requests"])
    events = read_events(path / catalog.RUN_FILES["events"], notes)
    return RunData(path, info, hdr, counters, history, access, stub, procs, backend, notes,
                   events)


def read_events(path: Path, notes: list[str]) -> list[dict]:
    """events.jsonl: a few lines per fault; absent in runs of older versions (no events)."""
    if not path.exists():
        return []
    events = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            event = json.loads(line)
        except ValueError:
            notes.append(f"{path.name} line {n} is unreadable: left out")
            continue
        if isinstance(event, dict) and isinstance(event.get("t"), (int, float)):
            events.append(event)
    return events
