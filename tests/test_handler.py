"""Handler stages without a server: the real handler, model and face detector, a fake TorchServe
context that records statuses and metrics. The integration tests (test_serving.py) cover the rest."""

from __future__ import annotations

import base64
import io
import json
import zipfile

import pytest
import torch
from PIL import Image

from conftest import MODEL
from runtime.backends import ARTIFACTS, detect_backend, load_backend
from handler.payload import image_bytes
from runtime.decoding import ImageError


class FakeContext:
    """What the handler uses of ts.context.Context, recording what it is told."""

    def __init__(self, model_dir, config: dict, headers: dict[int, dict] | None = None):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None}
        self.manifest = {"model": {"modelName": MODEL, "modelVersion": "1.0"}}
        self.model_yaml_config = config
        self.model_name = MODEL
        self.headers = headers or {}
        self.statuses: dict[int, tuple[int, str]] = {}
        self.response_headers: dict[int, dict[str, str]] = {}
        self.metrics = self
        self.recorded: list[tuple[str, float, dict]] = []

    def get_request_header(self, idx, key):
        return self.headers.get(idx, {}).get(key)

    def get_all_request_header(self, idx):
        return self.headers.get(idx, {})

    def set_response_header(self, idx, key, value):
        self.response_headers.setdefault(idx, {})[key] = value

    def set_response_status(self, code, phrase, idx):
        self.statuses[idx] = (code, phrase)

    def add_metric(self, name, value, unit, idx, dimensions, metric_type):
        self.recorded.append((name, value, {d.name: d.value for d in dimensions}))

    def metric(self, name) -> list[float]:
        return [value for n, value, _ in self.recorded if n == name]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model_store):
    """The session's eager archive, extracted as TorchServe would."""
    folder = tmp_path_factory.mktemp("extracted")
    with zipfile.ZipFile(model_store / f"{MODEL}.mar") as archive:
        archive.extractall(folder)
    return folder


@pytest.fixture(scope="module")
def handler(model_dir):
    from handler.deepfake_handler import DeepfakeHandler

    instance = DeepfakeHandler()
    instance.initialize(FakeContext(model_dir, {"handler": {"backend": "eager", "threads": 1}}))
    return instance


def png(size=(120, 90), color=(90, 140, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_one_batch_mixed_encodings_and_errors(handler, model_dir, astronaut_jpeg):
    batch = [
        {"body": bytearray(astronaut_jpeg)},
        {"body": bytearray(b"definitely not an image")},
        {"body": bytearray(png())},
        {"body": {"image": base64.b64encode(astronaut_jpeg).decode()}},
        {"file": bytearray(astronaut_jpeg)},
    ]
    context = FakeContext(model_dir, {})
    answers = handler.handle(batch, context)

    assert context.statuses == {1: (415, "the bytes are not an image in a supported format")}
    assert answers[1] == {"error": "not_an_image", "message": "the bytes are not an image in a supported format"}
    # one image sent three ways, one forward pass: one verdict (rows may differ in the last float bit)
    assert answers[0]["label"] == answers[3]["label"] == answers[4]["label"]
    assert answers[3]["fake_probability"] == pytest.approx(answers[0]["fake_probability"], abs=1e-5)
    assert answers[4]["fake_probability"] == pytest.approx(answers[0]["fake_probability"], abs=1e-5)
    assert answers[0]["face"] is not None and answers[2]["face"] is None and "warning" in answers[2]
    # a face gets a band from the weights' validation cut-offs; no face, no verdict on one
    from runtime.verdict import band

    assert answers[0]["band"] == band(answers[0]["fake_probability"], handler.bands) != "no_face"
    assert answers[2]["label"] == answers[2]["band"] == "no_face"
    assert all(a["batch_size"] == 5 for i, a in enumerate(answers) if i != 1)
    # one forward pass for the whole batch: 3 astronaut faces (at least) + 1 centre crop
    assert context.metric("DeepfakeBatchSize") == [5]
    assert len(context.metric("DeepfakeInferenceTime")) == 1
    assert context.metric("DeepfakeBatchCrops")[0] >= 4
    assert context.metric("DeepfakeFacesPerImage")[:4] == [len(answers[0]["faces"]), 0, len(answers[3]["faces"]), len(answers[4]["faces"])]
    assert [dims["kind"] for name, _, dims in context.recorded if name == "DeepfakeErrors"] == ["not_an_image"]


def test_a_refusal_is_one_line_even_when_the_decoder_says_more(handler, model_dir, astronaut_jpeg):
    """libheif ends its messages with a newline; TorchServe's frontend drops a worker whose reason
    phrase holds one, so the answer and the phrase are one line."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(astronaut_jpeg)).save(buffer, "HEIF", quality=60)
    context = FakeContext(model_dir, {})
    (answer,) = handler.handle([{"body": buffer.getvalue()[: len(buffer.getvalue()) // 2]}], context)
    assert answer["error"] == "corrupt_image"
    status, phrase = context.statuses[0]
    assert status == 422 and phrase == answer["message"] and "\n" not in phrase and "\r" not in phrase


def test_batch_of_only_bad_requests(handler, model_dir):
    context = FakeContext(model_dir, {})
    answers = handler.handle([{"body": bytearray()}, {"body": {"image": "***"}}], context)
    assert [a["error"] for a in answers] == ["empty_body", "bad_base64"]
    assert {idx: code for idx, (code, _) in context.statuses.items()} == {0: 400, 1: 400}


def test_explanation_request(handler, model_dir, astronaut_jpeg):
    context = FakeContext(model_dir, {}, headers={0: {"explain": "True"}})
    explained, plain = handler.handle([{"body": astronaut_jpeg}, {"body": astronaut_jpeg}], context)
    heatmap = Image.open(io.BytesIO(base64.b64decode(explained["explanation"]["heatmap_png"])))
    assert heatmap.size == (handler.input_size, handler.input_size)
    assert "explanation" not in plain
    # the same image twice in one forward pass: the same verdict (rows of one batch may differ in the
    # last float bit, which the answer's 6 decimals can show)
    assert explained["label"] == plain["label"]
    assert explained["fake_probability"] == pytest.approx(plain["fake_probability"], abs=1e-5)


def test_provenance_is_beside_the_verdict_and_never_changes_it(handler, model_dir, astronaut_jpeg):
    """The same pixels with and without a C2PA claim get the same verdict; a manifest that does not
    parse is provenance.error beside a verdict; a refused request has no provenance."""
    from provenance_files import c2pa_signed, jpeg_segments, png_with_parameters

    signed = c2pa_signed(astronaut_jpeg)
    start, end = next((s, e) for marker, s, e in jpeg_segments(signed) if marker == 0xEB)
    broken = bytearray(signed)
    broken[start + 400] ^= 0xFF  # inside the manifest store
    face = Image.open(io.BytesIO(astronaut_jpeg))
    context = FakeContext(model_dir, {})
    plain, claimed, unreadable, generated, refused = handler.handle(
        [{"body": astronaut_jpeg}, {"body": signed}, {"body": bytes(broken)}, {"body": png_with_parameters(face, "a face")},
         {"body": b"not an image"}], context)  # fmt: skip
    for answer in (claimed, unreadable):
        assert answer["label"] == plain["label"] and answer["face"] == plain["face"]
        assert answer["fake_probability"] == pytest.approx(plain["fake_probability"], abs=1e-5)
    assert plain["provenance"]["declared"] == "none" and plain["provenance"]["agrees_with_model"] is None
    assert claimed["provenance"]["declared"] == "ai_generated" and claimed["provenance"]["c2pa"]["validation"] == "valid"
    assert claimed["provenance"]["agrees_with_model"] is (plain["label"] == "fake")
    assert ("note" in claimed["provenance"]) is (plain["label"] == "real")
    assert unreadable["provenance"]["error"].startswith("c2pa:") and "label" in unreadable
    assert generated["provenance"]["metadata"]["text"] == {"parameters": "a face"}
    assert refused == {"error": "not_an_image", "message": "the bytes are not an image in a supported format"}
    assert len(context.metric("DeepfakeProvenanceTime")) == 1


def test_provenance_settings_from_the_model_config(tmp_path):
    from handler.provenance import ProvenanceReader
    from provenance_files import throwaway_ca

    (tmp_path / "anchors.pem").write_bytes(throwaway_ca().root_pem)
    reader = ProvenanceReader.from_config({"c2pa_trust_anchors": "anchors.pem", "c2pa_trust_list": "test list",
                                           "provenance_budget_ms": 250}, tmp_path)  # fmt: skip
    assert reader.trust_list == "test list" and reader.budget_s == 0.25
    assert ProvenanceReader.from_config({}, tmp_path).trust_list is None
    assert ProvenanceReader.from_config({"provenance": False}, tmp_path) is None


def test_describe_answers_the_model_description_without_a_prediction(handler, model_dir):
    """GET /models/<name>?customized=true (or gRPC DescribeModel customized=true) sends one empty
    request with the header describe=True; TorchServe puts the answer under customizedMetadata."""
    context = FakeContext(model_dir, {}, headers={0: {"describe": "True"}})
    (description,) = handler.handle([{}], context)
    assert description["backend"] == "eager" and description["architecture"] == "face"
    assert description["threshold"] == handler.threshold
    assert description["preprocessing"]["input_size"] == handler.input_size
    assert description["preprocessing"]["coarse_side"] == 0  # the default (off), which the committed weights predate
    assert description["decoders"]["jpeg"] in ("turbojpeg", "pillow")
    assert set(description["calibration"]) >= {"scale", "shift"}
    assert json.loads(json.dumps(description)) == description
    assert context.statuses == {} and context.recorded == []  # no error counted, no prediction timed


def test_grpc_answers_end_their_stream_and_rest_answers_do_not(handler, model_dir):
    """Over gRPC a request's properties are only its inputs' content types; REST ones carry headers."""
    grpc_request = {"data": {"content-type": ""}}
    rest_request = {"body": {"content-type": ""}, "explain": "False", "url_path": "", "Host": "127.0.0.1"}
    context = FakeContext(model_dir, {}, headers={0: grpc_request, 1: rest_request, 2: grpc_request})
    answers = handler.handle([{"data": png()}, {"body": png()}, {"data": b"not an image"}], context)
    assert [a.get("error") for a in answers] == [None, None, "not_an_image"]
    assert context.response_headers == {0: {"ts_stream_next": "false"}, 2: {"ts_stream_next": "false"}}


def test_payload_encodings(astronaut_jpeg):
    encoded = base64.b64encode(astronaut_jpeg).decode()
    assert image_bytes({"body": bytearray(astronaut_jpeg)}) == astronaut_jpeg
    assert image_bytes({"image": astronaut_jpeg}) == astronaut_jpeg
    assert image_bytes({"upload": astronaut_jpeg}) == astronaut_jpeg  # any single multipart field
    assert image_bytes({"body": {"image": encoded}}) == astronaut_jpeg
    assert image_bytes({"body": {"image": "data:image/jpeg;base64," + encoded}}) == astronaut_jpeg
    for row, code in [
        ({"body": {"image": "@@@"}}, "bad_base64"),
        ({"body": {"img": encoded}}, "missing_image"),
        ({"body": [1, 2]}, "bad_json"),
        ({"a": b"1", "b": b"2"}, "missing_image"),
    ]:
        with pytest.raises(ImageError) as error:
            image_bytes(row)
        assert error.value.code == code
    with pytest.raises(ImageError, match="JSON"):
        image_bytes({"body": bytearray(b"{oops")}, "application/json")


def test_backend_chunks_to_the_exported_batch_range(model_dir):
    torch.manual_seed(0)
    batch = torch.rand(5, 3, 192, 192)
    path = model_dir / ARTIFACTS["eager"]
    whole = load_backend("eager", path, torch.device("cpu"))(batch)
    chunked = load_backend("eager", path, torch.device("cpu"), min_batch=2, max_batch=2)(batch)
    assert whole.shape == (5,) and torch.allclose(whole, chunked, atol=1e-5)
    from runtime.weights import load_weights

    plain, _ = load_weights(path)  # the backend's channels-last layout changes no number that matters
    with torch.inference_mode():
        assert torch.allclose(whole, plain(batch), atol=1e-4)


def test_torchscript_backend_matches_eager(model_dir, tmp_path):
    from runtime.weights import load_weights

    model, _ = load_weights(model_dir / ARTIFACTS["eager"])
    x = torch.rand(2, 3, model.config.input_size, model.config.input_size)
    traced = torch.jit.trace(model, x[:1])
    traced.save(str(tmp_path / ARTIFACTS["torchscript"]))
    assert detect_backend(tmp_path) == "torchscript"
    backend = load_backend("torchscript", tmp_path / ARTIFACTS["torchscript"], torch.device("cpu"))
    with torch.inference_mode():
        assert torch.allclose(backend(x), model(x), atol=1e-4)


def test_bad_backend_requests_fail_clearly(model_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown backend"):
        load_backend("openvino", model_dir / ARTIFACTS["eager"], torch.device("cpu"))
    with pytest.raises(FileNotFoundError):
        load_backend("onnx", tmp_path / "model.onnx", torch.device("cpu"))
    with pytest.raises(ValueError, match="CUDA"):
        load_backend("eager", model_dir / ARTIFACTS["eager"], torch.device("cpu"), precision="fp16")
    with pytest.raises(FileNotFoundError):
        detect_backend(tmp_path)


def test_a_server_fault_is_a_json_500_and_bad_input_keeps_its_4xx(model_dir, astronaut_jpeg):
    from handler.deepfake_handler import DeepfakeHandler

    broken = DeepfakeHandler()
    broken.initialize(FakeContext(model_dir, {}))

    def failing_backend(batch):
        raise RuntimeError("device lost")

    broken.backend.outputs = failing_backend
    context = FakeContext(model_dir, {})
    answers = broken.handle([{"body": astronaut_jpeg}, {"body": b"junk"}], context)
    assert [a["error"] for a in answers] == ["internal_error", "not_an_image"]
    assert [context.statuses[i][0] for i in (0, 1)] == [500, 415]


@pytest.mark.gpu
def test_tensorrt_backend_matches_eager(tmp_path, weights_path):
    """Skips, saying why, where TensorRT or CUDA is missing (always on this CPU machine)."""
    from export.tensorrt import unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(f"TensorRT backend not testable here: {reason}")
    import contextlib

    from export import cli
    from runtime.weights import load_weights

    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["--weights", str(weights_path), "--out", str(tmp_path), "--device", "cuda",
                         "--formats", "tensorrt", "--max-batch", "4"]) == 0  # fmt: skip
    device = torch.device("cuda")
    backend = load_backend("tensorrt", tmp_path / ARTIFACTS["tensorrt"], device, min_batch=1, max_batch=4)
    model, _ = load_weights(weights_path, map_location=device)
    x = torch.rand(6, 3, model.config.input_size, model.config.input_size)
    with torch.inference_mode():
        expected = model(x.to(device)).float().cpu()
    assert torch.allclose(backend(x), expected, atol=1e-3)  # 6 rows: a chunk of 4 and one of 2


def test_onnx_on_a_gpu_worker_without_the_cuda_provider_runs_on_the_cpu_and_says_so(weights_path, tmp_path):
    """A GPU host with the CPU build of onnxruntime: the worker still loads, and its backend reports
    cpu, so the answer's ``model.device`` never claims a GPU it does not use."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider: no fallback to show")
    from runtime.weights import load_weights

    from export.onnx_export import export_onnx

    model, _ = load_weights(weights_path)
    x = torch.rand(2, 3, model.config.input_size, model.config.input_size)
    path = export_onnx(model, x, tmp_path / "model.onnx", min_batch=1, max_batch=8)
    backend = load_backend("onnx", path, torch.device("cuda"))
    assert backend.device.type == "cpu"
    with torch.no_grad():
        torch.testing.assert_close(backend(x), model(x), atol=1e-4, rtol=1e-4)


def test_a_fake_verdict_carries_the_kind_heads_guess_and_a_real_one_does_not(model_dir, tmp_path, astronaut_jpeg):
    import shutil

    from handler.deepfake_handler import KIND_NOTE, DeepfakeHandler
    from runtime.model import build_model
    from runtime.weights import load_metadata, save_weights

    kinds = ["gan", "diffusion", "face_swap", "hand_edit"]
    torch.manual_seed(0)
    model = build_model("face", kind_classes=len(kinds)).eval()
    with torch.no_grad():  # a kind head that clearly prefers 'diffusion'
        model.kind_classifier.bias.copy_(torch.tensor([0.0, 3.0, 0.0, 0.0]))
    answers = {}
    for threshold in (0.0, 1.0):  # every face fake, then every face real
        folder = tmp_path / f"t{threshold}"
        shutil.copytree(model_dir, folder)
        meta = {**load_metadata(model_dir / ARTIFACTS["eager"]), "threshold": threshold, "kinds": kinds}
        meta.pop("architecture", None)  # written anew from the model
        save_weights(model, folder / ARTIFACTS["eager"], meta)  # and its metadata as model.json
        instance = DeepfakeHandler()
        instance.initialize(FakeContext(folder, {"handler": {"backend": "eager", "threads": 1}}))
        answers[threshold] = instance.handle([{"body": bytearray(astronaut_jpeg)}], FakeContext(folder, {}))[0]

    fake = answers[0.0]
    assert fake["label"] == "fake" and set(fake["kind"]) == {"guess", "probabilities", "note"}
    assert list(fake["kind"]["probabilities"]) == kinds and fake["kind"]["guess"] == "diffusion"
    assert sum(fake["kind"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert fake["kind"]["note"] == KIND_NOTE
    assert answers[1.0]["label"] == "real" and "kind" not in answers[1.0]
