"""The report builder and the compare command, on a summary recorded by a real benchmark run."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from benchmarks import compare, report

RECORDED = Path(__file__).resolve().parents[1] / "benchmarks" / "testdata" / "recorded_summary.json"


def _run_dir(tmp_path: Path, summary: dict, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_report_renders_tables_csvs_and_plots(tmp_path):
    summary = json.loads(RECORDED.read_text())
    run = _run_dir(tmp_path, summary, "run")
    text = report.build(run).read_text()

    for heading in ("## Machine", "## Model only (no HTTP)", "## Preprocessing per image",
                    "## End to end through TorchServe and the plain server (Locust)", "### Speed-up over the naive baseline",
                    "### Server-side split", "### Host resources"):
        assert heading in text, heading
    assert summary["command"] in text
    assert summary["machine"]["cpu"] in text

    # every load row is in the table and in load.csv, with its measured requests/s
    rows = summary["load"]["results"]
    with (run / "load.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    for written, row in zip(table, rows):
        assert float(written["rps"]) == row["rps"]
        assert int(written["users"]) == row["users"]
    with (run / "model.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(summary["model"]["results"])

    # speed-ups are side-by-side ratios against the baseline row at the same number of users
    baseline = {r["users"]: r for r in rows if r["baseline"]}
    ups = report.speedups(summary)
    assert ups and len(ups) == sum(1 for r in rows if not r["baseline"] and r["users"] in baseline)
    for up in ups:
        assert up["rps_ratio"] == up["rps"] / baseline[up["users"]]["rps"]
        assert f"{up['rps_ratio']:.2f}x" in text

    for name in report.PLOTS.values():
        width, height = _png_size(run / name)
        assert width > 300 and height > 200
        assert f"]({name})" in text


def test_report_states_gpu_targets_for_a_gpu_run(tmp_path):
    summary = json.loads(RECORDED.read_text())
    summary["device"] = "cuda (NVIDIA H100 80GB HBM3)"
    for r in summary["model"]["results"]:
        r["batch"] = 256 if r["batch"] != 1 else 1
    for r in summary["load"]["results"]:
        r["gpu"] = [{"index": 0, "util_percent": 35.0, "memory_mib": 2048.0}]
    run = _run_dir(tmp_path, summary, "gpu")
    text = report.build(run).read_text()
    assert "GPU 0 was 35 % busy" in text
    with (run / "load.csv").open() as f:
        assert {row["gpu0_util_percent"] for row in csv.DictReader(f)} == {"35.0"}
    section = text.split("## GPU targets", 1)[1].split("##", 1)[0]
    assert "model images/s, batch 256" in section
    assert "x of target" in section  # a CPU-sized result is far from the H100 aims
    assert "end-to-end requests/s, 64 users" in section


def test_compare_two_runs(tmp_path):
    first = json.loads(RECORDED.read_text())
    second = copy.deepcopy(first)
    for r in second["load"]["results"]:
        r["rps"] *= 2
    for r in second["model"]["results"]:
        r["images_per_s"] *= 4
    a, b = _run_dir(tmp_path, first, "before"), _run_dir(tmp_path, second, "after")
    out = compare.compare([a, b / "summary.json"], tmp_path / "cmp")
    text = out.read_text()
    assert "req/s before" in text and "req/s after" in text
    load_part = text.split("## End to end", 1)[1]
    model_part = text.split("## Model only", 1)[1].split("## End to end", 1)[0]
    assert load_part.count("2.00x") == len(first["load"]["results"])
    assert model_part.count("4.00x") == len(first["model"]["results"])
    _png_size(tmp_path / "cmp" / "compare.png")


def test_compare_cli_rejects_a_single_run(tmp_path):
    run = _run_dir(tmp_path, json.loads(RECORDED.read_text()), "only")
    with pytest.raises(SystemExit) as exit_info:
        compare.main([str(run)])
    assert exit_info.value.code == 2
