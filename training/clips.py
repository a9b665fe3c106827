"""Clip-level quality: ``python -m training.clips --weights W --data ../shared/data/faceswap [...]``.

Real deepfake videos differ from the training crops in two ways the still-image test split cannot
show: the face is small in the frame (about 100 px in a 480p video) and the frames are lossy video.
This builds a clip from each test image of a data root: the image is shrunk so the face is
``--face-px`` wide and pasted into a ``--frame`` sized scene (its own blurred enlargement), drifting
a little from frame to frame, and encoded as H.264 at ``--crf``. Each clip then goes the serving
path: ``runtime.video`` samples and decodes the frames, the serving preprocessor finds and crops the
face, the model scores every frame and ``runtime.verdict.aggregate`` gives the clip's verdict.

What it measures honestly: the effect of face size, video compression and frame aggregation on the
verdict of the very images the still test scored. What it does not: motion or temporal artefacts
(every frame of a clip shows the same face), nor another dataset's faces.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, ImageFilter
from tqdm import tqdm

from runtime.decoding import decode_image
from runtime.preprocessing import FacePreprocessor, PreprocessSettings, to_tensor_batch
from runtime.verdict import aggregate
from runtime.video import VideoLimits, open_video
from runtime.weights import Calibration, load_weights
from training.config import resolve_device
from training.config import parse_settings, with_preprocessing
from training.metrics import binary_metrics, bootstrap_auc_interval
from training.sampling import as_roots, split_samples

FPS = 25


def scene_frames(image: Image.Image, face_width: float, face_px: int, frame: tuple[int, int], count: int,
                 rng: random.Random) -> list[Image.Image]:
    """``count`` frames of ``frame`` size: ``image`` shrunk so its face (``face_width`` px wide in it)
    is ``face_px`` wide, over its own blurred enlargement, drifting along a slow circle."""
    width, height = frame
    backdrop = image.resize((width, height), Image.BILINEAR).filter(ImageFilter.GaussianBlur(12))
    scale = face_px / face_width
    small = image.resize((max(8, round(image.width * scale)), max(8, round(image.height * scale))), Image.BICUBIC)
    x0, y0 = rng.randint(0, width - small.width), rng.randint(0, height - small.height)
    radius, phase = min(12, x0, y0, width - small.width - x0, height - small.height - y0), rng.uniform(0, 2 * math.pi)
    frames = []
    for i in range(count):
        angle = phase + 2 * math.pi * i / count
        scene = backdrop.copy()
        scene.paste(small, (round(x0 + radius * math.cos(angle)), round(y0 + radius * math.sin(angle))))
        frames.append(scene)
    return frames


def encode_h264(frames: list[Image.Image], crf: int) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


@torch.no_grad()
def score(model, calibration: Calibration, preprocessor: FacePreprocessor, images: list[Image.Image], device) -> tuple[list[float], list]:
    """(P(fake) of each image's largest face or centre crop, the largest face or None)."""
    prepared = preprocessor.prepare_many(images)
    logits = model(to_tensor_batch([p.crops[0] for p in prepared]).to(device)).float().cpu()
    return calibration.probability(logits).tolist(), [p.faces[0] if p.faces else None for p in prepared]


def evaluate_clips(weights: Path, root: Path, out: Path, clips: int, face_px: int, frame: tuple[int, int], seconds: float,
                   crf: int, frames: int, threads: int, seed: int = 0, preprocessing: dict | None = None) -> dict:
    torch.set_num_threads(threads)
    device = resolve_device("cpu")
    model, meta = load_weights(weights, map_location=device)
    meta = with_preprocessing(meta, preprocessing)
    calibration = Calibration.from_metadata(meta)
    preprocessor = FacePreprocessor.from_settings(PreprocessSettings.from_metadata(meta), threads=threads)
    (name, samples), = split_samples(meta, [root], "test").items()
    rng = random.Random(seed)
    chosen = [s for label in (0, 1) for s in rng.sample([s for s in samples if s.label == label], clips // 2)]
    limits = VideoLimits(frames=frames)
    rows = []
    for sample in tqdm(chosen, desc=f"clips of {name}", unit="clip"):
        image = decode_image(sample.path.read_bytes())
        (still,), (face,) = score(model, calibration, preprocessor, [image], device)
        face_width = (face.box[2] - face.box[0]) if face else image.width * 0.6
        video = encode_h264(scene_frames(image, face_width, face_px, frame, round(seconds * FPS), rng), crf)
        clip = open_video(video, limits)
        p, faces = score(model, calibration, preprocessor, [im for _, im in clip.frames()], device)
        verdict, rule, _ = aggregate(p, [f is not None for f in faces])
        rows.append({"path": str(sample.path), "label": sample.label, "still": still, "clip": verdict, "rule": rule,
                     "frames": p, "frames_with_face": sum(f is not None for f in faces), "bytes": len(video)})
    return write_report(rows, out, {"weights": str(weights), "data": name, "clips": len(rows), "face_px": face_px,
                                    "frame": list(frame), "seconds": seconds, "crf": crf, "frames_sampled": frames,
                                    "preprocessing": PreprocessSettings.from_metadata(meta).to_metadata()})


def write_report(rows: list[dict], out: Path, setup: dict) -> dict:
    y = np.array([r["label"] for r in rows])
    per_frame_y = np.repeat(y, [len(r["frames"]) for r in rows])
    per_frame_p = np.concatenate([r["frames"] for r in rows])
    report = {**setup}
    for key, labels, p in [("still", y, np.array([r["still"] for r in rows])), ("clip", y, np.array([r["clip"] for r in rows])),
                           ("frame", per_frame_y, per_frame_p)]:
        report[key] = {"roc_auc": binary_metrics(labels, p)["roc_auc"], "roc_auc_95ci": list(bootstrap_auc_interval(labels, p, 1000))}
    report["faces_found"] = float(np.mean([r["frames_with_face"] / len(r["frames"]) for r in rows]))
    report["confident_fake_rule"] = sum(r["rule"] == "confident_fake" for r in rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "clips.json").write_text(json.dumps({**report, "rows": rows}, indent=2) + "\n")
    lines = [f"# Clip-level quality of `{setup['weights']}` on `{setup['data']}` (test split)", "",
             f"{setup['clips']} clips: each test image shrunk so its face is {setup['face_px']} px wide in a "
             f"{setup['frame'][0]}x{setup['frame'][1]} scene, {setup['seconds']:g} s of H.264 at crf {setup['crf']}, "
             f"{setup['frames_sampled']} frames sampled.", "",
             "| scored as | ROC AUC [95 % CI] |", "|---|---:|"]
    for key, label in [("still", "the original image (the still test)"), ("frame", "each sampled frame"), ("clip", "the clip's verdict")]:
        low, high = report[key]["roc_auc_95ci"]
        lines.append(f"| {label} | {report[key]['roc_auc']:.3f} [{low:.3f}, {high:.3f}] |")
    lines += ["", f"Frames with a face found: {report['faces_found']:.1%}; clips decided by the confident-fake rule: "
              f"{report['confident_fake_rule']}.", ""]
    (out / "report.md").write_text("\n".join(lines))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=Path("weights/default.safetensors"))
    parser.add_argument("--data", type=Path, required=True, help="one data root (its test split is used)")
    parser.add_argument("--out", type=Path, default=Path("build/eval/clips"))
    parser.add_argument("--clips", type=int, default=200, help="half real, half fake")
    parser.add_argument("--face-px", type=int, default=100, help="face width in the frame")
    parser.add_argument("--frame", default="854x480", help="scene size WIDTHxHEIGHT")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--crf", type=int, default=28, help="H.264 quality (23 is FFmpeg's default; higher is lossier)")
    parser.add_argument("--frames", type=int, default=16, help="frames sampled per clip, as serving's video_frames")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--preprocessing", nargs="+", default=[], metavar="KEY=YAML",
                        help="score as if served with these preprocessing settings (e.g. min_face=176)")
    args = parser.parse_args(argv)
    frame = tuple(int(v) for v in args.frame.lower().split("x"))
    (root,) = as_roots(args.data)
    report = evaluate_clips(args.weights, root, args.out, args.clips, args.face_px, frame, args.seconds, args.crf,
                            args.frames, args.threads, preprocessing=parse_settings(args.preprocessing))
    print((args.out / "report.md").read_text())
    return 0 if report else 1


if __name__ == "__main__":
    sys.exit(main())
