"""A sweep folder's ``manifest.json``: the plan, each run's status and timings (schema_version 1).

Written atomically after every change, so an interrupted sweep can be resumed
and reported; read by ``pollbench report`` for a sweep's ranking and cell names.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pollbench.errors import UserError
from pollbench.records.rundir import write_json_atomic

MANIFEST = "manifest.json"
PLANNED, RUNNING, COMPLETE, FAILED, INTERRUPTED = (
    "planned", "running", "complete", "failed", "interrupted")


def save(root: Path, manifest: dict) -> None:
    manifest["updated_at"] = time.time()
    write_json_atomic(root / MANIFEST, manifest)


def read_manifest(root: Path) -> dict:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{root / MANIFEST} is unreadable ({e}); it is not a sweep folder") \
            from None
    if manifest.get("kind") != "sweep" or manifest.get("schema_version") != 1:
        raise UserError(f"{root / MANIFEST} is not a pollbench sweep manifest (schema_version 1)")
    return manifest


def completed_entries(manifest: dict) -> list[dict]:
    """The completed plan entries in cell order, repetitions in order."""
    done = [e for e in manifest["plan"] if e["status"] == COMPLETE]
    return sorted(done, key=lambda e: (e["cell"], e["repetition"]))


def completed_runs(root: Path, manifest: dict) -> list[Path]:
    return [root / e["run"] for e in completed_entries(manifest)]


def run_labels(manifest: dict, key: str = "name") -> list[str]:
    """The cell name (or ``key="rank_group"``: its ranking group) of each run of
    :func:`completed_runs`, in the same order."""
    names = {c["index"]: c.get(key, "") for c in manifest["cells"]}
    return [names[e["cell"]] for e in completed_entries(manifest)]


def next_report_dir(root: Path) -> Path:
    """report/, else report-2/, report-3/ ...: a new report never replaces an old one."""
    out, n = root / "report", 1
    while out.exists():
        n += 1
        out = root / f"report-{n}"
    return out
