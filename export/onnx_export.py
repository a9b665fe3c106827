"""ONNX: ``model.onnx`` with a dynamic batch axis, weights embedded, checked, and run once in onnxruntime.

Exported with torch's dynamo exporter. The model computes its frequency channel with DFT matrix
products, so the graph must not contain ONNX's DFT/STFT ops (TensorRT has no implementation of them);
the export fails if one slips in.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from runtime.artifacts import BATCH_AXIS, INPUT_NAME, KIND_OUTPUT_NAME, OUTPUT_NAME
from runtime.backends import onnx_session

MIN_OPSET = 18
# Spectral ops TensorRT and several runtimes lack; the model is built to avoid them.
FFT_OPS = frozenset({"DFT", "STFT", "MelWeightMatrix", "FFT", "IFFT", "RFFT", "IRFFT"})


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    min_batch: int,
    max_batch: int,
    opset: int = MIN_OPSET,
) -> Path:
    """Export, embed the weights in the single file, check the graph, and run it at both batch ends.
    A module that returns (logits, kind logits) gets the second output named ``kind_logits``."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is below the minimum {MIN_OPSET}")
    path = Path(path)
    with torch.no_grad():
        names = [OUTPUT_NAME, KIND_OUTPUT_NAME] if isinstance(model(example), tuple) else [OUTPUT_NAME]
    batch = torch.export.Dim(BATCH_AXIS, min=min_batch, max=max(max_batch, min_batch + 1))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    check_onnx(path)
    session = onnx_session(path)
    size = example.shape[-1]
    for n in sorted({min_batch, max_batch}):
        outputs = session.run(names, {INPUT_NAME: np.random.rand(n, 3, size, size).astype(np.float32)})
        if outputs[0].shape != (n,):
            raise RuntimeError(f"ONNX model returned shape {outputs[0].shape} for batch {n}, expected ({n},)")
        if len(outputs) > 1 and (outputs[1].ndim != 2 or outputs[1].shape[0] != n):
            raise RuntimeError(f"ONNX model returned kind logits of shape {outputs[1].shape} for batch {n}")
    return path


def check_onnx(path: Path) -> onnx.ModelProto:
    """onnx.checker with full shape inference, plus the no-FFT and single-file rules."""
    path = Path(path)
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise RuntimeError(f"{path.name} stores {len(external)} tensors as external data; expected one file")
    found = fft_ops(model)
    if found:
        raise RuntimeError(f"{path.name} contains FFT ops {sorted(found)}; TensorRT cannot run them")
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise RuntimeError(f"{path.name} uses opset {opset}, expected >= {MIN_OPSET}")
    return model


def default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def op_types(model: onnx.ModelProto) -> set[str]:
    """Every op type in the graph, its subgraphs (If/Loop/Scan bodies) and its local functions."""
    types: set[str] = set()

    def visit(nodes):
        for node in nodes:
            types.add(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g.node)
                for graph in attr.graphs:
                    visit(graph.node)

    visit(model.graph.node)
    for function in model.functions:
        visit(function.node)
    return types


def fft_ops(model: onnx.ModelProto) -> set[str]:
    return op_types(model) & FFT_OPS
