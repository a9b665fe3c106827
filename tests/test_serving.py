"""The detector behind a real TorchServe (session server from conftest): contract, batching,
per-request errors, explanations, metrics, auth, and a self-contained archive."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml
from PIL import Image

from conftest import MODEL, SESSION_BATCH_SIZE
from runtime.decoding import register_image_formats

pytestmark = pytest.mark.integration
register_image_formats()  # PIL writes HEIC too once pillow-heif's plugin is registered


def burst(server, bodies: list[bytes], workers: int = 12) -> list[requests.Response]:
    """All bodies at once from ``workers`` threads, so they queue and TorchServe batches them."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda body: server.predict(MODEL, body), bodies))


def test_answer_schema_on_a_real_face(torchserve, astronaut_jpeg):
    response = torchserve.predict(MODEL, astronaut_jpeg)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["label"] in ("real", "fake")
    assert answer["band"] in ("likely_real", "uncertain", "likely_fake")
    assert 0.0 <= answer["fake_probability"] <= 1.0
    assert answer["label"] == ("fake" if answer["fake_probability"] >= answer["threshold"] else "real")
    x1, y1, x2, y2 = answer["face"]["box"]
    # the astronaut's face is in the upper middle of the 512x512 photo
    assert 100 < (x1 + x2) / 2 < 350 and 40 < (y1 + y2) / 2 < 250
    assert answer["face"]["score"] > 0.8
    assert len(answer["faces"]) >= 1 and answer["faces"][0]["box"] == answer["face"]["box"]
    assert answer["faces"][0]["fake_probability"] == answer["fake_probability"]
    assert answer["model"]["name"] == MODEL and answer["model"]["backend"] == "eager"
    assert answer["model"]["version"]
    assert "warning" not in answer


def test_no_face_gets_no_verdict_on_a_face(torchserve):
    buffer = io.BytesIO()
    Image.new("RGB", (200, 150), (90, 140, 200)).save(buffer, format="PNG")
    answer = torchserve.predict(MODEL, buffer.getvalue()).json()
    assert answer["face"] is None and answer["faces"] == []
    assert "no face" in answer["warning"]
    assert answer["label"] == answer["band"] == "no_face" and 0 <= answer["fake_probability"] <= 1


def test_three_encodings_give_the_same_answer(torchserve, astronaut_jpeg):
    raw = torchserve.predict(MODEL, astronaut_jpeg)
    multipart = torchserve.predict(MODEL, files={"image": ("face.jpg", astronaut_jpeg, "image/jpeg")})
    as_json = torchserve.predict(MODEL, json={"image": base64.b64encode(astronaut_jpeg).decode()})
    answers = [r.json() for r in (raw, multipart, as_json)]
    assert [r.status_code for r in (raw, multipart, as_json)] == [200, 200, 200]
    assert len({a["fake_probability"] for a in answers}) == 1
    assert len({json.dumps(a["face"]) for a in answers}) == 1


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP", "TIFF", "GIF", "HEIF", "AVIF"])
def test_other_formats_are_served(torchserve, astronaut_jpeg, fmt):
    buffer = io.BytesIO()
    Image.open(io.BytesIO(astronaut_jpeg)).save(buffer, format=fmt)
    response = torchserve.predict(MODEL, buffer.getvalue())
    assert response.status_code == 200, response.text
    assert response.json()["face"] is not None


def test_provenance_is_answered_beside_the_verdict(torchserve, astronaut_jpeg):
    """A C2PA-signed AI-generated JPEG reports its claim, and the same file with its pixels changed
    after signing reports it invalid, each beside the pixel verdict, which the claim never moves."""
    from provenance_files import GENERATOR, SIGNER, c2pa_signed, pixels_changed_after_signing

    signed = c2pa_signed(astronaut_jpeg)
    plain, claimed, tampered = (torchserve.predict(MODEL, body, headers={"Content-Type": "image/jpeg"}).json()
                                for body in (astronaut_jpeg, signed, pixels_changed_after_signing(signed)))  # fmt: skip
    assert (claimed["label"], claimed["fake_probability"], claimed["face"]) == (plain["label"], plain["fake_probability"], plain["face"])
    c2pa = claimed["provenance"]["c2pa"]
    assert (c2pa["validation"], c2pa["claim_generator"], c2pa["signer"]["name"]) == ("valid", f"{GENERATOR} 1.0", SIGNER)
    assert c2pa["digital_source_types"] == ["trainedAlgorithmicMedia"] and c2pa["trusted"] is False
    assert claimed["provenance"]["declared"] == "ai_generated"
    assert claimed["provenance"]["agrees_with_model"] is (plain["label"] == "fake")
    assert tampered["label"] in ("real", "fake") and tampered["provenance"]["c2pa"]["validation"] == "invalid"
    assert "assertion.dataHash.mismatch" in tampered["provenance"]["c2pa"]["failures"]
    assert plain["provenance"] == {"declared": "none", "agrees_with_model": None, "declarations": [],
                                   "c2pa": {"present": False}, "metadata": {}}  # fmt: skip


def test_concurrent_requests_are_batched(torchserve, astronaut_jpeg):
    responses = burst(torchserve, [astronaut_jpeg] * 16)
    assert all(r.status_code == 200 for r in responses)
    sizes = [r.json()["batch_size"] for r in responses]
    assert max(sizes) > 1, f"no request shared a forward pass: {sizes}"
    assert max(sizes) <= SESSION_BATCH_SIZE
    # batched or not, the same image gets the same probability
    assert max(r.json()["fake_probability"] for r in responses) - min(r.json()["fake_probability"] for r in responses) < 1e-4


@pytest.mark.parametrize(
    "bad, status, code",
    [
        (b"", 400, "empty_body"),
        (b"this is not an image", 415, "not_an_image"),
        ("truncated", 422, "corrupt_image"),
        ("tiny", 422, "image_too_small"),
    ],
)
def test_bad_image_in_a_burst_fails_alone(torchserve, astronaut_jpeg, bad, status, code):
    if bad == "truncated":
        bad = astronaut_jpeg[: len(astronaut_jpeg) // 3]
    elif bad == "tiny":
        buffer = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buffer, format="PNG")
        bad = buffer.getvalue()
    single = torchserve.predict(MODEL, astronaut_jpeg).json()["fake_probability"]
    bodies = [astronaut_jpeg] * 5 + [bad] + [astronaut_jpeg] * 5
    responses = burst(torchserve, bodies)
    bad_response = responses[5]
    assert bad_response.status_code == status, bad_response.text
    assert bad_response.json()["error"] == code and bad_response.json()["message"]
    good = [r for i, r in enumerate(responses) if i != 5]
    assert all(r.status_code == 200 for r in good), [r.text for r in good if r.status_code != 200]
    assert all(abs(r.json()["fake_probability"] - single) < 1e-4 for r in good)
    assert max(r.json()["batch_size"] for r in good) > 1, "the burst was not batched"
    # the worker survived: the next request is answered
    assert torchserve.predict(MODEL, astronaut_jpeg).status_code == 200


@pytest.mark.parametrize(
    "kwargs, status, code",
    [
        ({"json": {"image": "not base64 ***"}}, 400, "bad_base64"),
        ({"json": {"picture": "x"}}, 400, "missing_image"),
        ({"data": b"{broken", "headers": {"Content-Type": "application/json"}}, 400, "bad_json"),
    ],
)
def test_bad_json_bodies(torchserve, kwargs, status, code):
    response = torchserve.predict(MODEL, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code


def test_explanation_png_has_the_crop_size(torchserve, astronaut_jpeg, weights_path):
    from runtime.weights import load_metadata

    size = load_metadata(weights_path)["preprocessing"]["input_size"]
    response = torchserve.explain(MODEL, astronaut_jpeg)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["label"] in ("real", "fake") and answer["face"] is not None
    png = Image.open(io.BytesIO(base64.b64decode(answer["explanation"]["heatmap_png"])))
    assert png.format == "PNG" and png.size == (size, size)
    assert answer["explanation"]["method"] == "grad-cam"


def test_metrics_endpoint_shows_the_handler_metrics(torchserve, astronaut_jpeg):
    assert torchserve.predict(MODEL, astronaut_jpeg).status_code == 200
    assert torchserve.predict(MODEL, b"not an image").status_code == 415
    text = torchserve.metrics()
    for name in ("DeepfakePreprocessTime", "DeepfakeInferenceTime", "DeepfakePostprocessTime", "DeepfakeBatchSize"):
        assert f"\n{name}{{" in text, name
    assert "DeepfakeFacesPerImage_bucket{" in text
    errors = [line for line in text.splitlines() if line.startswith("DeepfakeErrors{")]
    assert any('kind="not_an_image"' in line for line in errors), errors


def refused_for_the_key(response: requests.Response) -> bool:
    """TorchServe 0.12's refusal of a missing or wrong token: HTTP 400 (not 401), its InvalidKeyException
    (a ModelException, which the frontend's HttpRequestHandler answers with BAD_REQUEST)."""
    return response.status_code == 400 and response.json()["type"] == "InvalidKeyException"


def test_token_auth_refuses_requests_without_the_key(torchserve, astronaut_jpeg):
    url = f"{torchserve.inference_url}/predictions/{MODEL}"
    assert refused_for_the_key(requests.post(url, data=astronaut_jpeg, timeout=30))
    wrong = {"Authorization": "Bearer not-the-key"}
    assert refused_for_the_key(requests.post(url, data=astronaut_jpeg, headers=wrong, timeout=30))
    # management needs its own key: the inference key does not open it
    models = f"{torchserve.management_url}/models"
    assert refused_for_the_key(requests.get(models, timeout=30))
    assert refused_for_the_key(requests.get(models, headers=torchserve.headers("inference"), timeout=30))
    assert torchserve.management("GET", "/models").status_code == 200


def test_archive_is_self_contained(model_store):
    from export.archive import verify

    mar = model_store / f"{MODEL}.mar"
    verify(mar)  # imports resolve inside the extracted archive, in an isolated interpreter
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        config = yaml.safe_load(archive.read("model-config.yaml"))
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
    assert {
        "deepfake_handler.py",
        "runtime/preprocessing.py",
        "runtime/decoding.py",
        "runtime/detector.py",
        "runtime/backends.py",
        "runtime/model.py",
        "runtime/weights.py",
        "model.safetensors",
        "model.json",
        "index_to_name.json",
        "requirements.txt",
        "model-config.yaml",
    } <= names
    assert config["batchSize"] == SESSION_BATCH_SIZE and config["handler"]["backend"] == "eager"
    assert manifest["model"]["handler"] == "deepfake_handler.py"
    # the runtime and the handler only: no training, export or benchmark code, no server control
    code = {n for n in names if n.endswith(".py")}
    packages = {n.split("/")[0] for n in code if "/" in n}
    assert packages == {"runtime", "handler"}, packages
    assert {n for n in code if n.startswith("handler/")} == {"handler/__init__.py", "handler/payload.py", "handler/gradcam.py", "handler/video.py",
                                                            "handler/records.py", "handler/records_store.py", "handler/records_settings.py",
                                                            "handler/records_query.py", "handler/spool.py", "handler/provenance.py",
                                                            "handler/provenance_metadata.py", "handler/provenance_c2pa.py",
                                                            "handler/provenance_declared.py"}  # fmt: skip


def test_client_folder_to_csv_and_explanation_png(torchserve, astronaut_jpeg, tmp_path, weights_path):
    import csv

    from provenance_files import png_with_parameters

    from handler.client import main as client
    from runtime.weights import load_metadata

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "face.jpg").write_bytes(astronaut_jpeg)
    Image.open(io.BytesIO(astronaut_jpeg)).save(folder / "face.heic")
    (folder / "generated.png").write_bytes(png_with_parameters(Image.open(io.BytesIO(astronaut_jpeg)), "a face, Steps: 20"))
    (folder / "broken.jpg").write_bytes(b"nope")
    # --token=KEY: a key may begin with "-", which argparse would take for an option
    common = ["--url", torchserve.inference_url, "--model", MODEL, f"--token={torchserve.key('inference')}"]

    out = tmp_path / "verdicts.csv"
    assert client([str(folder), "--csv", str(out), "-c", "3", *common]) == 1  # one image failed
    rows = {Path(row["path"]).name: row for row in csv.DictReader(out.open())}
    assert rows["broken.jpg"]["status"] == "415" and rows["broken.jpg"]["error"] == "not_an_image"
    assert rows["face.jpg"]["status"] == rows["face.heic"]["status"] == rows["generated.png"]["status"] == "200"
    assert rows["face.jpg"]["label"] in ("real", "fake") and rows["face.jpg"]["faces"] != "0" and rows["face.heic"]["faces"] != "0"
    assert (rows["face.jpg"]["declared"], rows["generated.png"]["declared"]) == ("none", "ai_generated")

    heatmap = tmp_path / "heat.png"
    assert client([str(folder / "face.jpg"), "--explain", str(heatmap), *common]) == 0
    size = load_metadata(weights_path)["preprocessing"]["input_size"]
    assert Image.open(heatmap).size == (size, size)


def test_server_cli_starts_and_stops_exactly_its_server(model_store, tmp_path):
    import psutil

    from handler.server import STATE_FILE, TorchServe
    from handler.tsclient import probe_image
    from handler.server import main as server_cli

    run_dir = tmp_path / "serve"
    server_cli(["start", "--free-ports", "--run-dir", str(run_dir), "--model-store", str(model_store), "--models", f"{MODEL}={MODEL}.mar"])
    server = TorchServe.attach(run_dir)
    try:
        assert server.alive()
        frontend = psutil.Process(server.pid)
        workers = frontend.children(recursive=True)
        assert workers, "no worker process under the frontend"
        assert server.predict(MODEL, probe_image()).status_code == 200
    finally:
        server_cli(["stop", "--run-dir", str(run_dir)])
    _, still_running = psutil.wait_procs([frontend, *workers], timeout=0)
    assert not [p for p in still_running if p.status() != psutil.STATUS_ZOMBIE]
    assert not (run_dir / STATE_FILE).exists()

