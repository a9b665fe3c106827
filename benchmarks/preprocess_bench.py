"""Preprocessing cost per image, timed stage by stage: decode, face detection, crop + tensor.

This is what every request pays before the model runs; on most hosts it, not the model, bounds
end-to-end throughput, so the report sets it beside the model's images/s.

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

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
STAGES = ("decode", "detect", "crop", "total")


def image_files(folder: str | Path, limit: int | None = None) -> list[Path]:
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return files[:limit] if limit else files


def run(profile: Profile, log=print) -> dict:
    """The ``preprocess`` section of summary.json; ``skipped`` says why when nothing was timed."""
    from runtime.preprocessing import FacePreprocessor, PreprocessSettings, decode_image, to_tensor_batch
    from runtime.weights import load_metadata

    files = image_files(profile.images, profile.preprocess.images)
    if not files:
        return {"skipped": f"no images under {profile.images}"}
    meta = load_metadata(profile.weights) if Path(profile.weights).with_suffix(".json").exists() else {"input_size": 192}
    preprocessor = FacePreprocessor.from_settings(PreprocessSettings.from_metadata(meta))
    blobs = [f.read_bytes() for f in files]

    # one untimed pass: onnxruntime's first run allocates and picks kernels
    preprocessor.prepare_many([decode_image(blobs[0])])
    timings = {stage: [] for stage in STAGES}
    faces = pixels = 0
    for repeat in range(profile.preprocess.repeats):
        for blob in blobs:
            t0 = time.perf_counter()
            image = decode_image(blob)
            t1 = time.perf_counter()
            detected = preprocessor.detector.detect([image])[0][: preprocessor.max_faces]
            t2 = time.perf_counter()
            crops = [preprocessor.crop(image, f.box)[0] for f in detected] or [preprocessor.crop(image, None)[0]]
            to_tensor_batch(crops)
            t3 = time.perf_counter()
            for stage, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                timings[stage].append(seconds * 1000)
            if repeat == 0:
                faces += len(detected)
                pixels += image.width * image.height
        log(f"[preprocess] pass {repeat + 1}/{profile.preprocess.repeats}: {len(blobs)} images")
    stages = {stage: percentiles(values) for stage, values in timings.items()}
    total = stages["total"]["mean"]
    log(f"[preprocess] {total:.1f} ms per image (decode {stages['decode']['mean']:.1f}, "
        f"detect {stages['detect']['mean']:.1f}, crop {stages['crop']['mean']:.1f}) "
        f"-> {1000 / total:.1f} images/s on one core")
    return {
        "images": len(files), "repeats": profile.preprocess.repeats, "input_size": preprocessor.input_size,
        "mean_megapixels": pixels / len(files) / 1e6, "faces_per_image": faces / len(files),
        "stages_ms": stages, "images_per_s_one_core": 1000 / total,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    print(json.dumps(run(load_profile(args.profile, args.set)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
