"""Prediction records: one row per answer the handler gives, kept in SQLite or PostgreSQL.

Worker side (shipped inside the model archive): the handler hands each batch's rows to a
``Recorder``, which journals them into a local spool (``handler/spool.py``, a SQLite file in the
server's run folder) before the answers leave the worker; a background thread delivers the spool to
the store every half second, oldest first. While the store does not answer, rows wait in the spool and
are replayed in order when it does; each row carries its request id, unique in the store, and the
insert skips an id already there, so a replay after a partial write adds no duplicate. The spool is
bounded in bytes; only rows beyond the bound are dropped, counted and logged. Counts
(``drain_counts``) become the handler's ``DeepfakeRecords*`` metrics.

Settings (``RecordsSettings.resolve``, shared by the workers, the page, this CLI and ``make status``;
the store's URL by ``records_url``), per key the archive's ``model-config.yaml`` (``handler:`` section, workers only), else the environment,
else ``config.properties``, else the default:

- the store: ``records_url``, ``DEEPFAKE_RECORDS_URL``, ``deepfake_records_url``; SQLite in the run folder
- the spool's folder: ``records_spool``, ``DEEPFAKE_RECORDS_SPOOL``, ``deepfake_records_spool``;
  ``<run folder>/records-spool``
- its bound in MiB per store: ``records_spool_mb``, ``DEEPFAKE_RECORDS_SPOOL_MB``, ``deepfake_records_spool_mb``; 256
- days to keep rows: ``records_keep_days``, ``DEEPFAKE_RECORDS_KEEP_DAYS``, ``deepfake_records_keep_days``; for ever

``handler/server.py`` resolves them for its run folder and hands them to its workers as the
environment. ``off`` as the URL turns recording off; ``postgresql://`` uses the psycopg driver.

The schema is SQLAlchemy Core metadata (``predictions``) plus a ``schema_version`` table; opening a
store creates what is missing, upgrades an older store step by step (``MIGRATIONS``), and refuses a
store written by a newer schema.

Reading and retention::

    python -m handler.records_cli list --run-dir build/serve --since 7d --label fake
    python -m handler.records_cli list --declared ai_generated       # what the uploads declared (provenance)
    python -m handler.records_cli export verdicts.csv --url postgresql://user@host/db --model deepfake-detector
    python -m handler.records_cli prune --older-than 30d

The CLI is the host module ``handler/records_cli.py``; this module never imports it (it ships in the
archive, and the two importing each other was a circle).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import sqlite3
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Callable, Iterable, Mapping

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

from handler.spool import Spool, read_state
from runtime.handler_settings import DEFAULT_RECORDS_SPOOL_MB

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 4
STORE_FILE = "records.sqlite3"  # under the server's run folder by default
SPOOL_FOLDER = "records-spool"  # under the server's run folder by default
DEFAULT_SPOOL_MB = DEFAULT_RECORDS_SPOOL_MB  # about 550,000 rows (~490 bytes each): hours of traffic at tens of requests/s
OFF = ("off", "none", "false")

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


# --- settings -------------------------------------------------------------------------------------


def setting(key: str, environ: Mapping[str, str] | None, properties: Mapping[str, str] | None = None,
            model_config: Mapping | None = None) -> str | None:
    """One records setting (``url``, ``spool``, ``spool_mb``, ``keep_days``), the first one set of: the
    archive's ``handler:`` section (``records_<key>``; workers only), the environment
    (``DEEPFAKE_RECORDS_<KEY>``), config.properties (``deepfake_records_<key>``); None if none is."""
    for source, name in ((model_config, f"records_{key}"), (environ, f"DEEPFAKE_RECORDS_{key.upper()}"),
                         (properties, f"deepfake_records_{key}")):  # fmt: skip
        value = str((source or {}).get(name) or "").strip()
        if value:
            return value
    return None


def records_url(
    environ: Mapping[str, str] | None,
    properties: Mapping[str, str] | None = None,
    run_dir: str | Path | None = None,
    model_config: Mapping | None = None,
) -> str | None:
    """The records store's URL, the one place it is worked out (the workers' recorder, the server and
    its ``make status``, the page and this module's CLI all come here through ``RecordsSettings.resolve``).

    Precedence, the first one set wins:

    1. ``records_url`` in the archive's ``handler:`` section (``model_config``; workers only),
    2. the environment variable ``DEEPFAKE_RECORDS_URL``,
    3. ``deepfake_records_url`` in config.properties (``properties``),
    4. the default: SQLite ``records.sqlite3`` in the run folder (no run folder: None).

    ``off`` (or ``none``, ``false``) turns recording off: None."""
    url = setting("url", environ, properties, model_config)
    if url is None and run_dir:
        url = f"sqlite:///{Path(run_dir).resolve() / STORE_FILE}"
    return None if not url or url.lower() in OFF else url


@dataclass(frozen=True)
class RecordsSettings:
    """Where the records go and how the spool before the store is kept (the module's docstring has the
    table of names). ``url`` None: recording is off."""

    url: str | None
    spool_dir: Path
    spool_bytes: int = DEFAULT_SPOOL_MB * 2**20
    keep_days: float | None = None

    @classmethod
    def resolve(
        cls,
        environ: Mapping[str, str],
        properties: Mapping[str, str] | None = None,
        run_dir: str | Path | None = None,
        model_config: Mapping | None = None,
    ) -> "RecordsSettings":
        """Every records setting, each by ``setting``'s precedence; the URL by ``records_url``."""
        sources = (environ, properties, model_config)
        run_dir = Path(run_dir).resolve() if run_dir else None
        url = records_url(environ, properties, run_dir, model_config)
        spool = setting("spool", *sources) or (run_dir / SPOOL_FOLDER if run_dir else Path(tempfile.gettempdir()) / "deepfake-records-spool")
        try:
            spool_mb = float(setting("spool_mb", *sources) or DEFAULT_SPOOL_MB)
            keep_days = float(setting("keep_days", *sources)) if setting("keep_days", *sources) else None
        except ValueError as exc:
            raise RecordsError(f"records settings: {exc}") from None
        if spool_mb <= 0 or (keep_days is not None and keep_days <= 0):
            raise RecordsError("records settings: the spool size and keep-days must be positive")
        return cls(url, Path(spool), int(spool_mb * 2**20), keep_days)

    def _values(self) -> dict[str, str]:
        values = {"url": self.url or "off", "spool": str(self.spool_dir), "spool_mb": f"{self.spool_bytes / 2**20:g}"}
        return {**values, "keep_days": f"{self.keep_days:g}"} if self.keep_days else values

    def environ(self) -> dict[str, str]:
        """The settings as the environment a server hands its workers."""
        return {f"DEEPFAKE_RECORDS_{key.upper()}": value for key, value in self._values().items()}

    def properties(self) -> dict[str, str]:
        """The settings as config.properties keys (a server keeps them in its state file)."""
        return {f"deepfake_records_{key}": value for key, value in self._values().items()}


def spool_file(spool_dir: str | Path, url: str) -> Path:
    """One spool per store: rows of models recording to different stores never mix."""
    digest = hashlib.sha256(normalise_url(url).encode()).hexdigest()[:12]
    return Path(spool_dir) / f"records-spool-{digest}.sqlite3"


def spool_report(settings: RecordsSettings) -> dict:
    """What waits in a run's spools for their stores (``make status``; the CLI's notes)."""
    states = []
    for path in sorted(settings.spool_dir.glob("records-spool-*.sqlite3")):
        try:
            states.append(read_state(path))
        except sqlite3.Error as exc:  # a spool being created, or a broken one: say so, count the rest
            logger.warning("cannot read the spool %s: %s", path, exc)
    states = [s for s in states if s]
    return {"spool": str(settings.spool_dir), "rows": sum(s["rows"] for s in states), "bytes": sum(s["bytes"] for s in states),
            "max_bytes_per_store": settings.spool_bytes, "store_down": any(s["store_down"] for s in states),
            "stores": [s["store"] for s in states]}  # fmt: skip


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
                    connection.execute(insert(schema_version).values(version=version, applied_at=_now()))
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


def _now() -> datetime:
    return datetime.now(timezone.utc)


def prediction_row(
    answer: dict,
    status: int,
    model: dict,
    request_id: str | None = None,
    digest: str | None = None,
    byte_count: int | None = None,
    latency_ms: float | None = None,
    explain: bool = False,
    created_at: datetime | None = None,
) -> dict:
    """One record from the handler's answer (a verdict or a refusal) and what it knew besides.
    Without TorchServe's request id the row gets a fresh UUID: every row has an id, unique."""
    verdict = "error" not in answer
    video = answer.get("media") == "video"
    size = (answer.get("video", {}).get("size") if video else answer.get("image_size")) or (None, None)
    return {
        "created_at": created_at or _now(),
        "request_id": request_id or str(uuid.uuid4()),
        "sha256": digest,
        "byte_count": byte_count,
        "image_width": size[0],
        "image_height": size[1],
        "media": answer.get("media"),
        "faces": (answer.get("frames_with_face") if video else len(answer.get("faces", []))) if verdict else None,
        "label": answer.get("label"),
        "fake_probability": answer.get("fake_probability"),
        "threshold": answer.get("threshold"),
        "model_name": model.get("name"),
        "model_version": model.get("version"),
        "backend": model.get("backend"),
        "precision": model.get("precision"),
        "latency_ms": None if latency_ms is None else round(latency_ms, 3),
        "status": status,
        "error": answer.get("error"),
        "explain": explain,
        "declared": (answer.get("provenance") or {}).get("declared"),
    }


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # one encoder: json.dumps with options builds one per call


def _encode(row: dict) -> str:
    return _ENCODER.encode({**row, "created_at": row["created_at"].isoformat()})


def _decode(payload: str) -> dict:
    """A spooled row as this code's columns (a row spooled by another version keeps what both know)."""
    row = json.loads(payload)
    decoded = {name: row.get(name) for name in COLUMNS}
    decoded["created_at"] = datetime.fromisoformat(row["created_at"])
    decoded["explain"] = bool(row.get("explain"))
    return decoded


# --- writing: journal on the answer's path, delivery off it ----------------------------------------

COUNTS = ("written", "spooled", "replayed", "dropped_spool_full", "dropped_spool_error")
CHECKPOINT_EVERY_S = 5.0  # the spool's write-ahead log folded back by the writer thread (SQLite's own default: every ~4 MB)


class Recorder:
    """The spool in front of the store, and one writer thread delivering it. ``record`` journals rows
    (one local SQLite transaction) and never raises.

    The writer wakes on a fixed period, not per row: a thread woken per request competes for the GIL
    with the model's thread on every request, and on a busy host each hand-over can wait for a CPU
    slot (measured: 18.6 % fewer requests/s with a queue woken per row, benchmarks/reports/*-records).
    """

    def __init__(self, url: str, spool_dir: str | Path | None = None, spool_bytes: int = DEFAULT_SPOOL_MB * 2**20,
                 keep_days: float | None = None, batch_rows: int = 500, interval_s: float = 0.5):  # fmt: skip
        self.url = normalise_url(url)
        self.engine = open_engine(self.url)
        self._insert = idempotent_insert(self.engine)
        spool_dir = spool_dir or RecordsSettings.resolve({}).spool_dir
        self.spool = Spool(spool_file(spool_dir, self.url), spool_bytes, store=shown(self.url))
        self.keep_days = keep_days  # rows older than this are pruned by the writer, hourly
        self.batch_rows = batch_rows  # rows per INSERT transaction
        self.interval_s = interval_s  # how often the writer looks for rows
        self.depth = 0  # rows in the spool, as this process last saw it
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTS, 0)
        self._reported = dict(self._counts)
        self._busy = False  # the writer is delivering
        self._wake, self._closed = threading.Event(), threading.Event()
        self._schema_ready = False
        self._retry_at, self._backoff_s = 0.0, 0.0  # after a failed delivery: 1, 2, 4, then every 5 s
        self._next_prune, self._next_checkpoint = 0.0, 0.0
        self._last_warning = {"store": 0.0, "dropped": 0.0}
        self._dropped_since_warning = 0
        self._thread = threading.Thread(target=self._run, name="records-writer", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls, settings: RecordsSettings, **kwargs) -> "Recorder":
        return cls(settings.url, settings.spool_dir, settings.spool_bytes, settings.keep_days, **kwargs)

    # --- the answer's path ---

    def record(self, rows: list[dict]) -> None:
        """Journal the rows before their answers leave; beyond the spool's bound they are dropped."""
        if not rows:
            return
        try:
            taken, spooled, depth = self.spool.append([_encode(row) for row in rows])
        except sqlite3.Error as exc:
            self._drop("spool_error", len(rows), f"the spool {self.spool.path} failed: {exc}")
            return
        with self._lock:
            self.depth = depth
            self._counts["spooled"] += taken if spooled else 0
        if taken < len(rows):
            self._drop("spool_full", len(rows) - taken, f"the spool {self.spool.path} is full ({self.spool.max_bytes / 2**20:g} MiB)")

    def _drop(self, reason: str, n: int, why: str) -> None:
        """Count and log loudly: an error line at once, then one per 10 s while rows keep going."""
        with self._lock:
            self._counts[f"dropped_{reason}"] += n
            self._dropped_since_warning += n
            if time.monotonic() - self._last_warning["dropped"] < 10:
                return
            self._last_warning["dropped"], dropped, self._dropped_since_warning = time.monotonic(), self._dropped_since_warning, 0
        logger.error("prediction records DROPPED: %d rows lost (%s); their store: %s", dropped, why, shown(self.url))

    # --- counts ---

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def drain_counts(self) -> dict[str, int]:
        """What changed since the last call (for counter metrics)."""
        with self._lock:
            delta = {k: v - self._reported[k] for k, v in self._counts.items()}
            self._reported = dict(self._counts)
        return delta

    def flush(self, timeout: float = 30) -> bool:
        """Wait until the spool is empty, every row delivered (tests, benchmarks); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._wake.set()
            with self._lock:
                busy = self._busy
            if not busy and self.spool.state()["rows"] == 0:
                return True
            time.sleep(0.02)
        return False

    def close(self, timeout: float = 10) -> None:
        """Stop the writer (rows still spooled stay in the spool for the next recorder) and let go."""
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout)
        self.engine.dispose()
        self.spool.close()

    # --- the writer thread ---

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if time.monotonic() < self._retry_at:
                continue
            try:
                with self.spool.replaying() as mine:
                    if mine:
                        with self._lock:
                            self._busy = True
                        self._replay()
                        self._prune_when_due()
                if time.monotonic() >= self._next_checkpoint:  # a few MB of log at most, one fsync per period
                    self._next_checkpoint = time.monotonic() + CHECKPOINT_EVERY_S
                    self.spool.checkpoint()
            except Exception:  # the spool itself failed (e.g. its disk): try again next period
                logger.exception("prediction records: the spool %s could not be read", self.spool.path)
            finally:
                with self._lock:
                    self._busy = False

    def _replay(self) -> None:
        """Deliver the spool oldest first until it is empty or the store fails."""
        while not self._closed.is_set():
            entries = self.spool.oldest(self.batch_rows)
            if not entries:
                return
            try:
                if not self._schema_ready:
                    ensure_schema(self.engine)
                    self._schema_ready = True
                with self.engine.begin() as connection:
                    connection.execute(self._insert, [_decode(payload) for _, payload, _ in entries])
            except Exception as exc:  # the writer must outlive any store failure: the rows stay spooled
                self._store_failed(exc)
                return
            replayed = sum(held for *_, held in entries)
            self.spool.delivered(entries)
            with self._lock:
                self._counts["written"] += len(entries) - replayed
                self._counts["replayed"] += replayed
                self.depth = max(0, self.depth - len(entries))
            self._retry_at, self._backoff_s = 0.0, 0.0

    def _store_failed(self, exc: Exception) -> None:
        self._schema_ready = False  # a store recreated behind our back gets its tables again
        marked = self.spool.hold()
        state = self.spool.state()
        with self._lock:
            self._counts["spooled"] += marked
            self.depth = state["rows"]
        self._backoff_s = min(5.0, max(1.0, 2 * self._backoff_s))
        self._retry_at = time.monotonic() + self._backoff_s
        if time.monotonic() - self._last_warning["store"] > 60:  # one line a minute, not one per attempt
            self._last_warning["store"] = time.monotonic()
            logger.warning("prediction records: the store at %s failed (%s); %d rows wait in the spool %s and are replayed when it answers",
                           shown(self.url), first_line(exc), state["rows"], self.spool.path)  # fmt: skip

    def _prune_when_due(self) -> None:
        """``keep_days``: once an hour, by the worker holding the replay lock (one per spool)."""
        if not self.keep_days or time.monotonic() < self._next_prune or time.monotonic() < self._retry_at:
            return
        self._next_prune = time.monotonic() + 3600
        try:
            if not self._schema_ready:
                ensure_schema(self.engine)
                self._schema_ready = True
            removed = prune(self.engine, _now() - timedelta(days=self.keep_days))
            if removed:
                logger.info("prediction records: pruned %d rows older than %g days", removed, self.keep_days)
        except Exception as exc:
            logger.warning("prediction records: pruning failed: %s", first_line(exc))


def first_line(exc: BaseException) -> str:
    """The driver's own message, first line (SQLAlchemy wraps it in its own text)."""
    return (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]


def recorder_for_worker(model_config: Mapping, environ: Mapping[str, str]) -> Recorder | None:
    """The worker's recorder from its archive's settings and environment; None (records off) for
    ``off``, no URL, or a store it cannot open (it serves anyway and says why)."""
    try:
        settings = RecordsSettings.resolve(environ, model_config=model_config)
        if settings.url is None:
            logger.info("prediction records are off")
            return None
        recorder = Recorder.from_settings(settings)
    except Exception:  # a malformed URL or setting, a missing driver: serve anyway, say why
        logger.exception("prediction records are off: cannot open the store or its spool")
        return None
    logger.info("prediction records go to %s through the spool %s", shown(recorder.url), recorder.spool.path)
    return recorder


# --- reading --------------------------------------------------------------------------------------


def parse_time(text: str | None) -> datetime | None:
    """ISO 8601 (UTC when no zone is given), or an age like ``30m``, ``24h``, ``7d`` before now."""
    if not text:
        return None
    age = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if age:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[age.group(2)]
        return _now() - timedelta(**{unit: float(age.group(1))})
    value = datetime.fromisoformat(text.strip())
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _filtered(statement, since=None, until=None, label=None, model=None, refused=None, declared=None, sha256=None):
    column = predictions.c
    if sha256:
        statement = statement.where(column.sha256 == sha256)
    if since is not None:
        statement = statement.where(column.created_at >= since)
    if until is not None:
        statement = statement.where(column.created_at < until)
    if label:
        statement = statement.where(column.label == label)
    if model:
        statement = statement.where(column.model_name == model)
    if refused is not None:
        statement = statement.where(column.status != 200 if refused else column.status == 200)
    if declared:
        statement = statement.where(column.declared == declared)
    return statement


def query(engine: Engine, limit: int | None = 50, offset: int = 0, **filters) -> list[dict]:
    """Newest first. Filters: since, until (datetimes), label, model, refused (bool), declared, sha256."""
    statement = _filtered(select(predictions), **filters).order_by(predictions.c.created_at.desc(), predictions.c.id.desc())
    if limit is not None:
        statement = statement.limit(limit).offset(offset)
    with engine.connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(statement)]
    for row in rows:  # SQLite hands back naive datetimes; every stored time is UTC
        if row["created_at"].tzinfo is None:
            row["created_at"] = row["created_at"].replace(tzinfo=timezone.utc)
    return rows


def count(engine: Engine, **filters) -> int:
    with engine.connect() as connection:
        return connection.execute(_filtered(select(func.count()).select_from(predictions), **filters)).scalar_one()


def write_csv(rows: Iterable[dict], out: IO[str]) -> int:
    writer = csv.DictWriter(out, fieldnames=["id", *COLUMNS], extrasaction="ignore")
    writer.writeheader()
    n = 0
    for row in rows:
        writer.writerow({**row, "created_at": row["created_at"].isoformat()})
        n += 1
    return n
