"""The model registry: every architecture by size name, built from a size or from the config stored
in a weights file. One module per family (``runtime/xception_hybrid.py``, ``runtime/face_hybrid.py``),
each with ``forward_features`` (the last feature map, Grad-CAM's target) and ``forward_head``.
"""

from __future__ import annotations

import torch
from torch import nn

from runtime import face_hybrid, xception_hybrid
from runtime.face_hybrid import FaceHybridConfig
from runtime.xception_hybrid import ModelConfig

# `family` in a stored config says which class builds it; weights older than families are Xception
FAMILIES = {
    xception_hybrid.FAMILY: (xception_hybrid.ModelConfig, xception_hybrid.HybridAttentionNet),
    face_hybrid.FAMILY: (face_hybrid.FaceHybridConfig, face_hybrid.FaceHybridNet),
}
ALL_SIZES = {**xception_hybrid.SIZES, **face_hybrid.SIZES}


def build_model(size: str | ModelConfig | FaceHybridConfig = "small", **overrides) -> nn.Module:
    """A fresh model by size name (``small``, ``base``, ``face``) or config, with field overrides."""
    config = ALL_SIZES[size] if isinstance(size, str) else size
    if overrides:
        config = type(config).from_dict({**config.to_dict(), **overrides})
    return FAMILIES[getattr(config, "family", xception_hybrid.FAMILY)][1](config)


def model_from_config(architecture: dict) -> nn.Module:
    """The model described by a stored ``architecture`` dict (weights metadata); older dicts have no family."""
    config_class, model_class = FAMILIES[architecture.get("family", xception_hybrid.FAMILY)]
    return model_class(config_class.from_dict(architecture))


class WithKindOutput(nn.Module):
    """A model with a kind head as its artifacts compute it: (logits (N,), kind logits (N, K))."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_with_kinds(rgb)

    # the binary path, for what differentiates the verdict (Grad-CAM)
    def forward_features(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(rgb)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.model.forward_head(features, pre_logits=pre_logits)


def has_kind_head(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "kind_classes", 0))


def served(model: nn.Module, reference: nn.Module | None = None) -> nn.Module:
    """What an artifact is exported from and the eager backend runs: ``model`` itself, or with the
    kind head as a second output when ``reference`` (the plain model ``model`` wraps, if any) has one."""
    return WithKindOutput(model) if has_kind_head(reference or model) else model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
