"""Export as a library: weights -> every serving artifact, parity-checked, optionally packed.

    from export.library import ExportOptions, export_all
    result = export_all(ExportOptions(weights=Path("weights/default.safetensors"), formats=("onnx",)))
    result.ok, result.passed, result.failures

``export_all`` writes under ``options.out`` the artifacts (file names in ``runtime/artifacts.py``),
``model.json`` (the weights' metadata, which every archive carries), ``manifest.json`` (what was
built, how, and how long it took) and the parity reports ``parity.json`` / ``parity.md``. An export
or parity failure of one artifact is recorded in ``ExportResult.failures`` and the others go on;
options that cannot work (missing weights, an empty batch range, nothing buildable on this host)
raise ``ExportError`` before anything is built. ``python -m export`` (export/cli.py) and
``export/serving.py`` both call this module.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from runtime.artifacts import BACKENDS, PRECISIONS, Artifact, artifact_name, write_manifest
from runtime.model import served
from runtime.precision import supports_fp16, with_precision

DEFAULT_MAX_BATCH = {"cpu": 32, "cuda": 256}
DEFAULT_OPT_BATCH = 16


class ExportError(Exception):
    """Options that cannot produce an export here; nothing was built."""


def log(message: str) -> None:
    print(message, flush=True)


@dataclass(frozen=True)
class ExportOptions:
    """Every option of ``python -m export``, with its defaults; the field order is the command's
    flag order (``command_line``)."""

    weights: Path = Path("weights/default.safetensors")  # safetensors file with its .json metadata beside it
    formats: tuple[str, ...] = BACKENDS  # tensorrt is skipped with a message where unavailable
    precisions: tuple[str, ...] = ("fp32", "fp16")  # fp16 only on CUDA (skipped with a message elsewhere)
    device: str = "auto"  # cpu, cuda, cuda:N or auto (CUDA when present)
    min_batch: int = 1  # smallest batch the artifacts accept
    max_batch: int | None = None  # largest batch the artifacts accept (None: DEFAULT_MAX_BATCH for the device)
    opt_batch: int = DEFAULT_OPT_BATCH  # batch size TensorRT tunes its kernels for (clamped to the batch range)
    opset: int = 18  # ONNX opset (>= 18)
    trt_workspace_gib: float = 4.0  # TensorRT builder workspace
    out: Path = Path("build/export")  # folder for artifacts and reports
    examples: Path = Path("examples")  # images for the parity check
    parity_images: int = 8  # how many fixed images the parity check uses
    skip_parity: bool = False  # export only (not for release artifacts)
    model_store: Path | None = None  # pack every artifact that passed parity into <dir>/deepfake-detector-<backend>.mar
    threads: int = 0  # CPU threads for torch/onnxruntime (0: default)

    def __post_init__(self):
        object.__setattr__(self, "weights", Path(self.weights))
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "examples", Path(self.examples))
        if self.model_store is not None:
            object.__setattr__(self, "model_store", Path(self.model_store))
        for name, allowed in (("formats", BACKENDS), ("precisions", PRECISIONS)):
            values = tuple(dict.fromkeys(getattr(self, name)))
            unknown = [v for v in values if v not in allowed]
            if unknown or not values:
                raise ExportError(f"{name} must be some of {', '.join(allowed)}; got {list(getattr(self, name))}")
            object.__setattr__(self, name, values)


FLAGS = {"precisions": "--precision"}  # fields whose flag is not --<field-with-dashes>


def command_line(options: ExportOptions) -> str:
    """The ``python -m export`` command equivalent to ``options`` (its non-default flags), for the
    manifest of an export started from Python."""
    words = ["python -m export"]
    defaults = ExportOptions()
    for f in fields(options):
        value = getattr(options, f.name)
        if value == getattr(defaults, f.name):
            continue
        flag = FLAGS.get(f.name, "--" + f.name.replace("_", "-"))
        if isinstance(value, bool):
            words.append(flag)
        else:
            words += [flag, ",".join(value) if isinstance(value, tuple) else str(value)]
    return " ".join(words)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(name).type == "cuda" and not torch.cuda.is_available():
        raise ExportError(f"--device {name}: CUDA is not available on this machine")
    return name


@dataclass
class ExportResult:
    """What one export produced: every artifact built, those that passed parity (all of them when
    parity was skipped), and one line per failure (export, parity or packing)."""

    options: ExportOptions  # with device and max_batch resolved
    artifacts: list[Artifact]
    passed: list[Artifact]
    failures: list[str] = field(default_factory=list)
    manifest: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failures


class Exporter:
    """Produces the artifacts one by one, timing each and recording it for the manifest.
    ``options`` has its device and max_batch resolved (``resolved_options``)."""

    def __init__(self, model, options: ExportOptions, log: Callable[[str], None] = log):
        self.options = options
        self.device = options.device
        self.model = model.to(self.device).eval()
        self.weights = options.weights
        self.out = options.out
        self.log = log
        self.size = model.config.input_size
        # batch 2 for capture: torch.export specialises dimensions whose example size is 1
        self.example = torch.rand(2, 3, self.size, self.size, device=self.device)
        self.artifacts: list[Artifact] = []
        self.failures: list[str] = []

    def run(self, backend: str, precision: str) -> Artifact | None:
        file = artifact_name(backend, precision)
        self.log(f"[export] {backend} {precision} -> {self.out / file} ...")
        start = time.perf_counter()
        try:
            extra = getattr(self, f"_{backend}")(self.out / file, precision) or {}
        except Exception as exc:  # keep going: one broken format must not hide the others' results
            self.failures.append(f"{backend} {precision}: {type(exc).__name__}: {exc}")
            self.log(f"[export] {backend} {precision} FAILED: {type(exc).__name__}: {exc}")
            return None
        seconds = time.perf_counter() - start
        size = (self.out / file).stat().st_size
        o = self.options
        artifact = Artifact(
            backend, precision, file, self.device, self.size, o.min_batch, o.max_batch,
            round(seconds, 2), size, extra=extra,
        )
        self.artifacts.append(artifact)
        self.log(f"[export] {backend} {precision} done in {seconds:.1f} s ({size / 1e6:.1f} MB)")
        return artifact

    def _model(self, precision: str):
        """The module every artifact is made from: the model in ``precision``, with its kind head as
        a second output where it has one."""
        return served(with_precision(self.model, precision), self.model)

    def _eager(self, path: Path, precision: str) -> dict:
        if not path.exists() or not path.samefile(self.weights):
            shutil.copyfile(self.weights, path)
        return {"loaded_with": "runtime.weights.load_weights", "cast_at_load": precision == "fp16"}

    def _torchscript(self, path: Path, precision: str) -> dict:
        from export.torchscript import export_torchscript

        check_batch = 3 if self.options.min_batch == 2 else self.options.min_batch
        export_torchscript(self._model(precision), self.example, path, check_batch)
        return {"method": "trace"}

    def _onnx(self, path: Path, precision: str) -> dict:
        from export.onnx_export import export_onnx

        o = self.options
        export_onnx(self._model(precision), self.example, path, o.min_batch, o.max_batch, o.opset)
        return {"opset": o.opset, "dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}}

    def _aoti(self, path: Path, precision: str) -> dict:
        from export.aoti import export_aoti

        export_aoti(self._model(precision), self.example, path, self.options.min_batch, self.options.max_batch)
        return {"torch": torch.__version__}

    def _tensorrt(self, path: Path, precision: str) -> dict:
        import tensorrt

        from export.tensorrt import build_engine

        onnx_file = self.out / artifact_name("onnx", precision)
        if not any(a.file == onnx_file.name for a in self.artifacts):
            if self.run("onnx", precision) is None:
                raise RuntimeError(f"the {precision} ONNX model it is built from failed to export")
        o = self.options
        opt = min(max(o.opt_batch, o.min_batch), o.max_batch)
        build_engine(onnx_file, path, self.size, o.min_batch, opt, o.max_batch, o.trt_workspace_gib)
        return {
            "tensorrt": tensorrt.__version__,
            "from": onnx_file.name,
            "profile": {"min": o.min_batch, "opt": opt, "max": o.max_batch},
            "gpu": torch.cuda.get_device_name(torch.device(self.device)),
        }


def resolved_options(options: ExportOptions) -> ExportOptions:
    """``options`` with its device and max_batch filled in for this host; ExportError when they
    cannot work."""
    device = resolve_device(options.device)
    max_batch = options.max_batch
    if max_batch is None:
        max_batch = DEFAULT_MAX_BATCH[torch.device(device).type]
    if not 1 <= options.min_batch <= max_batch:
        raise ExportError(f"need 1 <= --min-batch <= --max-batch, got {options.min_batch} and {max_batch}")
    if not options.weights.exists():
        raise ExportError(f"weights not found: {options.weights} (train with `make train` or pass --weights)")
    return replace(options, device=device, max_batch=max_batch)


def set_up_torch(options: ExportOptions) -> None:
    """Threads and, on CUDA, TF32 off for the export (process-wide, as the export command always did)."""
    if options.threads:
        torch.set_num_threads(options.threads)
    if torch.device(options.device).type == "cuda":
        # "fp32" means FP32: TF32 convolutions and matmuls would be compiled into the AOTInductor
        # package and miss the FP32 parity bound; FP16 variants are the fast path.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def buildable(options: ExportOptions, log: Callable[[str], None] = log) -> tuple[list[str], list[str]]:
    """(precisions, formats) of ``options`` that this host can build, saying why for each dropped
    one; ExportError when none is left."""
    device = options.device
    precisions = list(options.precisions)
    if "fp16" in precisions and not supports_fp16(device):
        precisions.remove("fp16")
        log(f"[export] fp16 skipped: FP16 variants are built only on CUDA and the device is {device}")
    formats = list(options.formats)
    if "tensorrt" in formats:
        from export.tensorrt import unavailable_reason

        reason = unavailable_reason()
        if reason:
            formats.remove("tensorrt")
            log(f"[export] tensorrt skipped: {reason}")
    if not precisions or not formats:
        raise ExportError("nothing to export: no requested format and precision can be built on this machine")
    return precisions, formats


def check_and_pack(options: ExportOptions, artifacts: list[Artifact], failures: list[str],
                   log: Callable[[str], None] = log) -> list[Artifact]:
    """Parity-check ``artifacts`` (unless skipped) and pack those that passed; the passing ones.
    Appends each failure to ``failures``."""
    passed = artifacts
    if not options.skip_parity and artifacts:
        from export.parity import run_parity

        results = run_parity(options.out, artifacts, options.weights, options.device, options.examples,
                             options.parity_images, options.threads, log=log)
        passed = [a for a, r in zip(artifacts, results) if r.passed]
        failures += [f"{r.key}: parity" for r in results if not r.passed]
    if options.model_store and passed:
        from export.pack import pack

        try:  # only artifacts that passed parity are shipped
            pack(passed, options.out, options.weights, options.model_store, log=log)
        except Exception as exc:
            failures.append(f"archive: {type(exc).__name__}: {exc}")
    return passed


def export_all(options: ExportOptions, command: str | None = None,
               log: Callable[[str], None] = log) -> ExportResult:
    """Export, parity-check and (with ``model_store``) pack every requested format and precision
    this host can build. ``command`` is recorded in the manifest (default: ``command_line``).
    Raises ExportError when the options cannot work; per-artifact failures are in the result."""
    command = command or command_line(options)  # as given, before the host fills in device and max_batch
    options = resolved_options(options)
    set_up_torch(options)
    from runtime.weights import load_weights, metadata_path

    model, meta = load_weights(options.weights)
    options.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(metadata_path(options.weights), options.out / "model.json")
    log(f"[export] {options.weights} ({model.config.size}, input {model.config.input_size}) on {options.device}, "
        f"batch {options.min_batch}..{options.max_batch} -> {options.out}/")
    precisions, formats = buildable(options, log)

    exporter = Exporter(model, options, log)
    for precision in precisions:
        for backend in formats:
            if not any(a.backend == backend and a.precision == precision for a in exporter.artifacts):
                exporter.run(backend, precision)

    info = {
        "weights": str(options.weights),
        "model": model.config.to_dict(),
        "threshold": meta.get("threshold"),
        "device": options.device,
        "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
    }
    manifest = write_manifest(options.out, exporter.artifacts, info)
    log(f"[export] manifest: {manifest}")
    log("[export] " + ", ".join(f"{a.key} {a.export_seconds:.1f} s" for a in exporter.artifacts))

    failures = list(exporter.failures)
    passed = check_and_pack(options, exporter.artifacts, failures, log)
    return ExportResult(options, exporter.artifacts, passed, failures, manifest)
