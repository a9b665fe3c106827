"""Latency percentiles, computed one way for every benchmark.

Reports nest them under a ``latency_ms`` key as ``{"p50": ..., "p90": ..., "p99": ...}`` (the
committed summaries under ``benchmarks/reports/`` read that way); the few flat rows (soak windows,
the records-cost rounds) name them ``p50_ms`` and so on, with ``suffix="_ms"``.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

POINTS = (50, 90, 99)  # the percentiles most reports show
POINTS_WITH_P95 = (50, 90, 95, 99)  # the model and load sweeps add p95


def latency_percentiles(samples: Iterable[float], points: Iterable[int] = POINTS, *, digits: int | None = None,
                        suffix: str = "") -> dict:
    """``{"p50": ..., "p90": ..., "p99": ...}`` of ``samples`` (in whatever unit they come: ms
    unless the caller says), rounded to ``digits`` when given; ``{}`` when there are none."""
    values = np.asarray(list(samples) if not isinstance(samples, np.ndarray) else samples, dtype=np.float64)
    points = tuple(points)
    if values.size == 0:
        return {}
    found = np.percentile(values, points)
    return {f"p{q}{suffix}": float(v) if digits is None else round(float(v), digits) for q, v in zip(points, found)}
