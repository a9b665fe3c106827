"""Distributed load: two Locust worker processes driven by a master against a real TorchServe, and
the report saying how many generators ran and which one ran out of CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks.report import build
from benchmarks.serverstats import generator_summary

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def test_two_locust_workers_load_a_real_torchserve_and_the_report_counts_them(torchserve, tmp_path):
    profile = {
        "name": "generators",
        "images": str(ROOT / "examples"),
        "model_store": str(torchserve.model_store),
        "load": {"backends": ["eager"], "baseline": {"backend": "eager", "batch_size": 1, "max_batch_delay": 0},
                 "users": [4], "plain": False, "warmup_s": 2, "window_s": 3, "min_windows": 2, "max_windows": 2,
                 "tolerance": 1.0, "sample_interval_s": 0.5, "max_minutes": 5},
    }
    profile_path = tmp_path / "profile.yaml"
    profile_path.write_text(yaml.safe_dump(profile))
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "benchmarks.run", "--profile", str(profile_path), "--only", "load",
                    "--attach", str(torchserve.run_dir), "--processes", "2", "--out", str(out)],
                   cwd=ROOT, check=True, timeout=600)

    summary = json.loads((out / "summary.json").read_text())
    (level,) = summary["load"]["results"]
    assert level["failures"] == 0, level["failure_examples"]
    assert level["requests"] > 0 and level["rps"] > 0
    lat = level["latency_ms"]  # percentiles over the answers the workers reported
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert level["metrics"]["requests"] > 0  # TorchServe counted the same traffic
    generators = level["generators"]
    assert generators["count"] == 2 and len(generators["cpu_percent"]) == 2
    assert all(cpu > 0 for cpu in generators["cpu_percent"])  # both workers really sent requests
    lines = (out / "report.md").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if "Locust processes" in line)
    cells = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    column = cells(lines[header]).index("Locust processes")
    assert cells(lines[header + 2])[column] == "2"  # the host table's row for this level

    # a generator at 95 % of its core is named in the report as the limit, not the server
    level["generators"] = generator_summary([95.0, generators["cpu_percent"][1]])
    (out / "summary.json").write_text(json.dumps(summary))
    build(out)
    text = (out / "report.md").read_text()
    assert "Saturated load generator" in text and "(1 saturated)" in text
