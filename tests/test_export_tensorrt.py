"""TensorRT engines (FP32 and FP16) built from the ONNX export, parity-checked on the GPU.

Runs only where the tensorrt package imports and CUDA is available; elsewhere it skips and says why.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from export import cli
from runtime.artifacts import read_manifest
from export.tensorrt import unavailable_reason
from runtime.backends import load_backend
from runtime.model import build_model
from runtime.weights import load_weights, save_weights

REASON = unavailable_reason()
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(REASON is not None, reason=f"TensorRT export not testable here: {REASON}")]
MAX_BATCH = 8


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    weights = save_weights(build_model("small"), tmp_path_factory.mktemp("weights") / "model.safetensors")
    out = tmp_path_factory.mktemp("export")
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        code = cli.main([
            "--weights", str(weights), "--out", str(out), "--device", "cuda", "--formats", "tensorrt",
            "--precision", "fp32,fp16", "--max-batch", str(MAX_BATCH), "--opt-batch", "4",
            "--examples", str(tmp_path_factory.mktemp("no-examples")),
        ])  # fmt: skip
    return code, log.getvalue(), out, weights


def test_tensorrt_engines_build_from_onnx_and_pass_parity(exported):
    code, log, out, _ = exported
    assert code == 0, log
    _, artifacts = read_manifest(out)
    keys = {a.key for a in artifacts}
    assert {"tensorrt-fp32", "tensorrt-fp16", "onnx-fp32", "onnx-fp16"} <= keys  # ONNX is the source
    engine = next(a for a in artifacts if a.key == "tensorrt-fp16")
    assert engine.extra["from"] == "model.fp16.onnx"
    assert engine.extra["profile"] == {"min": 1, "opt": 4, "max": MAX_BATCH}
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] is True
    for result in report["results"]:
        assert [b["batch"] for b in result["batches"]] == [1, MAX_BATCH]


@pytest.mark.parametrize("file", ["model.engine", "model.fp16.engine"])
def test_engine_runs_every_batch_size_of_its_profile(exported, file):
    _, _, out, weights = exported
    precision = "fp32" if file == "model.engine" else "fp16"
    runner = load_backend("tensorrt", out / file, torch.device("cuda"), precision, min_batch=1, max_batch=MAX_BATCH)
    model, _ = load_weights(weights, map_location="cuda")
    tolerance = 1e-4 if file == "model.engine" else 1e-2
    for n in (1, 3, MAX_BATCH):
        x = torch.rand(n, 3, 192, 192, device="cuda")
        with torch.no_grad():
            want = torch.sigmoid(model(x))
        got = torch.sigmoid(runner(x)).to(want.device)
        assert got.shape == (n,) and got.dtype == torch.float32
        assert (got - want).abs().max().item() <= tolerance
