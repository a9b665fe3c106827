"""Hostile-input corpus: every kind of bad or awkward upload, generated here, checked at the decode
level and then through a real TorchServe. Bad inputs get a 4xx with a JSON reason, valid ones a
normal verdict, and the workers neither die nor balloon in memory.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from runtime.decoding import ImageError, decode_image


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    content_type: str = "application/octet-stream"
    valid: bool = False  # True: a normal verdict is expected
    code: str | None = None  # the error code expected in the answer (decode_image's, for raw images)

    @property
    def raw_image(self) -> bool:
        return not self.content_type.startswith(("application/json", "multipart/"))


def astronaut(size: tuple[int, int] | None = None) -> Image.Image:
    """scikit-image's astronaut: a real, public-domain face."""
    from skimage import data

    image = Image.fromarray(data.astronaut())
    return image.resize(size, Image.BILINEAR) if size else image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_with_header(width: int, height: int, idat: bytes) -> bytes:
    """A well-formed PNG (valid CRCs) whose IHDR says width x height, 8-bit greyscale."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def decompression_bomb(side: int = 10_000) -> bytes:
    """A genuine PNG of side x side black pixels: about 100 KB on the wire, 100 MP once decoded."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return png_with_header(side, side, idat)


def declaring(data: bytes, width: int, height: int) -> bytes:
    """An AVIF or HEIF whose ``ispe`` box (the declared image size) is rewritten: a header that lies."""
    at = data.find(b"ispe")
    return data[: at + 8] + struct.pack(">II", width, height) + data[at + 16 :]


def exif_rotated_jpeg() -> tuple[bytes, Image.Image]:
    """(JPEG stored on its side with EXIF orientation 6, the upright image it must decode to)."""
    upright = astronaut().crop((0, 0, 512, 384))  # not square, so a missed rotation shows in the size
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    return encode(stored, "JPEG", quality=95, exif=exif), upright


def no_face_image() -> Image.Image:
    """Smooth coloured noise: photo-like statistics, no face."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((320, 240), Image.BICUBIC)


def json_body(payload) -> bytes:
    return json.dumps(payload).encode()


def multipart(fields: dict) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request."""
    from urllib3.filepost import encode_multipart_formdata

    return encode_multipart_formdata(fields, boundary="hostile-corpus-boundary")


def build_corpus() -> list[Case]:
    face = astronaut()
    jpeg = encode(face, "JPEG", quality=90)
    sos = jpeg.find(b"\xff\xda")  # start of scan: everything before it is header
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("face.jpg", jpeg)
    frames = [face.resize((128, 128)).quantize(64), face.resize((128, 128)).rotate(90).quantize(64)]
    sixteen = Image.fromarray(np.asarray(face.convert("L"), dtype=np.uint16) * 257)  # mode I;16
    rgba = face.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(face.size))
    heic, avif = encode(face, "HEIF", quality=80), encode(face, "AVIF", quality=80)
    return [
        # refused
        Case("empty_body", b"", code="empty_body"),
        Case("plain_text", b"hello, this is not an image\n", "text/plain", code="not_an_image"),
        Case("html", b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>", "text/html",
             code="not_an_image"),
        Case("random_bytes", np.random.default_rng(1).bytes(4096), code="not_an_image"),
        Case("zip", zipped.getvalue(), "application/zip", code="not_an_image"),
        Case("truncated_jpeg", jpeg[: len(jpeg) // 2], "image/jpeg", code="corrupt_image"),
        Case("header_only_jpeg", jpeg[:sos], "image/jpeg", code="corrupt_image"),
        Case("png_claims_100000x100000", png_with_header(100_000, 100_000, zlib.compress(b"\x00" * 64)),
             "image/png", code="image_too_large"),
        Case("decompression_bomb", decompression_bomb(), "image/png", code="image_too_large"),
        Case("unsupported_ico", encode(face.resize((32, 32)), "ICO"), "image/x-icon", code="unsupported_format"),
        Case("heic_claims_7000x7000", declaring(heic, 7000, 7000), "image/heic", code="image_too_large"),
        Case("avif_claims_50000x50000", declaring(avif, 50_000, 50_000), "image/avif", code="image_too_large"),
        Case("truncated_heic", heic[: len(heic) // 2], "image/heic", code="corrupt_image"),
        Case("truncated_avif", avif[: len(avif) // 2], "image/avif", code="corrupt_image"),
        Case("jpeg_xl_codestream", b"\xff\x0a" + bytes(256), "image/jxl", code="unsupported_format"),
        Case("image_1x1", encode(Image.new("RGB", (1, 1), "white"), "PNG"), "image/png", code="image_too_small"),
        Case("binary_declared_as_text", b"\xff\xfe\x00\x81 not utf-8", "text/plain", code="not_an_image"),
        Case("bad_base64", json_body({"image": "!!not base64@@"}), "application/json", code="bad_base64"),
        Case("invalid_json", b'{"image": "abc', "application/json", code="bad_json"),
        Case("json_list", json_body([1, 2, 3]), "application/json", code="bad_json"),
        Case("json_without_image", json_body({"picture": "nothing here"}), "application/json", code="missing_image"),
        Case("json_image_not_string", json_body({"image": 12345}), "application/json", code="missing_image"),
        Case("base64_of_text", json_body({"image": base64.b64encode(b"just text").decode()}), "application/json",
             code="not_an_image"),
        Case("multipart_unknown_fields", *multipart({"a": "x", "b": ("f.bin", jpeg, "image/jpeg")}),
             code="missing_image"),
        Case("multipart_corrupt_image", *multipart({"image": ("face.jpg", jpeg[:sos], "image/jpeg")}),
             code="corrupt_image"),
        # served
        Case("multipart_image", *multipart({"note": "hello", "image": ("face.jpg", jpeg, "image/jpeg")}), valid=True),
        Case("image_24x24", encode(face.resize((24, 24)), "PNG"), "image/png", valid=True),
        Case("image_4000x4000", encode(face.resize((4000, 4000), Image.BILINEAR), "JPEG", quality=80),
             "image/jpeg", valid=True),
        Case("cmyk_jpeg", encode(face.convert("CMYK"), "JPEG", quality=90), "image/jpeg", valid=True),
        Case("png_16bit", encode(sixteen, "PNG"), "image/png", valid=True),
        Case("palette_gif", encode(face.quantize(128), "GIF"), "image/gif", valid=True),
        Case("animated_gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
             "image/gif", valid=True),
        Case("rgba_png", encode(rgba, "PNG"), "image/png", valid=True),
        Case("exif_rotated_jpeg", exif_rotated_jpeg()[0], "image/jpeg", valid=True),
        Case("heic", heic, "image/heic", valid=True),
        Case("avif", avif, "image/avif", valid=True),
        Case("no_face", encode(no_face_image(), "JPEG", quality=90), "image/jpeg", valid=True),
    ]


CORPUS = build_corpus()
BAD = [c for c in CORPUS if not c.valid]
GOOD = [c for c in CORPUS if c.valid]


# ---------------------------------------------------------------- decode level (no server)

@pytest.mark.parametrize("case", [c for c in CORPUS if c.raw_image], ids=lambda c: c.name)
def test_decode_level(case):
    if case.valid:
        image = decode_image(case.body)
        assert image.mode == "RGB"
        return
    with pytest.raises(ImageError) as caught:
        decode_image(case.body)
    assert caught.value.code == case.code
    assert caught.value.message


def test_exif_orientation_is_honoured_when_decoding():
    data, upright = exif_rotated_jpeg()
    image = decode_image(data)
    assert image.size == upright.size
    difference = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(upright, dtype=np.int16))
    assert difference.mean() < 4  # JPEG noise only; a wrong rotation differs by ~50 grey levels


@pytest.mark.parametrize("name", ["decompression_bomb", "heic_claims_7000x7000"])
def test_bomb_is_refused_from_its_header(tmp_path, name):
    """A bomb is refused before any pixel is decoded: peak RSS of a fresh process stays put
    (decoding would need 100 MB for the PNG, 147 MB for the HEIC)."""
    import subprocess
    import sys

    bomb = tmp_path / "bomb"
    bomb.write_bytes(next(c.body for c in CORPUS if c.name == name))
    script = (
        "import resource, sys\n"
        "from runtime.decoding import ImageError, decode_image\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    decode_image(data)\nexcept ImageError as e:\n    print(e.code)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(bomb)], capture_output=True, text=True, check=True)
    code, grown_kib = out.stdout.split()
    assert code == "image_too_large"
    assert int(grown_kib) < 20 * 1024


# ---------------------------------------------------------------- through a real TorchServe

MODEL = "deepfake-detector"
BOMB_MEMORY_LIMIT_MB = 50  # decoding the bomb would need 100 MB (greyscale) to 300 MB (RGB)


def workers(server) -> list[dict]:
    reply = server.management("GET", f"/models/{MODEL}")
    reply.raise_for_status()
    return reply.json()[0]["workers"]


def memory_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process. The peak (VmHWM, Linux) catches a transient allocation
    that is freed again before anybody looks."""
    import psutil

    rss = psutil.Process(pid).memory_info().rss / 2**20
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return rss, int(line.split()[1]) / 1024
    return rss, rss


@pytest.fixture(scope="module")
def served(torchserve):
    """Every corpus case sent once, the bomb first with the workers' memory measured around it."""
    before = workers(torchserve)
    memory_before = {w["pid"]: memory_mb(w["pid"]) for w in before}
    bomb = next(c for c in CORPUS if c.name == "decompression_bomb")
    answers = {bomb.name: torchserve.predict(MODEL, bomb.body, headers={"Content-Type": bomb.content_type})}
    memory_after = {w["pid"]: memory_mb(w["pid"]) for w in workers(torchserve)}
    for case in CORPUS:
        if case.name not in answers:
            answers[case.name] = torchserve.predict(MODEL, case.body, headers={"Content-Type": case.content_type})
    upright = exif_rotated_jpeg()[1]
    answers["upright_reference"] = torchserve.predict(MODEL, encode(upright, "JPEG", quality=95))
    return {"answers": answers, "workers_before": before, "workers_after": workers(torchserve),
            "memory_before": memory_before, "memory_after": memory_after}


@pytest.mark.integration
@pytest.mark.parametrize("case", BAD, ids=lambda c: c.name)
def test_bad_input_gets_a_4xx_with_a_json_reason(served, case):
    from handler.payload import HTTP_STATUS

    reply = served["answers"][case.name]
    assert 400 <= reply.status_code < 500, (reply.status_code, reply.text[:300])
    body = reply.json()
    assert body["error"] == case.code, body
    assert isinstance(body["message"], str) and body["message"]
    assert reply.status_code == HTTP_STATUS[case.code]


@pytest.mark.integration
@pytest.mark.parametrize("case", GOOD, ids=lambda c: c.name)
def test_valid_input_gets_a_verdict(served, case):
    reply = served["answers"][case.name]
    assert reply.status_code == 200, reply.text[:300]
    answer = reply.json()
    assert 0.0 <= answer["fake_probability"] <= 1.0
    assert "face" in answer and isinstance(answer["faces"], list)
    if answer["face"] is None:  # no face, no verdict on one: never a "likely" side
        assert answer["warning"] and answer["label"] == answer["band"] == "no_face"
    else:
        assert answer["label"] == ("fake" if answer["fake_probability"] >= answer["threshold"] else "real")
        assert answer["band"] in ("likely_real", "uncertain", "likely_fake")


@pytest.mark.integration
def test_no_face_image_gets_no_verdict_on_a_face(served):
    answer = served["answers"]["no_face"].json()
    assert answer["face"] is None and answer["faces"] == [] and "no face" in answer["warning"]


@pytest.mark.integration
def test_exif_orientation_is_honoured_by_the_server(served):
    rotated = served["answers"]["exif_rotated_jpeg"].json()
    upright = served["answers"]["upright_reference"].json()
    assert rotated["image_size"] == upright["image_size"] == [512, 384]
    assert rotated["face"] is not None and upright["face"] is not None
    assert np.allclose(rotated["face"]["box"], upright["face"]["box"], atol=4)  # JPEG noise, not a rotation


@pytest.mark.integration
def test_large_valid_image_is_served_at_full_size(served):
    answer = served["answers"]["image_4000x4000"].json()
    assert answer["image_size"] == [4000, 4000] and answer["face"] is not None


@pytest.mark.integration
def test_workers_survive_the_corpus(served):
    before = {w["id"]: w["pid"] for w in served["workers_before"]}
    after = {w["id"]: w["pid"] for w in served["workers_after"]}
    assert after == before, "a worker died and was restarted"
    assert all(w["status"] == "READY" for w in served["workers_after"])


@pytest.mark.integration
def test_bomb_does_not_raise_worker_memory(served):
    assert served["answers"]["decompression_bomb"].status_code == 413
    for pid, (rss_before, peak_before) in served["memory_before"].items():
        rss_after, peak_after = served["memory_after"][pid]
        assert peak_after - peak_before < BOMB_MEMORY_LIMIT_MB, (pid, peak_before, peak_after)
        assert rss_after - rss_before < BOMB_MEMORY_LIMIT_MB, (pid, rss_before, rss_after)


@pytest.mark.integration
def test_metrics_count_hostile_traffic_by_kind(served, torchserve):
    """An operator sees hostile traffic in Prometheus: DeepfakeErrors per error kind."""
    import re
    from collections import Counter

    sent = Counter(case.code for case in BAD)
    counted = Counter()
    for line in torchserve.metrics().splitlines():
        match = re.match(r'DeepfakeErrors\{.*kind="([^"]+)".*\} ([0-9.e+]+)$', line)
        if match:
            counted[match.group(1)] += float(match.group(2))
    missing = {code: (n, counted[code]) for code, n in sent.items() if counted[code] < n}
    assert not missing, f"error kinds under-counted (sent, counted): {missing}"


@pytest.mark.integration
def test_explanations_refuse_bad_input_the_same_way(torchserve):
    """The Grad-CAM path shares the decode path: same 4xx and reason, no dead worker."""
    before = {w["pid"] for w in workers(torchserve)}
    wrong = {}
    for case in BAD:
        reply = torchserve.explain(MODEL, case.body, headers={"Content-Type": case.content_type})
        try:
            code = reply.json().get("error")
        except ValueError:
            code = None
        if not (400 <= reply.status_code < 500 and code == case.code):
            wrong[case.name] = (reply.status_code, reply.text[:120])
    assert not wrong, wrong
    assert {w["pid"] for w in workers(torchserve)} == before


# ---------------------------------------------------------------- hostile requests beyond the image

@pytest.mark.integration
def test_oversized_body_is_refused_by_the_frontend(torchserve):
    """max_request_size is enforced by TorchServe's Netty frontend before any handler code runs:
    a bare 413 (TorchServe 0.12 sends no body with it), and the worker never sees the bytes."""
    from handler.tsconfig import read_properties

    limit = int(read_properties(torchserve.config_path)["max_request_size"])
    before = {w["pid"] for w in workers(torchserve)}
    reply = torchserve.predict(MODEL, b"\xff" * (limit + 1024))
    assert reply.status_code == 413, reply.text[:200]
    assert {w["pid"] for w in workers(torchserve)} == before
    assert torchserve.predict(MODEL, encode(astronaut((128, 128)), "PNG")).status_code == 200


@pytest.mark.integration
@pytest.mark.parametrize("url", ["file:///etc/passwd", "https://example.com/evil.mar", "../outside.mar"])
def test_archives_are_registered_only_from_the_model_store(torchserve, url):
    reply = torchserve.management("POST", "/models", params={"url": url, "model_name": "intruder"})
    assert 400 <= reply.status_code < 500, reply.text[:200]
    assert "intruder" not in {m["modelName"] for m in torchserve.management("GET", "/models").json()["models"]}


@pytest.mark.integration
def test_server_listens_on_loopback_only(torchserve):
    import psutil

    frontend = psutil.Process(torchserve.pid)
    listening = [c.laddr for c in frontend.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening, "the frontend has no listening socket"
    assert all(addr.ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for addr in listening), listening
