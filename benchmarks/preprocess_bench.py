"""Preprocessing cost per image, timed stage by stage: decode, face detection, crop + tensor.

This is what every request pays before the model runs; on most hosts it, not the model, bounds
end-to-end throughput, so the report sets it beside the model's images/s and derives the box's limit
from both. One thread, as a TorchServe worker has; an untimed pass through every stage first (the
first call of each allocates and picks kernels). Sets:

- ``256px``: the shipped examples, one image at a time, and the detector over batches of
  ``batch`` images (per image: what batching the detector buys on this host);
- ``12mp``: phone-sized JPEGs the harness makes from the same faces (``benchmarks/photos.py``),
  through ``decode_photo`` (reduced decode, crop as fine as it needs) and, side by side, through the
  full decode (``decode_image``): the path every photo took before;
- with ``detector_sides``: the detector alone at other ``max_side`` values on the 256 px set (what
  weights retrained with that setting would pay; the served weights keep theirs).

    python -m benchmarks.preprocess_bench --profile quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.model_bench import percentiles
from benchmarks.profile import Profile, load_profile
from runtime.photo import IMAGE_SUFFIXES

STAGES = ("decode", "detect", "crop", "total")
ROOT = Path(__file__).resolve().parents[1]


def image_files(folder: str | Path, limit: int | None = None) -> list[Path]:
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return files[:limit] if limit else files


def time_stages(preprocessor, blobs: list[bytes], repeats: int, decode) -> tuple[dict, dict]:
    """Per-stage timings (ms per image, one image at a time) and what the images held."""
    from runtime.photo import Photo
    from runtime.preprocessing import to_tensor_batch

    def one(blob: bytes) -> tuple[list[float], Photo, int]:
        t0 = time.perf_counter()
        photo = decode(blob)
        photo = photo if isinstance(photo, Photo) else Photo.whole(photo)
        t1 = time.perf_counter()
        faces = preprocessor.detect([photo])[0]
        t2 = time.perf_counter()
        to_tensor_batch([preprocessor.crop(photo, f.box)[0] for f in faces] or [preprocessor.crop(photo, None)[0]])
        t3 = time.perf_counter()
        return [t1 - t0, t2 - t1, t3 - t2, t3 - t0], photo, len(faces)

    one(blobs[0])  # untimed: every stage's first call
    timings = {stage: [] for stage in STAGES}
    faces = pixels = 0
    for repeat in range(repeats):
        for blob in blobs:
            seconds, photo, found = one(blob)
            for stage, value in zip(STAGES, seconds):
                timings[stage].append(value * 1000)
            if repeat == 0:
                faces += found
                pixels += photo.size[0] * photo.size[1]
    info = {"images": len(blobs), "mean_megapixels": pixels / len(blobs) / 1e6, "faces_per_image": faces / len(blobs)}
    return {stage: percentiles(values) for stage, values in timings.items()}, info


def time_batched_detection(preprocessor, images: list, batch: int, repeats: int) -> dict:
    """The detector over ``batch`` images per call, per image, beside one image per call (the same
    images, interleaved so both see the same host)."""
    from runtime.photo import Photo

    photos = [Photo.whole(image) for image in images]
    single, batched = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for photo in photos:
            preprocessor.detect([photo])
        single.append((time.perf_counter() - start) * 1000 / len(photos))
        start = time.perf_counter()
        for k in range(0, len(photos), batch):
            preprocessor.detect(photos[k : k + batch])
        batched.append((time.perf_counter() - start) * 1000 / len(photos))
    return {"batch": batch, "single_ms": percentiles(single), "batched_ms": percentiles(batched)}


def run(profile: Profile, log=print) -> dict:
    """The ``preprocess`` section of summary.json; ``skipped`` says why when nothing was timed."""
    import torch

    from benchmarks.photos import PHONE_12MP, jpeg_bytes, phone_photo
    from runtime.decoding import decode_image, decode_photo
    from runtime.detector import FaceDetector
    from runtime.preprocessing import FacePreprocessor, PreprocessSettings
    from runtime.weights import load_metadata

    s = profile.preprocess
    files = image_files(ROOT / profile.images, s.images)
    if not files:
        return {"skipped": f"no images under {profile.images}"}
    torch.set_num_threads(1)  # a worker's share; to_tensor_batch no longer needs torch's pool
    meta = load_metadata(profile.weights) if Path(profile.weights).with_suffix(".json").exists() else {"input_size": 192}
    settings = PreprocessSettings.from_metadata(meta)
    preprocessor = FacePreprocessor.from_settings(settings, threads=1)
    blobs = [f.read_bytes() for f in files]

    sets = {}
    stages, info = time_stages(preprocessor, blobs, s.repeats, decode_image)
    sets["256px"] = {"paths": {"decode_image": stages}, **info}
    log(f"[preprocess] 256px: {stages['total']['mean']:.1f} ms per image (decode {stages['decode']['mean']:.1f}, "
        f"detect {stages['detect']['mean']:.1f}, crop {stages['crop']['mean']:.2f})")
    images = [decode_image(b) for b in blobs]
    sets["256px"]["detector_batches"] = time_batched_detection(preprocessor, images, s.batch, s.repeats)

    if s.photos:
        faces = len(files)
        photos = [jpeg_bytes(phone_photo(decode_image(b), PHONE_12MP, face_px=photo_face_px(k, faces), seed=k))
                  for k, b in enumerate(blobs[: s.photos])]
        sets["12mp"] = {"paths": {}, "mean_bytes": sum(map(len, photos)) / len(photos)}
        for name, decode in (("decode_photo", lambda b: decode_photo(b, max_side=settings.max_side)), ("decode_image", decode_image)):
            stages, info = time_stages(preprocessor, photos, 1, decode)
            sets["12mp"]["paths"][name] = stages
            sets["12mp"].update(info)
            log(f"[preprocess] 12mp via {name}: {stages['total']['mean']:.1f} ms per image (decode {stages['decode']['mean']:.1f}, "
                f"detect {stages['detect']['mean']:.1f}, crop {stages['crop']['mean']:.1f})")

    detector_sides = {}
    for side in s.detector_sides:
        detector = FaceDetector(settings.score_threshold, settings.nms_threshold, side, threads=1)
        other = FacePreprocessor.from_settings(settings, detector=detector)
        detector_sides[str(side)] = time_batched_detection(other, images, 1, s.repeats)["single_ms"]

    stages = sets["256px"]["paths"]["decode_image"]
    total = stages["total"]["mean"]
    return {
        "images": len(files), "repeats": s.repeats, "input_size": preprocessor.input_size, "max_side": settings.max_side,
        "mean_megapixels": sets["256px"]["mean_megapixels"], "faces_per_image": sets["256px"]["faces_per_image"],
        "stages_ms": stages, "images_per_s_one_core": 1000 / total, "sets": sets, "detector_sides_ms": detector_sides,
    }


def photo_face_px(k: int, count: int) -> int:
    """Face sizes of the phone-photo set: spread from 500 to 1500 px (a portrait to a selfie in 12 MP)."""
    return round(500 + 1000 * k / max(1, count - 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    print(json.dumps(run(load_profile(args.profile, args.set)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
