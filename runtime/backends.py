"""One loader per artifact kind; every backend has the model's contract.

A backend is a callable: float32 RGB in [0, 1] of shape (N, 3, S, S) -> logits of shape (N,) as a
float32 CPU tensor; ``outputs`` also gives the kind logits (N, K) of a model with a kind head. The
handler never needs to know which runtime computed them.

This module travels inside the TorchServe archive; it imports each runtime only when that backend is
asked for, so an archive needs only the runtime of its own artifact.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from runtime.artifacts import ARTIFACTS, INPUT_NAME, OUTPUT_NAME, PRECISIONS
from runtime.sessions import ort_session

logger = logging.getLogger(__name__)


@contextmanager
def exact_fp32(active: bool = True) -> Iterator[None]:
    """TF32 off for cuDNN convolutions and CUDA matmuls inside the block, the flags restored after:
    a backend's CUDA FP32 calls run in it, so creating or calling a backend changes nothing
    process-wide. ``active`` False: nothing changes."""
    if not active:
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class Backend:
    """Runs a batch through one artifact. Subclasses implement ``_run`` on a float32 tensor on
    ``device``; every exported artifact takes float32, fp16 ones cast inside (docs/ARCHITECTURE.md)."""

    kind = "?"

    def __init__(self, device: torch.device, precision: str):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        if precision == "fp16" and device.type != "cuda":
            raise ValueError("fp16 artifacts run on CUDA only")
        self.device = device
        self.precision = precision
        # FP32 means FP32 on CUDA, as in export and parity (cuDNN convolutions default to TF32): the
        # calls run with TF32 off (exact_fp32), and the process-wide flags are left as they were
        self.exact_fp32 = device.type == "cuda" and precision == "fp32"

        # the batch sizes the artifact accepts (AOTInductor and TensorRT refuse others)
        self.min_batch, self.max_batch = 1, None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits for any number of rows."""
        return self.outputs(batch)[0]

    def outputs(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits (N,), kind logits (N, K) or None without a kind head) for any number of rows:
        split into chunks the artifact accepts, short chunks padded."""
        step = self.max_batch or max(len(batch), 1)
        logits, kinds = [], []
        with torch.inference_mode(), exact_fp32(self.exact_fp32):
            for start in range(0, len(batch), step):
                chunk = batch[start : start + step]
                rows = len(chunk)
                if rows < self.min_batch:  # repeat the last row; its extra outputs are dropped
                    chunk = torch.cat([chunk, chunk[-1:].expand(self.min_batch - rows, *chunk.shape[1:])])
                chunk_logits, chunk_kinds = self._forward(chunk)
                logits.append(chunk_logits[:rows])
                if chunk_kinds is not None:
                    kinds.append(chunk_kinds[:rows])
        return (torch.cat(logits) if logits else torch.empty(0)), (torch.cat(kinds) if kinds else None)

    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = batch.to(self.device, torch.float32, non_blocking=True).contiguous()
        return split_outputs(self._run(x))

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def split_outputs(out) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An artifact's outputs (one tensor, or logits then kind logits) as float32 CPU tensors."""
    logits, kinds = (out[0], out[1] if len(out) > 1 else None) if isinstance(out, (list, tuple)) else (out, None)
    return logits.reshape(-1).float().cpu(), (None if kinds is None else kinds.float().cpu())


class EagerBackend(Backend):
    """The PyTorch module of ``runtime.model``; also the one Grad-CAM can differentiate."""

    kind = "eager"

    def __init__(self, path: Path, device: torch.device, precision: str):
        super().__init__(device, precision)
        from runtime.model import served
        from runtime.precision import with_precision
        from runtime.weights import load_weights

        model, _ = load_weights(path, map_location=device)
        # channels-last: about 1.8x faster depthwise convolutions on CPU (measured), same numbers
        model = model.to(memory_format=torch.channels_last).eval()
        # fp16: the same wrapper as the exported FP16 artifacts (DFT channel kept in float32); with a
        # kind head, the same two outputs as the artifacts
        self.model = served(with_precision(model, precision), model)

    def _run(self, x):
        return self.model(x.contiguous(memory_format=torch.channels_last))


class TorchScriptBackend(Backend):
    kind = "torchscript"

    def __init__(self, path: Path, device: torch.device, precision: str):
        super().__init__(device, precision)
        with warnings.catch_warnings():  # torch.jit's deprecation notice, once per worker
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            self.module = torch.jit.load(str(path), map_location=device).eval()

    def _run(self, x):
        return self.module(x)


def onnx_session(path: Path, device: torch.device | str = "cpu", threads: int = 0):
    """The model's onnxruntime session (export checks, parity, serving, benchmarks), set up as every
    session is (runtime/sessions.py): the CUDA provider on a CUDA device, with TF32 off so FP32 means FP32; ``threads`` 0 = onnxruntime's default.
    Raises when a CUDA device is asked for and this onnxruntime has no CUDA provider."""
    import onnxruntime as ort

    device = torch.device(device)
    providers: list = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("onnxruntime has no CUDA provider here; install onnxruntime-gpu to run ONNX on CUDA")
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0, "use_tf32": 0}))
    return ort_session(path, providers, threads)


class OnnxBackend(Backend):
    """onnxruntime. On a CUDA device without onnxruntime's CUDA provider it runs on the CPU and says
    so (``device`` becomes cpu), rather than failing the worker or claiming a GPU it does not use."""

    kind = "onnx"

    def __init__(self, path: Path, device: torch.device, precision: str, threads: int = 1):
        super().__init__(device, precision)
        try:
            self.session = onnx_session(path, device, threads)
        except RuntimeError as exc:
            if device.type != "cuda" or precision != "fp32":
                raise
            logger.warning("%s: ONNX runs on the CPU", exc)
            self.device = torch.device("cpu")
            self.session = onnx_session(path, self.device, threads)

    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        array = batch.to(torch.float32).contiguous().numpy()
        return split_outputs([torch.from_numpy(out) for out in self.session.run(None, {INPUT_NAME: array})])


class AotiBackend(Backend):
    """A torch.export / AOTInductor package (``.pt2``) compiled for this device."""

    kind = "aoti"

    def __init__(self, path: Path, device: torch.device, precision: str):
        super().__init__(device, precision)
        from torch._inductor import aoti_load_package

        self.runner = aoti_load_package(str(path))

    def _run(self, x):
        return self.runner(x)


class TensorRTBackend(Backend):
    """A serialised TensorRT engine run with the TensorRT runtime API on torch-owned CUDA memory."""

    kind = "tensorrt"

    def __init__(self, path: Path, device: torch.device, precision: str):
        if device.type != "cuda":
            raise ValueError("TensorRT engines need a CUDA device")
        super().__init__(device, precision)
        import tensorrt as trt

        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialise {path} (built for another TensorRT or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        # logits first, then kind logits where the model has them (the ONNX graph's output order)
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.output_names = sorted(outputs, key=lambda name: name != OUTPUT_NAME)
        self.input_dtype = self._torch_dtype(self.engine.get_tensor_dtype(self.input_name))
        self.output_dtypes = [self._torch_dtype(self.engine.get_tensor_dtype(n)) for n in self.output_names]
        # a stream of our own: TensorRT synchronises extra on the legacy default stream
        self.stream = torch.cuda.Stream(device)

    def _torch_dtype(self, trt_dtype) -> torch.dtype:
        return {self.trt.float32: torch.float32, self.trt.float16: torch.float16}[trt_dtype]

    def _run(self, x):
        x = x.to(self.input_dtype).contiguous()
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # x is ready before TensorRT reads it
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        with torch.cuda.stream(self.stream):
            outs = [torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device=self.device)
                    for name, dtype in zip(self.output_names, self.output_dtypes)]
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        for name, out in zip(self.output_names, outs):
            self.context.set_tensor_address(name, out.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        return outs


LOADERS: dict[str, Callable[..., Backend]] = {
    "eager": EagerBackend,
    "torchscript": TorchScriptBackend,
    "onnx": OnnxBackend,
    "aoti": AotiBackend,
    "tensorrt": TensorRTBackend,
}


def detect_backend(model_dir: Path) -> str:
    """The backend an archive holds when its config does not say: the first artifact present,
    compiled formats first (an archive may also carry the eager weights for explanations)."""
    for kind in ("tensorrt", "aoti", "onnx", "torchscript", "eager"):
        if (model_dir / ARTIFACTS[kind]).is_file():
            return kind
    raise FileNotFoundError(f"no model artifact in {model_dir}; expected one of {sorted(ARTIFACTS.values())}")


def load_backend(
    kind: str,
    path: Path,
    device: torch.device,
    precision: str = "fp32",
    threads: int = 1,
    min_batch: int = 1,
    max_batch: int | None = None,
) -> Backend:
    """The backend for one artifact; ``min_batch``/``max_batch`` are the batch sizes it was exported for."""
    if kind not in LOADERS:
        raise ValueError(f"unknown backend {kind!r}; known: {', '.join(LOADERS)}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{kind} artifact not found: {path}")
    if max_batch is not None and not 1 <= min_batch <= max_batch:
        raise ValueError(f"need 1 <= min_batch <= max_batch, got {min_batch} and {max_batch}")
    if kind == "onnx":
        backend = OnnxBackend(Path(path), device, precision, threads=threads)
    else:
        backend = LOADERS[kind](Path(path), device, precision)
    backend.min_batch, backend.max_batch = min_batch, max_batch
    return backend
