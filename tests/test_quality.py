"""Reviewers' labels, the labelled cases' export and live quality and drift (handler/labels.py,
handler/cases.py, handler/quality.py, runtime/drift.py, the records CLI), in real SQLite files and a
real PostgreSQL server (tests/postgres_server.py); the CLI run as a process, as cron would run it."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sqlalchemy import insert

from conftest import MODEL, ROOT
from handler import cases, labels, quality, records, records_query, records_store
from runtime import drift

REAL, FAKE = ROOT / "examples/real/00003.jpg", ROOT / "examples/fake/00MZYXAT77.jpg"
_ids = itertools.count()
CLI = [sys.executable, "-m", "handler.records_cli"]


def predicted(engine, probabilities, version="1.0", threshold=0.5, created_at=None, sha256s=None, face=True) -> list[str]:
    """Rows as the handler writes them, one per P(fake); returns their request ids."""
    rows = []
    for i, p in enumerate(probabilities):
        label = ("fake" if p >= threshold else "real") if face else "no_face"
        answer = {"media": "image", "label": label, "fake_probability": float(p), "threshold": threshold,
                  "image_size": [256, 256], "faces": [{}] if face else []}  # fmt: skip
        n = next(_ids)
        digest = sha256s[i] if sha256s else hashlib.sha256(b"case-%d" % n).hexdigest()
        rows.append(records.prediction_row(answer, 200, {"name": MODEL, "version": version, "backend": "onnx", "precision": "fp32"},
                                           f"q-{n}", digest, 1000, 5.0, created_at=created_at))  # fmt: skip
    records_store.ensure_schema(engine)
    with engine.begin() as connection:
        connection.execute(insert(records_store.predictions), rows)
    return [r["request_id"] for r in rows]


@pytest.fixture
def sqlite_engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    engine = records_store.open_engine(url)
    records_store.ensure_schema(engine)
    engine.url_text = url
    return engine


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.server)])
def engine(request, tmp_path):
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_engine")
    url = request.getfixturevalue("postgres").createdb(f"quality{next(_ids)}")
    engine = records_store.open_engine(url)
    records_store.ensure_schema(engine)
    engine.url_text = url
    return engine


def with_reference(tmp_path: Path, probabilities) -> Path:
    """A weights metadata file carrying the validation P(fake) histogram, as calibration writes it."""
    path = tmp_path / "weights.json"
    path.write_text(json.dumps({"threshold": 0.5, drift.REFERENCE_KEY: drift.reference(probabilities)}))
    return path


# --- labels ---------------------------------------------------------------------------------------


def test_labels_are_kept_never_overwritten_and_the_latest_counts(engine):
    (first, second) = predicted(engine, [0.9, 0.2])
    labels.add_label(engine, first, "real", by="alice", note="a real photo, heavy JPEG")
    labels.add_label(engine, first, "FAKE", by="bob")
    labels.add_label(engine, second, "real")
    history = labels.label_history(engine, first)
    assert [(h["truth"], h["labelled_by"]) for h in history] == [("real", "alice"), ("fake", "bob")]
    assert history[0]["note"] == "a real photo, heavy JPEG" and history[0]["created_at"].tzinfo is not None
    latest = labels.latest_labels(engine, [first, second, "nobody"])
    assert {k: v["truth"] for k, v in latest.items()} == {first: "fake", second: "real"}
    rows = labels.labelled_predictions(engine)
    assert [(r["request_id"], r["truth"], r["label"]) for r in rows] == [(first, "fake", "fake"), (second, "real", "real")]


def test_a_label_that_cannot_be_kept_says_why(engine):
    (known,) = predicted(engine, [0.7])
    for args, code in [((known, "maybe"), "bad_truth"), (("", "fake"), "bad_request_id"), (("x" * 65, "fake"), "bad_request_id"),
                       (("no-such-request", "fake"), "unknown_request")]:  # fmt: skip
        with pytest.raises(labels.LabelError) as refused:
            labels.add_label(engine, *args)
        assert refused.value.code == code and str(refused.value)
    with pytest.raises(labels.LabelError, match="at most"):
        labels.add_label(engine, known, "fake", note="n" * 1001)
    assert labels.add_label(engine, "on-its-way", "fake", require_prediction=False)["truth"] == "fake"


def test_the_cli_labels_and_refuses_in_one_line(sqlite_engine):
    url = sqlite_engine.url_text
    (request_id,) = predicted(sqlite_engine, [0.8])
    done = subprocess.run([*CLI, "label", request_id, "--truth", "real", "--by", "carol", "--note", "my own photo", "--url", url],
                          cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    assert done.stdout.strip() == f"{request_id} labelled real by carol"
    again = subprocess.run([*CLI, "label", request_id, "--truth", "fake", "--url", url], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "(2 labels, the latest counts)" in again.stdout
    unknown = subprocess.run([*CLI, "label", "nope", "--truth", "fake", "--url", url], cwd=ROOT, capture_output=True, text=True)
    assert unknown.returncode == 1 and unknown.stderr.strip() == "not labelled: no prediction with request id nope in the records"
    wrong = subprocess.run([*CLI, "label", request_id, "--truth", "perhaps", "--url", url], cwd=ROOT, capture_output=True, text=True)
    assert wrong.returncode == 2 and "invalid choice: 'perhaps'" in wrong.stderr


# --- the labelled cases ---------------------------------------------------------------------------


def test_cases_are_named_by_sha256_within_their_cap_and_retention(tmp_path):
    store = cases.CaseStore(tmp_path / "cases", max_bytes=3 * 2**10, keep_days=30)
    kept = [store.keep(b"\xff\xd8\xff" + bytes([i]) * 1000) for i in range(3)]
    assert [p.suffix for p in kept] == [".jpg"] * 3 and kept[0].stem == hashlib.sha256(kept[0].read_bytes()).hexdigest()
    old = time.time() - 40 * 86400
    os.utime(kept[1], (old, old))
    store.keep(b"\x89PNG" + b"x" * 500)  # past the retention: kept[1] goes; within the cap: the rest stay
    assert not kept[1].exists() and kept[0].exists() and kept[2].exists()
    store.keep(b"\x89PNG" + b"y" * 1500)  # over the cap: the oldest goes first
    assert not kept[0].exists() and sum(p.stat().st_size for p in store.files().values()) <= 3 * 2**10
    with pytest.raises(ValueError, match="cap"):
        store.keep(b"z" * 4000)
    assert cases.suffix_of(FAKE.read_bytes()) == ".jpg" and cases.suffix_of(b"RIFF\0\0\0\0WEBPVP8 ") == ".webp"


def test_export_labelled_writes_a_training_root_that_training_reads(engine, tmp_path):
    from training.data import discover, read_groups

    store = cases.CaseStore(tmp_path / "cases")
    files = {path: store.keep(path.read_bytes()) for path in (REAL, FAKE)}
    unlabelled = store.keep(b"\x89PNG not labelled")
    digests = [p.stem for p in files.values()]
    real_id, fake_id = predicted(engine, [0.3, 0.7], sha256s=digests)
    labels.add_label(engine, real_id, "fake")
    labels.add_label(engine, real_id, "real", note="second thoughts: the latest counts")
    labels.add_label(engine, fake_id, "fake")
    root = tmp_path / "reviewed"
    (root / "fake").mkdir(parents=True)
    (root / "fake" / "stale.jpg").write_bytes(b"from an earlier export")
    assert cases.export_labelled(engine, store, root) == {"real": 1, "fake": 1, "unlabelled": 1, "not_an_image": 0}
    assert (root / "real" / f"{digests[0]}.jpg").read_bytes() == REAL.read_bytes() and not (root / "fake" / "stale.jpg").exists()
    assert read_groups(root) == {root / "real" / f"{digests[0]}.jpg": digests[0], root / "fake" / f"{digests[1]}.jpg": digests[1]}
    found = discover(root)
    assert sorted((s.path.name, s.label) for split in found.values() for s in split) == sorted([(f"{digests[1]}.jpg", 1), (f"{digests[0]}.jpg", 0)])
    assert unlabelled.exists()


# --- quality and drift ----------------------------------------------------------------------------


def labelled_traffic(engine, rng, n=200, version="1.0", shift=0.0):
    """n answers whose truth P(fake) separates (AUC well above chance), labelled."""
    truth = rng.integers(0, 2, n)
    p = np.clip(0.25 + 0.5 * truth + rng.normal(shift, 0.18, n), 0.001, 0.999)
    ids = predicted(engine, p, version=version)
    for request_id, t in zip(ids, truth):
        labels.add_label(engine, request_id, "fake" if t else "real")
    return truth, p


def test_quality_per_version_matches_sklearn_and_drift_follows_the_traffic(engine, tmp_path):
    rng = np.random.default_rng(7)
    truth, p = labelled_traffic(engine, rng, version="1.0")
    truth2, p2 = labelled_traffic(engine, rng, n=120, version="2.0", shift=0.05)
    predicted(engine, [0.9, 0.95], created_at=datetime.now(timezone.utc) - timedelta(days=3))  # answered, not labelled
    predicted(engine, [0.99] * 5, face=False)  # no face, no verdict: not in the P(fake) distribution or the drift
    meta = json.loads(with_reference(tmp_path, np.concatenate([p, p2])).read_text())
    report = quality.quality_report(engine, None, meta, "weights.json")
    one, two = report["versions"]
    assert (one["version"], one["labelled"], two["labelled"], report["answered"], report["labelled"]) == ("1.0", 200, 120, 322, 320)
    assert one["roc_auc"] == pytest.approx(roc_auc_score(truth, p), abs=1e-4)
    tied = np.array([0.2, 0.5, 0.5, 0.5, 0.9, 0.1])
    tied_truth = np.array([0, 1, 0, 1, 1, 0])
    assert quality.roc_auc(tied_truth, tied) == pytest.approx(roc_auc_score(tied_truth, tied))
    called = p >= 0.5
    assert one["precision"] == pytest.approx((called & (truth == 1)).sum() / called.sum(), abs=1e-4)
    assert one["recall"] == pytest.approx((called & (truth == 1)).sum() / truth.sum(), abs=1e-4)
    assert sum(t["n"] for t in one["reliability"]) == 200 and one["thresholds"] == [0.5]
    assert [d["n"] for d in report["days"]] == [2, 320] and report["days"][0]["called_fake"] == 1.0
    assert report["drift"]["psi"] < 0.05 and report["drift"]["level"] == "stable"
    shifted = quality.quality_report(engine, None, json.loads(with_reference(tmp_path, rng.uniform(0, 0.2, 500)).read_text()), "w")
    assert shifted["drift"]["psi"] > drift.PSI_LARGE and shifted["drift"]["level"] == "large"
    recent = quality.quality_report(engine, records_query.parse_time("1d"), meta, "w")
    assert recent["answered"] == 320 and len(recent["days"]) == 1
    assert quality.check_limits(report, max_psi=0.25, min_auc=0.5) == ([], [])
    crossed, _ = quality.check_limits(shifted, max_psi=0.25, min_auc=0.999)
    assert len(crossed) == 3 and crossed[0].startswith("drift: PSI")


def test_quality_says_when_the_reference_is_missing(engine):
    predicted(engine, [0.2, 0.8])
    report = quality.quality_report(engine, None, {"threshold": 0.5}, "weights/default.json")
    assert report["drift"]["psi"] is None and "--reference-only" in report["drift"]["missing"]
    assert report["versions"] == [] and report["labelled"] == 0
    crossed, unchecked = quality.check_limits(report, max_psi=0.25, min_auc=0.8)
    assert crossed == [] and len(unchecked) == 2 and unchecked[0].startswith("drift not checked")


def test_the_quality_cli_reports_plots_and_exits_by_its_limits(sqlite_engine, tmp_path):
    url = sqlite_engine.url_text
    rng = np.random.default_rng(3)
    _, p = labelled_traffic(sqlite_engine, rng)
    weights = with_reference(tmp_path, p)
    plot = tmp_path / "quality.png"
    run = lambda *extra: subprocess.run([*CLI, "quality", "--url", url, "--since", "7", *extra], cwd=ROOT, capture_output=True, text=True)  # noqa: E731
    ok = run("--weights", str(weights), "--plot", str(plot), "--max-psi", "0.25", "--min-auc", "0.7")
    assert ok.returncode == 0, ok.stderr
    assert "200 answers, 200 labelled" in ok.stdout and "drift: PSI" in ok.stdout and "ALERT" not in ok.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    alert = run("--weights", str(weights), "--min-auc", "0.999", "--json")
    assert alert.returncode == 3
    assert json.loads(alert.stdout)["alerts"][0].startswith(f"{MODEL} 1.0: ROC AUC")
    missing = run("--weights", str(tmp_path / "nothing.json"), "--max-psi", "0.25")
    assert missing.returncode == 4 and "drift: not measured: no served weights' metadata" in missing.stdout
    plain = weights.with_name("plain.json")
    plain.write_text('{"threshold": 0.5}')
    assert "--reference-only" in run("--weights", str(plain)).stdout and run("--weights", str(plain)).returncode == 0


def test_drift_statistic():
    assert drift.psi([10, 20, 30, 40, 0, 0, 0, 0, 0, 0], [1, 2, 3, 4, 0, 0, 0, 0, 0, 0]) == pytest.approx(0.0)
    assert drift.psi([100] + [0] * 9, [0] * 9 + [100]) > 10
    assert drift.histogram([0.0, 0.05, 0.1, 0.999, 1.0]) == [2, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    ref = drift.reference([0.1, 0.2, 0.9])
    assert ref["n"] == 3 and len(ref["edges"]) == drift.BINS + 1 and ref["split"] == "val"
