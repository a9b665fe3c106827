"""The model registry: every architecture by size name, built from a size or from the config stored
in a weights file. One module per family (``runtime/xception_hybrid.py``, ``runtime/face_hybrid.py``),
each with ``forward_features`` (the last feature map, Grad-CAM's target) and ``forward_head``.
"""

from __future__ import annotations

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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
