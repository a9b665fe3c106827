"""The session's real TorchServe serves the exported TorchScript and ONNX archives (built by
`python -m export` with the real torch-model-archiver) and gives the same verdict as the eager
archive, and as the eager model run locally through the same preprocessing, for the same images."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch

from export import cli
from runtime.artifacts import Artifact
from export.pack import archive_name
from runtime.weights import load_weights

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
EAGER = "deepfake-detector"  # the session server's eager model (tests/conftest.py)
SERVED = ("torchscript", "onnx")


@pytest.fixture(scope="module")
def images(astronaut_jpeg) -> dict[str, bytes]:
    """A real face (scikit-image's astronaut) and the first shipped example of each class."""
    found = {"astronaut.jpg": astronaut_jpeg}
    for label in ("real", "fake"):
        for path in sorted((ROOT / "examples" / label).glob("*.jpg"))[:1]:
            found[f"{label}/{path.name}"] = path.read_bytes()
    return found


@pytest.fixture(scope="module")
def exported_models(torchserve, model_store, weights_path, tmp_path_factory):
    """Export the session's weights, pack into the session's model store, register on its server."""
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        code = cli.main([
            "--weights", str(weights_path), "--out", str(tmp_path_factory.mktemp("export")),
            "--formats", ",".join(SERVED), "--max-batch", "8", "--threads", "1",
            "--examples", str(tmp_path_factory.mktemp("no-examples")), "--model-store", str(model_store),
        ])  # fmt: skip
    assert code == 0, log.getvalue()
    names = {backend: f"deepfake-detector-{backend}" for backend in SERVED}
    try:
        for name in names.values():
            torchserve.register(f"{name}.mar", name)
        yield names
    finally:  # free the workers: the server is shared by the whole session
        for name in names.values():
            if name in torchserve.models:
                torchserve.unregister(name)


def local_eager_probability(weights: Path, image: bytes) -> float:
    """The eager model on this machine through the serving preprocessing: the reference verdict."""
    from runtime.decoding import decode_image
    from runtime.preprocessing import FacePreprocessor, PreprocessSettings, to_tensor_batch

    from runtime.weights import Calibration

    model, meta = load_weights(weights)
    preprocessor = FacePreprocessor.from_settings(PreprocessSettings.from_metadata(meta))
    with torch.no_grad():
        logits = model(to_tensor_batch(preprocessor.prepare(decode_image(image)).crops[:1]))
    return float(Calibration.from_metadata(meta).probability(logits)[0])


def test_archive_names_follow_the_store_convention():
    fp32 = Artifact("onnx", "fp32", "model.onnx", "cpu", 192, 1, 8, 1.0, 1)
    fp16 = Artifact("tensorrt", "fp16", "model.fp16.engine", "cuda", 192, 1, 8, 1.0, 1)
    assert archive_name(fp32) == "deepfake-detector-onnx"
    assert archive_name(fp16) == "deepfake-detector-tensorrt-fp16"


@pytest.mark.parametrize("backend", SERVED)
def test_served_archive_gives_the_eager_verdict(torchserve, exported_models, weights_path, images, backend):
    for name, image in images.items():
        eager = torchserve.predict(EAGER, image)
        served = torchserve.predict(exported_models[backend], image)
        assert eager.status_code == 200 and served.status_code == 200, (name, eager.text, served.text)
        eager, served = eager.json(), served.json()
        assert served["model"]["backend"] == backend
        assert served["label"] == eager["label"], name
        assert served["face"] == eager["face"], name  # the same crop went in
        assert abs(served["fake_probability"] - eager["fake_probability"]) <= 1e-4, name
        assert abs(eager["fake_probability"] - local_eager_probability(weights_path, image)) <= 1e-4, name
