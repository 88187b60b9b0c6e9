"""Run folders under results/: created exclusively, never overwritten; files written atomically."""

from __future__ import annotations

import re
import time
from pathlib import Path

from analysis.atomic import write_atomic, write_json_atomic
from pollbench import paths
from pollbench.errors import UserError

__all__ = ["new_run_dir", "write_atomic", "write_json_atomic"]


def new_run_dir(label: str, out: Path | None = None, results: Path | None = None) -> Path:
    """``out`` exactly (must not exist yet), or ``results/<UTC time>-<label>`` made unique."""
    if out is not None:
        out = Path(out)
        if out.exists():
            raise UserError(f"{out} already exists; pollbench never overwrites a result: "
                            "choose another --out")
        try:
            out.mkdir(parents=True)
        except OSError as e:
            raise UserError(f"cannot create the folder {out} ({e.strerror}): choose another "
                            "--out") from None
        return out
    results = paths.results_dir() if results is None else results
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "run"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    try:
        results.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the results folder {results} ({e.strerror})") from None
    for n in range(1, 1000):
        path = results / (f"{stamp}-{safe}" if n == 1 else f"{stamp}-{safe}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UserError(f"could not create a new run folder under {results}")
