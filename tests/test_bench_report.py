"""The report builder and the compare command, on a summary recorded by a real benchmark run."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from benchmarks import analysis, compare, records_cost, report

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
    for name in report.VIDEO_PLOTS.values():  # no video phase in this run: no video plots, no dead links
        assert not (run / name).exists() and name not in text


def _video_level(video_users: int, image_users: int, videos_per_s: float, image_p50: float, image_p99: float) -> dict:
    level = {"video_users": video_users, "image_users": image_users}
    if video_users:
        level["video"] = {"users": video_users, "per_s": videos_per_s, "frames_per_s": 32 * videos_per_s,
                          "latency_ms": {"p50": 900.0, "p90": 1500.0, "p99": 2000.0}, "requests": 12, "failures": 0}
    if image_users:
        level["image"] = {"users": image_users, "per_s": 20.0, "frames_per_s": None,
                          "latency_ms": {"p50": image_p50, "p90": image_p99 / 2, "p99": image_p99}, "requests": 400, "failures": 0}
    return level


def _video_summary(levels: list[dict]) -> dict:
    settings = {"backend": "onnx", "batch_size": 4, "max_batch_delay": 10, "workers": 2, "threads": 1, "frames": 32,
                "clip_seconds": 10, "fps": 25, "video_users": [1, 4], "image_users": 4, "mixed_video_users": 1,
                "warmup_s": 3, "seconds": 20}
    return {"device": "cpu", "video": {"backend": "onnx", "settings": settings, "clip_bytes": 107_279,
                                       "clip": {"video": {"size": [256, 256]}, "frames_sampled": 32}, "results": levels}}


def test_video_phase_gets_its_plots(tmp_path):
    summary = _video_summary([_video_level(1, 0, 0.65, 0, 0), _video_level(4, 0, 0.45, 0, 0),
                              _video_level(0, 4, 0, 117.2, 359.2), _video_level(1, 4, 0.5, 163.1, 1824.5)])
    run = _run_dir(tmp_path, summary, "video")
    text = report.build(run).read_text()
    assert "| 1 | 4 | 0.5 | 16.0 |" in text  # the images-beside-videos level in the table
    for name in report.VIDEO_PLOTS.values():
        width, height = _png_size(run / name)
        assert width > 300 and height > 200
        assert f"]({name})" in text
    for name in report.PLOTS.values():  # no load or model phase: none of their plots
        assert not (run / name).exists() and name not in text


def test_video_phase_without_image_levels_links_only_the_rates_plot(tmp_path):
    run = _run_dir(tmp_path, _video_summary([_video_level(1, 0, 0.65, 0, 0), _video_level(4, 0, 0.45, 0, 0)]), "videos-only")
    text = report.build(run).read_text()
    _png_size(run / report.VIDEO_PLOTS["video_rates"])
    assert f"]({report.VIDEO_PLOTS['video_rates']})" in text
    assert not (run / report.VIDEO_PLOTS["video_image_latency"]).exists()
    assert report.VIDEO_PLOTS["video_image_latency"] not in text


def test_records_cost_renders_its_report_and_plot_from_the_summary(tmp_path, capsys):
    window = {"requests": 600, "failures": 0, "seconds": 15.0}
    summary = {
        "command": "python -m benchmarks.records_cost --rounds 2", "backend": "onnx", "workers": 2, "batch": [4, 10],
        "users": 8, "window_s": 15.0, "warmup_s": 4.0, "rounds": 2, "store": "sqlite", "rps_mean": {"off": 41.0, "on": 39.0},
        "cost": 0.0488, "records_written": 1170, "records_lost": 0,
        "windows": {"off": [{**window, "rps": 40.0, "p50_ms": 150.0, "p99_ms": 310.0}, {**window, "rps": 42.0, "p50_ms": 140.0, "p99_ms": 300.0}],
                    "on": [{**window, "rps": 38.0, "p50_ms": 160.0, "p99_ms": 330.0}, {**window, "rps": 40.0, "p50_ms": 150.0, "p99_ms": 320.0}]},
        "recording_cpu": {"rows": 8000, "hot_path_us_per_row": 5.0, "total_cpu_us_per_row": 30.0, "written": 8000, "lost": 0,
                          "batch": 4, "journal_wall_us": {"p50": 180.5, "p90": 260.0, "p99": 910.2}},
        "cores": 2, "cpu_share": 0.00062, "notes": ["an older design of the writer"],
    }  # fmt: skip
    run = _run_dir(tmp_path, summary, "records")
    records_cost.main(["--render", str(run)])  # the CLI's re-render path: nothing is measured
    assert capsys.readouterr().out.strip() == str(run / "report.md")
    text = (run / "report.md").read_text()
    assert summary["command"] in text
    assert "| 1 | 40.0 | 38.0 | 150.0 | 160.0 | 310.0 | 330.0 |" in text and "| 2 | 42.0 | 40.0 | 140.0 | 150.0 | 300.0 | 320.0 |" in text
    assert "cost +4.9 %" in text and "Note: an older design of the writer" in text
    assert "145.0 ms off, 155.0 ms on" in text and "p50 180.5 µs, p90 260.0 µs, p99 910.2 µs** per batch of 4 rows" in text
    width, height = _png_size(run / records_cost.PLOT)
    assert width > 300 and height > 200
    assert f"]({records_cost.PLOT})" in text


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
    second["preprocess"]["stages_ms"]["detect"]["mean"] /= 2  # the stage a change made faster
    a, b = _run_dir(tmp_path, first, "before"), _run_dir(tmp_path, second, "after")
    out = compare.compare([a, b / "summary.json"], tmp_path / "cmp")
    text = out.read_text()
    assert "req/s before" in text and "req/s after" in text
    load_part = text.split("## End to end", 1)[1]
    model_part = text.split("## Model only", 1)[1].split("## End to end", 1)[0]
    stage_part = text.split("## Preprocessing per stage", 1)[1].split("## Model only", 1)[0]
    assert load_part.count("2.00x") == len(first["load"]["results"])
    assert model_part.count("4.00x") == len(first["model"]["results"])
    stage_rows = {row.split("|")[3].strip(): row for row in stage_part.splitlines() if row.startswith("| examples")}
    assert set(stage_rows) == {"decode", "detect", "crop", "total"}
    assert "0.50x" in stage_rows["detect"] and "1.00x" in stage_rows["decode"]
    _png_size(tmp_path / "cmp" / "compare.png")


def test_compare_cli_rejects_a_single_run(tmp_path):
    run = _run_dir(tmp_path, json.loads(RECORDED.read_text()), "only")
    with pytest.raises(SystemExit) as exit_info:
        compare.main([str(run)])
    assert exit_info.value.code == 2


def test_report_states_the_tuned_peer_the_limit_and_full_size_photos(tmp_path):
    """Plain rows of both variants, a photos phase: the headline compares with the tuned peer, says
    where TorchServe loses, states the box's limit from the stage timings and the 12 MP ratio."""
    summary = json.loads(RECORDED.read_text())
    best16 = report.best_load(summary, 16)
    for variant, rps_1, rps_16 in (("naive", 5.0, 9.0), ("tuned", 30.0, 24.0)):  # the tuned peer wins at 1 user
        for users, rps in ((1, rps_1), (16, rps_16)):
            row = copy.deepcopy(best16)
            row.update({"server": "plain", "variant": variant, "users": users, "rps": rps, "backend": "onnx" if variant == "tuned" else "eager",
                        "workers": 2 if variant == "tuned" else 1, "threads": 1 if variant == "tuned" else 2, "metrics": {}})
            summary["load"]["results"].append(row)
    level = lambda s, u, rps, p50: {"set": s, "users": u, "per_s": rps, "latency_ms": {"p50": p50, "p90": p50, "p99": p50}, "failures": 0, "rounds": 2}  # noqa: E731
    summary["photos"] = {"backend": "onnx", "settings": {"batch_size": 4, "max_batch_delay": 10, "workers": 2, "threads": 1,
                                                         "rounds": 2, "warmup_s": 3, "seconds": 15},
                         "skipped": {"12mp-heic": "pillow-heif is not installed here"}, "verdicts": None,
                         "results": [level("256px", 1, 40.0, 25.0), level("12mp-jpeg", 1, 20.0, 45.0),
                                     level("256px", 16, 150.0, 100.0), level("12mp-jpeg", 16, 60.0, 250.0)]}
    text = report.build(_run_dir(tmp_path, summary, "run")).read_text()

    best1 = report.best_load(summary, 1)
    assert f"Against the tuned plain peer (plain FastAPI tuned (onnx, 2 processes x 1 thread)" in text
    assert f"**{best16['rps'] / 24.0:.2f}x** requests/s" in text
    assert "Where TorchServe loses: 1 user against the tuned plain server" in text and f"{best1['rps']:.1f} vs 30.0" in text
    # the limit is built from this run's own stage timings: preprocessing, and the served backend's
    # model time at the batch size nearest the best configuration's (onnx b8 -> the batch-4 row)
    onnx4 = next(r for r in summary["model"]["results"] if (r["backend"], r["batch"]) == ("onnx", 4))
    assert "## The box's end-to-end limit" in text
    assert (f"preprocessing {summary['preprocess']['stages_ms']['total']['mean']:.2f} ms per image on one thread, the onnx "
            f"model {1000 / onnx4['images_per_s']:.2f} ms per image at batch 4") in text
    assert "p50 at 1 user **1.80x** (45 vs 25 ms; target <= 2x), requests/s at 16 users 0.40x" in text
    assert "12mp-heic not measured: pillow-heif is not installed here" in text
    assert _png_size(tmp_path / "run" / report.PHOTO_PLOT)[0] > 300


def _load_row(server: str, users: int, rps: float, p99: float, **config) -> dict:
    return {"server": server, "backend": "onnx", "batch_size": 8, "max_batch_delay": 20, "workers": 2, "threads": 1,
            "users": users, "rps": rps, "latency_ms": {"p50": p99 / 2, "p99": p99}, "failures": 0, **config}


def test_headline_names_the_winner_and_ratio_at_every_load_level():
    """A made-up run: the best TorchServe configuration (onnx b8/d20 2w x 1t) against the best plain
    server at each level, whichever variant that is: the naive one wins at 1 user, TorchServe at 16,
    the tuned one at 32. The eager baseline's 60 req/s at 1 user is not the configuration compared."""
    plain = lambda variant, users, rps, p99: _load_row("plain", users, rps, p99, variant=variant)  # noqa: E731
    baseline = dict(backend="eager", batch_size=1, max_batch_delay=0, workers=1, baseline=True)
    summary = {"load": {"results": [
        _load_row("torchserve", 1, 30.0, 40.0), _load_row("torchserve", 16, 200.0, 100.0), _load_row("torchserve", 32, 210.0, 180.0),
        _load_row("torchserve", 1, 60.0, 20.0, **baseline), _load_row("torchserve", 16, 60.0, 400.0, **baseline),
        plain("naive", 1, 50.0, 25.0), plain("naive", 16, 60.0, 300.0), plain("naive", 32, 58.0, 600.0),
        plain("tuned", 1, 20.0, 60.0), plain("tuned", 16, 190.0, 130.0), plain("tuned", 32, 220.0, 170.0),
    ]}}  # fmt: skip
    levels = {c["users"]: c for c in analysis.level_winners(summary)}
    assert set(levels) == {1, 16, 32}
    assert {c["config"] for c in levels.values()} == {"onnx b8/d20 2w x 1t"}
    expected = {1: ("plain", "naive", 30.0 / 50.0), 16: ("torchserve", "tuned", 200.0 / 190.0), 32: ("plain", "tuned", 210.0 / 220.0)}
    for users, (winner, variant, ratio) in expected.items():
        assert (levels[users]["winner"], levels[users]["plain_variant"]) == (winner, variant)
        assert levels[users]["rps_ratio"] == pytest.approx(ratio)
    assert levels[16]["p99_ms"] == 100.0 and levels[16]["plain_p99_ms"] == 130.0

    text = "\n".join(report.headline(summary))
    assert "TorchServe's best configuration (onnx b8/d20 2w x 1t)" in text
    assert ("  - 1 user: **the naive plain server** wins; TorchServe answers **0.60x** the requests/s of the naive plain "
            "server (30.0 vs 50.0), p99 40 vs 25 ms.") in text
    assert "  - 16 users: **TorchServe** wins; TorchServe answers **1.05x** the requests/s of the tuned plain server (200.0 vs 190.0), p99 100 vs 130 ms." in text
    assert "  - 32 users: **the tuned plain server** wins; TorchServe answers **0.95x** the requests/s of the tuned plain server" in text


def test_the_winners_are_those_of_the_served_configuration_when_the_sweep_measured_it():
    """The served archive's settings (``load.served``) pick the row compared at each level, even
    where another configuration of the sweep had the peak; unmeasured, the best one stands in."""
    served = dict(backend="onnx", batch_size=8, max_batch_delay=2, workers=2, threads=1)
    summary = {"load": {"served": served, "results": [
        _load_row("torchserve", 1, 30.0, 40.0), _load_row("torchserve", 16, 200.0, 100.0),  # b8/d20: the peak
        _load_row("torchserve", 1, 55.0, 25.0, max_batch_delay=2), _load_row("torchserve", 16, 190.0, 110.0, max_batch_delay=2),
        _load_row("plain", 1, 50.0, 30.0, variant="naive"), _load_row("plain", 16, 180.0, 130.0, variant="tuned"),
    ]}}  # fmt: skip
    levels = analysis.level_winners(summary)
    assert [(c["users"], c["config"], c["winner"], c["rps"]) for c in levels] == [
        (1, "onnx b8/d2 2w x 1t", "torchserve", 55.0), (16, "onnx b8/d2 2w x 1t", "torchserve", 190.0)]
    assert "the served configuration, what `make serve` serves (onnx b8/d2 2w x 1t)" in "\n".join(report.headline(summary))

    summary["load"]["served"] = {**served, "max_batch_delay": 5}  # not in the sweep
    assert {c["config"] for c in analysis.level_winners(summary)} == {"onnx b8/d20 2w x 1t"}


def test_report_puts_an_earlier_runs_stages_beside_its_own(tmp_path):
    """``benchmarks.run --before``: the earlier run's stage means beside this one, in the headline
    and as a table under Preprocessing."""
    summary = json.loads(RECORDED.read_text())
    earlier = copy.deepcopy(summary["preprocess"])
    earlier["stages_ms"]["detect"]["mean"] *= 2
    earlier["stages_ms"]["total"]["mean"] += 1.5
    summary["before"] = {"label": "20261207-0608-cpu-quick", "created": "2026-12-07T06:08:00+00:00", "preprocess": earlier}
    text = report.build(_run_dir(tmp_path, summary, "run")).read_text()
    total = summary["preprocess"]["stages_ms"]["total"]["mean"]
    assert f"(before: {total + 1.5:.1f} ms in `20261207-0608-cpu-quick`" in text.split("## Headline", 1)[1].split("##", 1)[0]
    section = text.split("Before and after", 1)[1].split("##", 1)[0]
    detect = next(row for row in section.splitlines() if row.startswith("| examples | decode_image | detect"))
    assert "0.50x" in detect
    assert "Before and after" not in report.build(_run_dir(tmp_path, json.loads(RECORDED.read_text()), "plain")).read_text()


def test_before_takes_an_earlier_run_by_its_folder_or_its_summary(tmp_path):
    from benchmarks.run import before_stages

    summary = json.loads(RECORDED.read_text())
    folder = _run_dir(tmp_path, summary, "20261207-0608-cpu-quick")
    for path in (folder, folder / "summary.json"):
        assert before_stages(path) == {"label": "20261207-0608-cpu-quick", "created": summary.get("created"),
                                       "preprocess": summary["preprocess"]}
