"""Evaluate weights on a data split: ``python -m training.evaluate --weights W --data DIR``.

Uses the split recorded in the weights' metadata (same seed and fractions as training), so the
default ``--split test`` is the held-out test set the model never saw. Writes ``metrics.json``,
``predictions.csv`` and PNG plots (ROC, confusion matrix, training curves when the log is found).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from training.data import CropCache, CropDataset, CropSettings, SplitSpec, discover
from training.metrics import binary_metrics
from training.plots import plot_confusion, plot_roc, plot_training_curves
from training.train import predict, resolve_device
from training.weights_io import load_weights


def evaluate(weights: Path, data: Path, split: str, out_dir: Path, cache_dir: str, threads: int, batch_size: int,
             device: str = "auto", threshold: float | None = None, log_csv: Path | None = None) -> dict:
    torch.set_num_threads(threads)
    device = resolve_device(device)
    model, meta = load_weights(weights, map_location=device)
    split_meta = meta.get("data", {}).get("split", {})
    spec = SplitSpec(split_meta.get("val", 0.15), split_meta.get("test", 0.15), split_meta.get("seed", 0))
    samples = discover(data, spec)[split]
    if not samples:
        raise SystemExit(f"split '{split}' of {data} is empty")

    pre = meta.get("preprocessing", {})
    detector = {k: pre[k] for k in ("score_threshold", "nms_threshold", "max_side") if k in pre}
    settings = CropSettings(pre.get("input_size", model.config.input_size), pre.get("margin", 0.3), **detector)
    crops, skipped = CropCache(cache_dir, settings, threads=threads).prepare(samples, split)
    loader = DataLoader(CropDataset(crops), batch_size=batch_size, shuffle=False)
    y, p, loss = predict(model, loader, device, desc=f"evaluate {split}")

    threshold = meta.get("threshold", 0.5) if threshold is None else threshold
    metrics = binary_metrics(y, p, threshold)
    report = {
        "weights": str(weights),
        "data": str(data),
        "split": split,
        "loss": loss,
        "skipped": [str(s.source) for s in skipped],
        **metrics,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    with (out_dir / "predictions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "fake_probability", "predicted"])
        for crop, label, prob in zip(crops, y, p):
            writer.writerow([crop.source, int(label), f"{prob:.6f}", int(prob >= threshold)])

    plot_roc(y, p, out_dir / "roc.png", metrics["roc_auc"], metrics["eer"], title=f"ROC ({split} split)")
    plot_confusion(metrics["confusion_matrix"], out_dir / "confusion_matrix.png",
                   title=f"{split} split, threshold {threshold:.3f}")
    log_csv = log_csv or (Path(meta["training"]["log"]) if "training" in meta else None)
    if log_csv and Path(log_csv).exists():
        plot_training_curves(log_csv, out_dir / "training_curves.png")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=Path("weights/default.safetensors"))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", choices=["train", "val", "test"], default="test")
    parser.add_argument("--out", type=Path, help="report folder; default build/eval/<weights name>-<split>")
    parser.add_argument("--log", type=Path, help="training log.csv for the curves (default: from the metadata)")
    parser.add_argument("--threshold", type=float, help="override the threshold stored in the metadata")
    parser.add_argument("--cache-dir", default="build/crops")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    out = args.out or Path("build/eval") / f"{args.weights.stem}-{args.split}"
    report = evaluate(args.weights, args.data, args.split, out, args.cache_dir, args.threads, args.batch_size,
                      args.device, args.threshold, args.log)
    keys = ["n", "threshold", "accuracy", "precision", "recall", "f1", "roc_auc", "average_precision", "eer"]
    print("\n".join(f"{k:>18}: {report[k]:.4f}" if isinstance(report[k], float) else f"{k:>18}: {report[k]}" for k in keys))
    print(f"{'confusion_matrix':>18}: {report['confusion_matrix']}  (rows true real/fake, columns predicted)")
    print(f"wrote {out}/metrics.json and plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
