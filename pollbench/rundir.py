"""Run folders under results/: created exclusively, never overwritten; files written atomically."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path

from pollbench.errors import UserError

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"


def new_run_dir(label: str, out: Path | None = None, results: Path = RESULTS_DIR) -> Path:
    """``out`` exactly (must not exist yet), or ``results/<UTC time>-<label>`` made unique."""
    if out is not None:
        out = Path(out)
        if out.exists():
            raise UserError(f"{out} already exists; pollbench never overwrites a result: "
                            "choose another --out")
        out.mkdir(parents=True)
        return out
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "run"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    results.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = results / (f"{stamp}-{safe}" if n == 1 else f"{stamp}-{safe}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UserError(f"could not create a new run folder under {results}")


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temporary file beside ``path`` and rename: readers never see half a file."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; results are for everyone to read
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
