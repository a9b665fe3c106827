"""Phone-sized photos made from small face images, for the full-size-photo benchmark and tests.

A phone photo is 12 MP (4032 x 3024) or more, and its face is hundreds of pixels across. None can be
shipped or downloaded here, so they are made: a face image (the shipped examples are 256 px) is
upscaled so that its face is ``face_px`` across and pasted into a frame of smooth colour, then the
whole frame gets sensor-like grain and is saved as a JPEG at a phone's quality (about 4 MB for
12 MP, as a phone's). Deterministic for a given seed.

    python -m benchmarks.photos --out build/photos12mp --size 4032 3024 --face-px 900
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from runtime.photo import IMAGE_SUFFIXES

PHONE_12MP = (4032, 3024)
PHONE_24MP = (6000, 4000)
# The shipped examples are FFHQ-style 256 px portraits whose face box is about 0.6 of the side.
EXAMPLE_FACE_SHARE = 0.6


def frame(size: tuple[int, int], seed: int) -> np.ndarray:
    """Smooth colour (a bicubic-upsampled 4 x 3 grid of random colours), uint8 (H, W, 3)."""
    rng = np.random.default_rng(seed)
    grid = Image.fromarray(rng.integers(40, 215, (3, 4, 3), dtype=np.uint8))
    return np.asarray(grid.resize(size, Image.BICUBIC)).copy()


def phone_photo(face: Image.Image, size: tuple[int, int] = PHONE_12MP, face_px: int = 900,
                centre: tuple[float, float] = (0.5, 0.45), face_share: float = EXAMPLE_FACE_SHARE,
                grain: float = 4.0, seed: int = 0) -> Image.Image:
    """``face`` (a portrait whose face box is ``face_share`` of its width) upscaled so the face is
    about ``face_px`` across, pasted into a ``size`` frame with its centre at ``centre`` (fractions
    of the frame), plus Gaussian grain of ``grain`` levels over everything."""
    scale = face_px / (face_share * face.width)
    portrait = face.convert("RGB").resize((round(face.width * scale), round(face.height * scale)), Image.LANCZOS)
    canvas = frame(size, seed)
    left = int(centre[0] * size[0] - portrait.width / 2)
    top = int(centre[1] * size[1] - portrait.height / 2)
    # the part of the portrait that lands inside the frame
    x0, y0 = max(0, -left), max(0, -top)
    x1, y1 = min(portrait.width, size[0] - left), min(portrait.height, size[1] - top)
    canvas[top + y0 : top + y1, left + x0 : left + x1] = np.asarray(portrait)[y0:y1, x0:x1]
    noise = np.random.default_rng(seed + 1).normal(0.0, grain, canvas.shape).astype(np.float32)
    return Image.fromarray(np.clip(canvas + noise, 0, 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image, quality: int = 90, exif: Image.Exif | None = None) -> bytes:
    """A phone's JPEG: 4:2:0, optimised Huffman tables."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, optimize=True, exif=exif or Image.Exif())
    return buffer.getvalue()


def heic_bytes(image: Image.Image, quality: int = 90) -> bytes | None:
    """HEIC through pillow-heif when it is installed (issue 22 brings it), else None."""
    try:
        import pillow_heif
    except ImportError:
        return None
    pillow_heif.register_heif_opener()
    buffer = io.BytesIO()
    image.save(buffer, "HEIF", quality=quality)
    return buffer.getvalue()


def write_set(faces: list[Path], out: Path, size: tuple[int, int], face_px: int, formats: tuple[str, ...] = ("jpeg",)) -> dict:
    """One photo per face image and format into ``out`` (subfolders per format); what was written
    and what could not be (a format whose encoder is missing)."""
    written, skipped = {}, {}
    for fmt in formats:
        folder = out / fmt
        folder.mkdir(parents=True, exist_ok=True)
        for k, path in enumerate(faces):
            photo = phone_photo(Image.open(path), size, face_px, seed=k)
            body = jpeg_bytes(photo) if fmt == "jpeg" else heic_bytes(photo)
            if body is None:
                skipped[fmt] = f"no {fmt} encoder here (pillow-heif is not installed)"
                break
            suffix = ".jpg" if fmt == "jpeg" else ".heic"
            (folder / f"{path.stem}{suffix}").write_bytes(body)
            written.setdefault(fmt, []).append(str(folder / f"{path.stem}{suffix}"))
    return {"written": written, "skipped": skipped}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=Path, default=Path("examples"), help="folder of face images (searched recursively)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, nargs=2, default=list(PHONE_12MP), metavar=("W", "H"))
    parser.add_argument("--face-px", type=int, default=900)
    parser.add_argument("--formats", nargs="+", default=["jpeg"], choices=["jpeg", "heic"])
    args = parser.parse_args(argv)
    faces = sorted(p for p in args.faces.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    result = write_set(faces, args.out, tuple(args.size), args.face_px, tuple(args.formats))
    for fmt, reason in result["skipped"].items():
        print(f"{fmt}: skipped, {reason}", file=sys.stderr)
    print(f"wrote {sum(len(v) for v in result['written'].values())} photos under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
