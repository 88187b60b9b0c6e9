"""The results history: one record per complete run, in SQLite (default) or PostgreSQL.

The run folder stays the source of truth; the history is an index over runs for trends
across commits.  Access goes through SQLAlchemy Core (one schema and one set of queries
for both databases, its URL parser, its dialects; no ORM: the data is a handful of flat
tables).  The schema is versioned in table ``pollbench_meta`` and migrates forward when
a newer pollbench opens an older database.

    store = History.open("sqlite:///results/history.sqlite")
    store.add_run(run_dir, source="run")   # False if that run is stored already
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pollbench.errors import UserError
from pollbench.paths import results_dir

HISTORY_ENV = "POLLBENCH_HISTORY"
SCHEMA_VERSION = 2
# History of the schema:
#   1: pollbench_meta, runs, figures.
#   2: runs.source (what appended the run: run, check, sweep, import) and an index on
#      figures(name) for one-metric trend queries.
SQLITE_MAGIC = b"SQLite format 3\x00"


HISTORY_OFF = "off"  # POLLBENCH_HISTORY=off: runs are not appended (pollbench check's base runs)


def default_url() -> str:
    env = os.environ.get(HISTORY_ENV)
    if env:
        return env
    return f"sqlite:///{results_dir() / 'history.sqlite'}"


def check_url(url: str) -> None:
    """Refuse a malformed ``--history`` in one line, before anything starts."""
    if url != HISTORY_OFF:
        _engine(url, create=False)


def _schema(version: int):
    """The tables of schema ``version`` (1 is kept to test the migration from it)."""
    import sqlalchemy as sa

    md = sa.MetaData()
    sa.Table("pollbench_meta", md, sa.Column("key", sa.String(64), primary_key=True),
             sa.Column("value", sa.String(256), nullable=False))
    runs: list[sa.Column] = [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_key", sa.String(512), nullable=False, unique=True),
        sa.Column("folder", sa.Text, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float),
        sa.Column("commit", sa.String(64)),
        sa.Column("branch", sa.String(256)),
        sa.Column("dirty", sa.Boolean),
        sa.Column("scenario", sa.String(256)),
        sa.Column("profile", sa.String(256)),
        sa.Column("machine", sa.String(64)),
        sa.Column("parameters", sa.Text, nullable=False),  # JSON
        sa.Column("stack", sa.Text, nullable=False),       # JSON
        sa.Column("machine_info", sa.Text),                # JSON
        sa.Column("recorded_at", sa.Float, nullable=False),
    ]
    if version >= 2:
        runs.append(sa.Column("source", sa.String(32)))
    sa.Table("runs", md, *runs)
    figures = sa.Table(
        "figures", md,
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("unit", sa.String(64)),
        sa.Column("better", sa.String(16)),
        sa.PrimaryKeyConstraint("run_id", "name"))
    if version >= 2:
        sa.Index("figures_by_name", figures.c.name)
    return md


def _migrate_1_to_2(conn) -> None:
    import sqlalchemy as sa

    conn.execute(sa.text("ALTER TABLE runs ADD COLUMN source VARCHAR(32)"))
    conn.execute(sa.text("UPDATE runs SET source = 'unknown'"))
    conn.execute(sa.text("CREATE INDEX figures_by_name ON figures (name)"))


MIGRATIONS = {1: _migrate_1_to_2}  # from version N to N + 1


def _engine(url: str, create: bool = True):
    import sqlalchemy as sa
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = sa.engine.make_url(url)
    except ArgumentError:
        raise UserError(f"--history {url!r} is not a database URL: use sqlite:///PATH or "
                        "postgresql://USER@HOST:PORT/DB") from None
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if not path or path == ":memory:":
            raise UserError(f"--history {url!r}: give SQLite a file, sqlite:///PATH")
        file = Path(path)
        if file.exists() and file.stat().st_size and _header(file) != SQLITE_MAGIC:
            raise UserError(f"--history {file} is not a pollbench history (not an SQLite "
                            "file): name a new file or an existing history")
        if create:
            file.parent.mkdir(parents=True, exist_ok=True)
        return sa.create_engine(parsed, connect_args={"timeout": 10})
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        try:
            return sa.create_engine(parsed, pool_pre_ping=True,
                                    connect_args={"connect_timeout": 5})
        except (NoSuchModuleError, ImportError):  # sqlalchemy's dialect imports psycopg
            raise UserError(f"--history {url!r}: the PostgreSQL driver is missing; "
                            "pip install 'pollbench[postgresql]'") from None
    raise UserError(f"--history {url!r}: only sqlite:///PATH and postgresql://... are "
                    "supported")


@dataclass
class HistoryRun:
    """One stored run, as ``query`` returns it."""
    run_key: str
    folder: str
    kind: str
    source: str | None
    started_at: float
    commit: str | None
    branch: str | None
    dirty: bool | None
    scenario: str | None
    profile: str | None
    machine: str | None
    parameters: dict
    figures: dict[str, float | None]


class History:
    def __init__(self, engine, url: str) -> None:
        self.engine, self.url = engine, url
        self.tables = _schema(SCHEMA_VERSION).tables

    @classmethod
    def open(cls, url: str | None = None, create: bool = True) -> History:
        """Open (create, or migrate forward) the history at ``url``; UserError in one line
        for a malformed URL, a database of another program or of a newer pollbench;
        OSError when the database cannot be reached."""
        import sqlalchemy as sa
        from sqlalchemy.exc import DatabaseError, OperationalError

        url = url or default_url()
        engine = _engine(url, create)
        if not create and engine.dialect.name == "sqlite" and \
                not Path(engine.url.database or "").exists():
            raise OSError(f"no history at {engine.url.database}")
        try:
            with engine.begin() as conn:
                inspector = sa.inspect(conn)
                tables = set(inspector.get_table_names())
                if not tables:
                    _schema(SCHEMA_VERSION).create_all(conn)
                    conn.execute(sa.text("INSERT INTO pollbench_meta (key, value) VALUES "
                                         "('schema_version', :v)"), {"v": str(SCHEMA_VERSION)})
                elif "pollbench_meta" not in tables:
                    raise UserError(f"--history {shown_url(url)} is a database of another program "
                                    f"(tables: {', '.join(sorted(tables)[:5])}): name another")
                else:
                    version = int(conn.execute(sa.text(
                        "SELECT value FROM pollbench_meta WHERE key = 'schema_version'"))
                        .scalar_one())
                    if version > SCHEMA_VERSION:
                        raise UserError(f"--history {shown_url(url)} has schema version {version}; "
                                        f"this pollbench reads up to {SCHEMA_VERSION}: upgrade "
                                        "pollbench")
                    while version < SCHEMA_VERSION:
                        MIGRATIONS[version](conn)
                        version += 1
                        conn.execute(sa.text("UPDATE pollbench_meta SET value = :v WHERE key = "
                                             "'schema_version'"), {"v": str(version)})
        except OperationalError as e:
            raise OSError(f"history {shown_url(url)} unreachable: {_first_line(e)}") from None
        except DatabaseError as e:
            raise UserError(f"--history {shown_url(url)} is not a pollbench history "
                            f"({_first_line(e)})") from None
        return cls(engine, url)

    def close(self) -> None:
        self.engine.dispose()

    # --- writing
    def add_run(self, run_dir: Path, source: str = "import", git: dict | None = None) -> bool:
        """Store one run folder (its run.json, and its figures from report/summary.json or
        computed as the report does).  False when that run is stored already (a run is
        stored once); ValueError when the folder is not a complete run.  ``git`` overrides
        the run's own (a base revision run from an exported tree has none)."""
        rows, figures = run_rows(Path(run_dir), source)
        if git:
            rows.update(commit=git.get("commit"), branch=git.get("branch"),
                        dirty=git.get("dirty"))
        return self.add_rows([(rows, figures)]) == 1

    def add_rows(self, runs: list[tuple[dict, dict]]) -> int:
        """Store many (run row, figures) pairs in one transaction; returns how many were new."""
        import sqlalchemy as sa
        from sqlalchemy.exc import OperationalError

        t_runs, t_figs = self.tables["runs"], self.tables["figures"]
        try:
            with self.engine.begin() as conn:
                keys = [r["run_key"] for r, _ in runs]
                known = set()
                for i in range(0, len(keys), 500):
                    known |= set(conn.execute(sa.select(t_runs.c.run_key).where(
                        t_runs.c.run_key.in_(keys[i:i + 500]))).scalars())
                new = [(r, f) for r, f in runs if r["run_key"] not in known]
                if not new:
                    return 0
                conn.execute(t_runs.insert(), [r for r, _ in new])
                ids: dict[str, int] = {}
                new_keys = [r["run_key"] for r, _ in new]
                for i in range(0, len(new_keys), 500):
                    for key, run_id in conn.execute(sa.select(t_runs.c.run_key, t_runs.c.id)
                                                    .where(t_runs.c.run_key.in_(
                                                        new_keys[i:i + 500]))):
                        ids[key] = run_id
                rows = [{"run_id": ids[r["run_key"]], "name": name, **fig}
                        for r, figs in new for name, fig in figs.items()]
                if rows:
                    conn.execute(t_figs.insert(), rows)
                return len(new)
        except OperationalError as e:
            raise OSError(f"history {shown_url(self.url)}: {_first_line(e)}") from None

    # --- reading
    def query(self, scenario: str | None = None, profile: str | None = None,
              branch: str | None = None, since: float | None = None, until: float | None = None,
              parameters: dict[str, str] | None = None,
              metrics: list[str] | None = None) -> list[HistoryRun]:
        import sqlalchemy as sa

        t_runs, t_figs = self.tables["runs"], self.tables["figures"]
        q = sa.select(t_runs)
        for column, value in (("scenario", scenario), ("profile", profile),
                              ("branch", branch)):
            if value is not None:
                q = q.where(t_runs.c[column] == value)
        if since is not None:
            q = q.where(t_runs.c.started_at >= since)
        if until is not None:
            q = q.where(t_runs.c.started_at < until)
        q = q.order_by(t_runs.c.started_at)
        with self.engine.connect() as conn:
            runs = conn.execute(q).mappings().all()
            fq = sa.select(t_figs.c.run_id, t_figs.c.name, t_figs.c.value)
            if metrics:
                fq = fq.where(t_figs.c.name.in_(metrics))
            figures: dict[int, dict[str, float | None]] = {}
            for run_id, name, value in conn.execute(fq):
                figures.setdefault(run_id, {})[name] = value
        found = []
        for r in runs:
            params = json.loads(r["parameters"])
            if parameters and any(str(params.get(k)) != v for k, v in parameters.items()):
                continue
            found.append(HistoryRun(
                run_key=r["run_key"], folder=r["folder"], kind=r["kind"], source=r["source"],
                started_at=r["started_at"], commit=r["commit"], branch=r["branch"],
                dirty=r["dirty"], scenario=r["scenario"], profile=r["profile"],
                machine=r["machine"], parameters=params, figures=figures.get(r["id"], {})))
        return found


def shown_url(url: str) -> str:
    """The URL without its password."""
    try:
        import sqlalchemy as sa

        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(the history URL)"


def _header(file: Path) -> bytes:
    """The first 16 bytes (an SQLite file's magic), without reading the rest."""
    with file.open("rb") as f:
        return f.read(len(SQLITE_MAGIC))


def _first_line(e: Exception) -> str:
    text = str(getattr(e, "orig", None) or e)
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def run_key(info: dict, folder: Path) -> str:
    """A run's identity: its folder's name and its start time (the same run imported from
    another path is the same run)."""
    return f"{folder.name}@{float(info['started_at']):.6f}"


def run_rows(folder: Path, source: str) -> tuple[dict, dict]:
    try:
        info = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{folder}: no readable run.json ({e})") from None
    if not info.get("complete"):
        raise ValueError(f"{folder}: the run is not complete (status {info.get('status')})")
    if info.get("kind") == "ui":
        raise ValueError(f"{folder}: a web UI session; its tests (tests/NNN) are the runs")
    try:
        summary = json.loads((folder / "report" / "summary.json").read_text())
    except (OSError, ValueError):
        # a run made without a report (check and sweep repetitions): its figures, computed
        # as the report computes them
        from analysis.figures import compute
        from analysis.load import AnalysisError, load_run

        try:
            summary = compute(load_run(folder)).summary
        except (AnalysisError, OSError, ValueError) as e:
            raise ValueError(f"{folder}: its figures cannot be computed ({e})") from None
    params = info.get("parameters", {})
    git = info.get("git") or {}
    row: dict[str, Any] = {
        "run_key": run_key(info, folder), "folder": str(folder.resolve()),
        "kind": info.get("kind", "run"), "source": source,
        "started_at": float(info["started_at"]), "ended_at": info.get("ended_at"),
        "commit": git.get("commit"), "branch": git.get("branch"), "dirty": git.get("dirty"),
        "scenario": params.get("scenario"), "profile": info.get("stack", {}).get("profile"),
        "machine": (info.get("machine") or {}).get("fingerprint"),
        "parameters": json.dumps(params, sort_keys=True),
        "stack": json.dumps(info.get("stack", {}), sort_keys=True, default=str),
        "machine_info": json.dumps(info.get("machine") or {}, sort_keys=True),
        "recorded_at": time.time(),
    }
    figures = {name: {"value": m.get("value") if isinstance(m.get("value"), (int, float))
                      else None, "unit": m.get("unit"), "better": m.get("better")}
               for name, m in summary.get("metrics", {}).items() if isinstance(m, dict)}
    return row, figures


def record_run(run_dir: Path, source: str, url: str | None = None,
               git: dict | None = None) -> dict:
    """Append a finished run to the history; never raises.  Returns what run.json records
    under "history": ``{"stored": True, "url": ...}``, ``{"stored": False, "off": True}``, or
    ``{"stored": False, "error": <one line saying why and how to backfill>}``."""
    url = url or default_url()
    if url == HISTORY_OFF:
        return {"stored": False, "off": True}
    problem = _record(run_dir, source, url, git)
    if problem is None:
        return {"stored": True, "url": shown_url(url)}
    return {"stored": False, "url": shown_url(url), "error": problem}


def _record(run_dir: Path, source: str, url: str, git: dict | None) -> str | None:
    try:
        store = History.open(url)
        try:
            store.add_run(run_dir, source, git)
        finally:
            store.close()
        return None
    except (OSError, ValueError, UserError) as e:
        return (f"not in the history ({str(e).splitlines()[0]}); backfill later with: "
                f"pollbench history import {run_dir}")
    except Exception as e:  # a broken database must not cost the run
        return (f"not in the history ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                f"backfill later with: pollbench history import {run_dir}")
