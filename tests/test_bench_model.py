"""Model-only and preprocessing benchmarks, run for real on tiny settings."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from benchmarks import model_bench, preprocess_bench
from benchmarks.profile import ModelSettings, from_dict


@pytest.fixture(scope="module")
def weights(weights_path):
    return weights_path  # the committed default weights, or a random-init model (tests/conftest.py)


def _profile(weights, tmp_path, **model):
    settings = {"backends": ["eager", "onnx"], "batch_sizes": {"cpu": [1, 2]}, "warmup_iters": 1,
                "warmup_seconds": 0.0, "min_iters": 2, "min_seconds": 0.0, "max_seconds": 2.0, "threads": 1, **model}
    return from_dict({"weights": str(weights), "export_dir": str(tmp_path / "no-export"), "images": str(tmp_path / "img"),
                      "model": settings, "preprocess": {"images": 2, "repeats": 1}})


def test_model_bench_measures_eager_and_reports_missing_artifacts(weights, tmp_path):
    torch.set_num_threads(1)
    result = model_bench.run(_profile(weights, tmp_path), "cpu", log=lambda _: None)

    rows = {(r["backend"], r["batch"]): r for r in result["results"]}
    assert set(rows) == {("eager", 1), ("eager", 2)}
    for r in rows.values():
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]
        assert r["iters"] >= 2 and r["images_per_s"] > 0
        assert 0 < r["peak_fraction"] < 1.5  # a measured peak is a best case, not a hard ceiling
    # the sizes of the detector run from 0.07 (face) to 7.6 (base) GFLOP per image
    assert 2e7 < result["flops_per_image"] < 20e9
    assert result["peak_flops"]["fp32"] > 1e9
    reasons = {(s["backend"], s["precision"]): s["reason"] for s in result["skipped"]}
    assert "make export" in reasons[("onnx", "fp32")]


def test_warm_up_calls_are_not_timed_and_the_budget_ends_a_run():
    calls = []

    def call():
        calls.append(1)

    settings = ModelSettings(warmup_iters=3, warmup_seconds=0.0, min_iters=5, min_seconds=0.0, max_seconds=60.0)
    times = model_bench.time_calls(call, lambda: None, settings)
    assert len(times) == 5 and len(calls) == 8  # 3 warm-up calls ran, only the 5 after them were timed
    # min_iters out of reach: max_seconds ends the run anyway
    budget = ModelSettings(warmup_iters=0, warmup_seconds=0.0, min_iters=10**9, min_seconds=0.0, max_seconds=0.05)
    assert 0 < len(model_bench.time_calls(call, lambda: None, budget)) < 10**9


def test_flops_are_counted_per_image_and_grow_with_the_pixels(weights):
    """Convolutions cost in proportion to the pixels: twice the side, four times the FLOPs (only the
    small linear head does not grow). A count per batch, or of a model that ignores its input size,
    would not show this."""
    small, large = model_bench.count_flops(weights, 96), model_bench.count_flops(weights, 192)
    assert 3.8 < large / small <= 4.0


def test_fp16_is_not_measured_on_cpu(weights, tmp_path):
    profile = _profile(weights, tmp_path, backends=["eager"], precisions=["fp16"])
    result = model_bench.run(profile, "cpu", log=lambda _: None)
    assert result["results"] == []
    assert result["skipped"] == [{"backend": "eager", "precision": "fp16", "reason": "fp16 is measured on CUDA only"}]


def test_preprocess_bench_times_each_stage_on_a_real_face(weights, tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    folder = tmp_path / "img"
    folder.mkdir()
    face = Image.fromarray(skimage_data.astronaut())
    buffer = io.BytesIO()
    face.save(buffer, format="JPEG", quality=90)
    (folder / "astronaut.jpg").write_bytes(buffer.getvalue())
    face.save(folder / "astronaut.png")

    result = preprocess_bench.run(_profile(weights, tmp_path), log=lambda _: None)
    assert result["images"] == 2
    assert result["faces_per_image"] >= 1  # the astronaut's face is found in both encodings
    stages = result["stages_ms"]
    assert set(stages) == {"decode", "detect", "crop", "total"}
    for stage in ("decode", "detect", "crop"):
        assert 0 < stages[stage]["mean"] < stages["total"]["mean"]
    assert result["images_per_s_one_core"] == pytest.approx(1000 / stages["total"]["mean"])


def test_preprocess_bench_without_images_says_why(weights, tmp_path):
    result = preprocess_bench.run(_profile(weights, tmp_path), log=lambda _: None)
    assert "no images" in result["skipped"]


def test_detector_size_finds_the_same_face_and_says_how_far_the_box_moves(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    from benchmarks import detector_size

    face = Image.fromarray(skimage_data.astronaut())
    face.save(tmp_path / "astronaut.png")
    face.resize((256, 256)).save(tmp_path / "small.png")
    out = tmp_path / "rows.json"
    assert detector_size.main(["--data", str(tmp_path), "--sizes", "512", "128", "--out", str(out)]) == 0
    reference, shrunk = json.loads(out.read_text())
    assert (reference["max_side"], shrunk["max_side"]) == (512, 128)
    assert reference["faces_found"] == shrunk["faces_found"] == 2
    assert reference["median_iou"] == 1.0 and reference["median_centre_shift_px"] == 0.0  # against itself
    assert 0.5 < shrunk["median_iou"] <= 1.0  # the same face, found at a quarter of the pixels
