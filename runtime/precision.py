"""Precision variants that keep the float32 I/O contract: the FP16 wrapper every FP16 artifact
and the FP16 eager backend are built from."""

from __future__ import annotations

import copy

import torch
from torch import nn



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


class HalfPrecision(nn.Module):
    """The model in float16 behind float32 I/O, so an FP16 artifact is a drop-in replacement for the
    FP32 one (same input tensor, same output dtype).

    Input normalisation and the frequency channel stay in float32 and see the float32 input: the DFT
    sums 192 terms per output and takes the log of small high-frequency magnitudes, which float16
    (and float16-rounded pixels) resolve badly: errors above one standard deviation in that channel,
    measured. It costs two small matrix products per image; the convolutions, where the time goes,
    run in float16.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        # kept aside before .half() rounds their constants (the DFT bases, the input statistics)
        frequency = copy.deepcopy(model.frequency) if hasattr(model, "frequency") else None
        kept = {name: buffer.clone() for name, buffer in model.named_buffers(recurse=False)}
        model = model.half()
        for name, buffer in kept.items():
            setattr(model, name, buffer)
        model.cast_entry_layers(frequency)  # each family knows where float32 input meets float16 layers
        self.model = model

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.model(rgb.float()).float()

    def forward_with_kinds(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, kinds = self.model.forward_with_kinds(rgb.float())
        return logits.float(), kinds.float()
