"""Files written whole or not at all: every file pollbench, the analysis and the load
generator write for others to read goes through here.

    with atomic_open(path) as f:      # streamed (a download, a sliced CSV)
        f.write(chunk)
    write_atomic(path, text)          # in one piece
    write_json_atomic(path, obj)

The data goes to a temporary file beside ``path``, which is renamed over it only when all of
it is written (and, with ``durable``, on disk): a reader sees the old file or the new one,
never half of one, and a writer that fails leaves no stray file.  Stdlib only: the load
generator uses it too.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: Path, mode: str = "wb", durable: bool = True, **kwargs: Any
                ) -> Iterator[IO[Any]]:
    """A file object to write ``path`` through; renamed into place when the block ends
    without an error.  ``durable=False``: no fsync (a view rewritten every second)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; results are for everyone to read
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes | str, durable: bool = True) -> None:
    """Write ``data`` to ``path`` whole (see the module's docstring)."""
    raw = data.encode() if isinstance(data, str) else data
    with atomic_open(path, "wb", durable=durable) as f:
        f.write(raw)


def write_json_atomic(path: Path, obj, durable: bool = True) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", durable)
