"""Prediction records (handler/records*.py, handler/spool.py) in real SQLite files and a real
PostgreSQL server, and through a real TorchServe under load: every REST answer is recorded; a store
that is down, killed or locked costs no row (the spool keeps them and replays them once, in order); a
worker killed with SIGKILL loses no answered row; a full spool drops only what is beyond its bound,
counted; old stores are upgraded; rows are pruned on request."""

from __future__ import annotations

import csv
import hashlib
import itertools
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from conftest import MODEL, ROOT
from handler import records, records_query, records_settings, records_store
from handler.spool import read_state
from postgres_server import free_port
from records_schemas import PAST

VERDICT = {
    "label": "fake", "fake_probability": 0.81, "threshold": 0.54, "image_size": [256, 256],
    "face": {"box": [1, 2, 3, 4], "score": 0.99}, "faces": [{"box": [1, 2, 3, 4], "score": 0.99}],
}  # fmt: skip
MODEL_INFO = {"name": MODEL, "version": "1.0", "backend": "onnx", "precision": "fp32"}
_ids = itertools.count()
# The store stays down under load until this many requests were answered while it was down, and the
# spool holds at least as many rows for it (a condition, not a fixed length: on a fast host it is a
# few seconds, on a loaded one as long as it takes; the writer's retries back off 1, 2, 4, then 5 s).
OUTAGE_ANSWERS = 20


def rows_for(n: int, label: str = "fake", model: str = MODEL, created_at: datetime | None = None) -> list[dict]:
    answer = {**VERDICT, "label": label}
    rows = []
    for _ in range(n):
        i = next(_ids)
        rows.append(records.prediction_row(answer, 200, {**MODEL_INFO, "name": model}, f"req-{i}", hashlib.sha256(str(i).encode()).hexdigest(),
                                           1000 + i, 12.5, created_at=created_at))  # fmt: skip
    return rows


def unique_jpegs(jpeg: bytes, n: int, tag: bytes) -> list[bytes]:
    """The same photo n times with distinct bytes (trailing bytes after the JPEG's end are ignored)."""
    return [jpeg + tag + str(i).encode() for i in range(n)]


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'records.sqlite3'}"


def recorder(url: str, tmp_path: Path, **kwargs) -> records.Recorder:
    return records.Recorder(url, tmp_path / "spool", interval_s=kwargs.pop("interval_s", 0.05), **kwargs)


def wait_for(condition, timeout: float, what: str, every: float = 0.2):
    """Poll ``condition`` until it returns something true; fail saying ``what`` did not happen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


# --- SQLite ---------------------------------------------------------------------------------------


def test_sqlite_store_writes_filters_and_keeps_its_schema_version(tmp_path):
    writer = recorder(sqlite_url(tmp_path), tmp_path)
    week_ago = datetime.now(timezone.utc) - timedelta(days=7)
    writer.record(rows_for(3, "fake") + rows_for(2, "real", model="other") + rows_for(4, "real", created_at=week_ago))
    writer.record([records.prediction_row({"error": "not_an_image", "message": "no"}, 415, MODEL_INFO, "bad", None, 11, 3.0)])
    assert writer.flush()
    assert writer.counts() == {"written": 10, "spooled": 0, "replayed": 0, "dropped_spool_full": 0, "dropped_spool_error": 0}

    engine = records_store.open_engine(sqlite_url(tmp_path))
    assert records_query.count(engine) == 10
    assert records_query.count(engine, label="fake") == 3
    assert records_query.count(engine, model="other") == 2
    assert records_query.count(engine, since=records_query.parse_time("1d")) == 6
    assert records_query.count(engine, until=records_query.parse_time("1d")) == 4
    assert records_query.count(engine, refused=True) == 1
    newest = records_query.query(engine, limit=1)[0]
    assert (newest["status"], newest["error"], newest["label"], newest["byte_count"]) == (415, "not_an_image", None, 11)
    page = records_query.query(engine, limit=3, offset=3, label="real")
    assert len(page) == 3 and all(r["label"] == "real" for r in page)
    first = records_query.query(engine, label="fake")[-1]
    assert first["fake_probability"] == 0.81 and first["created_at"].tzinfo is not None
    with sqlite3.connect(tmp_path / "records.sqlite3") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with engine.connect() as connection:
        assert connection.execute(select(records_store.schema_version.c.version)).scalars().all() == list(range(1, records_store.SCHEMA_VERSION + 1))
    writer.close()


def test_a_store_from_a_newer_schema_is_refused_and_its_rows_wait(tmp_path):
    engine = records_store.open_engine(sqlite_url(tmp_path))
    records_store.ensure_schema(engine)
    with engine.begin() as connection:
        connection.execute(records_store.schema_version.insert().values(version=records_store.SCHEMA_VERSION + 1, applied_at=datetime.now(timezone.utc)))
    with pytest.raises(records_store.RecordsError, match="newer"):
        records_store.ensure_schema(engine)
    writer = recorder(sqlite_url(tmp_path), tmp_path)
    writer.record(rows_for(3))
    wait_for(lambda: writer.spool.state()["store_down"], 30, "the writer to find the store unusable")
    assert writer.spool.state()["rows"] == 3 and records_query.count(engine) == 0  # kept, not written, not dropped
    writer.close()


def test_the_declared_provenance_is_recorded_filtered_and_listed(tmp_path):
    writer = recorder(sqlite_url(tmp_path), tmp_path)
    claimed = {**VERDICT, "provenance": {"declared": "ai_generated"}}
    writer.record([records.prediction_row(claimed, 200, MODEL_INFO, "claimed"), records.prediction_row(VERDICT, 200, MODEL_INFO, "plain")])
    assert writer.flush()
    writer.close()
    engine = records_store.open_engine(sqlite_url(tmp_path))
    assert [r["request_id"] for r in records_query.query(engine, declared="ai_generated")] == ["claimed"]
    assert records_query.count(engine) == 2 and records_query.count(engine, declared="camera") == 0
    assert [(r["request_id"], r["declared"]) for r in records_query.query(engine)] == [("plain", None), ("claimed", "ai_generated")]
    listed = subprocess.run([sys.executable, "-m", "handler.records_cli", "list", "--url", sqlite_url(tmp_path), "--declared", "ai_generated"],
                            cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    assert "1 of 1 records" in listed.stdout and "ai_generated" in listed.stdout


def test_cli_lists_exports_and_prunes(tmp_path):
    writer = recorder(sqlite_url(tmp_path), tmp_path)
    old = datetime.now(timezone.utc) - timedelta(days=40)
    writer.record(rows_for(3, "fake") + rows_for(2, "real") + rows_for(4, "real", created_at=old))
    assert writer.flush()
    writer.close()
    cli = [sys.executable, "-m", "handler.records_cli"]
    listed = subprocess.run([*cli, "list", "--url", sqlite_url(tmp_path), "--label", "fake"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "3 of 3 records" in listed.stdout and " real " not in listed.stdout
    out = tmp_path / "real.csv"
    subprocess.run([*cli, "export", str(out), "--url", sqlite_url(tmp_path), "--label", "real", "--since", "1h"], cwd=ROOT, check=True, capture_output=True)
    exported = list(csv.DictReader(out.open()))
    assert len(exported) == 2 and {r["label"] for r in exported} == {"real"}
    assert set(exported[0]) == {"id", *records_store.COLUMNS}
    pruned = subprocess.run([*cli, "prune", "--older-than", "30d", "--url", sqlite_url(tmp_path)], cwd=ROOT, capture_output=True, text=True, check=True)
    assert pruned.stdout.startswith("4 records answered before")
    engine = records_store.open_engine(sqlite_url(tmp_path))
    assert records_query.count(engine) == 5 and records_query.count(engine, until=records_query.parse_time("30d")) == 0


def test_cli_says_in_one_line_when_the_store_is_down(tmp_path):
    """A PostgreSQL URL where nothing listens: one line that names the store and the driver's reason."""
    url = f"postgresql://deepfake:secret@127.0.0.1:{free_port()}/records"
    listed = subprocess.run([sys.executable, "-m", "handler.records_cli", "list", "--url", url], cwd=ROOT, capture_output=True, text=True)
    assert listed.returncode == 1 and listed.stdout == ""
    lines = listed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("records store unavailable at postgresql://deepfake:***@127.0.0.1"), listed.stderr
    assert "refused" in lines[0] or "failed" in lines[0]


def test_the_writer_prunes_rows_older_than_keep_days(tmp_path):
    writer = recorder(sqlite_url(tmp_path), tmp_path, keep_days=30)
    writer.record(rows_for(2, created_at=datetime.now(timezone.utc) - timedelta(days=31)) + rows_for(3))
    engine = records_store.open_engine(sqlite_url(tmp_path))
    wait_for(lambda: writer.flush() and records_query.count(engine) == 3, 30, "the old rows to be pruned")
    writer.close()


def test_an_unreachable_store_spools_rows_and_replays_them_once_in_order(tmp_path):
    """A file where the store's folder should be: rows wait in the spool, at once and without blocking
    the caller; once the folder exists they are delivered in the order they were recorded."""
    blocked = tmp_path / "store"
    blocked.write_text("a file where the store's folder should be")
    url = f"sqlite:///{blocked / 'records.sqlite3'}"
    writer = recorder(url, tmp_path)
    rows = rows_for(5)
    writer.record(rows[:2])
    wait_for(lambda: writer.spool.state()["store_down"], 30, "a failed delivery")
    writer.record(rows[2:])
    assert writer.spool.state()["rows"] == 5
    assert writer.counts()["spooled"] == 5 and writer.drain_counts()["spooled"] == 5 and writer.drain_counts()["spooled"] == 0
    blocked.unlink()
    blocked.mkdir()
    assert writer.flush()
    assert writer.counts() == {"written": 0, "spooled": 5, "replayed": 5, "dropped_spool_full": 0, "dropped_spool_error": 0}
    stored = sorted(records_query.query(records_store.open_engine(url), limit=None), key=lambda r: r["id"])
    assert [r["request_id"] for r in stored] == [r["request_id"] for r in rows]
    writer.close()


def test_a_full_spool_drops_only_what_is_beyond_its_bound_and_says_so(tmp_path, caplog):
    """Another connection holds the store's write lock: rows fill the spool up to its bound, the rest
    are dropped at once, counted and logged as an error; once the lock goes, the spool is delivered."""
    row_bytes = len(records._encode(rows_for(1)[0]))
    writer = recorder(sqlite_url(tmp_path), tmp_path, spool_bytes=10 * row_bytes + row_bytes // 2)
    writer.record(rows_for(1))
    assert writer.flush()
    locker = sqlite3.connect(tmp_path / "records.sqlite3")
    locker.execute("BEGIN EXCLUSIVE")
    with caplog.at_level(logging.ERROR, logger="handler.records"):
        writer.record(rows_for(40))  # returns with the store still locked: 10 rows fit the spool
    counts = writer.counts()
    assert counts["dropped_spool_full"] == 30 and writer.spool.state()["rows"] == 10
    assert any("DROPPED" in r.message and "full" in r.message for r in caplog.records)
    locker.rollback()
    locker.close()
    assert writer.flush()
    counts = writer.counts()
    assert counts["written"] + counts["replayed"] + counts["dropped_spool_full"] == 41
    assert records_query.count(records_store.open_engine(sqlite_url(tmp_path))) == 41 - counts["dropped_spool_full"]
    writer.close()


def test_a_replay_after_a_partial_write_adds_no_duplicate(tmp_path):
    """The state a replaying worker killed between the store's commit and the spool's delete leaves:
    rows in the store and still in the spool. The next replay skips them."""
    rows = rows_for(6)
    settings = records_settings.RecordsSettings(sqlite_url(tmp_path), tmp_path / "spool")
    from handler.spool import Spool

    spool = Spool(records_settings.spool_file(settings.spool_dir, settings.url), settings.spool_bytes)
    spool.append([records._encode(row) for row in rows])
    spool.close()
    engine = records_store.open_engine(settings.url)
    records_store.ensure_schema(engine)
    with engine.begin() as connection:  # the first four made it before the "kill"
        connection.execute(records_store.predictions.insert(), rows[:4])
    writer = recorder(settings.url, tmp_path)
    assert writer.flush()
    stored = records_query.query(engine, limit=None)
    assert sorted(r["request_id"] for r in stored) == sorted(r["request_id"] for r in rows)
    writer.close()


def test_settings_come_from_the_archive_then_the_environment_then_config_properties(tmp_path):
    properties = {"deepfake_records_url": "postgresql://a/b", "deepfake_records_spool_mb": "8", "deepfake_records_keep_days": "30"}
    environ = {"DEEPFAKE_RECORDS_URL": "postgresql://c/d", "DEEPFAKE_RECORDS_SPOOL": str(tmp_path / "env-spool")}
    settings = records_settings.RecordsSettings.resolve(environ, properties, tmp_path, {"records_spool_mb": 2})
    assert (settings.url, settings.spool_dir, settings.spool_bytes, settings.keep_days) == ("postgresql://c/d", tmp_path / "env-spool", 2 * 2**20, 30)
    default = records_settings.RecordsSettings.resolve({}, {}, tmp_path)
    assert default.url == f"sqlite:///{tmp_path.resolve() / 'records.sqlite3'}" and default.spool_dir == tmp_path.resolve() / "records-spool"
    assert records_settings.RecordsSettings.resolve(settings.environ()) == settings  # what a server hands its workers
    assert records_settings.RecordsSettings.resolve({}, settings.properties()) == settings  # what it keeps in server.json
    assert records_settings.RecordsSettings.resolve({"DEEPFAKE_RECORDS_URL": "off"}, {}, tmp_path).url is None
    with pytest.raises(records_store.RecordsError):
        records_settings.RecordsSettings.resolve({}, {"deepfake_records_spool_mb": "lots"}, tmp_path)
    assert records_settings.spool_file(tmp_path, "postgresql://a/b") != records_settings.spool_file(tmp_path, "postgresql://c/d")


# --- PostgreSQL and schema upgrades ----------------------------------------------------------------


@pytest.fixture
def fresh_database(postgres):
    """An empty database of the module's server, for tests that need a store of their own."""
    return postgres.createdb(f"db{next(_ids)}")


def test_postgres_store_round_trip(postgres, tmp_path):
    writer = recorder(postgres.url, tmp_path)
    writer.record(rows_for(4, "fake") + rows_for(3, "real", model="pg-round-trip"))
    assert writer.flush()
    assert writer.counts()["written"] == 7
    engine = records_store.open_engine(postgres.url)
    assert engine.dialect.driver == "psycopg"
    assert records_query.count(engine, model="pg-round-trip") == 3
    row = records_query.query(engine, limit=1, model="pg-round-trip")[0]
    assert row["created_at"].tzinfo is not None and row["label"] == "real" and row["explain"] is False
    writer.close()


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgresql", marks=pytest.mark.server)])
@pytest.mark.parametrize("version", sorted(PAST))
def test_a_store_of_an_earlier_version_is_upgraded_in_place(store, version, tmp_path, request):
    """A store written by an earlier schema, with rows in it (in a version 1 store two of them share a
    request id, which it allowed), opened by this code: upgraded step by step, every row kept, ids
    unique after, and the columns added since empty in the old rows."""
    url = sqlite_url(tmp_path) if store == "sqlite" else request.getfixturevalue("fresh_database")
    engine = records_store.open_engine(url)
    old = PAST[version]()
    old.create_all(engine)
    rows = [{k: v for k, v in row.items() if k in old.tables["predictions"].c} for row in rows_for(3)]
    if version == 1:
        rows.append({**rows[0], "sha256": "a repeat of the first request id"})
    with engine.begin() as connection:
        connection.execute(old.tables["predictions"].insert(), rows)
        connection.execute(old.tables["schema_version"].insert(), [{"version": v, "applied_at": datetime.now(timezone.utc)} for v in range(1, version + 1)])

    assert records_store.ensure_schema(engine) == records_store.SCHEMA_VERSION
    with engine.connect() as connection:
        assert connection.execute(select(records_store.schema_version.c.version)).scalars().all() == list(range(1, records_store.SCHEMA_VERSION + 1))
    stored = sorted(records_query.query(engine, limit=None), key=lambda r: r["id"])
    assert [r["sha256"] for r in stored] == [r["sha256"] for r in rows]
    assert len({r["request_id"] for r in stored}) == len(rows)
    if version == 1:
        assert stored[3]["request_id"].startswith(rows[0]["request_id"] + "~")
    assert all(r["declared"] is None for r in stored)
    unique = {i["name"]: i["unique"] for i in inspect(engine).get_indexes("predictions")}
    assert unique["ix_predictions_request_id"]
    assert {"request_id", "truth", "labelled_by", "note"} <= {c["name"] for c in inspect(engine).get_columns("labels")}  # v4
    writer = recorder(url, tmp_path)  # a replay of a row already there is skipped
    writer.record([{**rows_for(1)[0], "request_id": rows[1]["request_id"]}] + rows_for(1))
    assert writer.flush() and records_query.count(engine) == len(rows) + 1
    writer.close()


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgresql", marks=pytest.mark.server)])
def test_add_column_is_the_step_for_a_new_column(store, tmp_path, request):
    """The documented path for the next schema change (a new column, indexed), on both dialects: a
    copy of today's table with one more column, added to a store of today's version."""
    from sqlalchemy import Column, MetaData, String

    url = sqlite_url(tmp_path) if store == "sqlite" else request.getfixturevalue("fresh_database")
    engine = records_store.open_engine(url)
    records_store.ensure_schema(engine)
    nxt = MetaData()
    table = records_store.predictions.to_metadata(nxt)
    table.append_column(Column("reviewer", String(16), index=True))
    with engine.begin() as connection:
        records_store.add_column(connection, table.c.reviewer, index=True)
    columns = {c["name"] for c in inspect(engine).get_columns("predictions")}
    assert "reviewer" in columns
    assert "ix_predictions_reviewer" in {i["name"] for i in inspect(engine).get_indexes("predictions")}


# --- through TorchServe, under load ----------------------------------------------------------------


class Load:
    """``users`` clients sending distinct images to ``model`` until stopped; every answer kept."""

    def __init__(self, torchserve, model: str, jpeg: bytes, users: int, tag: bytes):
        self.torchserve, self.model, self.jpeg, self.tag = torchserve, model, jpeg, tag
        self.answers: list[tuple[str, object]] = []  # (sha256 of the body, status or exception name)
        self.stop, self._counter = threading.Event(), itertools.count()
        self._threads = [threading.Thread(target=self._user, daemon=True) for _ in range(users)]

    def _user(self) -> None:
        while not self.stop.is_set():
            body = self.jpeg + self.tag + str(next(self._counter)).encode()
            try:
                status = self.torchserve.predict(self.model, body, timeout=120, headers={"Content-Type": "image/jpeg"}).status_code
            except Exception as exc:
                status = type(exc).__name__
            self.answers.append((hashlib.sha256(body).hexdigest(), status))

    def answered(self) -> int:
        return sum(status == 200 for _, status in self.answers)

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(180)


def register(torchserve, model_store, weights_path, name: str, url: str, workers: int = 1) -> None:
    from export.archive import ServingConfig, build_archive

    serving = ServingConfig(batch_size=4, max_batch_delay=20, min_workers=workers, max_workers=workers, handler={"threads": 1, "records_url": url})
    build_archive(weights_path, export_path=model_store, model_name=name, serving=serving)
    torchserve.register(f"{name}.mar", name, workers=workers)


def outage(load: Load, spool: Path, take_down, bring_back, during=None) -> None:
    """Answers flowing, then the store down under load (``during`` runs in the middle) until
    OUTAGE_ANSWERS more answers were given and their rows wait in the spool, then back until more
    answers flow. Every phase waits on what it needs to see, with a deadline; none sleeps a fixed time."""
    wait_for(lambda: load.answered() >= 20, 120, "answers before the outage")
    take_down()
    answered_when_down = load.answered()
    try:
        wait_for(lambda: (read_state(spool) or {}).get("store_down"), 60, "the spool to hold rows for the store that is down")
        if during:
            during()

        def outage_served():
            state = read_state(spool) or {}
            return (state.get("store_down") and state.get("rows", 0) >= OUTAGE_ANSWERS
                    and load.answered() >= answered_when_down + OUTAGE_ANSWERS)  # fmt: skip

        wait_for(outage_served, 180, f"{OUTAGE_ANSWERS} answers while the store was down, their rows in the spool")
    finally:
        bring_back()
    answered = load.answered()
    wait_for(lambda: load.answered() >= answered + 20, 120, "answers after the store came back")


def settled(spool: Path, engine, model: str, sent: set[str], timeout: float = 120) -> list[dict]:
    """The rows of the images ``sent`` (sha256) once the spool is empty and the store answered its
    last delivery (the model's other rows left out)."""
    wait_for(lambda: (state := read_state(spool)) and state["rows"] == 0 and not state["store_down"], timeout, "the spool to be replayed")
    return [row for row in records_query.query(engine, limit=None, model=model) if row["sha256"] in sent]


def prometheus_total(text: str, metric: str, model: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(metric + "{") and f'ModelName="{model}"' in line)


def kill_a_worker(torchserve, name: str) -> int:
    pids = torchserve.client.worker_pids(name)
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(now := torchserve.client.worker_pids(name)) == len(pids) and victim not in now.values(), 180, "a new worker")
    return victim


@pytest.mark.integration
@pytest.mark.parametrize("kill_worker", [False, True], ids=["database-killed", "database-and-a-worker-killed"])
def test_postgres_killed_under_load_loses_no_row(kill_worker, postgres, torchserve, model_store, weights_path, astronaut_jpeg):
    """Four clients on a model recording to PostgreSQL; the database is killed (for OUTAGE_ANSWERS
    answers) and started again. Every 200 answer has exactly one row, no request id twice, and the metrics count
    what was spooled and replayed. With a worker killed (SIGKILL) mid-outage too: its spooled rows are
    replayed by the workers that remain, and no answered row is lost (the bound is 0); a row without
    a 200 can only be one the kill cut the answer of (at most its batch of 4)."""
    name = f"deepfake-pg-{'kill' if kill_worker else 'outage'}"
    workers = 2 if kill_worker else 1
    register(torchserve, model_store, weights_path, name, postgres.url, workers)
    spool = records_settings.spool_file(torchserve.records_settings.spool_dir, postgres.url)
    try:
        with Load(torchserve, name, astronaut_jpeg, 4, name.encode()) as load:
            outage(load, spool, postgres.kill, postgres.start, during=(lambda: kill_a_worker(torchserve, name)) if kill_worker else None)
        rows = settled(spool, records_store.open_engine(postgres.url), name, {digest for digest, _ in load.answers})
        answered = {digest for digest, status in load.answers if status == 200}
        recorded = Counter(r["sha256"] for r in rows)
        assert Counter(r["request_id"] for r in rows).most_common(1)[0][1] == 1, "a request id was recorded twice"
        assert answered - set(recorded) == set(), "200 answers without a row"
        assert max(recorded.values()) == 1
        extra = set(recorded) - answered
        print(f"{name}: {len(load.answers)} requests, {len(answered)} answered 200, {len(rows)} rows, {len(extra)} rows without a 200")
        if kill_worker:
            assert len(extra) <= 4 and extra <= {d for d, s in load.answers if s != 200}
        else:
            assert extra == set() and {s for _, s in load.answers} == {200}, "a prediction failed while the database was down"
            assert len(rows) == len(answered) == len(load.answers)
        # the counts reach the metrics with the next batch a worker answers
        def reported():
            torchserve.predict(name, astronaut_jpeg + b"tail" + str(time.monotonic()).encode())
            text = torchserve.metrics()
            spooled, replayed = (prometheus_total(text, f"DeepfakeRecords{m}", name) for m in ("Spooled", "Replayed"))
            # one worker: each spooled row replayed once; a killed worker takes its unreported counts along
            return spooled > 0 and replayed > 0 and (kill_worker or replayed == spooled) and "DeepfakeRecordsDropped{" not in text

        wait_for(reported, 60, "the spooled and replayed counts in the metrics", every=1)
    finally:
        if not postgres.running():
            postgres.start()
        torchserve.unregister(name)


@pytest.mark.integration
def test_sqlite_locked_under_load_loses_no_row(torchserve, model_store, weights_path, astronaut_jpeg, tmp_path):
    """The default store, SQLite, write-locked by another connection under load (a backup or a
    long manual transaction) for OUTAGE_ANSWERS answers: rows wait in the spool and arrive once the lock goes."""
    name, url = "deepfake-sqlite-locked", sqlite_url(tmp_path)
    register(torchserve, model_store, weights_path, name, url)
    spool = records_settings.spool_file(torchserve.records_settings.spool_dir, url)
    locker = {}

    def lock():
        locker["connection"] = sqlite3.connect(tmp_path / "records.sqlite3", isolation_level=None)
        locker["connection"].execute("BEGIN EXCLUSIVE")

    def unlock():
        locker["connection"].execute("ROLLBACK")
        locker["connection"].close()

    try:
        with Load(torchserve, name, astronaut_jpeg, 4, b"sqlite-locked-") as load:
            wait_for(lambda: load.answered() >= 20 and records_query.count(records_store.open_engine(url), model=name) > 0, 120, "rows before the lock")
            outage(load, spool, lock, unlock)
        rows = settled(spool, records_store.open_engine(url), name, {digest for digest, _ in load.answers})
        answered = {digest for digest, status in load.answers if status == 200}
        assert {s for _, s in load.answers} == {200}
        assert len(rows) == len(answered) == len(load.answers)
        assert {r["sha256"] for r in rows} == answered and len({r["request_id"] for r in rows}) == len(rows)
    finally:
        torchserve.unregister(name)


@pytest.mark.integration
def test_status_shows_the_spool(torchserve):
    report = torchserve.status()["records"]
    assert report["store"] == torchserve.records_url and report["spool"] == str(torchserve.run_dir / "records-spool")
    assert report["rows"] >= 0 and report["max_bytes_per_store"] == 256 * 2**20


# --- the session's TorchServe records in SQLite under its run folder ------------------------------


@pytest.mark.integration
def test_every_rest_prediction_is_recorded(torchserve, astronaut_jpeg):
    import base64

    from video_clips import face_clip

    from handler.payload import PROBE_HEADER

    raw, multipart, as_json, refused = unique_jpegs(astronaut_jpeg, 3, b"rest-") + [b"rest: not an image"]
    clip = face_clip("mp4", frames=4)
    # a health probe (the watchdog's) is answered like any request but not recorded
    # (sent first: the rows of the requests after it are written after its row would have been)
    (probe_body,) = unique_jpegs(astronaut_jpeg, 1, b"probe-")
    probe = torchserve.predict(MODEL, probe_body, headers={"Content-Type": "image/jpeg", PROBE_HEADER: "1"})
    assert probe.status_code == 200 and "label" in probe.json()
    answers = [
        (raw, torchserve.predict(MODEL, raw, headers={"Content-Type": "image/jpeg"})),
        (multipart, torchserve.predict(MODEL, files={"image": ("face.jpg", multipart, "image/jpeg")})),
        (as_json, torchserve.predict(MODEL, json={"image": base64.b64encode(as_json).decode()})),
        (refused, torchserve.predict(MODEL, refused, headers={"Content-Type": "text/plain"})),
        (raw, torchserve.explain(MODEL, raw, headers={"Content-Type": "image/jpeg"})),
        (clip, torchserve.predict(MODEL, clip, headers={"Content-Type": "video/mp4"})),
    ]
    assert [r.status_code for _, r in answers] == [200, 200, 200, 415, 200, 200]
    assert torchserve.records_url.startswith("sqlite:///") and torchserve.records_url.endswith(f"{torchserve.run_dir}/records.sqlite3")
    engine = records_store.open_engine(torchserve.records_url)
    digests = {hashlib.sha256(body).hexdigest() for body, _ in answers}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stored = [r for r in records_query.query(engine, limit=200, since=records_query.parse_time("10m")) if r["sha256"] in digests]
        if len(stored) >= len(answers):
            break
        time.sleep(0.3)
    assert len(stored) == len(answers)
    assert not [r for r in records_query.query(engine, limit=200, since=records_query.parse_time("10m"))
                if r["sha256"] == hashlib.sha256(probe_body).hexdigest()]
    # nor the start-up prediction the server waited for (a health check: sent with the probe header)
    from handler.tsclient import probe_image

    assert not records_query.query(engine, limit=None, sha256=hashlib.sha256(probe_image()).hexdigest())
    by_request = {r["request_id"]: r for r in stored}
    for body, response in answers:
        row = by_request[response.headers["x-request-id"]]
        answer = response.json()
        assert row["sha256"] == hashlib.sha256(body).hexdigest() and row["byte_count"] == len(body)
        assert row["status"] == response.status_code
        assert (row["model_name"], row["backend"], row["precision"]) == (MODEL, "eager", "fp32")
        assert row["latency_ms"] > 0
        if response.status_code == 200:
            assert (row["label"], row["fake_probability"], row["threshold"]) == (answer["label"], answer["fake_probability"], answer["threshold"])
            assert row["media"] == answer["media"]
            if answer["media"] == "video":
                assert [row["image_width"], row["image_height"]] == answer["video"]["size"]
                assert row["faces"] == answer["frames_with_face"] > 0
            else:
                assert [row["image_width"], row["image_height"]] == answer["image_size"] and row["faces"] == len(answer["faces"])
            assert row["explain"] == ("explanation" in answer)
            assert row["declared"] == answer["provenance"]["declared"] == "none"
        else:
            assert (row["error"], row["label"], row["faces"]) == (answer["error"], None, None)


@pytest.mark.integration
def test_two_workers_share_one_sqlite_store(torchserve, model_store, weights_path, astronaut_jpeg, tmp_path):
    """Two workers of one model journal into one spool and append to the same SQLite file (WAL) while
    a burst is batched."""
    from concurrent.futures import ThreadPoolExecutor

    name, url = "deepfake-two", sqlite_url(tmp_path)
    register(torchserve, model_store, weights_path, name, url, workers=2)
    try:
        assert len(torchserve.client.worker_pids(name)) == 2
        bodies = unique_jpegs(astronaut_jpeg, 24, b"two-workers-")
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda body: torchserve.predict(name, body).status_code, bodies))
        assert statuses == [200] * len(bodies)
        digests = {hashlib.sha256(b).hexdigest() for b in bodies}
        rows = settled(records_settings.spool_file(torchserve.records_settings.spool_dir, url), records_store.open_engine(url), name, digests)
        assert {r["sha256"] for r in rows} == digests and len(rows) == len(bodies)
        assert "DeepfakeRecordsDropped{" not in torchserve.metrics()
    finally:
        torchserve.unregister(name)
