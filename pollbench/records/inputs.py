"""Every file a user hands pollbench is read here: profiles and sweeps (TOML), baselines and
summaries (JSON).  Any error (missing, unreadable, not UTF-8, not parseable, wrong shape)
becomes one UserError line naming the file and what to fix."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pollbench.errors import UserError


def read_toml(path: Path, what: str, keys: set[str] | None) -> dict[str, Any]:
    """The file's top-level table; refused naming ``what`` when it is not TOML or has a key
    outside ``keys`` (None: any key; the caller checks them)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{what}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{what}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"{what}: cannot be read ({e.strerror})") from None
    unknown = sorted(set(data) - keys) if keys is not None else []
    if unknown and keys is not None:
        raise UserError(f"{what}: unknown key(s) {', '.join(unknown)}; known keys: "
                        + ", ".join(sorted(keys)))
    return data


def read_json(path: Path, what: str) -> Any:
    """The file's JSON value; refused in one line naming ``what`` when it cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{what}: cannot be read ({e.strerror})") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise UserError(f"{what} is not valid JSON ({str(e)[:120]})") from None


def check_summary(data: Any, what: str) -> dict:
    """A run summary (summary.json or a baseline's entry): a dict whose ``metrics`` is a dict
    of ``{"value": number or null, ...}`` tables; refused in one line otherwise."""
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise UserError(f"{what}: a run summary must be an object with a \"metrics\" object")
    for name, m in data["metrics"].items():
        value = m.get("value") if isinstance(m, dict) else m
        if not isinstance(m, dict) or isinstance(value, bool) or \
                not isinstance(value, (int, float, type(None))):
            raise UserError(f"{what}: metric {name!r} must be an object with a numeric "
                            f"\"value\" (it is {m!r:.60})")
    return data


def check_output_file(path: Path | None, option: str) -> None:
    """An output file's folder must exist before any work starts (it is not created)."""
    if path is not None and not Path(path).parent.is_dir():
        raise UserError(f"{option} {path}: the folder {Path(path).parent} does not exist; "
                        "create it or choose another path")
