"""Full-size photos beside the shipped 256 px faces, through one TorchServe, side by side.

    python -m benchmarks.run --only photos                          # inside a benchmark run (report section)
    python -m benchmarks.photo_bench --profile quick --out p.json   # alone

Sets, made by the harness from the shipped examples (``benchmarks/photos.py``): ``256px`` (the
examples themselves), ``12mp-jpeg`` (each face upscaled into a 4032 x 3024 phone-quality JPEG, faces
from 500 to 1500 px across) and ``12mp-heic`` (the same photos as HEIC, where pillow-heif is
installed; the set is skipped with the reason otherwise). The served archive is repacked with the
profile's layout; at each user level every set is measured ``rounds`` times in turn (closed-loop
client threads, warm-up, then a window), so that other load on the host falls on all of them.

Beside the load, the verdicts: each 12 MP photo through the full decode and through decode_photo
(the served weights, in this process), and the full decode once more on the photo shifted by one
pixel of the detector's input, which is how far a detector box can move between the two decodes.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
from pathlib import Path

from PIL import Image

from benchmarks.photos import PHONE_12MP, heic_bytes, jpeg_bytes, phone_photo
from benchmarks.preprocess_bench import photo_face_px
from benchmarks.profile import Profile, load_profile
from benchmarks.stats import POINTS
from runtime.photo import IMAGE_SUFFIXES
from benchmarks.video_bench import measure, served_archive
from export.archive import ServingConfig, build_archive, repack

ROOT = Path(__file__).resolve().parents[1]
MODEL = "deepfake-detector-photo-bench"


def image_sets(profile: Profile) -> tuple[dict[str, list[bytes]], dict[str, str]]:
    """({set name: bodies}, {set name: why it was skipped})."""
    faces = [p.read_bytes() for p in sorted((ROOT / profile.images).rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    photos = [phone_photo(Image.open(io.BytesIO(body)), PHONE_12MP, photo_face_px(k, len(faces)), seed=k)
              for k, body in enumerate(faces)]
    sets, skipped = {}, {}
    for name in profile.photos.sets:
        if name == "256px":
            sets[name] = faces
        elif name == "12mp-jpeg":
            sets[name] = [jpeg_bytes(photo) for photo in photos]
        elif name == "12mp-heic":
            bodies = [heic_bytes(photo) for photo in photos]
            if None in bodies:
                skipped[name] = "pillow-heif is not installed here (issue 22 adds HEIC decoding with it)"
            else:
                sets[name] = bodies
        else:
            raise ValueError(f"unknown photo set {name!r}; known: 256px, 12mp-jpeg, 12mp-heic")
    return sets, skipped


def verdicts(profile: Profile, bodies: list[bytes]) -> dict:
    """Full decode against decode_photo on each photo, and the full decode's own change when the
    photo moves by one pixel of the detector's input."""
    import torch

    from runtime.decoding import decode_image, decode_photo
    from runtime.preprocessing import FacePreprocessor, PreprocessSettings, to_tensor_batch
    from runtime.weights import Calibration, load_weights

    torch.set_num_threads(1)
    model, meta = load_weights(ROOT / profile.weights)
    calibration, settings = Calibration.from_metadata(meta), PreprocessSettings.from_metadata(meta)
    preprocessor = FacePreprocessor.from_settings(settings, threads=1)

    def score(image) -> tuple[float, tuple | None]:
        prepared = preprocessor.prepare(image)
        with torch.inference_mode():
            p = float(calibration.probability(model(to_tensor_batch(prepared.crops[:1])))[0])
        return p, prepared.faces[0].box if prepared.faces else None

    rows = []
    for body in bodies:
        full = decode_image(body)
        p_full, box_full = score(full)
        p_fast, box_fast = score(decode_photo(body, max_side=settings.max_side))
        step = math.ceil(max(full.size) / settings.max_side)  # one pixel of the detector's input
        p_shift, _ = score(full.crop((step, 0, full.width, full.height)))
        moved = max(abs(a - b) for a, b in zip(box_full, box_fast)) if box_full and box_fast else None
        rows.append({"p_full": p_full, "p_fast": p_fast, "p_full_shifted": p_shift, "box_moved_px": moved,
                     "box_moved_share": moved / max(full.size) if moved is not None else None, "shift_px": step})
    same = [abs(r["p_fast"] - r["p_full"]) for r in rows if r["box_moved_px"] is not None and r["box_moved_px"] < 1e-6]
    return {
        "photos": rows,
        "max_abs_dp": max(abs(r["p_fast"] - r["p_full"]) for r in rows),
        "max_abs_dp_same_box": max(same) if same else None,
        "same_box": len(same),
        "max_box_moved_share": max((r["box_moved_share"] or 0.0) for r in rows),
        "max_abs_dp_full_shifted": max(abs(r["p_full_shifted"] - r["p_full"]) for r in rows),
    }


def archive(profile: Profile, store: Path) -> tuple[Path, str]:
    """The served archive repacked with the profile's layout (an eager one built when there is none)."""
    s = profile.photos
    serving = {"batchSize": s.batch_size, "maxBatchDelay": s.max_batch_delay, "minWorkers": s.workers,
               "maxWorkers": s.workers, "handler": {"threads": s.threads}}
    source = served_archive(ROOT / profile.model_store, s.backend)
    if source is not None:
        return repack(source, store / f"{MODEL}.mar", **serving), s.backend
    config = ServingConfig(batch_size=s.batch_size, max_batch_delay=s.max_batch_delay, min_workers=s.workers,
                           max_workers=s.workers, handler={"threads": s.threads})
    return build_archive(ROOT / profile.weights, export_path=store, model_name=MODEL, serving=config), "eager"


def run(profile: Profile, server_dir: Path, log=print) -> dict:
    """The ``photos`` section of summary.json."""
    from handler.server import TorchServe

    s = profile.photos
    sets, skipped = image_sets(profile)
    log("[photos] sets: " + ", ".join(f"{k} ({len(v)} images, {sum(map(len, v)) / len(v) / 1e6:.2f} MB each)" for k, v in sets.items())
        + "".join(f"; {k} skipped: {why}" for k, why in skipped.items()))
    store = server_dir / "store"
    store.mkdir(parents=True, exist_ok=True)
    mar, backend = archive(profile, store)
    server = TorchServe(store, {MODEL: mar.name}, run_dir=server_dir, properties={"disable_system_metrics": "true"})
    server.start()
    answers, rounds = {}, []
    try:
        for name, bodies in sets.items():  # every image once: a verdict with a face, and warm workers
            replies = [server.client.predict(MODEL, body).json() for body in bodies]
            answers[name] = {"faces_found": sum(bool(r.get("face")) for r in replies), "images": len(replies),
                             "image_size": replies[0].get("image_size")}
        for users in s.users:
            for k in range(s.rounds):
                for name, bodies in sets.items():
                    measured = measure(server.client, MODEL, {"image": (bodies, users)}, s.warmup_s, s.seconds)["image"]
                    rounds.append({"set": name, "users": users, "round": k, **measured})
                    log(f"[photos] {name} users={users} round {k + 1}/{s.rounds}: {measured['per_s']}/s "
                        f"p50 {measured['latency_ms'].get('p50')} ms")
    finally:
        server.stop()
    return {
        "backend": backend, "settings": profile.to_dict()["photos"], "sets": answers, "skipped": skipped,
        "rounds": rounds, "results": combine(rounds), "verdicts": verdicts(profile, sets["12mp-jpeg"]) if "12mp-jpeg" in sets else None,
    }


def combine(rounds: list[dict]) -> list[dict]:
    """Per set and user level: mean rate over the rounds, median of each latency percentile."""
    out = []
    for key in dict.fromkeys((r["set"], r["users"]) for r in rounds):
        group = [r for r in rounds if (r["set"], r["users"]) == key]
        latency = {p: statistics.median(r["latency_ms"][p] for r in group if p in r["latency_ms"])
                   for p in (f"p{q}" for q in POINTS) if any(p in r["latency_ms"] for r in group)}
        out.append({"set": key[0], "users": key[1], "per_s": statistics.fmean(r["per_s"] for r in group),
                    "latency_ms": latency, "failures": sum(r["failures"] for r in group), "rounds": len(group)})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--server-dir", type=Path, default=ROOT / "build" / "bench-photo-server")
    args = parser.parse_args(argv)
    result = run(load_profile(args.profile, args.set), args.server_dir)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
