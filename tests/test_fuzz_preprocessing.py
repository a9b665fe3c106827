"""Fuzz the request decode path: mutated real JPEG/PNG/GIF/... bytes through decode_image and the
face preprocessor. The only exception allowed to escape is ImageError (which the handler turns into
a 4xx); anything else would be a 5xx or a dead worker in production.

Bounded for CI (FUZZ_EXAMPLES, default 200, derandomised so a failure reproduces); raise
FUZZ_EXAMPLES and set FUZZ_RANDOM=1 to search further on a developer machine.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from runtime.decoding import ImageError, decode_image
from runtime.preprocessing import FacePreprocessor, to_tensor_batch

torch.set_num_threads(1)
# corrupt EXIF and TIFF tags make PIL warn; the test is about what escapes, not what it says
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

INPUT_SIZE = 64  # small crops keep the test fast; the crop code does not depend on the size
ERROR_CODES = {"empty_body", "not_an_image", "unsupported_format", "image_too_large", "image_too_small", "corrupt_image"}
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))


def _astronaut(side: int) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((side, side), Image.BILINEAR)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def _seeds() -> dict[str, bytes]:
    """Valid images in every accepted format and the awkward modes, each small so a mutation that
    keeps the file valid still decodes quickly."""
    face = _astronaut(96)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate, exercises exif_transpose
    frames = [face.quantize(32), face.rotate(90).quantize(32)]
    sixteen = Image.fromarray(np.asarray(face.convert("L"), dtype=np.uint16) * 257)  # mode I;16
    return {
        "jpeg": _encode(face, "JPEG", quality=85),
        "jpeg_exif": _encode(face, "JPEG", exif=exif),
        "jpeg_progressive": _encode(face, "JPEG", progressive=True),
        "jpeg_cmyk": _encode(face.convert("CMYK"), "JPEG"),
        "png": _encode(face, "PNG"),
        "png_rgba": _encode(face.convert("RGBA"), "PNG"),
        "png_16bit": _encode(sixteen, "PNG"),
        "png_palette": _encode(face.quantize(16), "PNG"),
        "gif_animated": _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50),
        "webp": _encode(face, "WEBP", quality=80),
        "bmp": _encode(face.resize((32, 32)), "BMP"),
        "tiff": _encode(face.resize((32, 32)), "TIFF", compression="tiff_deflate"),
        "heic": _encode(face, "HEIF", quality=60, exif=exif.tobytes()),
        "avif": _encode(face, "AVIF", quality=60, exif=exif.tobytes()),
    }


SEEDS = _seeds()


def _fix_png_crcs(data: bytes) -> bytes:
    """Recompute every PNG chunk CRC, so a mutation reaches the chunk parsers and the decoder
    instead of stopping at the checksum."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, pos = bytearray(data[:8]), 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        end = pos + 8 + length
        if end + 4 > len(data):
            break
        kind_and_body = data[pos + 4 : end]
        out += data[pos : end] + struct.pack(">I", zlib.crc32(kind_and_body) & 0xFFFFFFFF)
        pos = end + 4
    return bytes(out + data[pos:])


# One mutation: (kind, relative position in [0, 1), integer argument).
_MUTATION = st.tuples(
    st.sampled_from(["flip", "set", "extreme", "truncate", "insert", "delete", "duplicate"]),
    st.floats(0, 1, exclude_max=True),
    st.integers(0, 2**32 - 1),
)


def mutate(data: bytes, mutations: list[tuple[str, float, int]]) -> bytes:
    buf = bytearray(data)
    for kind, where, arg in mutations:
        if not buf:
            break
        pos = int(where * len(buf))
        if kind == "flip":
            buf[pos] ^= 1 << (arg % 8)
        elif kind == "set":
            buf[pos] = arg & 0xFF
        elif kind == "extreme":  # size and length fields are where parsers break
            value = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF][arg % 8]
            buf[pos : pos + 4] = value.to_bytes(4, "big")
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = arg.to_bytes(4, "little")[: 1 + arg % 4]
        elif kind == "delete":
            del buf[pos : pos + 1 + arg % 64]
        elif kind == "duplicate":
            buf[pos:pos] = buf[pos : pos + 1 + arg % 256]
    return bytes(buf)


@pytest.fixture(scope="module")
def preprocessor() -> FacePreprocessor:
    return FacePreprocessor(INPUT_SIZE, threads=1)


def check_decode_and_prepare(data: bytes, preprocessor: FacePreprocessor) -> str:
    """Run the serving path; return "ok" or the ImageError code. Any other exception propagates."""
    try:
        image = decode_image(data)
    except ImageError as error:
        assert error.code in ERROR_CODES, error.code
        assert error.message
        return error.code
    assert image.mode == "RGB" and min(image.size) >= 1
    prepared = preprocessor.prepare(image)
    assert prepared.crops and all(c.size == (INPUT_SIZE, INPUT_SIZE) for c in prepared.crops)
    batch = to_tensor_batch(prepared.crops)
    assert batch.shape == (len(prepared.crops), 3, INPUT_SIZE, INPUT_SIZE)
    assert torch.isfinite(batch).all()
    return "ok"


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seeds_are_valid(name, preprocessor):
    """The unmutated seeds decode; otherwise the fuzz would only exercise the error path."""
    assert check_decode_and_prepare(SEEDS[name], preprocessor) == "ok"


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("FUZZ_RANDOM") != "1",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    mutations=st.lists(_MUTATION, min_size=1, max_size=6),
    fix_crc=st.booleans(),
)
def test_mutated_images_only_raise_image_error(preprocessor, seed, mutations, fix_crc):
    data = mutate(SEEDS[seed], mutations)
    if fix_crc:
        data = _fix_png_crcs(data)
    check_decode_and_prepare(data, preprocessor)


@settings(max_examples=max(20, EXAMPLES // 4), deadline=None, derandomize=os.environ.get("FUZZ_RANDOM") != "1",
          suppress_health_check=[HealthCheck.function_scoped_fixture], database=None)
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_only_raise_image_error(preprocessor, data):
    check_decode_and_prepare(data, preprocessor)


@settings(max_examples=max(20, EXAMPLES // 4), deadline=None, derandomize=os.environ.get("FUZZ_RANDOM") != "1",
          suppress_health_check=[HealthCheck.function_scoped_fixture], database=None)
@given(width=st.integers(1, 4000), height=st.integers(1, 4000), mode=st.sampled_from(["RGB", "L", "RGBA", "P", "CMYK", "I;16", "1", "LA"]))
def test_any_shape_and_mode_is_served_or_refused(preprocessor, width, height, mode):
    """Extreme aspect ratios and every colour mode reach the detector without breaking it."""
    if width * height > 2_000_000:  # big images cost time, not coverage: the resize path is the same
        width, height = min(width, 1414), min(height, 1414)
    fmt = "TIFF" if mode in ("CMYK", "I;16", "LA") else "PNG"
    data = _encode(Image.new(mode, (width, height)), fmt)
    result = check_decode_and_prepare(data, preprocessor)
    assert result == ("image_too_small" if min(width, height) < 16 else "ok")
