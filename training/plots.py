"""Small PNG figures for evaluation reports and the dataset report (matplotlib, no display)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from sklearn.metrics import roc_curve

DPI = 100


def _save(fig, path: str | Path, dpi: int = DPI) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    # a 256-colour palette keeps plots a few tens of kB, small enough to commit
    with Image.open(path) as image:
        palette = image.convert("RGB").quantize(256)
    palette.save(path, optimize=True)
    return path


def plot_roc(y_true, p_fake, path, auc: float | None = None, eer: float | None = None, title: str = "ROC") -> Path:
    fpr, tpr, _ = roc_curve(y_true, p_fake)
    fig, ax = plt.subplots(figsize=(4, 4))
    label = "model" + (f" (AUC {auc:.3f})" if auc is not None else "")
    ax.plot(fpr, tpr, lw=2, label=label)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    if eer is not None:
        ax.plot([eer], [1 - eer], "o", color="C3", label=f"EER {eer:.3f}")
    ax.set(xlabel="false positive rate (real called fake)", ylabel="true positive rate (fake caught)", title=title,
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_confusion(matrix, path, title: str = "Confusion matrix") -> Path:
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(matrix, cmap="Blues")
    names = ["real", "fake"]
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=names, yticklabels=names, xlabel="predicted", ylabel="true", title=title)
    for i in range(2):
        for j in range(2):
            colour = "white" if matrix[i, j] > matrix.max() / 2 else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=colour, fontsize=12)
    return _save(fig, path)


def plot_training_curves(log_csv, path) -> Path:
    """Loss and validation AUC per epoch from the trainer's CSV log."""
    with Path(log_csv).open() as f:
        rows = list(csv.DictReader(f))
    epoch = [int(r["epoch"]) for r in rows]
    col = lambda k: [float(r[k]) for r in rows]  # noqa: E731
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    left.plot(epoch, col("train_loss"), "o-", label="train")
    left.plot(epoch, col("val_loss"), "o-", label="validation")
    left.set(xlabel="epoch", ylabel="BCE loss", title="Loss")
    left.legend(fontsize=8)
    right.plot(epoch, col("val_auc"), "o-", color="C2", label="val ROC AUC")
    right.plot(epoch, col("train_accuracy"), "o-", color="C0", alpha=0.6, label="train accuracy")
    right.plot(epoch, col("val_accuracy"), "o-", color="C1", alpha=0.6, label="val accuracy (t=0.5)")
    right.set(xlabel="epoch", title="Validation", ylim=(0, 1.02))
    right.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_spectra(spectra: dict[str, np.ndarray], path) -> Path:
    """Mean log-magnitude spectrum per class, plus their difference (fake - real)."""
    names = list(spectra)
    panels = names + (["fake - real"] if {"real", "fake"} <= set(names) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.2))
    for ax, name in zip(np.atleast_1d(axes), panels):
        if name == "fake - real":
            data = spectra["fake"] - spectra["real"]
            limit = np.abs(data).max() or 1.0
            im = ax.imshow(data, cmap="coolwarm", vmin=-limit, vmax=limit)
        else:
            im = ax.imshow(spectra[name], cmap="viridis")
        ax.set(title=f"{name}: mean log|FFT|", xticks=[], yticks=[])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path, dpi=72)  # noisy spectra compress badly: fewer pixels


def plot_roc_curves(curves: dict[str, tuple], path, title: str = "ROC") -> Path:
    """One ROC curve per name: ``{name: (y_true, p_fake, auc)}``."""
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    for name, (y, p, auc) in curves.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, lw=2, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    ax.set(xlabel="false positive rate (real called fake)", ylabel="true positive rate (fake caught)", title=title,
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_reliability(bins: list[dict], ece: float, path, threshold: float | None = None) -> Path:
    """Observed fake rate against mean predicted P(fake) per bin, with the bin counts below."""
    used = [b for b in bins if b["n"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.2, 4.8), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfectly calibrated")
    top.plot([b["mean_predicted"] for b in used], [b["fraction_fake"] for b in used], "o-", label=f"model (ECE {ece:.3f})")
    if threshold is not None:
        top.axvline(threshold, color="C3", lw=1, ls=":", label=f"threshold {threshold:.3f}")
    top.set(ylabel="observed fraction fake", title="Reliability", ylim=(0, 1.02))
    top.legend(fontsize=8, loc="upper left")
    bottom.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["n"] for b in bins], width=0.09, color="C0", alpha=0.6)
    bottom.set(xlabel="predicted P(fake)", ylabel="images", xlim=(0, 1))
    return _save(fig, path)


def plot_robustness(table: dict[str, dict[str, float]], path, title: str = "ROC AUC under perturbations") -> Path:
    """Grouped bars: AUC per perturbation (rows of ``table``) and dataset (its columns)."""
    perturbations = list(table)
    datasets = list(next(iter(table.values())))
    x = np.arange(len(perturbations))
    width = 0.8 / len(datasets)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(perturbations), 3.6))
    for i, name in enumerate(datasets):
        ax.bar(x + (i - (len(datasets) - 1) / 2) * width, [table[p][name] for p in perturbations], width, label=name)
    ax.set_xticks(x, perturbations, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="ROC AUC", title=title, ylim=(0.4, 1.0))
    ax.axhline(0.5, color="grey", lw=1, ls="--")
    ax.legend(fontsize=8, ncol=len(datasets))
    return _save(fig, path)


def plot_face_size(table: dict[str, list[dict]], path, title: str = "ROC AUC against face size") -> Path:
    """One line per data root: AUC at each image scale, placed at the median detected face width."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, rows in table.items():
        rows = [r for r in rows if r["median_face_px"]]
        ax.plot([r["median_face_px"] for r in rows], [r["roc_auc"] for r in rows], "o-", label=name)
    ax.axhline(0.5, color="grey", lw=1, ls="--")
    ax.set(xlabel="median face width the detector found (px)", ylabel="ROC AUC", title=title, ylim=(0.3, 1.0))
    ax.legend(fontsize=8)
    return _save(fig, path)
