"""The results history, in SQLite and in a real PostgreSQL server: write, read, filters,
import idempotence, migration from the first schema version, refusals, steps over commits,
and a database that goes away while a run is going on."""

from __future__ import annotations

import glob
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest

from pollbench.errors import UserError
from pollbench.records.history import SCHEMA_VERSION, History, _schema
from pollbench.stack.net import find_free_ports
from pollbench.stack.processes import wait_until
from pollbench.tests.children import interrupt
from pollbench.tests.conftest import REPO, free_stack_ports, pollbench_cmd


def fake_run(root: Path, name: str, started: float, commit: str, p50: float,
             scenario: str = "channels", users: int = 200, machine: str = "m1") -> Path:
    """A complete run folder as the history reads it: run.json and report/summary.json."""
    run = root / name
    (run / "report").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({
        "schema_version": 1, "kind": "run", "status": "complete", "complete": True,
        "started_at": started, "ended_at": started + 30,
        "parameters": {"scenario": scenario, "users": users},
        "stack": {"profile": "seed"}, "machine": {"fingerprint": machine},
        "git": {"commit": commit, "branch": "main", "dirty": False}}))
    (run / "report" / "summary.json").write_text(json.dumps({"metrics": {
        "delivery_latency_p50": {"value": p50, "unit": "ms", "better": "lower"},
        "throughput_deliveries": {"value": 2000.0, "unit": "messages/s", "better": "higher"},
        "delivery_latency_p99": {"value": None, "unit": "ms", "better": "lower"}}}))
    return run


def history_cli(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(pollbench_cmd("history", "--history", url, *args), cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def stepped_history(root: Path) -> list[Path]:
    """12 commits, 3 repetitions each; delivery p50 3.0 ms (+-2 %) and 3.6 ms from c07 on."""
    runs = []
    for c in range(12):
        for rep in range(3):
            wiggle = (-0.06, 0.0, 0.05)[(c + rep) % 3]
            runs.append(fake_run(root, f"c{c:02d}-r{rep}", 1_700_000_000 + c * 3600 + rep * 60,
                                 f"c{c:02d}" + "0" * 38, (3.6 if c >= 7 else 3.0) + wiggle))
    return runs


def check_store(url: str, tmp_path: Path) -> None:
    """What every database must do (called for SQLite and PostgreSQL)."""
    a = fake_run(tmp_path, "run-a", 1_700_000_000, "a" * 40, 3.1)
    fake_run(tmp_path, "run-b", 1_700_003_600, "b" * 40, 3.3, users=400)
    store = History.open(url)
    assert store.add_run(a, "run") is True
    assert store.add_run(a, "run") is False          # a run is stored once
    assert store.add_rows([]) == 0
    store.close()
    # the CLI backfills a folder of runs idempotently
    first = history_cli(url, "import", str(tmp_path))
    assert first.returncode == 0 and "1 runs added, 1 stored already" in first.stdout, first
    again = history_cli(url, "import", str(tmp_path))
    assert "0 runs added, 2 stored already" in again.stdout
    store = History.open(url)
    runs = store.query()
    assert [r.run_key.split("@")[0] for r in runs] == ["run-a", "run-b"]
    assert runs[0].figures["delivery_latency_p50"] == 3.1
    assert runs[0].figures["delivery_latency_p99"] is None
    assert (runs[0].commit, runs[0].branch, runs[0].source) == ("a" * 40, "main", "run")
    assert [r.run_key.split("@")[0] for r in store.query(parameters={"users": "400"})] == \
        ["run-b"]
    assert store.query(scenario="tasks") == []
    store.close()
    table = history_cli(url, "--param", "users=400")
    assert table.returncode == 0 and "bbbbbbbbbb" in table.stdout and "3.3" in table.stdout
    none = history_cli(url, "--scenario", "tasks")
    assert none.returncode == 2 and "no run in the history matches" in none.stderr


def migrate_from_first_version(url: str, engine_url: str) -> None:
    """A database of schema version 1, made by the first version's tables, migrates."""
    import sqlalchemy as sa

    engine = sa.create_engine(engine_url)
    with engine.begin() as conn:
        _schema(1).create_all(conn)
        conn.execute(sa.text("INSERT INTO pollbench_meta (key, value) VALUES "
                             "('schema_version', '1')"))
        conn.execute(sa.text(
            "INSERT INTO runs (run_key, folder, kind, started_at, parameters, stack, "
            "recorded_at) VALUES ('old@1', '/old', 'run', 1.0, '{}', '{}', 1.0)"))
        run_id = conn.execute(sa.text("SELECT id FROM runs")).scalar_one()
        conn.execute(sa.text("INSERT INTO figures (run_id, name, value) VALUES "
                             "(:r, 'delivery_latency_p50', 2.5)"), {"r": run_id})
    engine.dispose()
    store = History.open(url)
    [old] = store.query()
    assert old.run_key == "old@1" and old.source == "unknown"
    assert old.figures == {"delivery_latency_p50": 2.5, }
    store.close()
    engine = sa.create_engine(engine_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT value FROM pollbench_meta")).scalar_one() == \
            str(SCHEMA_VERSION)
    engine.dispose()


def test_sqlite_store_write_read_import_and_filters(tmp_path):
    check_store(f"sqlite:///{tmp_path / 'h.sqlite'}", tmp_path / "runs")


def test_sqlite_migrates_forward_from_the_first_schema(tmp_path):
    db = tmp_path / "old.sqlite"
    migrate_from_first_version(f"sqlite:///{db}", f"sqlite:///{db}")


def test_refusals_are_one_line_exit_2(tmp_path):
    fake_run(tmp_path / "runs", "r", 1_700_000_000, "a" * 40, 3.0)
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("hello\n" * 10)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    newer = tmp_path / "newer.sqlite"
    History.open(f"sqlite:///{newer}").close()
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE pollbench_meta SET value = '99'")
    for url, words in [
        ("not a url", "is not a database URL"),
        ("mysql://u@h/db", "only sqlite:///PATH and postgresql://"),
        (f"sqlite:///{not_sqlite}", "is not a pollbench history (not an SQLite file)"),
        (f"sqlite:///{other}", "a database of another program (tables: customers)"),
        (f"sqlite:///{newer}", "has schema version 99; this pollbench reads up to"),
    ]:
        proc = history_cli(url, "import", str(tmp_path / "runs"))
        assert proc.returncode == 2, (url, proc.stdout, proc.stderr)
        assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not_sqlite.read_text() == "hello\n" * 10  # nothing written to it
    bad_date = history_cli(f"sqlite:///{tmp_path / 'h.sqlite'}", "--since", "yesterday")
    assert bad_date.returncode == 2 and "is not a date" in bad_date.stderr


def test_trend_page_shows_an_injected_step_at_its_commit(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    stepped_history(tmp_path / "runs")
    assert history_cli(url, "import", str(tmp_path / "runs")).returncode == 0
    page = tmp_path / "trend.html"
    proc = history_cli(url, "--metric", "delivery_latency_p50", "--metric",
                       "throughput_deliveries", "--html", str(page))
    assert proc.returncode == 0, proc.stderr
    text = page.read_text()
    assert "data:image/png;base64," in text
    # exactly one step, on delivery p50, between the last slow-free commit and the first slow
    assert proc.stdout.count("step: ") == 1, proc.stdout
    assert "delivery_latency_p50: 3 -> 3.6 ms (+20.0%, worse) between c06000000000 and " \
           "c07000000000" in proc.stdout
    assert "c06" + "0" * 37 in text and "c07" + "0" * 37 in text
    assert history_cli(url, "--html", str(page)).returncode == 2  # never overwritten


def test_no_step_is_found_in_noise(tmp_path):
    import pandas as pd

    from analysis.trends import steps

    rows = [{"run_key": f"r{i}", "started_at": float(i), "commit": f"c{i // 3:02d}",
             "machine": "m", "value": 3.0 + ((i * 7919) % 13 - 6) * 0.02} for i in range(60)]
    assert steps("delivery_latency_p50", pd.DataFrame(rows)) == []


# --- PostgreSQL: a real server from Debian's packages, on a free port, in a temporary folder

def _pg_bin(name: str) -> str:
    """Debian's PostgreSQL binaries ('' when none is installed)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name) or ""


class Postgres:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pollbench-pg-"))
        self.port = find_free_ports(1, 36000, 39000)
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.dir, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, *cmd: str) -> None:
        subprocess.run([*self.as_user, *cmd], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self.run(_pg_bin("initdb"), "-D", str(self.dir / "data"), "-U", "postgres",
                 "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        self.run(_pg_bin("pg_ctl"), "-D", str(self.dir / "data"), "-w", "-l",
                 str(self.dir / "log"), "-o",
                 f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        subprocess.run([*self.as_user, _pg_bin("pg_ctl"), "-D", str(self.dir / "data"),
                        "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)


@pytest.fixture
def postgres():
    if not _pg_bin("initdb"):
        pytest.fail("PostgreSQL is needed for the history tests: scripts/bootstrap.sh --test "
                    "installs it (apt-get install -y postgresql)")
    pg = Postgres()
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(pg.dir, ignore_errors=True)


def test_postgresql_store_and_migration(postgres, tmp_path):
    check_store(postgres.url, tmp_path / "runs")
    # a second database on the same server, made at schema version 1
    import sqlalchemy as sa

    engine = sa.create_engine(postgres.url.replace("postgresql://", "postgresql+psycopg://"),
                              isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("CREATE DATABASE old"))
    engine.dispose()
    old = postgres.url.rsplit("/", 1)[0] + "/old"
    migrate_from_first_version(old, old.replace("postgresql://", "postgresql+psycopg://"))


@pytest.mark.slow  # two real runs
def test_runs_land_in_the_history_and_a_database_gone_mid_run_costs_nothing(postgres,
                                                                            tmp_path):
    # a run lands in the SQLite history with its commit and figures
    sqlite_url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    port, backend_port = free_stack_ports()
    args = ["run", "--port", str(port), "--backend-port", str(backend_port), "--users", "20",
            "--duration", "4s", "--no-report"]
    done = subprocess.run(pollbench_cmd(*args, "--out", str(tmp_path / "one"), "--history",
                                        sqlite_url), cwd=REPO, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    [stored] = History.open(sqlite_url).query()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
    assert stored.source == "run" and stored.commit == (head or None)
    assert stored.figures["delivery_latency_p50"] > 0
    assert json.loads((tmp_path / "one" / "run.json").read_text())["history"]["stored"]

    # PostgreSQL stops while a run is going on: the run completes, says so in one line and in
    # run.json, and `history import` backfills it later
    out = tmp_path / "two"
    proc = subprocess.Popen(pollbench_cmd(*args, "--out", str(out), "--history",
                                          postgres.url),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # PostgreSQL stops once the run's stack is up and its load has started
    assert wait_until(lambda: (out / "metrics" / "progress.json").exists(), 60)
    postgres.stop()
    try:
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            interrupt(proc)
    assert proc.returncode == 0, stderr
    warnings = [line for line in stderr.splitlines() if "not in the history" in line]
    assert len(warnings) == 1 and f"pollbench history import {out}" in warnings[0], stderr
    record = json.loads((out / "run.json").read_text())
    assert record["complete"] and record["history"]["stored"] is False
    assert "not in the history" in record["history"]["error"]
    postgres.start()
    backfill = history_cli(postgres.url, "import", str(out))
    assert backfill.returncode == 0 and "1 runs added" in backfill.stdout, backfill
    assert "0 runs added, 1 stored already" in history_cli(postgres.url, "import",
                                                          str(out)).stdout


def test_check_names_the_last_step_of_a_flagged_metric(tmp_path, monkeypatch):
    from pollbench.actions.history import last_steps

    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    stepped_history(tmp_path / "runs")
    assert history_cli(url, "import", str(tmp_path / "runs")).returncode == 0
    monkeypatch.setenv("POLLBENCH_HISTORY", url)
    lines = last_steps(["delivery_latency_p50", "throughput_deliveries"], "channels")
    assert list(lines) == ["delivery_latency_p50"]
    assert "between c06000000000 and c07000000000 (from 2023-11-1" in \
        lines["delivery_latency_p50"]
    assert last_steps(["delivery_latency_p50"], "tasks") == {}  # nothing of that scenario
    monkeypatch.setenv("POLLBENCH_HISTORY", f"sqlite:///{tmp_path / 'none' / 'x.txt'}")
    assert last_steps(["delivery_latency_p50"]) == {}  # no history: no line, no error
    assert not (tmp_path / "none").exists()  # and none made


def test_a_checks_base_revision_runs_are_stored_as_that_revision(tmp_path, monkeypatch):
    from pollbench.actions.check import record_side_run

    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    monkeypatch.setenv("POLLBENCH_HISTORY", url)
    run = fake_run(tmp_path / "runs", "rep-1", 1_700_000_000, "", 3.0)  # no git of its own
    record_side_run(run, {"commit": "f" * 40, "branch": "origin/main", "dirty": False})
    [stored] = History.open(url).query()
    assert (stored.commit, stored.branch, stored.source) == ("f" * 40, "origin/main", "check")
    assert json.loads((run / "run.json").read_text())["history"]["stored"] is True


def test_a_step_where_the_machine_changed_says_so():
    import pandas as pd

    from analysis.trends import steps

    rows = [{"run_key": f"r{i}", "started_at": float(i), "commit": f"c{i // 2:02d}",
             "machine": "m1" if i < 12 else "m2",
             "value": 3.0 + (0.5 if i >= 12 else 0) + (i % 2) * 0.05} for i in range(24)]
    [step] = steps("delivery_latency_p50", pd.DataFrame(rows))
    assert (step.before_commit, step.after_commit) == ("c05", "c06")
    assert step.line().endswith("; the machine changed there too")


def test_a_repetition_is_stored_with_the_figures_its_check_or_sweep_ranked(tmp_path):
    """A check or sweep repetition has no report; the history computes its figures, at the
    warm-up the check or sweep judged it by (run.json's warmup_s), not the default one."""
    import numpy as np

    from analysis.figures import compute
    from analysis.load import load_run
    from analysis.synthetic import make_run, run_json

    # deliveries are slow in the first 4 s and fast after; the sweep left out 5 s
    values = np.concatenate([np.full(2000, 50.0), np.full(3000, 2.0)])
    run = make_run(tmp_path / "rep-1", delivery_ms=values, duration_s=10.0,
                   info=run_json({"spawn_rate": 1000.0}, warmup_s=5.0))
    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    store = History.open(url)
    store.add_run(run, "sweep")
    [stored] = store.query()
    store.close()
    ranked = compute(load_run(run), warmup_s=5.0).summary["metrics"]["delivery_latency_p99"]
    at_default = compute(load_run(run), warmup_s=0.1).summary["metrics"]
    assert stored.figures["delivery_latency_p99"] == ranked["value"]
    assert ranked["value"] != at_default["delivery_latency_p99"]["value"]


def test_a_huge_file_that_is_no_history_is_refused_without_reading_it(tmp_path):
    """Only an SQLite file's 16-byte header is read to tell whether it is one: a 40-GB file
    (sparse: it costs no disk) is refused at once instead of being read into memory."""
    big = tmp_path / "big.sqlite"
    with big.open("wb") as f:
        f.truncate(40 << 30)
    with pytest.raises(UserError, match="is not a pollbench history"):
        History.open(f"sqlite:///{big}")


def test_history_gives_a_ci_tracker_the_latest_runs_figures(tmp_path):
    import jsonschema

    schemas = REPO / "analysis" / "tests" / "schemas"
    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    fake_run(tmp_path / "runs", "older", 1_700_000_000, "a" * 40, 3.1)
    fake_run(tmp_path / "runs", "newer", 1_700_003_600, "b" * 40, 3.4)
    assert history_cli(url, "import", str(tmp_path / "runs")).returncode == 0
    bmf = history_cli(url, "--format", "bmf")
    assert bmf.returncode == 0, bmf.stderr
    doc = json.loads(bmf.stdout)
    jsonschema.validate(doc, json.loads((schemas / "bmf.json").read_text()))
    # the newest run's figures; p99 has no figure in it, so it is left out
    assert doc == {"pollbench/delivery_latency_p50": {"ms": {"value": 3.4}},
                   "pollbench/throughput_deliveries": {"messages-per-s": {"value": 2000}}}
    smaller = history_cli(url, "--format", "github-action-benchmark-smaller")
    rows = json.loads(smaller.stdout)
    jsonschema.validate(rows, json.loads((schemas / "github-action-benchmark.json").read_text()))
    assert [(r["name"], r["value"], r["unit"]) for r in rows] == \
        [("delivery_latency_p50", 3.4, "ms")]
    assert "newer (bbbbbbbbbb)" in rows[0]["extra"]
    none = history_cli(url, "--format", "bmf", "--scenario", "nothing-like-it")
    assert none.returncode == 2 and "no run in the history matches" in none.stderr


def test_the_trend_page_finds_the_same_step_with_e_divisive(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    stepped_history(tmp_path / "runs")
    assert history_cli(url, "import", str(tmp_path / "runs")).returncode == 0
    proc = history_cli(url, "--metric", "delivery_latency_p50", "--detector", "edivisive",
                       "--html", str(tmp_path / "trend.html"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("step: ") == 1 and "between c06000000000 and c07000000000" \
        in proc.stdout, proc.stdout
    assert "(edivisive)" in (tmp_path / "trend.html").read_text()
