"""The prediction records' store: its tables (SQLAlchemy Core metadata, ``predictions``, ``labels``
and ``schema_version``), the steps that upgrade an older store (``MIGRATIONS``), and opening a store
(SQLite or PostgreSQL) ready for the writer (``handler/records.py``) and the readers
(``handler/records_query.py``, the page, the CLI, the review loop).

Opening a store creates what is missing, upgrades an older store step by step, and refuses a store
written by a newer schema. Ships inside the model archive.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Callable

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    cast,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url

from sqlalchemy.schema import CreateColumn

SCHEMA_VERSION = 4

metadata = MetaData()
predictions = Table(
    "predictions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),  # UTC, when answered
    Column("request_id", String(64), index=True, unique=True),  # TorchServe's request id; a replay skips it
    Column("sha256", String(64)),  # of the input bytes; the image itself is never kept
    Column("byte_count", Integer),
    Column("image_width", Integer),
    Column("image_height", Integer),
    Column("media", String(8)),  # image | video
    Column("faces", Integer),  # faces found (0: the verdict is for the centre crop); a video: frames with a face
    Column("label", String(16), index=True),  # null for refused input
    Column("fake_probability", Float),
    Column("threshold", Float),
    Column("model_name", String(128), index=True),
    Column("model_version", String(32)),
    Column("backend", String(32)),
    Column("precision", String(16)),
    Column("latency_ms", Float),  # the handler's time on the batch that held this request
    Column("status", Integer, nullable=False),  # HTTP status: 200, or the 4xx/500 of a refusal
    Column("error", String(64)),  # the refusal's code
    Column("explain", Boolean, nullable=False, default=False),  # /explanations/ (Grad-CAM) request
    # the answer's provenance.declared (handler/provenance.py): ai_generated, ai_edited, edited, camera, none
    Column("declared", String(16), index=True),
)
# v4: reviewers' labels (handler/labels.py). Never overwritten: a second label of a request is a new
# row, the latest counts, the earlier ones are its history (who, when).
labels = Table(
    "labels",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False),  # UTC, when labelled
    Column("request_id", String(64), nullable=False, index=True),  # the labelled prediction's request id
    Column("truth", String(8), nullable=False),  # real | fake: what the reviewer says the input is
    Column("labelled_by", String(128)),
    Column("note", String(1000)),
)
schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)
COLUMNS = [c.name for c in predictions.columns if c.name != "id"]


class RecordsError(RuntimeError):
    """A store that cannot be used (e.g. written by a newer schema), or settings that make no sense."""


# --- schema changes -------------------------------------------------------------------------------
# To change the schema: change the table above, bump SCHEMA_VERSION, and add the step that takes a
# store of the previous version to it, e.g. a new indexed column:
#     MIGRATIONS[5] = lambda connection: add_column(connection, predictions.c.<new column>, index=True)
# then freeze the previous version's tables in tests/records_schemas.py: the upgrade test writes a
# store of each frozen version (SQLite and PostgreSQL) and opens it with this code.


def add_column(connection, column: Column, index: bool = False) -> None:
    """``ALTER TABLE ... ADD COLUMN`` as the store's dialect spells the column (SQLite and PostgreSQL),
    and its index when it has one in the metadata."""
    spec = CreateColumn(column).compile(dialect=connection.dialect)
    connection.exec_driver_sql(f"ALTER TABLE {column.table.name} ADD COLUMN {spec}")
    for table_index in column.table.indexes if index else ():
        if list(table_index.columns) == [column]:
            table_index.create(connection)


def _unique_request_ids(connection) -> None:
    """v2: a request id is unique, so a row replayed after a partial write is skipped, not doubled.
    A v1 store never wrote an id twice (TorchServe's are UUIDs); should one hold a repeat anyway, the
    later rows keep it with their row id appended rather than being deleted."""
    c = predictions.c
    first = select(func.min(c.id)).where(c.request_id.is_not(None)).group_by(c.request_id)
    renamed = c.request_id + "~" + cast(c.id, String)
    connection.execute(update(predictions).where(c.request_id.is_not(None), c.id.not_in(first)).values(request_id=renamed))
    connection.exec_driver_sql("DROP INDEX ix_predictions_request_id")
    next(i for i in predictions.indexes if i.name == "ix_predictions_request_id").create(connection)


# version -> function(connection) taking a store from version - 1 to version; v3: the provenance
# summary beside each verdict (null in the rows written before it); v4: the reviewers' labels table
MIGRATIONS: dict[int, Callable] = {
    2: _unique_request_ids,
    3: lambda connection: add_column(connection, predictions.c.declared, index=True),
    4: lambda connection: labels.create(connection, checkfirst=True),
}


# --- the store ------------------------------------------------------------------------------------


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg (3), the driver this project pins."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def shown(url: str) -> str:
    """A store URL fit for logs and pages: the password hidden."""
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_pragmas(connection, _record) -> None:
    # WAL: readers (the page, the CLI) never block the workers' writers, and several workers append
    # to one file; NORMAL sync is durable across process crashes in WAL mode.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def open_engine(url: str) -> Engine:
    url = normalise_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        # timeout: wait up to 10 s for another worker's write lock instead of failing at once
        engine = create_engine(url, connect_args={"timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # a dead server must fail a write within seconds; pre-ping replaces connections it broke
    return create_engine(url, pool_pre_ping=True, pool_size=2, connect_args={"connect_timeout": 3})


def ensure_schema(engine: Engine) -> int:
    """Create missing tables, record or migrate the schema version; returns the store's version.
    Several workers may do this at once: a lost race is retried."""
    for attempt in range(3):
        try:
            with engine.begin() as connection:
                metadata.create_all(connection)
                found = connection.execute(select(func.max(schema_version.c.version))).scalar()
                if found is not None and found > SCHEMA_VERSION:
                    raise RecordsError(f"the store has schema {found}, newer than this code's {SCHEMA_VERSION}")
                for version in range((found or 0) + 1, SCHEMA_VERSION + 1):
                    if found is not None:
                        MIGRATIONS[version](connection)
                    connection.execute(insert(schema_version).values(version=version, applied_at=utc_now()))
                return SCHEMA_VERSION
        except RecordsError:
            raise
        except Exception:
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))
    return SCHEMA_VERSION


def idempotent_insert(engine: Engine):
    """INSERT that skips a row whose request id the store already has (the replay's guarantee)."""
    dialects = {"postgresql": postgresql, "sqlite": sqlite_dialect}
    if engine.dialect.name not in dialects:
        raise RecordsError(f"records go to SQLite or PostgreSQL, not {engine.dialect.name}")
    return dialects[engine.dialect.name].insert(predictions).on_conflict_do_nothing(index_elements=["request_id"])


def prune(engine: Engine, older_than: datetime, chunk: int = 10_000) -> int:
    """Delete the rows answered before ``older_than``, in chunks (short locks); returns how many."""
    removed = 0
    while True:
        with engine.begin() as connection:
            ids = select(predictions.c.id).where(predictions.c.created_at < older_than).limit(chunk)
            n = connection.execute(delete(predictions).where(predictions.c.id.in_(ids.scalar_subquery()))).rowcount
        removed += n
        if n < chunk:
            return removed


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def first_line(exc: BaseException) -> str:
    """The driver's own message, first line (SQLAlchemy wraps it in its own text)."""
    return (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
