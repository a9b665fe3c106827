"""Fit P(fake) calibration for existing weights: ``python -m training.calibrate --weights W --data DIR [DIR ...]``.

Training does this itself at the end of a run; this command does it for weights trained before it
did. Platt scaling is fitted on the validation split recorded in the metadata, the decision threshold
is chosen again on the calibrated validation probabilities (same method as training), and the
metadata's ``calibration``, ``threshold`` and validation/test metrics are rewritten. The tensors are
not touched: rankings, AUCs and decisions stay what they were. ``--preprocessing`` also changes how
the weights are served (e.g. ``min_face=176``: small faces upsampled), which changes their crops, so
that is written with the calibration fitted on crops made that way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from runtime import drift
from runtime.preprocessing import PreprocessSettings
from runtime.verdict import DEFAULT_THRESHOLD
from runtime.weights import Calibration, load_weights, metadata_path
from training.config import parse_settings, resolve_device, with_preprocessing
from training.data import CropCache, CropDataset
from training.metrics import band_cutoffs, band_shares, binary_metrics, choose_threshold, fit_platt
from training.sampling import as_roots, split_samples
from training.scoring import dataset_names, per_dataset_auc, predict


def split_logits(model, meta: dict, roots: list[Path], split: str, cache_dir: str, threads: int, device) -> tuple:
    """(crops, labels, logits) of one split over all roots."""
    cache = CropCache(cache_dir, PreprocessSettings.from_metadata(meta), threads=threads)
    crops = []
    for name, samples in split_samples(meta, roots, split).items():
        prepared, _ = cache.prepare(samples, split, name)
        crops += prepared
    y, z, _ = predict(model, DataLoader(CropDataset(crops), batch_size=64), device, desc=f"{split} logits")
    return crops, y, z


def fit_on_validation(val: tuple, test: tuple | None, method: str) -> tuple[Calibration, float, dict]:
    """Platt scaling fitted on the validation (crops, labels, logits), the threshold chosen on the
    calibrated validation P(fake) by ``method``, and the metrics of both splits at that threshold
    (with the ROC AUC of each data root when there are several), the uncertain band's cut-offs in
    ``metrics["bands"]``: the one place training and this command calibrate."""
    calibration, threshold, metrics = Calibration(), DEFAULT_THRESHOLD, {}
    splits = {"val": val, "test": test}
    if val is not None and len(set(val[1].tolist())) == 2:  # a zero-shot run validates on reals alone
        crops, y, z = val
        calibration = Calibration(*fit_platt(z, y))
        threshold = choose_threshold(y, calibration.probability(z), method)
        metrics["bands"] = band_cutoffs(y, calibration.probability(z), threshold)
    for name, scored in splits.items():
        if scored is None or len(set(scored[1].tolist())) < 2:
            continue
        crops, y, z = scored
        p = calibration.probability(z)
        metrics[name] = binary_metrics(y, p, threshold)
        if "bands" in metrics:
            metrics[name]["bands"] = band_shares(y, p, metrics["bands"])
        if len(dataset_names(crops)) > 1:
            metrics[name]["per_dataset_auc"] = per_dataset_auc(crops, y, p)
    return calibration, threshold, metrics


def calibrate(weights: Path, data, cache_dir: str = "build/crops", threads: int = 2, device: str = "auto",
              preprocessing: dict | None = None) -> dict:
    """With ``preprocessing``, the weights are served with those settings from now on (e.g. ``min_face``),
    and the calibration and threshold are fitted again on validation crops made with them."""
    torch.set_num_threads(threads)
    device = resolve_device(device)
    model, meta = load_weights(weights, map_location=device)
    meta = with_preprocessing(meta, preprocessing)
    roots = as_roots(data)
    val = split_logits(model, meta, roots, "val", cache_dir, threads, device)
    test = split_logits(model, meta, roots, "test", cache_dir, threads, device)
    calibration, threshold, fitted = fit_on_validation(val, test, meta.get("threshold_method", "youden"))
    meta.update(calibration=calibration.to_metadata(), threshold=threshold, bands=fitted.pop("bands", None),
                metrics={**meta.get("metrics", {}), **fitted})
    meta.update(validation_reference(val, calibration))
    metadata_path(weights).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def validation_reference(val: tuple | None, calibration: Calibration) -> dict:
    """The metadata entry drift is measured against (``runtime/drift.py``): a histogram of the
    validation split's calibrated P(fake) in fixed bins; empty without a validation split."""
    if val is None or not len(val[1]):
        return {}
    return {drift.REFERENCE_KEY: drift.reference(calibration.probability(val[2]))}


def add_reference(weights: Path, data, cache_dir: str = "build/crops", threads: int = 2, device: str = "auto") -> dict:
    """Only the drift reference, for weights calibrated before it existed: the validation split's
    P(fake) with the calibration the metadata already has; nothing else in the metadata changes."""
    torch.set_num_threads(threads)
    device = resolve_device(device)
    model, meta = load_weights(weights, map_location=device)
    val = split_logits(model, meta, as_roots(data), "val", cache_dir, threads, device)
    meta.update(validation_reference(val, Calibration.from_metadata(meta)))
    metadata_path(weights).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=Path("weights/default.safetensors"))
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--cache-dir", default="build/crops")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--preprocessing", nargs="+", default=[], metavar="KEY=YAML",
                        help="serve the weights with these preprocessing settings from now on (e.g. min_face=176), "
                             "calibrated again on validation crops made with them")
    parser.add_argument("--reference-only", action="store_true",
                        help="only add the validation P(fake) histogram that `records_cli quality` measures drift against")
    args = parser.parse_args(argv)
    data = args.data if len(args.data) > 1 else args.data[0]
    if args.reference_only:
        meta = add_reference(args.weights, data, args.cache_dir, args.threads, args.device)
        print(f"drift reference of {meta[drift.REFERENCE_KEY]['n']} validation images written to {metadata_path(args.weights)}")
        return 0
    meta = calibrate(args.weights, data, args.cache_dir, args.threads, args.device,
                     parse_settings(args.preprocessing))
    fitted = meta["calibration"]
    print(f"P(fake) = sigmoid({fitted['scale']:.4f} * logit + {fitted['shift']:+.4f}); threshold {meta['threshold']:.4f}; "
          f"written to {metadata_path(args.weights)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
