"""Grad-CAM (Selvaraju et al. 2017) for the detector: where in the face crop the "fake" logit looks.

Uses the model's split into ``forward_features`` (last feature map) and ``forward_head`` (pooling + classifier), so
it needs the eager PyTorch model; compiled artifacts cannot be differentiated.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# blue -> cyan -> yellow -> red; drawn here so the archive needs no plotting library
_RAMP = np.array([[0, 0, 128], [0, 128, 255], [0, 255, 255], [255, 255, 0], [255, 64, 0], [128, 0, 0]], float)


def grad_cam(model, crop: torch.Tensor) -> np.ndarray:
    """(1, 3, S, S) crop in [0, 1] -> (S, S) map in [0, 1] for the fake logit."""
    with torch.enable_grad():
        features = model.forward_features(crop).detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(model.forward_head(features).sum(), features)
    weights = gradient.mean(dim=(2, 3), keepdim=True)  # channel importance
    cam = torch.relu((weights * features).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=crop.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    peak = cam.max()
    return (cam / peak if peak > 0 else torch.zeros_like(cam)).detach().float().cpu().numpy()


def colorize(cam: np.ndarray) -> np.ndarray:
    """[0, 1] map -> RGB uint8."""
    position = np.clip(cam, 0, 1) * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    frac = (position - low)[..., None]
    return (_RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac).astype(np.uint8)


def overlay_png(crop: torch.Tensor, cam: np.ndarray, alpha: float = 0.45) -> bytes:
    """The crop with the heatmap blended over it, as PNG bytes of the crop's size."""
    rgb = crop[0].permute(1, 2, 0).detach().float().cpu().numpy() * 255
    blended = ((1 - alpha) * rgb + alpha * colorize(cam)).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(blended).save(buffer, format="PNG")
    return buffer.getvalue()


def explain(model, crop: torch.Tensor) -> dict:
    """The explanation part of an answer for one crop."""
    png = overlay_png(crop, grad_cam(model, crop))
    return {
        "method": "grad-cam",
        "target": "fake logit at the last feature map",
        "heatmap_png": base64.b64encode(png).decode("ascii"),
        "size": [int(crop.shape[-1]), int(crop.shape[-2])],
    }
