"""The one onnxruntime session set-up: the model's ONNX backend (``runtime/backends.py``) and the
face detector (``runtime/detector.py``) both build their sessions here, with the same options.

No torch import: the detector runs without it."""

from __future__ import annotations

from pathlib import Path


def ort_session(model: str | Path | bytes, providers: list, threads: int = 0):
    """An onnxruntime session of ``model`` (a file, or the model's bytes) on ``providers`` (names, or (name, options) pairs, first preferred):
    ``threads`` intra-op threads (0 = onnxruntime's default), one inter-op thread, warnings and
    below not logged."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(model) if isinstance(model, Path) else model, options, providers=providers)
