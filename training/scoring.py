"""Scores over a data loader and ROC AUC per data root: what validation, the final metrics,
calibration and the evaluation share."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training.data import CachedCrop
from training.metrics import binary_metrics


@torch.no_grad()
def predict(model, loader, device: torch.device, amp: bool = False, desc: str = "eval") -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, logits, mean BCE loss) over a loader; ``Calibration.probability`` turns logits into P(fake)."""
    model.eval()
    labels, outputs, total = [], [], 0.0
    for images, targets in tqdm(loader, desc=desc, unit="batch", leave=False):
        images, targets = images.to(device, non_blocking=True), targets.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(images).float()
        total += F.binary_cross_entropy_with_logits(logits, targets, reduction="sum").item()
        labels.append(targets.cpu().numpy())
        outputs.append(logits.cpu().numpy())
    y = np.concatenate(labels).astype(int) if labels else np.zeros(0, int)
    return y, (np.concatenate(outputs) if outputs else np.zeros(0)), total / max(1, len(y))


def auc_or_nan(y: np.ndarray, p: np.ndarray) -> float:
    return binary_metrics(y, p)["roc_auc"] if len(y) and len(np.unique(y)) == 2 else float("nan")


def dataset_names(items: list[CachedCrop]) -> list[str]:
    return sorted({item.dataset for item in items})


def per_dataset_auc(items: list[CachedCrop], y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC AUC per data root, in ``items`` order."""
    names = np.array([item.dataset for item in items])
    return {name: auc_or_nan(y[names == name], p[names == name]) for name in dataset_names(items)}
