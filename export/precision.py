"""Precision variants that keep the float32 I/O contract."""

from __future__ import annotations

import copy

import torch
from torch import nn

# the FP16 wrapper lives beside the model: the serving archive carries it for fp16 eager too
from training.model import HalfPrecision


def with_precision(model: nn.Module, precision: str) -> nn.Module:
    """The model to export for ``precision``; the original model is left untouched."""
    if precision == "fp32":
        return model
    if precision == "fp16":
        return HalfPrecision(copy.deepcopy(model)).eval()
    raise ValueError(f"unknown precision {precision!r}; expected fp32 or fp16")


def supports_fp16(device: str | torch.device) -> bool:
    """FP16 artifacts are built only where FP16 kernels are fast and complete: CUDA."""
    return torch.device(device).type == "cuda"
