"""Prediction records: one row per answer the handler gives, kept in SQLite or PostgreSQL.

Worker side (shipped inside the model archive): the handler hands each batch's rows to a
``Recorder``, which buffers them (bounded, never blocking) for a background thread that inserts them
in batches every half second. A slow or dead database costs rows, never predictions: rows it cannot take are dropped,
logged and counted (``drain_counts``, which the handler reports as ``DeepfakeRecords*`` metrics), and
writing resumes once the database answers again.

Where the rows go: ``records_url`` in the archive's ``model-config.yaml`` (``handler:`` section), else
the ``DEEPFAKE_RECORDS_URL`` environment variable, which ``handler/server.py`` sets for its workers
from ``deepfake_records_url`` in ``config.properties`` or, by default, to
``sqlite:///<run folder>/records.sqlite3``. ``off`` turns recording off. A ``postgresql://`` URL
uses the psycopg driver.

The schema is SQLAlchemy Core metadata (``predictions``) plus a ``schema_version`` table; opening a
store creates what is missing, and refuses a store written by a newer schema.

Reading::

    python -m handler.records list --run-dir build/serve --since 7d --label fake
    python -m handler.records list --declared ai_generated       # what the uploads declared (provenance)
    python -m handler.records export verdicts.csv --url postgresql://user@host/db --model deepfake-detector
"""

from __future__ import annotations

import argparse
import atexit
import csv
import logging
import os
import re
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Iterable

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
    create_engine,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import make_url

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
ENV_URL = "DEEPFAKE_RECORDS_URL"
PROPERTY_URL = "deepfake_records_url"  # config.properties key read by handler/server.py
STORE_FILE = "records.sqlite3"  # under the server's run folder by default

metadata = MetaData()
predictions = Table(
    "predictions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),  # UTC, when answered
    Column("request_id", String(64), index=True),  # TorchServe's request id
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
schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)


def _add_declared(connection) -> None:
    """Version 2: the provenance summary beside each verdict (null in the rows written before it)."""
    connection.execute(text("ALTER TABLE predictions ADD COLUMN declared VARCHAR(16)"))
    connection.execute(text("CREATE INDEX ix_predictions_declared ON predictions (declared)"))


# version -> function(connection) taking a store from version - 1 to version
MIGRATIONS: dict[int, callable] = {2: _add_declared}
COLUMNS = [c.name for c in predictions.columns if c.name != "id"]


class RecordsError(RuntimeError):
    """A store that cannot be used (e.g. written by a newer schema)."""


# --- the store ------------------------------------------------------------------------------------


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg (3), the driver this project pins."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def store_url(run_dir: str | Path, properties: dict | None = None) -> str:
    """The store of a server's run folder: config.properties' URL, else SQLite in the folder."""
    configured = (properties or {}).get(PROPERTY_URL, "").strip()
    return configured or f"sqlite:///{Path(run_dir).resolve() / STORE_FILE}"


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
    """One record from the handler's answer (a verdict or a refusal) and what it knew besides."""
    verdict = "error" not in answer
    video = answer.get("media") == "video"
    size = (answer.get("video", {}).get("size") if video else answer.get("image_size")) or (None, None)
    return {
        "created_at": created_at or _now(),
        "request_id": request_id,
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


# --- writing, off the hot path --------------------------------------------------------------------


class Recorder:
    """A bounded buffer and one writer thread. ``record`` never blocks and never raises.

    The writer wakes on a fixed period, not per row: a thread woken per request competes for the GIL
    with the model's thread on every request, and on a busy host each hand-over can wait for a CPU
    slot (measured: 18.6 % fewer requests/s with a queue woken per row, benchmarks/reports/*-records).
    """

    def __init__(self, url: str, queue_size: int = 10_000, batch_rows: int = 500, interval_s: float = 0.5):
        self.url = normalise_url(url)
        self.engine = open_engine(self.url)
        self.queue_size = queue_size  # rows waiting at most; beyond it rows are dropped and counted
        self.batch_rows = batch_rows  # rows per INSERT transaction
        self.interval_s = interval_s  # how often the writer looks for rows
        self._lock = threading.Lock()
        self._pending: list[dict] = []
        self._busy = False  # the writer holds rows it took but has not written yet
        self._wake = threading.Event()
        self._counts = {"written": 0, "lost_queue_full": 0, "lost_db_error": 0}
        self._reported = dict(self._counts)
        self._schema_ready = False
        self._last_warning = 0.0
        self._thread = threading.Thread(target=self._run, name="records-writer", daemon=True)
        self._thread.start()

    def record(self, rows: list[dict]) -> None:
        with self._lock:
            room = max(0, self.queue_size - len(self._pending))
            self._pending.extend(rows[:room])
            self._counts["lost_queue_full"] += max(0, len(rows) - room)

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
        """Wait until every recorded row was written or counted lost (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending and not self._busy:
                    return True
            self._wake.set()
            time.sleep(0.02)
        return False

    def close(self, timeout: float = 10) -> None:
        self.flush(timeout)
        self.engine.dispose()

    def _count(self, key: str, n: int) -> None:
        with self._lock:
            self._counts[key] += n

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            with self._lock:
                rows, self._pending = self._pending, []
                self._busy = bool(rows)
            for start in range(0, len(rows), self.batch_rows):
                self._write(rows[start : start + self.batch_rows])
            with self._lock:
                self._busy = False

    def _write(self, rows: list[dict]) -> None:
        try:
            if not self._schema_ready:
                ensure_schema(self.engine)
                self._schema_ready = True
            with self.engine.begin() as connection:
                connection.execute(insert(predictions), rows)
            self._count("written", len(rows))
        except Exception as exc:  # the writer must outlive any database failure
            self._schema_ready = False  # a store recreated behind our back gets its tables again
            self._count("lost_db_error", len(rows))
            if time.monotonic() - self._last_warning > 60:  # one line a minute, not one per batch
                self._last_warning = time.monotonic()
                logger.warning("prediction records: %d rows lost, the store at %s failed: %s",
                               len(rows), make_url(self.url).render_as_string(), str(exc).splitlines()[0])  # fmt: skip


def recorder_from_config(config_url: str | None, environ: dict) -> Recorder | None:
    """The model config's URL, else the environment's; None (records off) for ``off`` or neither."""
    url = (config_url or environ.get(ENV_URL) or "").strip()
    if not url or url.lower() in ("off", "none", "false"):
        logger.info("prediction records are off")
        return None
    try:
        recorder = Recorder(url)
    except Exception:  # a malformed URL or a missing driver: serve anyway, say why
        logger.exception("prediction records are off: cannot open %s", url)
        return None
    atexit.register(recorder.flush, 5)  # a worker that exits normally writes what it queued
    logger.info("prediction records go to %s", make_url(recorder.url).render_as_string())
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


def _filtered(statement, since=None, until=None, label=None, model=None, refused=None, declared=None):
    column = predictions.c
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
    """Newest first. Filters: since, until (datetimes), label, model, refused (bool), declared."""
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="List or export the prediction records.")
    parser.add_argument("action", choices=["list", "export"])
    parser.add_argument("csv", nargs="?", default="-", help="export: the CSV file to write ('-': stdout)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help=f"the store's SQLAlchemy URL (sqlite:///..., postgresql://...); default ${ENV_URL}")
    where.add_argument("--run-dir", type=Path, default=Path("build/serve"), help="a server's run folder (its store)")
    parser.add_argument("--since", help="ISO time or an age: 30m, 24h, 7d")
    parser.add_argument("--until", help="ISO time or an age")
    parser.add_argument("--label", help="real or fake")
    parser.add_argument("--model", help="model name")
    parser.add_argument("--refused", action="store_true", help="only refused input (status != 200)")
    parser.add_argument("--declared", help="what the upload declared: ai_generated, ai_edited, edited, camera, none")
    parser.add_argument("--limit", type=int, default=50, help="list: rows to show (export writes all)")
    args = parser.parse_args(argv)

    if args.url or os.environ.get(ENV_URL):  # the same precedence as handler/server.py
        url = args.url or os.environ[ENV_URL]
    else:
        from handler.tsconfig import read_properties

        config = args.run_dir / "config.properties"
        url = store_url(args.run_dir, read_properties(config) if config.exists() else {})
    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        sys.exit(f"no records at {parsed.database} (nothing served from that run folder yet?)")
    engine = open_engine(url)
    filters = dict(since=parse_time(args.since), until=parse_time(args.until), label=args.label, model=args.model,
                   refused=True if args.refused else None, declared=args.declared)  # fmt: skip
    ensure_schema(engine)
    if args.action == "export":
        rows = query(engine, limit=None, **filters)
        if args.csv == "-":
            n = write_csv(rows, sys.stdout)
        else:
            with open(args.csv, "w", newline="") as out:
                n = write_csv(rows, out)
        print(f"{n} records written to {args.csv}", file=sys.stderr)
        return
    total = count(engine, **filters)
    print(f"{'time (UTC)':19}  {'status':>6}  {'label':5}  {'P(fake)':>7}  {'faces':>5}  {'ms':>7}  {'declared':12}  model  sha256")
    for row in query(engine, limit=args.limit, **filters):
        p = "" if row["fake_probability"] is None else f"{row['fake_probability']:.3f}"
        faces = "" if row["faces"] is None else row["faces"]
        ms = "" if row["latency_ms"] is None else f"{row['latency_ms']:.1f}"
        print(f"{row['created_at']:%Y-%m-%d %H:%M:%S}  {row['status']:>6}  {row['label'] or row['error'] or '':5}  {p:>7}  "
              f"{faces:>5}  {ms:>7}  {row['declared'] or '':12}  {row['model_name']}/{row['backend']}  {(row['sha256'] or '')[:12]}")  # fmt: skip
    print(f"{min(total, args.limit)} of {total} records")


if __name__ == "__main__":
    main()
