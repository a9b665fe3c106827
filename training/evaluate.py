"""Evaluate weights: ``python -m training.evaluate --weights W --data DIR [DIR ...]``.

Uses the split recorded in the weights' metadata (same seed and fractions as training, each data
root split on its own), so the default ``--split test`` is the held-out test set the model never saw.

Writes to the report folder:

* ``metrics.json``: metrics per data root and pooled (pooled at the top level), each ROC AUC with a
  stratified bootstrap 95 % interval; calibration (ECE and reliability bins); with ``--robustness``
  the AUC of every root under each perturbation of ``PERTURBATIONS`` and its drop from clean; for
  a root of hand edits named with their difficulty, the AUC of each difficulty (``edit_levels``);
* ``report.md``: the same as markdown tables, ready for the model card;
* ``predictions.csv`` and PNG plots: ROC per root, confusion matrix, reliability, robustness, training
  curves (when the training log is found).

``--cross NAME=WEIGHTS ...`` instead writes the cross-kind matrix: test ROC AUC of each weights
(rows, e.g. trained on one kind of fake only) on each data root (columns), as ``cross_kind.md/json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter
from torch.utils.data import DataLoader
from tqdm import tqdm

from runtime.decoding import decode_image
from runtime.preprocessing import FacePreprocessor, PreprocessSettings, to_tensor_batch
from runtime.model import has_kind_head
from runtime.verdict import DEFAULT_THRESHOLD
from runtime.weights import Calibration, load_weights
from training.augment import jpeg_recompress
from training.data import CachedCrop, CropCache, CropDataset
from training.metrics import binary_metrics, bootstrap_auc_interval, calibration_bins, expected_calibration_error
from training.plots import (plot_confusion, plot_face_size, plot_reliability, plot_robustness, plot_roc_curves,
                            plot_training_curves)
from training.regions import EDIT_LEVELS, edit_level
from training.config import parse_settings, resolve_device, with_preprocessing
from training.kinds import FAKE_KINDS
from training.sampling import as_roots, held_out_roots, split_samples
from training.scoring import predict

POOLED = "pooled"
FACE_SCALES = (1.0, 0.75, 0.5, 0.35)  # the image shrunk by these factors: the face-size dependency per kind


def _downscale(image: Image.Image, factor: float) -> Image.Image:
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.BICUBIC)


# Applied to the decoded upload, before face detection and cropping: what a re-shared image looks like.
PERTURBATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "jpeg q90": lambda im: jpeg_recompress(im, 90),
    "jpeg q75": lambda im: jpeg_recompress(im, 75),
    "jpeg q50": lambda im: jpeg_recompress(im, 50),
    "downscale 0.5x": lambda im: _downscale(im, 0.5),
    # the detail of a half-size image at the original size: tells lost detail from a smaller face
    "down-up 0.5x": lambda im: _downscale(im, 0.5).resize(im.size, Image.BICUBIC),
    "blur sigma 1": lambda im: im.filter(ImageFilter.GaussianBlur(1.0)),
    "brightness +20%": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "brightness -20%": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
}


@dataclass
class Scored:
    """One data root's split, scored."""

    crops: list[CachedCrop]
    y: np.ndarray
    p: np.ndarray




def score_roots(model, meta: dict, roots: list[Path], split: str, cache_dir: str, threads: int, batch_size: int,
                device: torch.device, real_from: dict[str, str] | None = None) -> dict[str, Scored]:
    settings = PreprocessSettings.from_metadata(meta)
    cache = CropCache(cache_dir, settings, threads=threads)
    scored = {}
    for name, samples in split_samples(meta, roots, split, real_from).items():
        crops, _ = cache.prepare(samples, split, name)
        loader = DataLoader(CropDataset(crops), batch_size=batch_size, shuffle=False)
        y, z, _ = predict(model, loader, device, desc=f"evaluate {name} {split}")
        scored[name] = Scored(crops, y, Calibration.from_metadata(meta).probability(z))
    return scored


def pooled_scores(scored: dict[str, Scored]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and P(fake) over all roots, each image once (a real photo that two roots share, such
    as the FFHQ photos paired with the diffusion fakes, is counted once)."""
    seen, y, p = set(), [], []
    for s in scored.values():
        for crop, label, prob in zip(s.crops, s.y, s.p):
            if crop.source not in seen:
                seen.add(crop.source)
                y.append(label)
                p.append(prob)
    return np.array(y), np.array(p)


def with_interval(y: np.ndarray, p: np.ndarray, threshold: float, resamples: int) -> dict:
    metrics = binary_metrics(y, p, threshold)
    metrics["roc_auc_95ci"] = list(bootstrap_auc_interval(y, p, resamples))
    return metrics


@torch.no_grad()
def perturbed_scores(model, preprocessor: FacePreprocessor, calibration: Calibration, crops: list[CachedCrop], perturb,
                     device, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(P(fake), detected face width in pixels or NaN) of each source image after ``perturb``,
    through decoding, detection and cropping again."""
    probs, widths = [], []
    for start in range(0, len(crops), batch_size):
        images = [perturb(decode_image(c.source.read_bytes())) for c in crops[start : start + batch_size]]
        prepared = preprocessor.prepare_many(images)
        batch = to_tensor_batch([one.crops[0] for one in prepared])
        probs.append(calibration.probability(model(batch.to(device)).float()).cpu().numpy())
        widths += [one.faces[0].box[2] - one.faces[0].box[0] if one.faces else np.nan for one in prepared]
    return np.concatenate(probs), np.array(widths, dtype=float)


def by_edit_level(scored: dict[str, Scored], threshold: float, resamples: int) -> dict:
    """``{root: {level: metrics}}`` for roots whose fakes are named with a difficulty
    (``training.regions.edit_level``): each level's fakes against all of the root's real images."""
    table = {}
    for root, s in scored.items():
        levels = np.array([edit_level(c.source) if y == 1 else None for c, y in zip(s.crops, s.y)], dtype=object)
        names = [level for level in EDIT_LEVELS if level in levels]
        if not names:
            continue
        table[root] = {}
        for level in names:
            keep = (s.y == 0) | (levels == level)
            table[root][level] = with_interval(s.y[keep], s.p[keep], threshold, resamples)
    return table


def robustness(model, meta: dict, scored: dict[str, Scored], threads: int, batch_size: int, device) -> dict:
    """``{perturbation: {root: {"roc_auc", "drop"}}}``; drop = clean AUC - perturbed AUC."""
    preprocessor = FacePreprocessor.from_settings(PreprocessSettings.from_metadata(meta), threads=threads)
    table = {}
    for name, perturb in tqdm(PERTURBATIONS.items(), desc="robustness", unit="perturbation"):
        table[name] = {}
        for root, s in scored.items():
            p, _ = perturbed_scores(model, preprocessor, Calibration.from_metadata(meta), s.crops, perturb, device, batch_size)
            auc = binary_metrics(s.y, p)["roc_auc"]
            clean = binary_metrics(s.y, s.p)["roc_auc"]
            table[name][root] = {"roc_auc": auc, "drop": clean - auc}
    return table


def face_size(model, meta: dict, scored: dict[str, Scored], threads: int, batch_size: int, device) -> dict:
    """``{root: [{"scale", "median_face_px", "faces_found", "roc_auc"}]}``: the whole image shrunk
    by each of ``FACE_SCALES``, so each kind is scored with smaller and smaller faces (what a face in
    a video frame or a downscaled upload looks like), beside the face width the detector found."""
    preprocessor = FacePreprocessor.from_settings(PreprocessSettings.from_metadata(meta), threads=threads)
    table: dict[str, list] = {root: [] for root in scored}
    for scale in tqdm(FACE_SCALES, desc="face sizes", unit="scale"):
        for root, s in scored.items():
            p, widths = perturbed_scores(model, preprocessor, Calibration.from_metadata(meta), s.crops,
                                         lambda im: _downscale(im, scale), device, batch_size)
            table[root].append({"scale": scale, "median_face_px": float(np.nanmedian(widths)) if np.isfinite(widths).any() else None,
                                "faces_found": float(np.isfinite(widths).mean()), "roc_auc": binary_metrics(s.y, p)["roc_auc"]})
    return table


def kind_guesses(model, meta: dict, scored: dict[str, Scored], batch_size: int, device) -> dict | None:
    """How the kind head names the fakes of each root whose kind the metadata knows: a row of guess
    counts over FAKE_KINDS per root, and the share it names right. None for a model without the head."""
    kinds, names = meta.get("training", {}).get("kinds") or {}, meta.get("kinds") or FAKE_KINDS
    if not has_kind_head(model) or not kinds:
        return None
    table = {}
    model.eval()
    for name, s in scored.items():
        fakes = [crop for crop, label in zip(s.crops, s.y) if label == 1]
        if name not in kinds or not fakes:
            continue
        guesses = []
        with torch.no_grad():
            for images, _ in DataLoader(CropDataset(fakes), batch_size=batch_size, shuffle=False):
                guesses += model.forward_with_kinds(images.to(device))[1].argmax(1).tolist()
        counts = {kind: guesses.count(i) for i, kind in enumerate(names)}
        table[name] = {"kind": kinds[name], "fakes": len(fakes), "guesses": counts,
                       "accuracy": counts[kinds[name]] / len(fakes)}
    return table


def markdown_report(report: dict) -> str:
    lines = [f"# Evaluation of `{report['weights']}` on the {report['split']} split", "",
             f"Threshold {report['threshold']:.4f} (chosen on validation). AUC intervals: stratified bootstrap, "
             f"{report['bootstrap_resamples']} resamples, 95 %.", "",
             "| data | images (real / fake) | ROC AUC [95 % CI] | AP | EER | ECE | accuracy | precision | recall |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in report["datasets"].items():
        low, high = m["roc_auc_95ci"]
        ece = report["calibration"]["ece"] if name == POOLED else m.get("ece", float("nan"))
        lines.append(f"| {name} | {m['n']} ({m['n_real']} / {m['n_fake']}) | {m['roc_auc']:.3f} [{low:.3f}, {high:.3f}] | "
                     f"{m['average_precision']:.3f} | {m['eer']:.3f} | {ece:.3f} | {m['accuracy']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} |")
    for root, levels in report.get("edit_levels", {}).items():
        lines += ["", f"{root} by edit difficulty (each level's fakes against all real images):", "",
                  "| difficulty | fakes | ROC AUC [95 % CI] | recall |", "|---|---:|---:|---:|"]
        for level, m in levels.items():
            low, high = m["roc_auc_95ci"]
            lines.append(f"| {level} | {m['n_fake']} | {m['roc_auc']:.3f} [{low:.3f}, {high:.3f}] | {m['recall']:.3f} |")
    if "kind_guesses" in report:
        names = list(next(iter(report["kind_guesses"].values()))["guesses"])
        lines += ["", "The kind head on each root's fakes (rows: the true kind; columns: the head's guess):", "",
                  "| root (kind) | fakes | " + " | ".join(names) + " | right |", "|---|---:|" + "---:|" * (len(names) + 1)]
        for root, row in report["kind_guesses"].items():
            lines.append(f"| {root} ({row['kind']}) | {row['fakes']} | " + " | ".join(str(row["guesses"][k]) for k in names)
                         + f" | {row['accuracy']:.3f} |")
    cal = report["calibration"]
    lines += ["", f"Calibration (pooled): ECE {cal['ece']:.3f} over {len(cal['bins'])} equal-width bins.", ""]
    if "robustness" in report:
        roots = [n for n in report["datasets"] if n != POOLED]
        lines += ["| perturbation | " + " | ".join(f"{r} AUC (drop)" for r in roots) + " |",
                  "|---|" + "---:|" * len(roots)]
        lines.append("| clean | " + " | ".join(f"{report['datasets'][r]['roc_auc']:.3f}" for r in roots) + " |")
        for name, row in report["robustness"].items():
            lines.append(f"| {name} | " + " | ".join(f"{row[r]['roc_auc']:.3f} ({row[r]['drop']:+.3f})" for r in roots) + " |")
        lines.append("")
    if "face_size" in report:
        roots = list(report["face_size"])
        lines += ["Face size: the whole image shrunk, AUC (median detected face width in px):", "",
                  "| image scale | " + " | ".join(roots) + " |", "|---|" + "---:|" * len(roots)]
        for i, scale in enumerate(FACE_SCALES):
            cells = [report["face_size"][r][i] for r in roots]
            lines.append(f"| {scale:g}x | " + " | ".join(f"{c['roc_auc']:.3f} ({c['median_face_px'] or 0:.0f} px)" for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def evaluate(weights: Path, data, split: str, out_dir: Path, cache_dir: str, threads: int, batch_size: int,
             device: str = "auto", threshold: float | None = None, log_csv: Path | None = None,
             with_robustness: bool = False, resamples: int = 1000, real_from: dict[str, str] | None = None,
             preprocessing: dict | None = None) -> dict:
    torch.set_num_threads(threads)
    device = resolve_device(device)
    model, meta = load_weights(weights, map_location=device)
    meta = with_preprocessing(meta, preprocessing)
    roots = as_roots(data)
    scored = score_roots(model, meta, roots, split, cache_dir, threads, batch_size, device, real_from)
    y, p = pooled_scores(scored)

    threshold = meta.get("threshold", DEFAULT_THRESHOLD) if threshold is None else threshold
    pooled = with_interval(y, p, threshold, resamples)
    datasets = {name: {**with_interval(s.y, s.p, threshold, resamples), "ece": expected_calibration_error(s.y, s.p)}
                for name, s in scored.items()}
    if len(scored) > 1:
        datasets[POOLED] = pooled
    bins = calibration_bins(y, p)
    report = {
        "weights": str(weights),
        "preprocessing": PreprocessSettings.from_metadata(meta).to_metadata(),
        "data": [str(r) for r in roots],
        "split": split,
        "bootstrap_resamples": resamples,
        **pooled,
        "datasets": datasets,
        "calibration": {"ece": expected_calibration_error(y, p), "bins": bins},
    }
    levels = by_edit_level(scored, threshold, resamples)
    if levels:
        report["edit_levels"] = levels
    guesses = kind_guesses(model, meta, scored, batch_size, device)
    if guesses:
        report["kind_guesses"] = guesses
    if with_robustness:
        report["robustness"] = robustness(model, meta, scored, threads, batch_size, device)
        report["face_size"] = face_size(model, meta, scored, threads, batch_size, device)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown_report(report))
    with (out_dir / "predictions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dataset", "path", "label", "fake_probability", "predicted"])
        for name, s in scored.items():
            for crop, label, prob in zip(s.crops, s.y, s.p):
                writer.writerow([name, crop.source, int(label), f"{prob:.6f}", int(prob >= threshold)])

    curves = {name: (s.y, s.p, datasets[name]["roc_auc"]) for name, s in scored.items()}
    if len(scored) > 1:
        curves[POOLED] = (y, p, pooled["roc_auc"])
    plot_roc_curves(curves, out_dir / "roc.png", title=f"ROC ({split} split)")
    plot_confusion(pooled["confusion_matrix"], out_dir / "confusion_matrix.png",
                   title=f"{split} split, threshold {threshold:.3f}")
    plot_reliability(bins, report["calibration"]["ece"], out_dir / "reliability.png", threshold)
    if with_robustness:
        table = {"clean": {n: datasets[n]["roc_auc"] for n in scored}}
        table.update({k: {n: v[n]["roc_auc"] for n in scored} for k, v in report["robustness"].items()})
        plot_robustness(table, out_dir / "robustness.png")
        plot_face_size(report["face_size"], out_dir / "face_size.png")
    log_csv = log_csv or (Path(meta["training"]["log"]) if "training" in meta else None)
    if log_csv and Path(log_csv).exists():
        plot_training_curves(log_csv, out_dir / "training_curves.png")
    return report


def cross_kind(weights: dict[str, Path], data, split: str, out_dir: Path, cache_dir: str, threads: int,
               batch_size: int, device: str = "auto", resamples: int = 1000, real_from: dict[str, str] | None = None) -> dict:
    """Test ROC AUC [95 % CI] of each named weights on each data root. A model trained with a
    ``holdout`` root has that cell in bold, and the mean over such cells is the leave-one-kind-out
    estimate (how the recipe meets a kind of fake it never saw)."""
    torch.set_num_threads(threads)
    device = resolve_device(device)
    matrix, held_out = {}, {}
    for name, path in weights.items():
        model, meta = load_weights(path, map_location=device)
        scored = score_roots(model, meta, as_roots(data), split, cache_dir, threads, batch_size, device, real_from)
        matrix[name] = {root: {"roc_auc": binary_metrics(s.y, s.p)["roc_auc"],
                               "roc_auc_95ci": list(bootstrap_auc_interval(s.y, s.p, resamples)),
                               "trained_on": meta.get("data", {}).get("root")}
                        for root, s in scored.items()}
        held = held_out_roots(meta.get("training", {}).get("holdout"))
        if len(held) == 1 and held[0] in matrix[name]:  # one kind left out (a zero-shot run leaves out all)
            held_out[name] = held[0]
    roots = list(next(iter(matrix.values())))
    lines = [f"Test ROC AUC [95 % CI] of each model (rows) on each data root (columns), {split} split"
             + (" (bold: the kind the model was trained without)." if held_out else "."), "",
             "| model | " + " | ".join(roots) + " |", "|---|" + "---:|" * len(roots)]
    for name, row in matrix.items():
        cells = [f"{row[r]['roc_auc']:.3f} [{row[r]['roc_auc_95ci'][0]:.3f}, {row[r]['roc_auc_95ci'][1]:.3f}]" for r in roots]
        cells = [f"**{c}**" if held_out.get(name) == r else c for c, r in zip(cells, roots)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if held_out:
        aucs = [matrix[name][root]["roc_auc"] for name, root in held_out.items()]
        matrix["leave_one_kind_out"] = {"held_out": held_out, "mean_roc_auc": float(np.mean(aucs))}
        lines += ["", f"Leave-one-kind-out mean ROC AUC over {len(aucs)} held-out kinds: {np.mean(aucs):.3f}."]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cross_kind.json").write_text(json.dumps(matrix, indent=2) + "\n")
    (out_dir / "cross_kind.md").write_text("\n".join(lines) + "\n")
    return matrix


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=Path("weights/default.safetensors"))
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="one or more data roots")
    parser.add_argument("--split", choices=["train", "val", "test"], default="test")
    parser.add_argument("--out", type=Path, help="report folder; default build/eval/<weights name>-<split>")
    parser.add_argument("--log", type=Path, help="training log.csv for the curves (default: from the metadata)")
    parser.add_argument("--threshold", type=float, help="override the threshold stored in the metadata")
    parser.add_argument("--robustness", action="store_true", help="also score every perturbation (re-detects faces)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUC intervals")
    parser.add_argument("--cross", nargs="+", metavar="NAME=WEIGHTS", help="write the cross-kind matrix of these weights instead")
    parser.add_argument("--preprocessing", nargs="+", default=[], metavar="KEY=YAML",
                        help="score as if served with these preprocessing settings, e.g. max_side=128 (the face "
                             "detector's input): the weights' own settings otherwise")
    parser.add_argument("--real-from", nargs="+", default=[], metavar="FAKE_ROOT=REAL_ROOT",
                        help="pair a fake-only root with another root's real images (default: as the weights were trained)")
    parser.add_argument("--cache-dir", default="build/crops")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    data = args.data if len(args.data) > 1 else args.data[0]
    real_from = dict(item.split("=", 1) for item in args.real_from)
    preprocessing = parse_settings(args.preprocessing)
    if args.cross:
        out = args.out or Path("build/eval/cross-kind")
        weights = dict(item.split("=", 1) for item in args.cross)
        cross_kind({k: Path(v) for k, v in weights.items()}, data, args.split, out, args.cache_dir, args.threads,
                   args.batch_size, args.device, args.bootstrap, real_from)
        print((out / "cross_kind.md").read_text())
        return 0
    out = args.out or Path("build/eval") / f"{args.weights.stem}-{args.split}"
    report = evaluate(args.weights, data, args.split, out, args.cache_dir, args.threads, args.batch_size,
                      args.device, args.threshold, args.log, args.robustness, args.bootstrap, real_from, preprocessing)
    print(markdown_report(report))
    print(f"{'confusion_matrix':>18}: {report['confusion_matrix']}  (pooled; rows true real/fake, columns predicted)")
    print(f"wrote {out}/metrics.json, report.md and plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
