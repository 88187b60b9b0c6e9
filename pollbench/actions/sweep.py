"""The sweep runner (``pollbench sweep``, whose help describes it): the plan in a
manifest, each run a normal run folder, each on ports no TIME_WAIT socket holds, interruption
and ``--resume``, and the ranked comparison report at the end."""

from __future__ import annotations

import fcntl
import json
import random
import shutil
import time
from dataclasses import replace
from pathlib import Path

import psutil

from analysis.catalog import EXIT_BROKEN, EXIT_INTERRUPTED, EXIT_OK, EXIT_RUN_FAILED
from pollbench import paths
from pollbench.actions.sweepfile import (
    FRESH_PORTS_SETTLE_S,
    PORT_SETS,
    Sweep,
    check_cells,
    load_sweep,
)
from pollbench.errors import RunFailed, UserError
from pollbench.log import log
from pollbench.records.manifest import (
    COMPLETE,
    FAILED,
    INTERRUPTED,
    MANIFEST,
    PLANNED,
    RUNNING,
    completed_entries,
    completed_runs,
    next_report_dir,
    read_manifest,
    run_labels,
    save,
)
from pollbench.records.rundir import new_run_dir
from pollbench.stack.net import port_free
from pollbench.stack.nginx_config import safe_path

# -- sockets left in TIME_WAIT by the previous run -------------------------------------------

def time_wait_count(ports: set[int]) -> int:
    """TCP sockets in TIME_WAIT with either end on one of ``ports`` (this machine)."""
    n = 0
    for c in psutil.net_connections(kind="tcp"):
        if c.status != psutil.CONN_TIME_WAIT:
            continue
        if (c.laddr and c.laddr.port in ports) or (c.raddr and c.raddr.port in ports):
            n += 1
    return n


def most_backends(sweep: Sweep) -> int:
    return max(c.stack.settings()["backends"] for c in sweep.cells)


def port_sets(sweep: Sweep, port: int, backend_port: int) -> list[tuple[int, int]]:
    """The (nginx port, first backend port) sets a sweep's runs rotate through: one set
    with a fixed cool-down or "time-wait", ``PORT_SETS`` disjoint ones with "fresh-ports"."""
    most = most_backends(sweep)
    count = PORT_SETS if sweep.cooldown == "fresh-ports" else 1
    sets = [(port + i, backend_port + i * most) for i in range(count)]
    used = [p for n, b in sets for p in (n, *range(b, b + most))]
    if len(set(used)) != len(used) or max(used) > 65535:
        raise UserError(f"cooldown = \"fresh-ports\" rotates over {count} port sets (nginx "
                        f"{port}..{port + count - 1}, backends {backend_port}.."
                        f"{backend_port + count * most - 1}), and they overlap: choose --port "
                        f"and --backend-port further apart")
    return sets


def fresh_ports(sweep: Sweep, sets: list[tuple[int, int]], last: int, log=print) -> \
        tuple[int, dict]:
    """The next port set after ``last`` that no TIME_WAIT socket holds (waiting, at most
    cooldown_max, for the one used longest ago when every set still has some), then a short
    settle: a run never meets the previous runs' sockets, and no run waits 60 s for them."""
    most = most_backends(sweep)
    started = time.monotonic()
    order = [(last + i) % len(sets) for i in range(1, len(sets) + 1)]

    def held(i: int) -> int:
        n, b = sets[i]
        return time_wait_count({n, *range(b, b + most)})

    counts = {i: held(i) for i in order}
    choice = next((i for i in order if counts[i] == 0), None)
    left = 0
    if choice is None:  # every set was used within the last minute: wait for the oldest
        choice = order[0]
        left = counts[choice]
        while left and time.monotonic() - started < sweep.cooldown_max_s:
            time.sleep(1.0)
            left = held(choice)
        if left:
            log(f"   cool-down: {left} sockets still in TIME_WAIT on ports {sets[choice]} "
                f"after {time.monotonic() - started:.0f} s (cooldown_max); going on")
    time.sleep(FRESH_PORTS_SETTLE_S)
    return choice, {"mode": "fresh-ports", "ports": list(sets[choice]),
                    "time_wait_on_port_sets": sum(counts.values()),
                    "time_wait_left": left, "waited_s": round(time.monotonic() - started, 1)}


def cool_down(sweep: Sweep, ports: set[int], log=print) -> dict:
    """Wait as the sweep says; return what was waited for (recorded in the manifest)."""
    started = time.monotonic()
    if sweep.cooldown != "time-wait":
        time.sleep(float(sweep.cooldown))
        return {"mode": "fixed", "waited_s": round(time.monotonic() - started, 1)}
    first = left = time_wait_count(ports)
    next_note = started
    while left:
        waited = time.monotonic() - started
        if waited >= sweep.cooldown_max_s:
            log(f"   cool-down: {left} sockets still in TIME_WAIT after {waited:.0f} s "
                f"(cooldown_max); going on")
            break
        if time.monotonic() >= next_note:
            log(f"   cool-down: waiting for {left} sockets to leave TIME_WAIT "
                f"({waited:.0f} s so far)")
            next_note += 15
        time.sleep(1.0)
        left = time_wait_count(ports)
    return {"mode": "time-wait", "time_wait_at_start": first, "time_wait_left": left,
            "waited_s": round(time.monotonic() - started, 1)}


# -- the plan and the manifest ------------------------------------------------------------

def make_plan(sweep: Sweep, seed: int) -> list[dict]:
    """(cell, repetition) pairs in run order: rounds of every cell, shuffled per round."""
    rng = random.Random(seed)
    pairs = []
    if sweep.order == "sequential":
        pairs = [(c, r) for c in sweep.cells for r in range(1, sweep.repetitions + 1)]
    else:
        for r in range(1, sweep.repetitions + 1):
            cells = list(sweep.cells)
            if sweep.order == "shuffled":
                rng.shuffle(cells)
            pairs += [(c, r) for c in cells]
    return [{"cell": c.index, "repetition": r, "run": f"{c.folder}/rep-{r}", "status": PLANNED,
             "attempts": 0} for c, r in pairs]


def new_manifest(sweep: Sweep, seed: int) -> dict:
    return {
        "schema_version": 1, "kind": "sweep", "name": sweep.name, "description": sweep.description,
        "sweep_file": str(sweep.path.resolve()), "sweep_digest": sweep.digest, "sweep": sweep.data,
        "created_at": time.time(), "updated_at": time.time(), "status": RUNNING,
        "order": sweep.order, "seed": seed, "repetitions": sweep.repetitions,
        "warmup_s": sweep.warmup_s, "rank_by": sweep.rank_by,
        "cooldown": {"mode": sweep.cooldown, "max_s": sweep.cooldown_max_s},
        "rank_within": sweep.rank_within,
        "cells": [{"index": c.index, "name": c.name, "folder": c.folder, "params": c.params,
                   "rank_group": c.rank_group(sweep.rank_within)} for c in sweep.cells],
        "plan": make_plan(sweep, seed), "report": None, "ranking": None,
    }


def find_unfinished(sweep: Sweep) -> Path:
    """The newest sweep folder under results/ of this sweep file that did not complete."""
    candidates = []
    for manifest_path in paths.results_dir().glob(f"*-sweep-{sweep.name}*/{MANIFEST}"):
        try:
            m = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            continue
        if m.get("kind") == "sweep" and m.get("status") != COMPLETE and \
                m.get("sweep_digest") == sweep.digest:
            candidates.append((m.get("created_at", 0), manifest_path.parent))
    if not candidates:
        raise UserError(f"no unfinished sweep of {sweep.path} under {paths.results_dir()}: start one "
                        f"without --resume, or pass --out DIR")
    return max(candidates)[1]


def stack_ports(sweep: Sweep, port: int, backend_port: int) -> set[int]:
    """Every port a run of the sweep may listen on (nginx, and the most backends any cell has,
    in every port set the sweep rotates through)."""
    most = most_backends(sweep)
    return {p for n, b in port_sets(sweep, port, backend_port)
            for p in (n, *range(b, b + most))}


# -- running ------------------------------------------------------------------------------

def _fmt_s(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def move_aside(root: Path, entry: dict) -> None:
    """An unfinished run's folder goes to aborted/ (kept for its logs, never counted)."""
    folder = root / entry["run"]
    if not folder.exists():
        return
    dest_dir = root / "aborted"
    dest_dir.mkdir(exist_ok=True)
    base = entry["run"].replace("/", "-")
    for n in range(1, 1000):
        dest = dest_dir / f"{base}-attempt-{n}"
        if not dest.exists():
            folder.rename(dest)
            entry.setdefault("aborted", []).append(str(dest.relative_to(root)))
            return


def run_plan(sweep: Sweep, root: Path, manifest: dict, port: int, backend_port: int,
             remote=None, session=None) -> None:
    """Every run of the plan not complete yet.  ``remote`` (a RemoteTarget) and ``session``
    (the controller's hold on its agent): each cell's stack is started on the target host
    through the agent (kept when the next run is of the same stack), the load comes from
    the workers, and the cool-down is waited for on the target host."""
    from pollbench.actions.run import run

    cells = {c.index: c for c in sweep.cells}
    todo = [e for e in manifest["plan"] if e["status"] != COMPLETE]
    total = len(manifest["plan"])
    ports = stack_ports(sweep, port, backend_port)
    sets = port_sets(sweep, port, backend_port)
    current = manifest.get("last_port_set", len(sets) - 1)
    run_s: list[float] = []
    cool_s: list[float] = []
    for k, entry in enumerate(todo):
        cell = cells[entry["cell"]]
        done = total - len(todo) + k
        per_run = sweep.estimate_run_s()
        if run_s:
            per_run = sum(run_s) / len(run_s) + (
                sum(cool_s) / len(cool_s) if cool_s else sweep.estimate_cooldown_s())
        log.info(f"\n== sweep {sweep.name}: run {done + 1} of {total} (cell {cell.index} of "
                 f"{len(sweep.cells)}: {cell.name}; repetition {entry['repetition']} of "
                 f"{sweep.repetitions}); about {_fmt_s(per_run * (len(todo) - k))} left")
        if entry["status"] != PLANNED:
            move_aside(root, entry)
        if remote is not None:
            if isinstance(sweep.cooldown, float) and (k > 0 or manifest.get("last_run_ended_at")):
                entry["cooldown"] = cool_down(sweep, set())
                cool_s.append(entry["cooldown"]["waited_s"])
        elif sweep.cooldown == "fresh-ports":
            current, entry["cooldown"] = fresh_ports(sweep, sets, current)
            cool_s.append(entry["cooldown"]["waited_s"])
            manifest["last_port_set"] = current
        elif k > 0 or manifest.get("last_run_ended_at"):
            entry["cooldown"] = cool_down(sweep, ports)
            cool_s.append(entry["cooldown"]["waited_s"])
        started = time.monotonic()
        run_port, run_backend_port = sets[current]  # one set unless "fresh-ports"
        spec = replace(cell.stack, port=run_port, backend_port=run_backend_port)
        entry.update(status=RUNNING, started_at=time.time(), attempts=entry["attempts"] + 1)
        save(root, manifest)
        (root / cell.folder).mkdir(exist_ok=True)
        try:
            if remote is not None:
                from pollbench.actions.remote_run import run_remote

                # on the target host, a new stack waits there for the previous one's sockets
                code = run_remote(remote, cell.load, out=root / entry["run"], report=False,
                                  history_source="sweep", stack=cell.stack, session=session,
                                  warmup_s=sweep.warmup_s,
                                  cooldown_max_s=0.0 if isinstance(sweep.cooldown, float)
                                  else sweep.cooldown_max_s)
            else:
                code = run(spec, cell.load, out=root / entry["run"], report=False,
                           history_source="sweep", warmup_s=sweep.warmup_s)
            entry.update(status=COMPLETE if code == 0 else FAILED, exit_code=code)
        except KeyboardInterrupt:
            entry.update(status=INTERRUPTED, exit_code=EXIT_INTERRUPTED)
            raise
        except UserError as e:  # e.g. a port taken since the check: every run would fail
            entry.update(status=FAILED, exit_code=EXIT_BROKEN, error=str(e).splitlines()[0])
            raise
        except RunFailed as e:
            entry.update(status=FAILED, exit_code=EXIT_RUN_FAILED, error=str(e).splitlines()[0])
            log.warning(f"run failed ({entry['error']}); the sweep goes on")
        finally:
            entry["ended_at"] = time.time()
            manifest["last_run_ended_at"] = entry["ended_at"]
            save(root, manifest)
        run_s.append(time.monotonic() - started)


def write_report(sweep: Sweep, root: Path, manifest: dict) -> Path | None:
    from analysis.compare_report import write_comparison
    from analysis.load import AnalysisError

    runs = completed_runs(root, manifest)
    cells_done = {e["cell"] for e in completed_entries(manifest)}
    if len(cells_done) < 2:
        log.warning("fewer than two cells completed; no comparison report")
        return None
    out = next_report_dir(root)
    try:
        paths = write_comparison(runs, out, sweep.warmup_s, rank_by=sweep.rank_by,
                                 rank_threshold=sweep.rank_threshold,
                                 cost_rank_by=sweep.cost_rank_by,
                                 title=f"pollbench sweep {sweep.name}",
                                 labels=run_labels(manifest),
                                 rank_within=run_labels(manifest, "rank_group"))
    except AnalysisError as e:
        raise UserError(f"the sweep's report could not be written: {e}") from None
    summary = json.loads(paths["json"].read_text())
    manifest["report"] = str(out.relative_to(root))
    manifest["ranking"] = summary.get("ranking")
    manifest["cost_ranking"] = summary.get("cost_ranking")
    return paths["html"]


def print_ranking(manifest: dict) -> None:
    """The sweep's ranking by its rank_by, then by the stack's cost (when it was measured)."""
    for key in ("ranking", "cost_ranking"):
        _print_ranking(manifest.get(key))


def _print_ranking(ranking: dict | None) -> None:
    if not ranking:
        return
    print(f"\nRanking by {ranking['metric']} (each cell against the best; worse = beyond "
          f"{ranking['threshold']:.0%} and significant):")
    group = None
    for r in ranking["rows"]:
        if r.get("group") and r["group"] != group:
            group = r["group"]
            print(f" {group}:")
        value = "n/a" if r["value"] is None else f"{r['value']:.4g}"
        change = "" if r["change_vs_best"] is None else f" ({r['change_vs_best']:+.1%})"
        p = "" if r["p_value"] is None else f", p={r['p_value']:.3g}"
        note = f"; {r['note']}" if r.get("note") else ""
        if r.get("void"):
            note += "; VOID: load generator CPU-saturated"
        print(f"  {r['rank'] or '-':>2}. {value:>9}{change:10} {r['verdict']}{p}  "
              f"[{r['label']}]{note}")


def check_cells_remote(sweep: Sweep, client) -> None:
    """Every cell's stack checked by the target host's agent (its knobs, nginx -t there)."""
    from pollbench.stack.agent import API
    from pollbench.stack.remote import AgentRefused, spec_to_wire

    for cell in sweep.cells:
        where = f"sweep {sweep.path}, {cell.describe()}"
        try:
            cell.load.validate(cell.stack.max_hold_s)
            cell.load.fault_schedule()
            client.call("POST", f"{API}/check", {"stack": spec_to_wire(cell.stack)},
                        timeout=60)
        except AgentRefused as e:
            raise UserError(f"{where}: {e.answer.get('error', e)}") from None
        except UserError as e:
            raise UserError(f"{where}: {e}") from None


def sweep_command(name: str, resume: bool, out: Path | None, check_only: bool, port: int,
                  backend_port: int, remote=None, project=None) -> int:
    sweep = load_sweep(name, project)
    session = None
    if remote is not None:
        from pollbench import __version__
        from pollbench.stack.remote import AgentClient, Session

        for cell in sweep.cells:
            remote.check(cell.load)
        client = AgentClient(remote.agent, remote.token)
        info = client.info()
        if info.get("pollbench") != __version__ or not info.get("controllable"):
            raise UserError(f"a sweep on another host needs pollbench agent {__version__} on "
                            f"it; {remote.agent} is "
                            + (f"pollbench {info.get('pollbench')}" if info.get("pollbench")
                               != __version__ else "pollbench up (reads only)"))
        check_cells_remote(sweep, client)
        session = Session(client, remote.lease_s)
    else:
        check_cells(sweep, port, backend_port)
    if check_only:
        seed = sweep.seed if sweep.seed is not None else 0
        plan = make_plan(sweep, seed)
        print(f"sweep {sweep.name}: {len(sweep.cells)} cells x {sweep.repetitions} repetitions "
              f"= {len(plan)} runs, order {sweep.order}; all cells pass nginx -t")
        for c in sweep.cells:
            print(f"  cell {c.index}: {c.name}")
        print(f"estimated time: about {_fmt_s(sweep.estimate_run_s() * len(plan))}")
        return EXIT_OK
    for p in sorted(stack_ports(sweep, port, backend_port)) if remote is None else ():
        if not port_free(p):
            raise UserError(f"port {p} is already in use on 127.0.0.1 (stop what holds it, or "
                            "choose --port / --backend-port)")
    if resume:
        root = out if out is not None else find_unfinished(sweep)
        manifest = read_manifest(root)
        if manifest["sweep_digest"] != sweep.digest:
            raise UserError(f"{sweep.path} changed since the sweep in {root} started (what it "
                            "measures differs): start a new sweep instead of --resume")
        left = sum(e["status"] != COMPLETE for e in manifest["plan"])
        log.info(f"resuming {root}: {len(manifest['plan']) - left} runs complete, {left} to run")
    else:
        if out is not None:
            safe_path(Path(out).resolve())  # run folders inside go into nginx.conf
        root = new_run_dir(f"sweep-{sweep.name}", out)
        seed = sweep.seed if sweep.seed is not None else random.SystemRandom().randrange(2**31)
        manifest = new_manifest(sweep, seed)
        shutil.copyfile(sweep.path, root / "sweep.toml")
        save(root, manifest)
        log.info(f"pollbench sweep {sweep.name}: {len(sweep.cells)} cells x {sweep.repetitions} "
                 f"repetitions = {len(manifest['plan'])} runs ({sweep.order}, seed {seed}) -> "
                 f"{root}")
    lock = open(root / ".lock", "w")  # noqa: SIM115 (held for the whole sweep)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError(f"another pollbench sweep is running in {root}") from None
    manifest["status"] = RUNNING
    if remote is not None:
        manifest["distributed"] = {"target": remote.target, "agent": remote.agent,
                                   "expect_workers": remote.expect_workers}
    try:
        run_plan(sweep, root, manifest, port, backend_port, remote, session)
    except KeyboardInterrupt:
        manifest["status"] = INTERRUPTED
        save(root, manifest)
        log.warning(f"sweep interrupted; continue it with: pollbench sweep {name} --resume "
                    f"--out {root}")
        raise
    except UserError:
        manifest["status"] = FAILED
        save(root, manifest)
        raise
    finally:
        if session is not None:
            try:
                session.close()  # the target host idle again
            except UserError as e:
                log.warning(f"the target's stack could not be stopped ({e}); its lease stops it")
    failed = [e for e in manifest["plan"] if e["status"] != COMPLETE]
    manifest["status"] = COMPLETE if not failed else FAILED
    html = write_report(sweep, root, manifest)
    save(root, manifest)
    print_ranking(manifest)
    if html:
        log.info(f"report: {html}")
    if failed:
        log.warning(f"{len(failed)} runs did not complete: "
                    + ", ".join(f"{e['run']} ({e.get('error', e['status'])})" for e in failed)
                    + f"; rerun them with: pollbench sweep {name} --resume --out {root}")
    print(root)  # the result: the last line, also with -q
    return EXIT_OK if not failed else EXIT_RUN_FAILED
