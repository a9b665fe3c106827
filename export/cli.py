"""``python -m export`` (``make export``): weights -> every serving artifact, parity-checked.

Writes under ``--out`` (default ``build/export``): the artifacts (file names in
``runtime/artifacts.py``), ``model.json`` (the weights' metadata, which every archive carries),
``manifest.json`` (what was built, how, and how long it took) and the parity reports
``parity.json`` / ``parity.md``. Exits non-zero when an export fails or an artifact fails parity.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

from runtime.artifacts import BACKENDS, PRECISIONS, Artifact, artifact_name, write_manifest
from runtime.model import served
from runtime.precision import supports_fp16, with_precision

DEFAULT_MAX_BATCH = {"cpu": 32, "cuda": 256}
DEFAULT_OPT_BATCH = 16


def log(message: str) -> None:
    print(message, flush=True)


def parse_list(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in allowed]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"{what} must be a comma list of {', '.join(allowed)}; got {value!r}")
    return list(dict.fromkeys(items))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export",
        description="Export weights to every serving format, check each against eager, optionally pack .mar files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--weights", type=Path, default=Path("weights/default.safetensors"),
                   help="safetensors file with its .json metadata beside it")
    p.add_argument("--formats", default=",".join(BACKENDS), type=lambda v: parse_list(v, BACKENDS, "--formats"),
                   help="comma list (default: all); tensorrt is skipped with a message where unavailable")
    p.add_argument("--precision", default="fp32,fp16", type=lambda v: parse_list(v, PRECISIONS, "--precision"),
                   help="comma list; fp16 only on CUDA (skipped with a message elsewhere)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when present)")
    p.add_argument("--min-batch", type=int, default=1, help="smallest batch the artifacts accept")
    p.add_argument("--max-batch", type=int, default=None,
                   help=f"largest batch the artifacts accept (default {DEFAULT_MAX_BATCH['cpu']} on CPU, "
                        f"{DEFAULT_MAX_BATCH['cuda']} on CUDA)")
    p.add_argument("--opt-batch", type=int, default=DEFAULT_OPT_BATCH,
                   help="batch size TensorRT tunes its kernels for (clamped to the batch range)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18)")
    p.add_argument("--trt-workspace-gib", type=float, default=4.0, help="TensorRT builder workspace")
    p.add_argument("--out", type=Path, default=Path("build/export"), help="folder for artifacts and reports")
    p.add_argument("--examples", type=Path, default=Path("examples"), help="images for the parity check")
    p.add_argument("--parity-images", type=int, default=8, help="how many fixed images the parity check uses")
    p.add_argument("--skip-parity", action="store_true", help="export only (not for release artifacts)")
    p.add_argument("--model-store", type=Path, default=None,
                   help="pack every artifact that passed parity into <dir>/deepfake-detector-<backend>.mar")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch/onnxruntime (0: default)")
    return p


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(name).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    return name


class Exporter:
    """Produces the artifacts one by one, timing each and recording it for the manifest."""

    def __init__(self, model, weights: Path, out: Path, device: str, args):
        self.model = model.to(device).eval()
        self.weights = weights
        self.out = out
        self.device = device
        self.args = args
        self.size = model.config.input_size
        # batch 2 for capture: torch.export specialises dimensions whose example size is 1
        self.example = torch.rand(2, 3, self.size, self.size, device=device)
        self.artifacts: list[Artifact] = []
        self.failures: list[str] = []

    def run(self, backend: str, precision: str) -> Artifact | None:
        file = artifact_name(backend, precision)
        log(f"[export] {backend} {precision} -> {self.out / file} ...")
        start = time.perf_counter()
        try:
            extra = getattr(self, f"_{backend}")(self.out / file, precision) or {}
        except Exception as exc:  # keep going: one broken format must not hide the others' results
            self.failures.append(f"{backend} {precision}: {type(exc).__name__}: {exc}")
            log(f"[export] {backend} {precision} FAILED: {type(exc).__name__}: {exc}")
            return None
        seconds = time.perf_counter() - start
        size = (self.out / file).stat().st_size
        artifact = Artifact(
            backend, precision, file, self.device, self.size, self.args.min_batch, self.args.max_batch,
            round(seconds, 2), size, extra=extra,
        )
        self.artifacts.append(artifact)
        log(f"[export] {backend} {precision} done in {seconds:.1f} s ({size / 1e6:.1f} MB)")
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

        check_batch = 3 if self.args.min_batch == 2 else self.args.min_batch
        export_torchscript(self._model(precision), self.example, path, check_batch)
        return {"method": "trace"}

    def _onnx(self, path: Path, precision: str) -> dict:
        from export.onnx_export import export_onnx

        export_onnx(self._model(precision), self.example, path, self.args.min_batch, self.args.max_batch,
                    self.args.opset)
        return {"opset": self.args.opset, "dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}}

    def _aoti(self, path: Path, precision: str) -> dict:
        from export.aoti import export_aoti

        export_aoti(self._model(precision), self.example, path, self.args.min_batch, self.args.max_batch)
        return {"torch": torch.__version__}

    def _tensorrt(self, path: Path, precision: str) -> dict:
        import tensorrt

        from export.tensorrt import build_engine

        onnx_file = self.out / artifact_name("onnx", precision)
        if not any(a.file == onnx_file.name for a in self.artifacts):
            if self.run("onnx", precision) is None:
                raise RuntimeError(f"the {precision} ONNX model it is built from failed to export")
        a = self.args
        opt = min(max(a.opt_batch, a.min_batch), a.max_batch)
        build_engine(onnx_file, path, self.size, a.min_batch, opt, a.max_batch, a.trt_workspace_gib)
        return {
            "tensorrt": tensorrt.__version__,
            "from": onnx_file.name,
            "profile": {"min": a.min_batch, "opt": opt, "max": a.max_batch},
            "gpu": torch.cuda.get_device_name(torch.device(self.device)),
        }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    if args.max_batch is None:
        args.max_batch = DEFAULT_MAX_BATCH[torch.device(device).type]
    if not 1 <= args.min_batch <= args.max_batch:
        raise SystemExit(f"need 1 <= --min-batch <= --max-batch, got {args.min_batch} and {args.max_batch}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if torch.device(device).type == "cuda":
        # "fp32" means FP32: TF32 convolutions and matmuls would be compiled into the AOTInductor
        # package and miss the FP32 parity bound; FP16 variants are the fast path.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    if not args.weights.exists():
        raise SystemExit(f"weights not found: {args.weights} (train with `make train` or pass --weights)")

    from runtime.weights import load_weights, metadata_path

    model, meta = load_weights(args.weights)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(metadata_path(args.weights), args.out / "model.json")
    log(f"[export] {args.weights} ({model.config.size}, input {model.config.input_size}) on {device}, "
        f"batch {args.min_batch}..{args.max_batch} -> {args.out}/")

    precisions = list(args.precision)
    if "fp16" in precisions and not supports_fp16(device):
        precisions.remove("fp16")
        log(f"[export] fp16 skipped: FP16 variants are built only on CUDA and the device is {device}")
    formats = list(args.formats)
    if "tensorrt" in formats:
        from export.tensorrt import unavailable_reason

        reason = unavailable_reason()
        if reason:
            formats.remove("tensorrt")
            log(f"[export] tensorrt skipped: {reason}")
    if not precisions or not formats:
        raise SystemExit("nothing to export: no requested format and precision can be built on this machine")

    exporter = Exporter(model, args.weights, args.out, device, args)
    for precision in precisions:
        for backend in formats:
            if not any(a.backend == backend and a.precision == precision for a in exporter.artifacts):
                exporter.run(backend, precision)

    info = {
        "weights": str(args.weights),
        "model": model.config.to_dict(),
        "threshold": meta.get("threshold"),
        "device": device,
        "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(sys.argv) if argv is None else "python -m export " + " ".join(argv),
    }
    manifest = write_manifest(args.out, exporter.artifacts, info)
    log(f"[export] manifest: {manifest}")
    log("[export] " + ", ".join(f"{a.key} {a.export_seconds:.1f} s" for a in exporter.artifacts))

    failures = list(exporter.failures)
    passed = exporter.artifacts
    if not args.skip_parity and exporter.artifacts:
        from export.parity import run_parity

        results = run_parity(args.out, exporter.artifacts, args.weights, device, args.examples,
                             args.parity_images, args.threads, log=log)
        passed = [a for a, r in zip(exporter.artifacts, results) if r.passed]
        failures += [f"{r.key}: parity" for r in results if not r.passed]
    if args.model_store and passed:
        from export.pack import pack

        try:  # only artifacts that passed parity are shipped
            pack(passed, args.out, args.weights, args.model_store, log=log)
        except Exception as exc:
            failures.append(f"archive: {type(exc).__name__}: {exc}")
    for failure in failures:
        log(f"[export] FAILED {failure}")
    log("[export] FAILED (see above)" if failures else "[export] all artifacts exported, parity-checked"
        + (" and packed" if args.model_store else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
