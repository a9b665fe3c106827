"""TorchScript by tracing: ``model.torchscript.pt``, loaded with ``torch.jit.load``.

Tracing is exact here because ``forward`` has no data-dependent control flow; the trace is checked
at a second batch size so a batch size baked into the graph would be caught at export time.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, check_batch: int) -> Path:
    """Trace ``model`` on ``example`` (N, 3, S, S) and save it; ``check_batch`` is a second batch size
    the trace must reproduce eager results at."""
    check = torch.rand(check_batch, *example.shape[1:], dtype=example.dtype, device=example.device)
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated upstream in favour of torch.export; we still ship it on purpose.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        traced = torch.jit.trace(model, example, check_inputs=[(check,)], check_tolerance=1e-4)
    path = Path(path)
    traced.save(str(path))
    return path
