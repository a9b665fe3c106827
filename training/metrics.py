"""Binary detection metrics with "fake" (label 1) as the positive class, built on scikit-learn."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from runtime.verdict import BANDS, DEFAULT_THRESHOLD, band

THRESHOLD_METHODS = ("youden", "eer", "f1")


def _both_classes(y_true: np.ndarray) -> bool:
    return len(np.unique(y_true)) == 2


def equal_error_rate(y_true, p_fake) -> tuple[float, float]:
    """(EER, threshold at the EER): where the false-positive and false-negative rates cross,
    linearly interpolated between the two ROC points that bracket the crossing."""
    fpr, tpr, thresholds = roc_curve(np.asarray(y_true), np.asarray(p_fake))
    fnr = 1 - tpr
    diff = fpr - fnr  # rises from -1 to +1 along the curve
    i = int(np.argmax(diff >= 0))
    if i == 0 or diff[i] == 0:
        return float((fpr[i] + fnr[i]) / 2), float(min(thresholds[i], 1.0))
    # crossing between i-1 and i
    t = diff[i - 1] / (diff[i - 1] - diff[i])
    eer = fpr[i - 1] + t * (fpr[i] - fpr[i - 1])
    threshold = min(thresholds[i - 1], 1.0) + t * (thresholds[i] - min(thresholds[i - 1], 1.0))
    return float(eer), float(threshold)


def choose_threshold(y_true, p_fake, method: str = "youden") -> float:
    """Decision threshold on P(fake) picked on validation data.

    youden: maximises TPR - FPR (balanced accuracy); eer: where FPR = FNR; f1: maximises F1.
    """
    y_true, p_fake = np.asarray(y_true), np.asarray(p_fake, dtype=np.float64)
    if not _both_classes(y_true):
        return 0.5
    if method == "eer":
        return equal_error_rate(y_true, p_fake)[1]
    candidates = np.unique(p_fake)
    if method == "youden":
        fpr, tpr, thresholds = roc_curve(y_true, p_fake)
        return float(min(thresholds[int(np.argmax(tpr - fpr))], 1.0))
    if method == "f1":
        scores = [f1_score(y_true, p_fake >= t, zero_division=0) for t in candidates]
        return float(candidates[int(np.argmax(scores))])
    raise ValueError(f"unknown threshold method {method!r}; use one of {THRESHOLD_METHODS}")


def band_cutoffs(y_true, p_fake, threshold: float, precision: float = 0.95) -> dict:
    """The uncertain band around ``threshold``: the lowest P(fake) from which every higher cut-off
    keeps ``precision`` among the images called fake (``likely_fake_from``), and the highest below
    which every lower cut-off keeps it among the images called real (``likely_real_below``). Where
    no cut-off reaches it, that side is empty (1.0 above, 0.0 below). Precision depends on how
    common fakes are; this is the validation split's mix (about half fake)."""
    y_true, p_fake = np.asarray(y_true).astype(int), np.asarray(p_fake, dtype=np.float64)
    order = np.argsort(-p_fake, kind="stable")
    y_sorted, p_sorted = y_true[order], p_fake[order]
    # precision of "fake" for a cut-off at each sorted score (images at or above it)
    fake_precision = np.cumsum(y_sorted) / np.arange(1, len(y_sorted) + 1)
    # the running minimum from the top: the cut-off holds the precision there and at every higher one
    holds = np.minimum.accumulate(fake_precision) >= precision
    fake_from = 1.0
    if holds.any():
        last = int(np.nonzero(holds)[0].max())
        fake_from = max(float(p_sorted[last]), threshold)
    # precision of "real" for a cut-off just above each score, from the bottom up
    rev_y, rev_p = y_sorted[::-1], p_sorted[::-1]
    real_precision = np.cumsum(1 - rev_y) / np.arange(1, len(rev_y) + 1)
    holds = np.minimum.accumulate(real_precision) >= precision
    real_below = 0.0
    if holds.any():
        last = int(np.nonzero(holds)[0].max())
        above = rev_p[last + 1] if last + 1 < len(rev_p) else 1.0
        real_below = min(float((rev_p[last] + above) / 2), threshold)
    return {"likely_real_below": real_below, "likely_fake_from": fake_from, "precision": precision}


def band_shares(y_true, p_fake, cutoffs: dict) -> dict:
    """Per band: its share of the images and the share of fakes in it (what a reviewer meets), by the
    rule serving applies (``runtime.verdict.band``)."""
    y_true = np.asarray(y_true).astype(int)
    names = np.array([band(float(p), cutoffs) for p in p_fake])
    return {name: {"share": float((names == name).mean()) if len(names) else 0.0,
                   "fake_share": float(y_true[names == name].mean()) if (names == name).any() else None}
            for name in BANDS}


def binary_metrics(y_true, p_fake, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Accuracy, precision, recall, F1 at ``threshold``; ROC AUC, AP and EER over all thresholds;
    the confusion matrix as [[TN, FP], [FN, TP]] (rows: true real, true fake)."""
    y_true = np.asarray(y_true).astype(int)
    p_fake = np.asarray(p_fake, dtype=np.float64)
    y_pred = (p_fake >= threshold).astype(int)
    result = {
        "n": int(len(y_true)),
        "n_real": int((y_true == 0).sum()),
        "n_fake": int((y_true == 1).sum()),
        "threshold": float(threshold),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(recall_score(y_true, y_pred, zero_division=0)),
        "f1": float(f1_score(y_true, y_pred, zero_division=0)),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=[0, 1]).tolist(),
    }
    if _both_classes(y_true):
        result["roc_auc"] = float(roc_auc_score(y_true, p_fake))
        result["average_precision"] = float(average_precision_score(y_true, p_fake))
        result["eer"] = equal_error_rate(y_true, p_fake)[0]
    else:  # undefined with one class; keep the keys so consumers need no special case
        result.update(roc_auc=float("nan"), average_precision=float("nan"), eer=float("nan"))
    return result


def fit_platt(logits, y_true) -> tuple[float, float]:
    """(scale, shift) of P(fake) = sigmoid(scale * logit + shift) that maximise the likelihood of the
    labels (Platt scaling: a one-feature logistic regression, practically unregularised)."""
    from sklearn.linear_model import LogisticRegression

    y_true = np.asarray(y_true).astype(int)
    if not _both_classes(y_true):
        return 1.0, 0.0
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(np.asarray(logits, dtype=np.float64).reshape(-1, 1), y_true)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def bootstrap_auc_interval(y_true, p_fake, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the ROC AUC; each resample draws reals and fakes separately
    (stratified), so every resample has both classes and the class balance of the test set."""
    y_true = np.asarray(y_true).astype(int)
    p_fake = np.asarray(p_fake, dtype=np.float64)
    if not _both_classes(y_true):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    real, fake = np.flatnonzero(y_true == 0), np.flatnonzero(y_true == 1)
    labels = np.r_[np.zeros(len(real), int), np.ones(len(fake), int)]
    aucs = np.empty(resamples)
    for i in range(resamples):
        picked = np.r_[rng.choice(real, len(real)), rng.choice(fake, len(fake))]
        aucs[i] = roc_auc_score(labels, p_fake[picked])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(aucs, [tail, 100 - tail])
    return float(low), float(high)


def calibration_bins(y_true, p_fake, bins: int = 10) -> list[dict]:
    """Equal-width bins of P(fake): count, mean predicted probability and observed fake rate."""
    y_true = np.asarray(y_true).astype(float)
    p_fake = np.asarray(p_fake, dtype=np.float64)
    index = np.minimum((p_fake * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        inside = index == b
        n = int(inside.sum())
        rows.append({"low": b / bins, "high": (b + 1) / bins, "n": n,
                     "mean_predicted": float(p_fake[inside].mean()) if n else float("nan"),
                     "fraction_fake": float(y_true[inside].mean()) if n else float("nan")})
    return rows


def expected_calibration_error(y_true, p_fake, bins: int = 10) -> float:
    """ECE: the count-weighted mean gap between predicted probability and observed fake rate per bin."""
    rows = calibration_bins(y_true, p_fake, bins)
    total = sum(r["n"] for r in rows)
    return float(sum(r["n"] * abs(r["mean_predicted"] - r["fraction_fake"]) for r in rows if r["n"]) / max(1, total))
