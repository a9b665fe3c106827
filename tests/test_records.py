"""Prediction records (handler/records.py) in a real SQLite file and a real PostgreSQL server, and
through a real TorchServe: every REST answer is recorded, a killed database costs records (counted)
but no prediction, and recording resumes when the database is back."""

from __future__ import annotations

import csv
import hashlib
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import MODEL, ROOT
from handler import records
from postgres_server import PostgresServer, skip_reason

VERDICT = {
    "label": "fake", "fake_probability": 0.81, "threshold": 0.54, "image_size": [256, 256],
    "face": {"box": [1, 2, 3, 4], "score": 0.99}, "faces": [{"box": [1, 2, 3, 4], "score": 0.99}],
}  # fmt: skip
MODEL_INFO = {"name": MODEL, "version": "1.0", "backend": "onnx", "precision": "fp32"}


def rows_for(n: int, label: str = "fake", model: str = MODEL, created_at: datetime | None = None) -> list[dict]:
    answer = {**VERDICT, "label": label}
    return [
        records.prediction_row(answer, 200, {**MODEL_INFO, "name": model}, f"req-{i}", hashlib.sha256(bytes([i])).hexdigest(),
                               1000 + i, 12.5, created_at=created_at)  # fmt: skip
        for i in range(n)
    ]


def unique_jpegs(jpeg: bytes, n: int, tag: bytes) -> list[bytes]:
    """The same photo n times with distinct bytes (trailing bytes after the JPEG's end are ignored)."""
    return [jpeg + tag + str(i).encode() for i in range(n)]


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'records.sqlite3'}"


def version_1_store(engine) -> None:
    """A store as schema version 1 wrote it (no ``declared`` column), holding one verdict."""
    from sqlalchemy import MetaData, Table

    old = MetaData()
    table = Table("predictions", old, *[c._copy() for c in records.predictions.columns if c.name != "declared"])
    versions = Table("schema_version", old, *[c._copy() for c in records.schema_version.columns])
    old.drop_all(engine)
    old.create_all(engine)
    row = {k: v for k, v in rows_for(1)[0].items() if k != "declared"}
    with engine.begin() as connection:
        connection.execute(table.insert().values(**row))
        connection.execute(versions.insert().values(version=1, applied_at=datetime.now(timezone.utc)))


def check_declared_migration(url: str) -> None:
    """Version 1 -> 2 keeps the old rows (declared null) and records and filters by declared after it."""
    engine = records.open_engine(url)
    version_1_store(engine)
    assert records.ensure_schema(engine) == records.SCHEMA_VERSION == 2
    recorder = records.Recorder(url, interval_s=0.05)
    claimed = {**VERDICT, "provenance": {"declared": "ai_generated"}}
    recorder.record([records.prediction_row(claimed, 200, MODEL_INFO, "claimed"), records.prediction_row(VERDICT, 200, MODEL_INFO, "plain")])
    assert recorder.flush() and recorder.counts()["written"] == 2
    assert [r["request_id"] for r in records.query(engine, declared="ai_generated")] == ["claimed"]
    assert records.count(engine) == 3 and records.count(engine, declared="camera") == 0
    assert [(r["request_id"], r["declared"]) for r in records.query(engine)] == [("plain", None), ("claimed", "ai_generated"), ("req-0", None)]
    with engine.connect() as connection:
        assert connection.execute(select(records.schema_version.c.version)).scalars().all() == [1, 2]


# --- SQLite ---------------------------------------------------------------------------------------


def test_sqlite_store_writes_filters_and_keeps_its_schema_version(tmp_path):
    recorder = records.Recorder(sqlite_url(tmp_path), interval_s=0.05)
    week_ago = datetime.now(timezone.utc) - timedelta(days=7)
    recorder.record(rows_for(3, "fake") + rows_for(2, "real", model="other") + rows_for(4, "real", created_at=week_ago))
    recorder.record([records.prediction_row({"error": "not_an_image", "message": "no"}, 415, MODEL_INFO, "bad", None, 11, 3.0)])
    assert recorder.flush()
    assert recorder.counts() == {"written": 10, "lost_queue_full": 0, "lost_db_error": 0}

    engine = records.open_engine(sqlite_url(tmp_path))
    assert records.count(engine) == 10
    assert records.count(engine, label="fake") == 3
    assert records.count(engine, model="other") == 2
    assert records.count(engine, since=records.parse_time("1d")) == 6
    assert records.count(engine, until=records.parse_time("1d")) == 4
    assert records.count(engine, refused=True) == 1
    newest = records.query(engine, limit=1)[0]
    assert (newest["status"], newest["error"], newest["label"], newest["byte_count"]) == (415, "not_an_image", None, 11)
    page = records.query(engine, limit=3, offset=3, label="real")
    assert len(page) == 3 and all(r["label"] == "real" for r in page)
    first = records.query(engine, label="fake")[-1]
    assert first["sha256"] == hashlib.sha256(bytes([0])).hexdigest() and first["fake_probability"] == 0.81
    assert first["created_at"].tzinfo is not None
    with sqlite3.connect(tmp_path / "records.sqlite3") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with engine.connect() as connection:
        # a new store is created at the newest schema and records every version as applied
        assert connection.execute(select(records.schema_version.c.version)).scalars().all() == list(range(1, records.SCHEMA_VERSION + 1))


def test_a_store_from_a_newer_schema_is_refused(tmp_path):
    engine = records.open_engine(sqlite_url(tmp_path))
    records.ensure_schema(engine)
    with engine.begin() as connection:
        connection.execute(records.schema_version.insert().values(version=records.SCHEMA_VERSION + 1, applied_at=datetime.now(timezone.utc)))
    with pytest.raises(records.RecordsError, match="newer"):
        records.ensure_schema(engine)


def test_a_version_1_store_gains_the_declared_column(tmp_path):
    check_declared_migration(sqlite_url(tmp_path))
    listed = subprocess.run([sys.executable, "-m", "handler.records", "list", "--url", sqlite_url(tmp_path), "--declared", "ai_generated"],
                            cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    assert "1 of 1 records" in listed.stdout and "ai_generated" in listed.stdout


def test_cli_lists_and_exports_csv(tmp_path):
    recorder = records.Recorder(sqlite_url(tmp_path), interval_s=0.05)
    recorder.record(rows_for(3, "fake") + rows_for(2, "real"))
    assert recorder.flush()
    cli = [sys.executable, "-m", "handler.records"]
    listed = subprocess.run([*cli, "list", "--url", sqlite_url(tmp_path), "--label", "real"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "2 of 2 records" in listed.stdout and " fake " not in listed.stdout
    out = tmp_path / "fake.csv"
    subprocess.run([*cli, "export", str(out), "--url", sqlite_url(tmp_path), "--label", "fake", "--since", "1h"], cwd=ROOT, check=True, capture_output=True)
    exported = list(csv.DictReader(out.open()))
    assert len(exported) == 3 and {r["label"] for r in exported} == {"fake"}
    assert set(exported[0]) == {"id", *records.COLUMNS}


def test_an_unwritable_store_loses_rows_counted_without_blocking(tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the store's folder should be")
    recorder = records.Recorder(f"sqlite:///{blocked / 'records.sqlite3'}", interval_s=0.05)
    started = time.perf_counter()
    recorder.record(rows_for(5))
    assert time.perf_counter() - started < 0.5  # queued, not written, on the caller's thread
    assert recorder.flush()
    assert recorder.counts() == {"written": 0, "lost_queue_full": 0, "lost_db_error": 5}
    assert recorder.drain_counts()["lost_db_error"] == 5 and recorder.drain_counts()["lost_db_error"] == 0


def test_a_full_queue_drops_rows_instead_of_waiting(tmp_path):
    """Another connection holds SQLite's write lock: the writer waits on it, the buffer fills, and the
    caller's rows beyond it are dropped and counted at once; once the lock goes, the rest is written."""
    recorder = records.Recorder(sqlite_url(tmp_path), queue_size=5, batch_rows=2, interval_s=0.01)
    recorder.record(rows_for(1))
    assert recorder.flush()
    locker = sqlite3.connect(tmp_path / "records.sqlite3")
    locker.execute("BEGIN EXCLUSIVE")
    started = time.perf_counter()
    recorder.record(rows_for(40))
    assert time.perf_counter() - started < 0.5
    locker.rollback()
    locker.close()
    assert recorder.flush()
    counts = recorder.counts()
    assert counts["lost_queue_full"] >= 40 - 5  # beyond the buffer's 5 rows
    assert counts["written"] + counts["lost_queue_full"] + counts["lost_db_error"] == 41


# --- PostgreSQL -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    server = PostgresServer().init()
    yield server
    server.destroy()


def test_postgres_version_1_store_gains_the_declared_column(postgres):
    check_declared_migration(postgres.url)  # first in this module: it starts the server's store afresh


def test_postgres_store_round_trip(postgres):
    recorder = records.Recorder(postgres.url, interval_s=0.05)
    recorder.record(rows_for(4, "fake") + rows_for(3, "real", model="pg-round-trip"))
    assert recorder.flush()
    assert recorder.counts()["written"] == 7
    engine = records.open_engine(postgres.url)
    assert engine.dialect.driver == "psycopg"
    assert records.count(engine, model="pg-round-trip") == 3
    row = records.query(engine, limit=1, model="pg-round-trip")[0]
    assert row["created_at"].tzinfo is not None and row["label"] == "real" and row["explain"] is False


def prometheus_total(text: str, metric: str, model: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(metric + "{") and f'ModelName="{model}"' in line)


@pytest.mark.integration
def test_postgres_killed_mid_load_costs_records_not_predictions(postgres, torchserve, model_store, weights_path, astronaut_jpeg):
    """An archive whose model config points its records at the PostgreSQL server, on the session's
    TorchServe; the database is killed and restarted while a client keeps sending."""
    from export.archive import ServingConfig, build_archive

    name = "deepfake-pg"
    serving = ServingConfig(batch_size=4, max_batch_delay=20, handler={"threads": 1, "records_url": postgres.url})
    build_archive(weights_path, export_path=model_store, model_name=name, serving=serving)
    torchserve.register(f"{name}.mar", name)
    try:
        bodies = iter(unique_jpegs(astronaut_jpeg, 10_000, b"pg-load-"))
        sent, statuses, phase = [], [], {"name": "up"}
        stop = threading.Event()

        def client():
            while not stop.is_set():
                body = next(bodies)
                statuses.append((phase["name"], torchserve.predict(name, body, timeout=60).status_code))
                sent.append(body)

        thread = threading.Thread(target=client)
        thread.start()
        time.sleep(3)
        postgres.kill()
        phase["name"] = "down"
        time.sleep(6)
        postgres.start()
        restarted = datetime.now(timezone.utc)
        phase["name"] = "back"
        time.sleep(6)
        stop.set()
        thread.join(120)
        time.sleep(1.5)  # the writer's last batch
        tail = b"tail"
        assert torchserve.predict(name, astronaut_jpeg + tail).status_code == 200  # reports the last counts
        sent.append(astronaut_jpeg + tail)

        assert {s for _, s in statuses} == {200}, "a prediction failed while the database was down"
        assert {p for p, _ in statuses} == {"up", "down", "back"}
        engine = records.open_engine(postgres.url)
        deadline = time.monotonic() + 30
        digests = {hashlib.sha256(b).hexdigest() for b in sent}
        while time.monotonic() < deadline:
            recorded = [r for r in records.query(engine, limit=None, model=name) if r["sha256"] in digests]
            if any(r["sha256"] == hashlib.sha256(astronaut_jpeg + tail).hexdigest() for r in recorded):
                break
            time.sleep(0.5)
        metrics = torchserve.metrics()
        lost = prometheus_total(metrics, "DeepfakeRecordsLost", name)
        assert lost > 0, "the rows lost while the database was down were not counted"
        assert any(r["created_at"] > restarted for r in recorded), "records did not resume after the restart"
        assert any(r["created_at"] < restarted - timedelta(seconds=6) for r in recorded)
        # every answer is either in the store or counted lost (the tail's own row is written, not counted)
        assert len(recorded) + lost == len(sent), (len(recorded), lost, len(sent))
    finally:
        torchserve.unregister(name)


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
    engine = records.open_engine(torchserve.records_url)
    digests = {hashlib.sha256(body).hexdigest() for body, _ in answers}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stored = [r for r in records.query(engine, limit=200, since=records.parse_time("10m")) if r["sha256"] in digests]
        if len(stored) >= len(answers):
            break
        time.sleep(0.3)
    assert len(stored) == len(answers)
    assert not [r for r in records.query(engine, limit=200, since=records.parse_time("10m"))
                if r["sha256"] == hashlib.sha256(probe_body).hexdigest()]
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
    """Two workers of one model append to the same SQLite file (WAL) while a burst is batched."""
    from concurrent.futures import ThreadPoolExecutor

    from export.archive import ServingConfig, build_archive

    name, url = "deepfake-two", sqlite_url(tmp_path)
    serving = ServingConfig(batch_size=4, max_batch_delay=50, min_workers=2, max_workers=2, handler={"threads": 1, "records_url": url})
    build_archive(weights_path, export_path=model_store, model_name=name, serving=serving)
    torchserve.register(f"{name}.mar", name, workers=2)
    try:
        assert len(torchserve.client.worker_pids(name)) == 2
        bodies = unique_jpegs(astronaut_jpeg, 24, b"two-workers-")
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda body: torchserve.predict(name, body).status_code, bodies))
        assert statuses == [200] * len(bodies)
        engine = records.open_engine(url)
        digests = {hashlib.sha256(b).hexdigest() for b in bodies}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stored = {r["sha256"] for r in records.query(engine, limit=None, model=name)} & digests
            if stored == digests:
                break
            time.sleep(0.3)
        assert stored == digests
        assert "DeepfakeRecordsLost{" not in torchserve.metrics() or prometheus_total(torchserve.metrics(), "DeepfakeRecordsLost", name) == 0
    finally:
        torchserve.unregister(name)
