"""Schema creation and upgrades, the same on SQLite and PostgreSQL.

``upgrade(engine)`` runs when ``db.get_engine`` first opens a database: it creates the tables the models
declare (``create_all``), then applies, in order, every migration newer than the version recorded in the
``schema_version`` table. It holds a lock while doing so (a PostgreSQL advisory lock; SQLite's write
lock), so a UI and several workers starting together against a fresh database do not race.

Every migration is idempotent: it inspects the live schema and adds only what is missing, so running one
twice, or on a database that ``create_all`` just made complete, changes nothing. To change the schema,
edit the model in ``db.py`` and append a migration here, e.g.::

    (2, "jobs.priority", lambda conn: add_missing_columns(conn, "jobs", ["priority"])),

Columns are added nullable unless the model gives a plain default, which becomes the column's server
default (so rows written by an older build read back with that default). Dropping or renaming a column
is never done automatically.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, inspect, literal, select
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

log = logging.getLogger("studio.migrations")

LOCK_KEY = 0x57_0D_10  # PostgreSQL advisory lock id for "studio schema"

_version_metadata = MetaData()
schema_version = Table(
    "schema_version", _version_metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(200), nullable=False),
    Column("applied_at", Float, nullable=False),
)

Migration = tuple[int, str, Callable[[Connection], object]]


# ---- building blocks -----------------------------------------------------------------------------

def _column_ddl(conn: Connection, column: Column) -> str:
    dialect = conn.dialect
    ddl = f"{dialect.identifier_preparer.quote(column.name)} {column.type.compile(dialect=dialect)}"
    default = column.default
    if default is not None and getattr(default, "is_scalar", False):
        value = literal(default.arg, type_=column.type).compile(dialect=dialect,
                                                                compile_kwargs={"literal_binds": True})
        ddl += f" DEFAULT {value}"
        if not column.nullable:
            ddl += " NOT NULL"
    return ddl


def add_missing_columns(conn: Connection, table_name: str, names: Iterable[str] | None = None,
                        metadata: MetaData | None = None) -> list[str]:
    """Add the model's columns (all, or ``names``) that the live table lacks, and the model's indexes
    that are missing. Returns the column names added. A table that does not exist yet is left to
    ``create_all``."""
    table = (metadata or SQLModel.metadata).tables[table_name]
    insp = inspect(conn)
    if not insp.has_table(table_name):
        return []
    have = {c["name"] for c in insp.get_columns(table_name)}
    wanted = set(names) if names is not None else None
    added = []
    for column in table.columns:
        if column.name in have or (wanted is not None and column.name not in wanted):
            continue
        if column.primary_key:
            raise RuntimeError(f"cannot add the primary key column {table_name}.{column.name} to an existing table")
        quoted = conn.dialect.identifier_preparer.quote(table_name)
        conn.exec_driver_sql(f"ALTER TABLE {quoted} ADD COLUMN {_column_ddl(conn, column)}")
        added.append(column.name)
    if added:
        log.info("added %s.%s", table_name, ", ".join(added))
    present = {i["name"] for i in inspect(conn).get_indexes(table_name)}  # a fresh inspector: no stale cache
    columns = have | set(added)
    for index in table.indexes:  # the model's indexes that are missing, once their columns exist
        if index.name not in present and all(c.name in columns for c in index.columns):
            index.create(conn)
    return added


def add_all_model_columns(conn: Connection) -> list[str]:
    """Every column every model declares, for databases written by a build older than the model."""
    added = []
    for name in SQLModel.metadata.tables:
        added += [f"{name}.{c}" for c in add_missing_columns(conn, name)]
    return added


# ---- the ordered list ----------------------------------------------------------------------------

MIGRATIONS: list[Migration] = [
    (1, "baseline: any column the models declare that an older database lacks", add_all_model_columns),
    (2, "jobs.worker_pid_start, workers.pid_start: process start times for liveness",
     lambda conn: add_missing_columns(conn, "jobs", ["worker_pid_start"])
     + add_missing_columns(conn, "workers", ["pid_start"])),
    (3, "metric_points.extra: each training method's own metrics",
     lambda conn: add_missing_columns(conn, "metric_points", ["extra"])),
    (4, "inference_servers: registered OpenAI-compatible inference servers",
     lambda conn: SQLModel.metadata.tables["inference_servers"].create(conn, checkfirst=True)),
    (5, "jobs.group_id: the sweep a run belongs to", lambda conn: add_missing_columns(conn, "jobs", ["group_id"])),
    (6, "jobs.kind, jobs.progress_message: merge, GGUF export and batch evaluation as jobs beside training runs",
     lambda conn: add_missing_columns(conn, "jobs", ["kind", "progress_message"])),
    (7, "datasets.fill_json: template blanks filled in when a dataset was added",
     lambda conn: add_missing_columns(conn, "datasets", ["fill_json"])),
]


# ---- running them --------------------------------------------------------------------------------

def current_version(conn: Connection) -> int:
    if not inspect(conn).has_table(schema_version.name):
        return 0
    return conn.execute(select(schema_version.c.version).order_by(schema_version.c.version.desc())).scalar() or 0


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({LOCK_KEY})")  # released at commit
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock now; busy_timeout makes the others wait


def upgrade(engine: Engine, migrations: list[Migration] | None = None, metadata: MetaData | None = None) -> list[int]:
    """Create missing tables, then apply pending migrations in order, in one locked transaction.
    Returns the versions applied."""
    migrations = sorted(MIGRATIONS if migrations is None else migrations, key=lambda m: m[0])
    metadata = SQLModel.metadata if metadata is None else metadata
    with engine.connect() as conn:
        _lock(conn)
        metadata.create_all(conn)
        schema_version.create(conn, checkfirst=True)
        version = current_version(conn)
        applied = []
        for number, name, migrate in migrations:
            if number <= version:
                continue
            migrate(conn)
            conn.execute(schema_version.insert().values(version=number, name=name[:200], applied_at=time.time()))
            applied.append(number)
        newest = migrations[-1][0] if migrations else 0
        if version > newest:
            log.warning("the database schema is version %d, newer than this build knows (%d): upgrade this host",
                        version, newest)
        conn.commit()
    if applied:
        log.info("database schema upgraded to version %d (%s)", applied[-1], ", ".join(map(str, applied)))
    return applied
