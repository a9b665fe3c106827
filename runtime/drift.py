"""The distribution of P(fake) that drift is measured against: training keeps it, serving compares.

Calibration (``training/calibrate.py``) stores a histogram of the validation split's calibrated
P(fake) in the weights' metadata (``REFERENCE_KEY``), in fixed bins (``EDGES``), so the records'
``quality`` command (``handler/quality.py``) can compare the live P(fake) with what the model saw on
validation: the population stability index, ``psi``. Shared by both sides, so one set of bins."""

from __future__ import annotations

import numpy as np

REFERENCE_KEY = "validation_fake_probability"
BINS = 10
EDGES = np.linspace(0.0, 1.0, BINS + 1)
EPSILON = 1e-4  # a share of an empty bin, so the index stays finite
# the usual reading of the index: under 0.1 stable, 0.1 to 0.25 a moderate shift, over 0.25 a large one
PSI_MODERATE, PSI_LARGE = 0.1, 0.25


def histogram(probabilities) -> list[int]:
    """Counts of P(fake) in the fixed bins (the last one closed at 1)."""
    counts, _ = np.histogram(np.clip(np.asarray(probabilities, dtype=float), 0.0, 1.0), bins=EDGES)
    return [int(c) for c in counts]


def reference(probabilities, split: str = "val") -> dict:
    """The metadata entry: the bins, the counts, how many and from which split."""
    counts = histogram(probabilities)
    return {"edges": [round(float(e), 6) for e in EDGES], "counts": counts, "n": int(sum(counts)), "split": split}


def psi(expected_counts, actual_counts) -> float:
    """Population stability index of ``actual`` against ``expected`` (counts over the same bins):
    sum over bins of (a - e) * ln(a / e), with shares; 0 when the two are alike."""
    e = np.asarray(expected_counts, dtype=float)
    a = np.asarray(actual_counts, dtype=float)
    e = np.maximum(e / max(e.sum(), 1.0), EPSILON)
    a = np.maximum(a / max(a.sum(), 1.0), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))
