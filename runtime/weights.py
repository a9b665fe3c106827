"""Weights on disk: ``<name>.safetensors`` (tensors only) beside ``<name>.json`` (everything else).

The JSON metadata is the single source of truth for serving: architecture, input size, face-crop
settings and the decision threshold chosen on validation. Depends on torch and safetensors only:
it travels inside the TorchServe archive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import torch
from safetensors.torch import load_file, save_file

from torch import nn

from runtime.preprocessing import PreprocessSettings

from runtime.model import model_from_config
from runtime.verdict import DEFAULT_THRESHOLD

METADATA_VERSION = 1


@dataclass(frozen=True)
class Calibration:
    """P(fake) = sigmoid(scale * logit + shift): Platt scaling fitted on the validation split, so
    that P(fake) reads as a frequency; the identity (plain sigmoid) for weights without it. Monotonic:
    it changes no ranking (AUC) and, with the threshold chosen after it, no decision."""

    scale: float = 1.0
    shift: float = 0.0

    @classmethod
    def from_metadata(cls, meta: dict) -> "Calibration":
        fitted = meta.get("calibration") or {}
        return cls(float(fitted.get("scale", 1.0)), float(fitted.get("shift", 0.0)))

    def to_metadata(self) -> dict:
        return {"method": "platt", "scale": self.scale, "shift": self.shift, "fitted_on": "validation"}

    def probability(self, logits):
        """Logits (a torch tensor or a numpy array) -> P(fake), same type."""
        if isinstance(logits, torch.Tensor):
            return torch.sigmoid(logits * self.scale + self.shift)
        return 1.0 / (1.0 + np.exp(-(np.asarray(logits, dtype=np.float64) * self.scale + self.shift)))


def metadata_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def save_weights(model: nn.Module, path: str | Path, metadata: dict | None = None) -> Path:
    """Write the state dict as safetensors and the metadata (with the architecture) as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt", "architecture": model.config.size})
    meta = {
        "metadata_version": METADATA_VERSION,
        "architecture": model.config.to_dict(),
        "threshold": DEFAULT_THRESHOLD,
        "preprocessing": PreprocessSettings(model.config.input_size).to_metadata(),
        "labels": {"0": "real", "1": "fake"},
        **(metadata or {}),
    }
    metadata_path(path).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def load_metadata(path: str | Path) -> dict:
    return json.loads(metadata_path(path).read_text())


def load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode, metadata) from a ``.safetensors`` file and its JSON sidecar."""
    meta = load_metadata(path)
    model = model_from_config(meta["architecture"])
    model.load_state_dict(load_file(str(path), device=str(map_location)))
    return model.to(map_location).eval(), meta
