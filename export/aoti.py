"""torch.export + AOTInductor: ``model.pt2``, loaded with ``torch._inductor.aoti_load_package``.

The successor of TorchScript: the graph is captured with a symbolic batch dimension, then compiled
ahead of time to a shared library for the export device (a CPU package runs on CPU only, a CUDA
package on CUDA only).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from runtime.artifacts import BATCH_AXIS


def export_aoti(model: nn.Module, example: torch.Tensor, path: Path, min_batch: int, max_batch: int) -> Path:
    """Capture with batch in [min_batch, max_batch] and compile to a .pt2 package for example's device."""
    path = Path(path)
    batch = torch.export.Dim(BATCH_AXIS, min=min_batch, max=max(max_batch, min_batch + 1))
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        written = torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return Path(written)
