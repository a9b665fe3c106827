"""A short real load run: Locust on loopback against a real TorchServe serving the real archive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from export.archive import archive_backend

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def test_short_locust_run_gives_a_well_formed_summary_without_failures(torchserve, tmp_path):
    server = torchserve  # the session's real TorchServe (tests/conftest.py); the run registers its own variants
    profile = {
        "name": "test",
        "images": str(ROOT / "examples"),
        "model_store": str(server.model_store),
        "load": {
            "backends": ["eager"],
            "baseline": {"backend": "eager", "batch_size": 1, "max_batch_delay": 0},
            "batching": [{"batch_size": 4, "max_batch_delay": 50}],
            "layouts": [{"workers": 2, "threads": 1}],
            "users": [3],
            "plain": True,
            "warmup_s": 1,
            "window_s": 2,
            "min_windows": 2,
            "max_windows": 2,
            "tolerance": 1.0,
            "sample_interval_s": 0.5,
            "max_minutes": 5,
        },
    }
    profile_path = tmp_path / "profile.yaml"
    profile_path.write_text(yaml.safe_dump(profile))
    out = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--profile", str(profile_path), "--only", "load",
         "--attach", str(server.run_dir), "--out", str(out)],
        cwd=ROOT, check=True, timeout=600,
    )  # fmt: skip

    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cpu"
    assert summary["machine"]["versions"]["torchserve"] == "0.12.0"
    load = summary["load"]
    assert load["skipped"] == []
    plain = [r for r in load["results"] if r["server"] == "plain"]
    rows = {(r["batch_size"], r["max_batch_delay"]): r for r in load["results"] if r["server"] == "torchserve"}
    assert set(rows) == {(1, 0), (4, 50)}
    assert rows[(1, 0)]["baseline"] and not rows[(4, 50)]["baseline"]
    # each configuration ran with the workers it asked for
    assert [rows[k]["served_workers"] for k in ((1, 0), (4, 50))] == [1, 2]
    # both plain servers ran at the same user level, with the same images, and answered every request:
    # the naive one (eager, one process) and the tuned peer (the served archive's artifact, a process
    # per usable core, one thread each)
    variants = {r["variant"]: r for r in plain}
    assert len(plain) == 2 and set(variants) == {"naive", "tuned"}
    assert (variants["naive"]["workers"], variants["tuned"]["workers"]) == (1, len(os.sched_getaffinity(0)))
    assert variants["tuned"]["threads"] == 1 and variants["tuned"]["backend"] == archive_backend(server.model_store / "deepfake-detector.mar")
    for r in plain:
        assert r["users"] == 3 and r["failures"] == 0 and r["requests"] > 0 and r["metrics"] == {}
    for (batch, delay), r in rows.items():
        assert r["users"] == 3
        assert r["failures"] == 0, r["failure_examples"]
        assert r["requests"] > 0 and r["rps"] > 0
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert r["windows"] == 2 and len(r["window_rps"]) == 2
        # the server really ran the setting asked for
        assert (r["served_batch_size"], r["served_max_batch_delay"]) == (batch, delay)
        # the server-side split comes from TorchServe's own counters
        assert r["metrics"]["requests"] > 0
        assert 0 <= r["metrics"]["queue_ms"] < r["metrics"]["total_ms"]
        assert r["host"]["workers"] >= 1 and r["host"]["frontend_rss_mib"] > 0 and r["host"]["workers_rss_mib"] > 0

    # the run rendered its report, with the naive baseline side by side
    text = (out / "report.md").read_text()
    assert "### Speed-up over the naive baseline" in text
    assert "### TorchServe against the tuned plain server" in text and "### TorchServe against the naive plain server" in text
    assert "Against the tuned plain peer" in text
    assert (out / "throughput_vs_users.png").stat().st_size > 0

    # the benchmark left the server as it found it: its variant models unregistered, their archives gone
    models = server.management("GET", "/models").json()["models"]
    assert not [m["modelName"] for m in models if m["modelName"].startswith("bench-")]
    assert not list(server.model_store.glob("bench-*.mar"))
