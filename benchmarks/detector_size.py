"""Face-detector input size against recall, box agreement and time, on labelled image folders.

    python -m benchmarks.detector_size --data ../shared/data/faces ../shared/data/photoshop --sizes 640 192 128 96

For each ``max_side`` the detector shrinks images to, it counts the images with a face found, and
compares the largest face's box with the first size's (the reference): IoU, and how far the box
centre moved, which is how far a native-pixel crop window would move. One image at a time on one
thread, so the times are per image on one core.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from runtime.decoding import decode_image
from runtime.detector import FaceDetector
from runtime.photo import IMAGE_SUFFIXES



def largest(faces) -> tuple[float, float, float, float] | None:
    return max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])).box if faces else None


def iou(a, b) -> float:
    width, height = max(0.0, min(a[2], b[2]) - max(a[0], b[0])), max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def centre_shift(a, b) -> float:
    return float(np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2))


def measure(files: list[Path], sizes: list[int]) -> list[dict]:
    images = [decode_image(f.read_bytes()) for f in files]
    reference, rows = None, []
    for side in sizes:
        detector = FaceDetector(max_side=side, threads=1)
        boxes, seconds = [], []
        for image in images:
            start = time.perf_counter()
            boxes.append(largest(detector.detect([image])[0]))
            seconds.append(time.perf_counter() - start)
        reference = reference or boxes
        pairs = [(a, b) for a, b in zip(reference, boxes) if a and b]
        shifts = [centre_shift(a, b) for a, b in pairs]
        rows.append({
            "max_side": side,
            "images": len(images),
            "faces_found": sum(b is not None for b in boxes),
            "median_iou": float(np.median([iou(a, b) for a, b in pairs])) if pairs else None,
            "median_centre_shift_px": float(np.median(shifts)) if shifts else None,
            "p95_centre_shift_px": float(np.percentile(shifts, 95)) if shifts else None,
            "median_ms": 1000 * float(np.median(seconds)),
        })
        print(f"max_side {side}: {rows[-1]['faces_found']}/{len(images)} faces, median IoU {rows[-1]['median_iou']:.3f}, "
              f"centre shift median {rows[-1]['median_centre_shift_px']:.1f} px (p95 {rows[-1]['p95_centre_shift_px']:.1f}), "
              f"{rows[-1]['median_ms']:.2f} ms per image", flush=True)
    return rows


FRAME = (854, 480)


def embed(images: list[Image.Image], boxes: list, face_px: int, seed: int = 0) -> tuple[list[Image.Image], list]:
    """Each image shrunk so its face box is ``face_px`` wide, pasted into a 480p frame; the pasted boxes."""
    rng = np.random.default_rng(seed)
    frames, pasted = [], []
    for image, box in zip(images, boxes):
        if box is None:
            continue
        scale = face_px / (box[2] - box[0])
        small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)
        small = small.crop((0, 0, min(small.width, FRAME[0]), min(small.height, FRAME[1])))
        x, y = int(rng.integers(0, FRAME[0] - small.width + 1)), int(rng.integers(0, FRAME[1] - small.height + 1))
        frame = Image.new("RGB", FRAME, tuple(int(c) for c in np.asarray(image).reshape(-1, 3).mean(0)))
        frame.paste(small, (x, y))
        frames.append(frame)
        pasted.append(tuple(v * scale + offset for v, offset in zip(box, (x, y, x, y))))
    return frames, pasted


def recall(frames: list[Image.Image], pasted: list, sizes: list[int], face_px: int, coarse: list[int] = ()) -> list[dict]:
    """Pasted faces found at each ``max_side``, then coarse-to-fine (``coarse_side`` each of
    ``coarse``, then the first size), with how far their boxes are from the first size's."""
    rows, reference = [], None
    settings = [(side, 0) for side in sizes] + [(sizes[0], c) for c in coarse]
    for side, coarse_side in settings:
        detector = FaceDetector(max_side=side, coarse_side=coarse_side, threads=1)
        matched = [next((f.box for f in detector.detect([frame])[0] if iou(f.box, box) >= 0.3), None)
                   for frame, box in zip(frames, pasted)]
        reference = reference or matched
        shifts = [max(abs(a - b) for a, b in zip(x, y)) for x, y in zip(reference, matched) if x and y]
        found = sum(m is not None for m in matched)
        rows.append({"face_px": face_px, "frame": list(FRAME), "max_side": side, "coarse_side": coarse_side,
                     "faces": len(frames), "found": found, "max_box_shift_px": max(shifts, default=None)})
        label = f"max_side {side}" + (f" after coarse_side {coarse_side}" if coarse_side else "")
        print(f"{face_px} px faces in {FRAME[0]}x{FRAME[1]}, {label}: {found}/{len(frames)} found, "
              f"box edges within {rows[-1]['max_box_shift_px']} px of max_side {sizes[0]}'s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="folders searched recursively for images")
    parser.add_argument("--sizes", type=int, nargs="+", default=[640, 192, 128, 96], help="max_side values; the first is the reference")
    parser.add_argument("--embed", type=int, nargs="+", metavar="FACE_PX",
                        help="instead: recall of faces this many pixels wide pasted into 480p frames")
    parser.add_argument("--coarse", type=int, nargs="+", default=[], metavar="COARSE_SIDE",
                        help="with --embed: also coarse-to-fine detection, from each of these to the first size")
    parser.add_argument("--limit", type=int, help="the first N images only (file-name order)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    files = sorted(p for root in args.data for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:args.limit]
    if not files:
        parser.error("no images found")
    if args.embed:
        images = [decode_image(f.read_bytes()) for f in files]
        boxes = [largest(faces) for faces in FaceDetector(max_side=640, threads=1).detect(images)]
        rows = [row for px in args.embed for row in recall(*embed(images, boxes, px), args.sizes, px, args.coarse)]
    else:
        rows = measure(files, args.sizes)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
