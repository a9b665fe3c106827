"""The export step: every CPU-available artifact round-trips and passes parity; the ONNX graph is
FFT-free and runs at batch 1 and 7; parity failures are caught and reported."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from export import cli, parity
from runtime.artifacts import INPUT_NAME, OUTPUT_NAME, read_manifest, write_manifest
from export.onnx_export import check_onnx, fft_ops, op_types
from runtime.backends import onnx_session
from runtime.precision import with_precision
from runtime.preprocessing import PreprocessSettings
from runtime.model import build_model
from runtime.weights import load_weights, save_weights

ROOT = Path(__file__).resolve().parents[1]
CPU_BACKENDS = ("eager", "torchscript", "onnx", "aoti")
MAX_BATCH = 7


@pytest.fixture(scope="module", autouse=True)
def few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def spread_model(seed: int = 0, spread: float | None = 2.0):
    """A random small model whose outputs differ between images: batch-norm statistics estimated on
    generated images (fresh weights give one constant output) and, with ``spread``, the classifier
    scaled so logits spread that much around 0."""
    torch.manual_seed(seed)
    model = build_model("small")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batch
    images = parity.generated_images(model.config.input_size, 12, seed=seed + 1)
    model.train()
    with torch.no_grad():
        model(images)
        model.eval()
        logits = model(images)
        scale = spread / logits.std() if spread else 1.0
        model.classifier.weight.mul_(scale)
        model.classifier.bias.sub_(logits.mean()).mul_(scale)
    return model


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Random weights saved like trained ones, the threshold at the median probability of the
    parity images so that both decisions occur."""
    model = spread_model()
    images = parity.generated_images(model.config.input_size, parity.DEFAULT_IMAGE_COUNT)
    with torch.no_grad():
        threshold = float(torch.sigmoid(model(images)).median())
    return save_weights(model, tmp_path_factory.mktemp("weights") / "model.safetensors", {"threshold": threshold})


@pytest.fixture(scope="module")
def exported(weights, tmp_path_factory):
    """One run of the real export command over every CPU format; (exit code, log, output folder)."""
    out = tmp_path_factory.mktemp("export")
    no_examples = tmp_path_factory.mktemp("no-examples")  # generated parity images: deterministic
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        code = cli.main([
            "--weights", str(weights), "--out", str(out), "--max-batch", str(MAX_BATCH),
            "--examples", str(no_examples), "--threads", "1",
        ])  # fmt: skip
    return code, log.getvalue(), out


@pytest.mark.slow  # exports every CPU format (tens of seconds): make test, not make test-fast
def test_export_command_builds_every_cpu_format_and_passes_parity(exported):
    code, log, out = exported
    assert code == 0, log
    info, artifacts = read_manifest(out)
    assert sorted(a.backend for a in artifacts) == sorted(CPU_BACKENDS)
    for a in artifacts:
        assert (out / a.file).is_file()
        assert (a.precision, a.min_batch, a.max_batch, a.input_name, a.output_name) == (
            "fp32", 1, MAX_BATCH, INPUT_NAME, OUTPUT_NAME)
        assert a.export_seconds >= 0 and a.size_bytes > 1_000_000
    assert (out / "model.json").is_file()

    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] is True
    assert {r["key"] for r in report["results"]} == {f"{b}-fp32" for b in CPU_BACKENDS}
    for result in report["results"]:
        assert [b["batch"] for b in result["batches"]] == [1, MAX_BATCH]
        assert all(b["max_abs_diff"] <= 1e-4 and b["decisions_match"] for b in result["batches"])
    table = (out / "parity.md").read_text()
    assert "| onnx-fp32 | `model.onnx` | 7 |" in table and "Overall: PASS" in table


@pytest.mark.slow  # exports every CPU format (tens of seconds): make test, not make test-fast
def test_export_says_why_fp16_and_tensorrt_are_skipped_on_cpu(exported):
    _, log, _ = exported
    assert "fp16 skipped: FP16 variants are built only on CUDA" in log
    from export.tensorrt import unavailable_reason

    if unavailable_reason():
        assert f"tensorrt skipped: {unavailable_reason()}" in log


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.slow  # exports every CPU format (tens of seconds): make test, not make test-fast
def test_artifact_round_trips_at_an_unseen_batch_size(exported, weights, backend):
    """Loaded back from disk, each artifact matches eager on inputs it never saw, at batch 3, laid
    out channels-last as decoded images are (an AOTInductor package silently misreads that layout
    unless the runner makes it contiguous)."""
    _, _, out = exported
    _, artifacts = read_manifest(out)
    artifact = next(a for a in artifacts if a.backend == backend)
    run = parity.load_runner(artifact, out)
    model, _ = load_weights(weights)
    x = parity.generated_images(192, 3, seed=7).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = torch.sigmoid(model(x))
    got = torch.sigmoid(run(x))
    assert got.shape == (3,) and got.dtype == torch.float32
    assert (got - want).abs().max() <= 1e-4


@pytest.mark.slow  # exports every CPU format (tens of seconds): make test, not make test-fast
def test_onnx_graph_has_no_fft_op_and_runs_in_onnxruntime_at_batch_1_and_7(exported, weights):
    _, _, out = exported
    graph = check_onnx(out / "model.onnx")  # checker, opset >= 18, single file, no FFT op
    assert fft_ops(graph) == set()
    assert "MatMul" in op_types(graph)  # the DFT is matrix products
    assert [i.name for i in graph.graph.input] == [INPUT_NAME]
    assert [o.name for o in graph.graph.output] == [OUTPUT_NAME]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not list(out.glob("*.data"))  # no external data file beside it

    session = onnx_session(out / "model.onnx", threads=1)
    model, _ = load_weights(weights)
    for n in (1, 7):
        x = torch.rand(n, 3, 192, 192, generator=torch.Generator().manual_seed(n))
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        with torch.no_grad():
            want = model(x).numpy()
        assert logits.shape == (n,)
        np.testing.assert_allclose(logits, want, atol=1e-4, rtol=1e-4)


def test_fft_ops_are_detected_in_the_graph_and_in_functions(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 2])
    dft = helper.make_node("DFT", ["x"], ["y"])
    model = helper.make_model(helper.make_graph([dft], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 18)])
    assert fft_ops(model) == {"DFT"}
    path = tmp_path / "dft.onnx"
    onnx.save(model, path)
    with pytest.raises(RuntimeError, match="FFT ops"):
        check_onnx(path)

    function = helper.make_function("local", "spectrum", ["x"], ["y"], [dft], [helper.make_opsetid("", 18)])
    call = helper.make_node("spectrum", ["x"], ["y"], domain="local")
    wrapped = helper.make_model(
        helper.make_graph([call], "g", [x], [y]),
        functions=[function],
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)],
    )
    assert fft_ops(wrapped) == {"DFT"}


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.slow  # exports every CPU format (tens of seconds): make test, not make test-fast
def test_parity_loads_each_artifact_with_the_serving_loader(exported, backend):
    """Parity checks what serving runs: the handler's backend class, with the batch range the
    artifact was exported for (an artifact loaded by an exporter-only path could pass parity and still
    fail in the handler)."""
    from runtime.backends import LOADERS

    _, _, out = exported
    _, artifacts = read_manifest(out)
    artifact = next(a for a in artifacts if a.backend == backend)
    runner = parity.load_runner(artifact, out)
    assert type(runner) is LOADERS[backend]
    assert (runner.min_batch, runner.max_batch) == (artifact.min_batch, artifact.max_batch)


@pytest.mark.slow  # exports every CPU format (tens of seconds): make test, not make test-fast
def test_parity_check_fails_a_wrong_artifact_and_exits_non_zero(exported, tmp_path):
    """A TorchScript file from other weights, under the right name, must fail parity and the command."""
    _, _, out = exported
    info, artifacts = read_manifest(out)
    torchscript = next(a for a in artifacts if a.backend == "torchscript")
    other = spread_model(seed=1)
    with torch.no_grad():
        torch.jit.trace(other, torch.rand(2, 3, 192, 192)).save(str(tmp_path / torchscript.file))
    write_manifest(tmp_path, [torchscript], info)

    assert parity.main(["--export-dir", str(tmp_path), "--examples", str(tmp_path), "--threads", "1"]) == 1
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["passed"] is False
    assert report["results"][0]["batches"][0]["max_abs_diff"] > 1e-4
    assert "**FAIL**" in (tmp_path / "parity.md").read_text()


@pytest.mark.slow  # exports every CPU format (tens of seconds): make test, not make test-fast
def test_parity_reports_a_missing_artifact_as_a_failure_not_a_crash(exported, tmp_path):
    _, _, out = exported
    _, artifacts = read_manifest(out)
    onnx_artifact = next(a for a in artifacts if a.backend == "onnx")
    _, meta = load_weights(out / "model.safetensors")
    images = parity.generated_images(192, 2)
    reference = parity.Reference(parity.reference_runner(out / "model.safetensors"), images)
    result = parity.check_artifact(onnx_artifact, tmp_path, reference, meta["threshold"])
    assert not result.passed and "model.onnx" in result.error


def test_decisions_inside_the_tolerance_band_are_borderline_not_failures():
    want = torch.tensor([0.2, 0.49995, 0.8], dtype=torch.float64)
    got = torch.tensor([0.2, 0.50004, 0.8], dtype=torch.float64)
    result = parity.compare((got, None), (want, None), batch=3, threshold=0.5, tolerance=1e-4)
    assert result.decisions_match and result.borderline == [1]
    flipped = parity.compare((torch.tensor([0.6, 0.5, 0.8], dtype=torch.float64), None), (want, None), 3, 0.5, 1e-4)
    assert not flipped.decisions_match and flipped.mismatched == [0]


@pytest.mark.slow  # exports every CPU format (tens of seconds): make test, not make test-fast
def test_a_kind_head_is_a_second_output_of_every_artifact_and_passes_parity(tmp_path):
    """A face model with a kind-of-fake head: each CPU artifact returns (logits, kind logits), the
    ONNX graph names the second ``kind_logits``, and parity checks the kind probabilities too."""
    from runtime.artifacts import KIND_OUTPUT_NAME

    torch.manual_seed(0)
    model = build_model("face", input_size=64, kind_classes=4).eval()
    with torch.no_grad():  # spread the kind logits, so a wrong output would show
        model.kind_classifier.weight.mul_(20.0)
    weights = save_weights(model, tmp_path / "kinds.safetensors", {"threshold": 0.5, "kinds": ["gan", "diffusion", "face_swap", "hand_edit"]})
    out = tmp_path / "export"
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        code = cli.main(["--weights", str(weights), "--out", str(out), "--max-batch", "4", "--examples", str(tmp_path / "none"),
                         "--threads", "1"])
    assert code == 0, log.getvalue()
    assert [o.name for o in onnx.load(str(out / "model.onnx")).graph.output] == [OUTPUT_NAME, KIND_OUTPUT_NAME]
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] is True and {r["key"] for r in report["results"]} == {f"{b}-fp32" for b in CPU_BACKENDS}
    for result in report["results"]:
        assert all(b["kind_max_abs_diff"] is not None and b["kind_max_abs_diff"] <= 1e-4 for b in result["batches"])
    x = parity.generated_images(64, 3, seed=3)
    with torch.no_grad():
        want_logits, want_kinds = model.forward_with_kinds(x)
    for artifact in read_manifest(out)[1]:
        logits, kinds = parity.load_runner(artifact, out).outputs(x)
        assert kinds.shape == (3, 4) and (kinds - want_kinds).abs().max() <= 1e-3, artifact.key
        assert (logits - want_logits).abs().max() <= 1e-4, artifact.key


def test_parity_images_come_from_the_examples_folder_through_face_preprocessing(tmp_path):
    from skimage import data
    from PIL import Image

    (tmp_path / "real").mkdir()  # like examples/real and examples/fake
    Image.fromarray(data.astronaut()).save(tmp_path / "real" / "astronaut.jpg", quality=95)
    images, source = parity.parity_images(PreprocessSettings(192), tmp_path, count=4)
    assert images.shape == (1, 3, 192, 192) and 0.0 <= images.min() and images.max() <= 1.0
    assert "face crops" in source

    generated, source = parity.parity_images(PreprocessSettings(192), tmp_path / "absent", count=4)
    assert generated.shape == (4, 3, 192, 192) and "generated" in source
    assert torch.equal(generated, parity.generated_images(192, 4))  # deterministic


def test_fp16_variant_keeps_float32_io_and_the_frequency_channel_in_float32():
    model = spread_model(spread=None)  # an unscaled head: FP16 rounding is not amplified
    x = parity.generated_images(192, 2)
    half = with_precision(model, "fp16")
    with torch.no_grad():
        got, want = half(x), model(x)
        frequency = half.model.frequency(x)
        assert torch.equal(frequency, model.frequency(x))
    assert got.dtype == torch.float32 and half.model.classifier.weight.dtype == torch.float16
    assert next(model.parameters()).dtype == torch.float32  # the original is untouched
    assert (torch.sigmoid(got) - torch.sigmoid(want)).abs().max() <= 1e-2


def test_bad_arguments_are_refused(weights, tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["--weights", str(weights), "--min-batch", "8", "--max-batch", "4", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        cli.main(["--weights", str(tmp_path / "absent.safetensors"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        cli.main(["--weights", str(weights), "--formats", "onnx,tflite", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="nothing to export"):
        cli.main(["--weights", str(weights), "--device", "cpu", "--precision", "fp16", "--out", str(tmp_path)])


def test_the_library_raises_export_error_and_takes_no_namespace(weights, tmp_path):
    """export/library.py, which the command and export/serving.py both call: options are a frozen
    dataclass with the command's defaults, and options that cannot work raise ExportError."""
    from export.library import ExportError, ExportOptions, command_line, export_all

    assert not issubclass(ExportError, SystemExit)
    with pytest.raises(ExportError, match="nothing to export"):
        export_all(ExportOptions(weights=weights, device="cpu", precisions=("fp16",), out=tmp_path), log=lambda _: None)
    with pytest.raises(ExportError, match="weights not found"):
        export_all(ExportOptions(weights=tmp_path / "absent.safetensors", out=tmp_path))
    with pytest.raises(ExportError, match="min-batch"):
        export_all(ExportOptions(weights=weights, device="cpu", min_batch=8, max_batch=4, out=tmp_path))
    with pytest.raises(ExportError):
        ExportOptions(formats=("onnx", "tflite"))
    assert cli.parse_options([]) == ExportOptions()
    options = ExportOptions(weights=Path("w.safetensors"), formats=("onnx",), precisions=("fp32",), device="cpu")
    assert cli.parse_options(command_line(options).split()[3:]) == options
    assert command_line(options) == "python -m export --weights w.safetensors --formats onnx --precision fp32 --device cpu"
