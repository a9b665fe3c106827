"""Model versions on the session's real TorchServe (handler/versions.py): a candidate registered beside
the default answers at /predictions/<model>/<version>; promote and rollback while a bounded request
loop keeps four clients busy: 0 failed requests, and each answer's model.version is the default of the
moment it was sent (or, for a request in flight across a switch, the default of the moment it came
back); the records keep each answer's version."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT
from handler import records_query, records_store, versions

NAME = "deepfake-versioned"  # a model of its own: the session's default model is left alone


def pack(weights_path: Path, model_store: Path, version: str, tmp_path: Path) -> str:
    """The weights as ``<NAME>.v<version>.mar`` in the store (what ``make candidate`` packs)."""
    from export.archive import ServingConfig, build_archive

    serving = ServingConfig(batch_size=4, max_batch_delay=20, min_workers=1, max_workers=1, handler={"threads": 1})
    built = build_archive(weights_path, export_path=tmp_path / version, model_name=NAME, version=version, serving=serving)
    archive = f"{NAME}.v{version}.mar"
    shutil.move(built, model_store / archive)
    return archive


class Loop:
    """Clients sending one request after another until stopped: (sent, received, status, version)."""

    def __init__(self, torchserve, body: bytes, clients: int = 4):
        self.torchserve, self.body, self.answers = torchserve, body, []
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                answer = self.torchserve.predict(NAME, self.body, timeout=120, headers={"Content-Type": "image/jpeg"})
                status, version = answer.status_code, (answer.json().get("model") or {}).get("version")
            except Exception as exc:  # a failed request is a result here, not a crash of the loop
                status, version = type(exc).__name__, None
            with self.lock:
                self.answers.append((sent, time.monotonic(), status, version))

    def count(self) -> int:
        with self.lock:
            return len(self.answers)

    def wait_for(self, more: int, timeout: float = 300) -> None:
        target, deadline = self.count() + more, time.monotonic() + timeout
        while self.count() < target:
            assert time.monotonic() < deadline, f"fewer than {more} answers in {timeout:.0f} s"
            time.sleep(0.1)

    def finish(self) -> list[tuple]:
        self.stop.set()
        for thread in self.threads:
            thread.join(150)
        return list(self.answers)


def default_at(switches: list[tuple], moment: float, first: str) -> set[str]:
    """The versions that may have been the default at ``moment``: during a switch's own call, both."""
    current = {first}
    for started, ended, before, after in switches:
        if moment >= ended:
            current = {after}
        elif moment >= started:
            current = {before, after}
    return current


def test_a_candidate_archive_carries_its_version_under_its_own_name(weights_path, tmp_path):
    """``make candidate``'s packing: export.serving with --version and --archive (eager: no export)."""
    import json
    import zipfile

    from export.serving import build_serving_archive

    store = tmp_path / "store"
    mar, backend, workers, threads = build_serving_archive(weights_path, store, "eager", 1, 1, out=tmp_path / "export", version="3.0",
                                                           archive="deepfake-detector.v3.0.mar", log=lambda line: None)  # fmt: skip
    assert (mar, backend, workers, threads) == (store / "deepfake-detector.v3.0.mar", "eager", 1, 1)
    assert sorted(p.name for p in store.iterdir()) == ["deepfake-detector.v3.0.mar"]
    with zipfile.ZipFile(mar) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
    assert (manifest["model"]["modelName"], manifest["model"]["modelVersion"]) == ("deepfake-detector", "3.0")
    assert len(versions.weights_sha256(mar)) == 64


@pytest.mark.integration
def test_candidate_promote_and_rollback_under_load_fail_no_request(torchserve, model_store, weights_path, astronaut_jpeg, tmp_path):
    first = pack(weights_path, model_store, "1.0", tmp_path)
    torchserve.register(first, NAME, workers=1)
    try:
        with pytest.raises(versions.VersionError, match="no candidate"):
            versions.promote(torchserve, NAME)
        assert versions.next_version(torchserve, NAME) == "2.0"
        second = pack(weights_path, model_store, "2.0", tmp_path)
        assert versions.add_candidate(torchserve, second, NAME) == "2.0"
        listed = {v["version"]: v for v in versions.registered(torchserve, NAME)}
        assert {v: d["default"] for v, d in listed.items()} == {"1.0": True, "2.0": False}
        listed_sha = listed["1.0"]["weights_sha256"]
        assert listed["2.0"]["weights_sha256"] == listed_sha and len(listed_sha) == 64
        direct = torchserve.predict(f"{NAME}/2.0", astronaut_jpeg, headers={"Content-Type": "image/jpeg"})
        assert direct.status_code == 200 and direct.json()["model"]["version"] == "2.0"

        loop, switches = Loop(torchserve, astronaut_jpeg), []
        for action, before, after in ((versions.promote, "1.0", "2.0"), (versions.rollback, "2.0", "1.0"), (versions.promote, "1.0", "2.0")):
            loop.wait_for(12)
            started = time.monotonic()
            assert action(torchserve, NAME) == after
            switches.append((started, time.monotonic(), before, after))
        loop.wait_for(12)
        answers = loop.finish()
        assert [a for a in answers if a[2] != 200] == [], "failed requests"
        wrong = [a for a in answers if a[3] not in default_at(switches, a[0], "1.0") | default_at(switches, a[1], "1.0")]
        assert not wrong, f"answers from a version that was not the default: {wrong[:5]}"
        assert {a[3] for a in answers} == {"1.0", "2.0"}
        assert versions.default_version(torchserve, NAME) == "2.0"
        assert versions.rollback(torchserve, NAME) == "1.0"
        with pytest.raises(versions.VersionError, match="nothing to roll back to"):
            versions.rollback(torchserve, NAME)
        listed = subprocess.run([sys.executable, "-m", "handler.versions", "list", "--run-dir", str(torchserve.run_dir), "--model", NAME],
                                cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()  # fmt: skip
        assert {line.split()[0]: "yes" in line.split() for line in listed[1:]} == {"1.0": True, "2.0": False}
        assert all(line.endswith(listed_sha) for line in listed[1:])

        # every record keeps the version that answered; the predictions that waited for each version were probes: no row
        engine = records_store.open_engine(torchserve.records_url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            kept = {r["request_id"] for r in records_query.query(engine, limit=None, model=NAME)}
            if len(kept) >= len(answers) + 1:
                break
            time.sleep(0.5)
        stored = records_query.query(engine, limit=None, model=NAME)
        assert {r["model_version"] for r in stored} == {"1.0", "2.0"} and len(stored) == len(answers) + 1  # + the direct one
    finally:
        for version in ("2.0", "1.0"):
            torchserve.management("DELETE", f"/models/{NAME}/{version}", timeout=120)
        torchserve.models.pop(NAME, None)
