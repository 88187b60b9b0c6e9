"""Sweep files: which settings to vary, how often, in what order.  Parsing and checks only.

A sweep file is TOML (see ``sweeps/example.toml`` for every key, commented)::

    profile = "seed"                # base nginx profile
    repetitions = 4
    order = "shuffled"              # shuffled (default) | interleaved | sequential
    warmup = "5s"                   # left out of every figure
    cooldown = "fresh-ports"        # or "time-wait", or a duration: "10s"
    rank_by = "delivery_latency_p99"

    [load]                          # the load of every cell (pollbench run's options)
    scenario = "channels"
    users = 500
    duration = "40s"

    [grid]                          # every combination of these values ...
    upstream_keepalive = [0, 16, 64, 256]

    [[cells]]                       # ... and/or an explicit list of cells (crossed with the grid)
    use = "epoll"

A parameter is an nginx knob (``upstream_keepalive``, ``use``, ``backends`` ...), a
stack setting (``loop``, ``profile``, ``nginx_binary``, ``state``) or a load setting
(``users``, ``publish_rate``, ``connection`` ...).  :func:`load_sweep` expands
the cells and checks every value; :func:`check_cells` renders each cell's nginx
config and runs ``nginx -t`` on it, so a bad cell is refused, by name, before
any process starts.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from analysis.catalog import RANKABLE
from pollbench.errors import UserError
from pollbench.paths import SWEEPS_DIR
from pollbench.records.inputs import read_toml
from pollbench.stack import nginx_config
from pollbench.stack.loadgen import MAX_DURATION_S, LoadSpec, check_number, parse_duration
from pollbench.stack.preflight import preflight
from pollbench.stack.project import Project
from pollbench.stack.spec import StackSpec
from pollbench.stack.stack import ConfigRefused, Stack

ORDERS = ("shuffled", "interleaved", "sequential")
# Four repetitions a cell: the fewest for which a cell's figures can be compared one value
# per repetition (Mann-Whitney: 2 / C(8, 4) = 0.029 < 0.05).
DEFAULT_REPETITIONS = 4
# "fresh-ports": each run on a set of ports (of PORT_SETS) that no TIME_WAIT socket holds,
# after this settle (the previous stack's processes gone, its sockets closed).
FRESH_PORTS_SETTLE_S = 2.0
PORT_SETS = 4
TOP_KEYS = {"description", "profile", "nginx_binary", "loop", "state", "max_hold", "repetitions",
            "order",
            "seed", "warmup", "cooldown", "cooldown_max", "rank_by", "cost_rank_by", "rank_threshold", "rank_within",
            "nginx",
            "load", "grid", "cells"}
STACK_PARAMS = {"profile", "loop", "nginx_binary", "state"}
# load parameter -> (LoadSpec field, converter)
LOAD_PARAMS = {
    "scenario": ("scenario", str), "mix": ("mix", str), "users": ("users", int),
    "spawn_rate": ("spawn_rate", float), "duration": ("duration_s", parse_duration),
    "shape": ("shape", str), "workers": ("workers", int), "connection": ("connection", str),
    "retry_backoff": ("retry_backoff", str),
    "source_addresses": ("source_addresses", str),
    "channels": ("channels", int), "publish_rate": ("publish_rate", float),
    "poll_timeout": ("poll_timeout_s", float), "task_duration_ms": ("task_duration_ms", int),
    "message_bytes": ("message_bytes", int), "faults": ("faults", tuple),
    "protocol": ("protocol", str),
}
# Load settings that set the load level: cells at different levels are ranked apart.
LOAD_LEVEL = ("scenario", "mix", "users", "publish_rate", "channels", "shape", "duration")
MAX_CELLS = 200
MAX_REPETITIONS = 50


@dataclass
class Cell:
    index: int            # 1-based, in expansion order
    params: dict[str, Any]  # only what this cell sets (grid values and its [[cells]] entry)
    name: str
    stack: StackSpec
    load: LoadSpec

    @property
    def folder(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9_.+-]+", "-", self.name).strip("-")[:60]
        return f"c{self.index:02d}-{slug}"

    def describe(self) -> str:
        return f"cell {self.index} ({self.name})"

    def rank_group(self, within: list[str]) -> str:
        """The cells ranked together share this text (e.g. "users=300"); "" for all."""
        return rank_group_text(self.params, within)


@dataclass
class Sweep:
    path: Path
    name: str
    data: dict[str, Any]
    cells: list[Cell]
    repetitions: int
    order: str
    seed: int | None
    warmup_s: float
    cooldown: str | float  # "fresh-ports", "time-wait" or seconds
    cooldown_max_s: float
    rank_by: str
    rank_threshold: float
    rank_within: list[str] = field(default_factory=list)
    cost_rank_by: str | None = None  # the cost figure ranked beside rank_by (None: the stack's)
    description: str = ""

    @property
    def digest(self) -> str:
        """Identity of what the sweep measures (comments and key order do not count)."""
        return hashlib.sha256(json.dumps(self.data, sort_keys=True, default=str).encode()
                              ).hexdigest()[:16]

    def estimate_cooldown_s(self) -> float:
        """Linux keeps a socket in TIME_WAIT for 60 s after the run's last connections close;
        with fresh ports a run starts on ports no such socket holds, after a 2-s settle."""
        if self.cooldown == "fresh-ports":
            return FRESH_PORTS_SETTLE_S
        if self.cooldown == "time-wait":
            return min(62.0, self.cooldown_max_s)
        return float(self.cooldown)

    def estimate_run_s(self) -> float:
        """A first guess at one run's wall time (with its cool-down), before any was timed."""
        longest = max(c.load.duration_s for c in self.cells)
        return longest + 12.0 + self.estimate_cooldown_s()


def sweep_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix != ".toml":
        shipped = SWEEPS_DIR / f"{name_or_path}.toml"
        if re.fullmatch(r"[A-Za-z0-9_-]+", name_or_path) and shipped.is_file():
            return shipped
        names = ", ".join(sorted(p.stem for p in SWEEPS_DIR.glob("*.toml")))
        raise UserError(f"unknown sweep {name_or_path!r}: give a .toml file or one of {names}")
    if not path.is_file():
        raise UserError(f"sweep file {name_or_path} does not exist")
    return path


def _duration(where: str, key: str, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        check_number(f"{where}: {key}", value, 0, MAX_DURATION_S)
        return float(value)
    if isinstance(value, str):
        if value.strip() in ("0", "0s"):
            return 0.0
        return parse_duration(value)
    raise UserError(f"{where}: {key} must be seconds or a duration such as \"30s\" (it is "
                    f"{value!r})")


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return "+".join(map(str, value))
    return str(value)


def rank_group_text(params: dict[str, Any], within: list[str]) -> str:
    return _params_text({k: params.get(k) for k in within})


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_value_text(v)}" for k, v in params.items())


def _apply(where: str, params: dict[str, Any], base_nginx: dict[str, Any],
           base_load: dict[str, Any], top: dict[str, Any],
           project: Project | None = None) -> tuple[StackSpec, LoadSpec]:
    """Build the cell's StackSpec and LoadSpec from the base settings and its parameters
    (``project``: the user's project file, whose profile, state, protocol and backends are
    the sweep's defaults)."""
    nginx = dict(base_nginx)
    load_kwargs: dict[str, Any] = {}
    own = project.options if project is not None else {}
    stack_kwargs = {"profile": top.get("profile", own.get("profile", "seed")),
                    "loop": top.get("loop", "asyncio"),
                    "nginx_binary": top.get("nginx_binary"),
                    "state": top.get("state", own.get("state")),
                    "backend_command": project.backend if project is not None else None}
    if "max_hold" in top:
        stack_kwargs["max_hold_s"] = _duration(where, "max_hold", top["max_hold"])
    merged_load = dict(base_load)
    if "protocol" in own and "protocol" not in merged_load:
        merged_load["protocol"] = own["protocol"]
    for key, value in params.items():
        if key in nginx_config.KNOBS:
            nginx[key] = value
        elif key in STACK_PARAMS:
            if not isinstance(value, str) or not value:
                raise UserError(f"{where}: {key} must be a non-empty string (it is {value!r})")
            stack_kwargs[key] = value
        elif key in LOAD_PARAMS:
            merged_load[key] = value
        else:
            raise UserError(f"{where}: unknown parameter {key!r}; a parameter is an nginx knob "
                            f"({', '.join(sorted(nginx_config.KNOBS))}), a stack setting "
                            f"({', '.join(sorted(STACK_PARAMS))}) or a load setting "
                            f"({', '.join(sorted(LOAD_PARAMS))})")
    for key, value in merged_load.items():
        if key not in LOAD_PARAMS:
            raise UserError(f"{where}: unknown load setting {key!r}; known: "
                            + ", ".join(sorted(LOAD_PARAMS)))
        attr, conv = LOAD_PARAMS[key]
        if conv is tuple:  # faults: a list of --fault texts
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise UserError(f"{where}: load setting {key} must be a list of strings such as "
                                f"[\"20s:kill=3s:backend-1\"] (it is {value!r})")
            load_kwargs[attr] = tuple(value)
            continue
        if isinstance(value, bool) or (conv in (int, float) and not isinstance(value, (int, float))):
            raise UserError(f"{where}: load setting {key} must be a number (it is {value!r})")
        if conv is int and isinstance(value, float) and not value.is_integer():
            raise UserError(f"{where}: load setting {key} must be a whole number (it is {value})")
        if conv is str and not isinstance(value, str):
            raise UserError(f"{where}: load setting {key} must be a string (it is {value!r})")
        load_kwargs[attr] = _duration(where, key, value) if conv is parse_duration else \
            conv(value)  # type: ignore[operator]  # str, int or float
    stack = StackSpec(nginx_overrides=nginx, **stack_kwargs)
    return stack, LoadSpec(**load_kwargs)


def _table(where: str, data: dict, key: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise UserError(f"{where}: [{key}] must be a table")
    return value


def load_sweep(name_or_path: str, project: Project | None = None) -> Sweep:
    """Parse and expand a sweep file; every value is checked (no process is started).
    ``project``: the user's project file (its service is every cell's backends)."""
    path = sweep_path(name_or_path)
    where = f"sweep {path}"
    data = read_toml(path, where, TOP_KEYS)
    base_nginx = _table(where, data, "nginx")
    base_load = _table(where, data, "load")
    grid = _table(where, data, "grid")
    unknown = sorted(set(base_load) - set(LOAD_PARAMS))
    if unknown:
        raise UserError(f"{where}: [load] has unknown setting(s) {', '.join(unknown)}; known: "
                        + ", ".join(sorted(LOAD_PARAMS)))
    explicit = data.get("cells", [])
    if not isinstance(explicit, list) or not all(isinstance(c, dict) for c in explicit):
        raise UserError(f"{where}: cells must be a list of tables ([[cells]])")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: grid.{key} must be a non-empty list of values")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise UserError(f"{where}: grid.{key} lists a value twice")
    if not grid and not explicit:
        raise UserError(f"{where}: nothing to vary: add a [grid] table or [[cells]] entries")

    entries = explicit or [{}]
    combos = [dict(zip(grid, values, strict=True))
              for values in itertools.product(*grid.values())] if grid else [{}]
    if len(entries) * len(combos) > MAX_CELLS:
        raise UserError(f"{where}: {len(entries) * len(combos)} cells; at most {MAX_CELLS}")
    if len(entries) * len(combos) < 2:
        raise UserError(f"{where}: a sweep needs at least two cells to compare")
    cells: list[Cell] = []
    seen: dict[str, int] = {}
    for entry in entries:
        entry = dict(entry)
        given_name = entry.pop("name", None)
        if given_name is not None and (not isinstance(given_name, str) or not given_name):
            raise UserError(f"{where}: a cell's name must be a non-empty string")
        overlap = sorted(set(entry) & set(grid))
        if overlap:
            raise UserError(f"{where}: {', '.join(overlap)} is both in [grid] and in a "
                            "[[cells]] entry: vary it in one place")
        for combo in combos:
            params = {**entry, **combo}
            index = len(cells) + 1
            # a named entry keeps its name (plus the grid values); others are named by values
            name = ", ".join(x for x in (given_name, _params_text(combo)) if x) \
                if given_name else _params_text(params)
            cell_where = f"{where}, cell {index} ({name or 'base'})"
            stack, load = _apply(cell_where, params, base_nginx, base_load, data, project)
            key = json.dumps({"stack": stack.__dict__, "load": load.__dict__}, sort_keys=True,
                             default=str)
            if key in seen:
                raise UserError(f"{cell_where} is the same configuration as cell {seen[key]}")
            seen[key] = index
            cells.append(Cell(index, params, name or f"cell-{index}", stack, load))

    repetitions = data.get("repetitions", DEFAULT_REPETITIONS)
    if isinstance(repetitions, bool) or not isinstance(repetitions, int) or \
            not 1 <= repetitions <= MAX_REPETITIONS:
        raise UserError(f"{where}: repetitions must be a whole number from 1 to "
                        f"{MAX_REPETITIONS} (it is {repetitions!r})")
    order = data.get("order", "shuffled")
    if order not in ORDERS:
        raise UserError(f"{where}: order {order!r} is not one of {', '.join(ORDERS)}")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise UserError(f"{where}: seed must be a whole number")
    warmup = _duration(where, "warmup", data.get("warmup", 5))
    cooldown: str | float = data.get("cooldown", "fresh-ports")
    if cooldown not in ("time-wait", "fresh-ports"):
        cooldown = _duration(where, "cooldown", cooldown)
    cooldown_max = _duration(where, "cooldown_max", data.get("cooldown_max", "90s"))
    rank_by = data.get("rank_by", "delivery_latency_p99")
    if rank_by not in RANKABLE:
        raise UserError(f"{where}: rank_by {rank_by!r} is not one of {', '.join(RANKABLE)}")
    cost_rank_by = data.get("cost_rank_by")
    costs = [m for m in RANKABLE if m.startswith("cpu_per_k")]
    if cost_rank_by is not None and cost_rank_by not in costs:
        raise UserError(f"{where}: cost_rank_by {cost_rank_by!r} is not one of {', '.join(costs)}")
    threshold = data.get("rank_threshold", 0.05)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or \
            not 0 <= threshold < 1:
        raise UserError(f"{where}: rank_threshold must be a fraction from 0 to 1 (0.05 = 5 %)")
    varied = [k for k in dict.fromkeys(k for c in cells for k in c.params)
              if len({json.dumps(c.params.get(k), sort_keys=True) for c in cells}) > 1]
    rank_within = data.get("rank_within", [k for k in varied if k in LOAD_LEVEL])
    if not isinstance(rank_within, list) or any(k not in varied for k in rank_within):
        raise UserError(f"{where}: rank_within must list parameters the cells vary "
                        f"({', '.join(varied)}); it is {rank_within!r}")
    for cell in cells:
        if warmup >= cell.load.duration_s:
            raise UserError(f"{where}, {cell.describe()}: the warm-up ({warmup:g} s) leaves "
                            f"nothing of the {cell.load.duration_s:g}-s run")
    return Sweep(path=path, name=path.stem, data=data, cells=cells, repetitions=repetitions,
                 order=order, seed=seed, warmup_s=warmup, cooldown=cooldown,
                 cooldown_max_s=cooldown_max, rank_by=rank_by, rank_threshold=float(threshold),
                 rank_within=rank_within, cost_rank_by=cost_rank_by,
                 description=str(data.get("description", "")))


def check_cells(sweep: Sweep, port: int, backend_port: int) -> None:
    """Every cell: knobs in range, the stack's rules, the load's, and ``nginx -t`` on its config.

    The first problem is raised as a UserError naming the sweep, the cell and the setting.
    """
    for cell in sweep.cells:
        where = f"sweep {sweep.path}, {cell.describe()}"
        spec = replace(cell.stack, port=port, backend_port=backend_port)
        try:
            resolved = preflight(spec, cell.load, check_ports=False, warn=False).resolved
            with tempfile.TemporaryDirectory(prefix="pollbench-sweep-check-") as tmp:
                stack = Stack(resolved, Path(tmp))
                stack.test_config(stack.render())
        except ConfigRefused as e:
            raise UserError(f"{where}: nginx -t refused the config: {e.summary}") from None
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
