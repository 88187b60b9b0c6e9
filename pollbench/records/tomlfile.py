"""TOML files pollbench reads (profiles, sweeps): parse errors and unknown keys as one line."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pollbench.errors import UserError


def read_toml(path: Path, what: str, keys: set[str]) -> dict[str, Any]:
    """The file's top-level table; refused naming ``what`` when it is not TOML or has a key
    outside ``keys``."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{what}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{what}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"{what}: cannot be read ({e.strerror})") from None
    unknown = sorted(set(data) - keys)
    if unknown:
        raise UserError(f"{what}: unknown key(s) {', '.join(unknown)}; known keys: "
                        + ", ".join(sorted(keys)))
    return data
