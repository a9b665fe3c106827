"""Short video clips made in the tests with PyAV from the shipped example faces (nothing stored in
the repository): a face clip in each container, one whose frames are lossless (PNG in MOV: the
decoded frames are the source pixels), and broken ones."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# PyAV muxer name and encoder per container
CODECS = {"mp4": ("mp4", "libx264"), "mov": ("mov", "libx264"), "mkv": ("matroska", "libx264"), "webm": ("webm", "libvpx-vp9")}


def example_faces(kind: str = "fake") -> list[Image.Image]:
    """The four 256 px FFHQ (real) or StyleGAN (fake) examples; the examples of other kinds, which
    carry their kind in the name, have other sizes."""
    return [Image.open(path).convert("RGB") for path in sorted((EXAMPLES / kind).glob("*.jpg")) if "_" not in path.stem]


def blank_frame(size: tuple[int, int] = (256, 256)) -> Image.Image:
    """Smooth coloured noise: no face in it."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)


def encode_clip(frames: list[Image.Image], container: str = "mp4", fps: int = 4, codec: str | None = None,
                rotation: int = 0) -> bytes:
    """The frames as a clip in ``container`` (mp4, mov, mkv, webm) at ``fps``; ``rotation``: the
    display matrix's rotation, as a phone records portrait video."""
    muxer, default_codec = CODECS[container]
    codec = codec or default_codec
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=muxer) as output:
        stream = output.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = frames[0].size
        if rotation:
            stream.set_display_rotation(rotation)
        stream.pix_fmt = "rgb24" if codec == "png" else "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "10"}  # near-lossless: faces stay as detectable as in the JPEGs
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def face_clip(container: str = "mp4", frames: int = 8, fps: int = 4) -> bytes:
    """The four fake example faces in turn."""
    faces = example_faces("fake")
    return encode_clip([faces[i % len(faces)] for i in range(frames)], container, fps)


def mixed_clip(container: str = "mp4") -> tuple[bytes, list[bool]]:
    """(clip, which frames show a face): fake faces with two frames of no face between them."""
    faces, blank = example_faces("fake"), blank_frame()
    frames = [faces[0], faces[1], blank, faces[2], blank, faces[3]]
    return encode_clip(frames, container), [frame is not blank for frame in frames]


def audio_only_mp4() -> bytes:
    """An MP4 with one AAC audio stream and no video."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("aac", rate=16000)
        samples = np.zeros((1, 16000), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def corrupt(clip: bytes) -> bytes:
    """The container's first box or EBML header kept, everything after it random bytes."""
    return clip[:32] + np.random.default_rng(3).bytes(len(clip) - 32)


def truncated(clip: bytes) -> bytes:
    """The first half of the file, as an interrupted upload leaves it."""
    return clip[: len(clip) // 2]
