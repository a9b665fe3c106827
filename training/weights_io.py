"""Weights on disk: ``<name>.safetensors`` (tensors only) beside ``<name>.json`` (everything else).

The JSON metadata is the single source of truth for serving: architecture, input size, face-crop
settings and the decision threshold chosen on validation. Depends on torch and safetensors only:
it travels inside the TorchServe archive.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from torch import nn

from handler.preprocessing import PreprocessSettings

from training.model import model_from_config

METADATA_VERSION = 1


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
        "threshold": 0.5,
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
