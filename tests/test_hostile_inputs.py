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

from handler.preprocessing import ImageError, decode_image


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    content_type: str = "application/octet-stream"
    valid: bool = False  # True: a normal verdict is expected
    code: str | None = None  # decode_image's error code, for raw image bodies

    @property
    def raw_image(self) -> bool:
        return self.content_type != "application/json"


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
        Case("image_1x1", encode(Image.new("RGB", (1, 1), "white"), "PNG"), "image/png", code="image_too_small"),
        Case("bad_base64", json_body({"image": "!!not base64@@"}), "application/json"),
        Case("json_without_image", json_body({"picture": "nothing here"}), "application/json"),
        Case("json_image_not_string", json_body({"image": 12345}), "application/json"),
        Case("base64_of_text", json_body({"image": base64.b64encode(b"just text").decode()}), "application/json"),
        # served
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
        Case("no_face", encode(no_face_image(), "JPEG", quality=90), "image/jpeg", valid=True),
    ]


CORPUS = build_corpus()
BAD = [c for c in CORPUS if not c.valid]
GOOD = [c for c in CORPUS if c.valid]


def test_corpus_covers_the_issue():
    assert len(CORPUS) >= 15
    assert len(BAD) >= 10 and len(GOOD) >= 8


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


def test_bomb_is_refused_from_its_header(tmp_path):
    """The 100-megapixel bomb is refused before any pixel is decoded: peak RSS of a fresh process
    stays put (decoding would need 100 MB)."""
    import subprocess
    import sys

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(decompression_bomb())
    script = (
        "import resource, sys\n"
        "from handler.preprocessing import ImageError, decode_image\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    decode_image(data)\nexcept ImageError as e:\n    print(e.code)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(bomb)], capture_output=True, text=True, check=True)
    code, grown_kib = out.stdout.split()
    assert code == "image_too_large"
    assert int(grown_kib) < 20 * 1024
