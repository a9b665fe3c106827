"""Fit P(fake) calibration for existing weights: ``python -m training.calibrate --weights W --data DIR [DIR ...]``.

Training does this itself at the end of a run; this command does it for weights trained before it
did. Platt scaling is fitted on the validation split recorded in the metadata, the decision threshold
is chosen again on the calibrated validation probabilities (same method as training), and the
metadata's ``calibration``, ``threshold`` and validation/test metrics are rewritten. The tensors are
not touched: rankings, AUCs and decisions stay what they were.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from runtime.preprocessing import PreprocessSettings
from training.data import CropCache, CropDataset
from training.evaluate import split_samples
from training.metrics import binary_metrics, choose_threshold, fit_platt
from training.train import as_roots, per_dataset_auc, predict, resolve_device
from runtime.weights import Calibration, load_weights, metadata_path


def split_logits(model, meta: dict, roots: list[Path], split: str, cache_dir: str, threads: int, device) -> tuple:
    """(crops, labels, logits) of one split over all roots."""
    cache = CropCache(cache_dir, PreprocessSettings.from_metadata(meta), threads=threads)
    crops = []
    for name, samples in split_samples(meta, roots, split).items():
        prepared, _ = cache.prepare(samples, split, name)
        crops += prepared
    y, z, _ = predict(model, DataLoader(CropDataset(crops), batch_size=64), device, desc=f"{split} logits")
    return crops, y, z


def calibrate(weights: Path, data, cache_dir: str = "build/crops", threads: int = 2, device: str = "auto") -> dict:
    torch.set_num_threads(threads)
    device = resolve_device(device)
    model, meta = load_weights(weights, map_location=device)
    roots = as_roots(data)
    crops, y, z = split_logits(model, meta, roots, "val", cache_dir, threads, device)
    calibration = Calibration(*fit_platt(z, y))
    p = calibration.probability(z)
    threshold = choose_threshold(y, p, meta.get("threshold_method", "youden"))
    metrics = dict(meta.get("metrics", {}))
    metrics["val"] = binary_metrics(y, p, threshold)
    if len(roots) > 1:
        metrics["val"]["per_dataset_auc"] = per_dataset_auc(crops, y, z)
    test_crops, y_test, z_test = split_logits(model, meta, roots, "test", cache_dir, threads, device)
    if len(y_test):
        metrics["test"] = binary_metrics(y_test, calibration.probability(z_test), threshold)
        if len(roots) > 1:
            metrics["test"]["per_dataset_auc"] = per_dataset_auc(test_crops, y_test, z_test)
    meta.update(calibration=calibration.to_metadata(), threshold=threshold, metrics=metrics)
    metadata_path(weights).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=Path("weights/default.safetensors"))
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--cache-dir", default="build/crops")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    meta = calibrate(args.weights, args.data if len(args.data) > 1 else args.data[0], args.cache_dir, args.threads, args.device)
    fitted = meta["calibration"]
    print(f"P(fake) = sigmoid({fitted['scale']:.4f} * logit + {fitted['shift']:+.4f}); threshold {meta['threshold']:.4f}; "
          f"written to {metadata_path(args.weights)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
