"""TensorRT engines built from the ONNX artifact with TensorRT's Python builder: ``model.engine``
(FP32) and ``model.fp16.engine`` (FP16), each with one optimisation profile over the batch range.

Precision comes from the ONNX file itself (strongly typed network): the FP16 engine is built from
``model.fp16.onnx``, whose weights and compute are float16 behind float32 I/O. That works on TensorRT
10 and 11 alike (11 removed the weak-typing ``BuilderFlag.FP16``). TF32 is switched off so that
"fp32" means FP32 and meets the FP32 parity bound.

Engines run through serving's ``runtime.backends.TensorRTBackend``. Only usable where ``tensorrt`` imports and CUDA is available; ``unavailable_reason()`` says why not.
"""

from __future__ import annotations

from pathlib import Path

import torch

from runtime.artifacts import INPUT_NAME


def unavailable_reason() -> str | None:
    """None when engines can be built here, otherwise one line saying why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt Python package is not installed (pip install tensorrt on a CUDA machine)"
    if not torch.cuda.is_available():
        return "no CUDA device is available (TensorRT engines need an NVIDIA GPU)"
    return None


def _logger():
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    input_size: int,
    min_batch: int,
    opt_batch: int,
    max_batch: int,
    workspace_gib: float = 4.0,
) -> Path:
    """Parse the ONNX file, build a serialized engine for batch sizes [min_batch, max_batch]
    (kernels tuned for opt_batch), and write it."""
    import tensorrt as trt

    logger = _logger()
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # TensorRT 10; always on in 11
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    shape = (3, input_size, input_size)
    profile.set_shape(INPUT_NAME, (min_batch, *shape), (opt_batch, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    engine_path = Path(engine_path)
    engine_path.write_bytes(bytes(serialized))
    return engine_path
