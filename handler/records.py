"""Prediction records: one row per answer the handler gives, kept in SQLite or PostgreSQL.

Worker side (shipped inside the model archive): the handler hands each batch's rows to a
``Recorder``, which journals them into a local spool (``handler/spool.py``, a SQLite file in the
server's run folder) before the answers leave the worker; a background thread delivers the spool to
the store every half second, oldest first. While the store does not answer, rows wait in the spool and
are replayed in order when it does; each row carries its request id, unique in the store, and the
insert skips an id already there, so a replay after a partial write adds no duplicate. The spool is
bounded in bytes; only rows beyond the bound are dropped, counted and logged. Counts
(``drain_counts``) become the handler's ``DeepfakeRecords*`` metrics.

Settings: ``handler/records_settings.py`` (``RecordsSettings.resolve``; the store's URL by
``records_url``), with the table of names and their precedence. ``off`` as the URL turns recording off.

The store, its schema and its upgrades: ``handler/records_store.py``; reading it (queries, counts,
CSV): ``handler/records_query.py``.

Reading and retention::

    python -m handler.records_cli list --run-dir build/serve --since 7d --label fake
    python -m handler.records_cli list --declared ai_generated       # what the uploads declared (provenance)
    python -m handler.records_cli export verdicts.csv --url postgresql://user@host/db --model deepfake-detector
    python -m handler.records_cli prune --older-than 30d

The CLI is the host module ``handler/records_cli.py``; this module never imports it (it ships in the
archive, and the two importing each other was a circle).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Mapping

from handler.records_settings import DEFAULT_SPOOL_MB, RecordsSettings, spool_file
from handler.records_store import (COLUMNS, ensure_schema, first_line, idempotent_insert, normalise_url, open_engine, prune,
                                   shown, utc_now)
from handler.spool import Spool

logger = logging.getLogger(__name__)


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
        "created_at": created_at or utc_now(),
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
            removed = prune(self.engine, utc_now() - timedelta(days=self.keep_days))
            if removed:
                logger.info("prediction records: pruned %d rows older than %g days", removed, self.keep_days)
        except Exception as exc:
            logger.warning("prediction records: pruning failed: %s", first_line(exc))



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
