"""``python -m export`` (``make export``): weights -> every serving artifact, parity-checked.

Parses the command line into ``export.library.ExportOptions`` and runs ``export_all``, which writes
under ``--out`` (default ``build/export``): the artifacts (file names in ``runtime/artifacts.py``),
``model.json``, ``manifest.json`` and the parity reports ``parity.json`` / ``parity.md``. Exits
non-zero when an export fails or an artifact fails parity.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.library import DEFAULT_MAX_BATCH, ExportError, ExportOptions, export_all, log
from runtime.artifacts import BACKENDS, PRECISIONS

DEFAULTS = ExportOptions()


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
    d = DEFAULTS
    p.add_argument("--weights", type=Path, default=d.weights, help="safetensors file with its .json metadata beside it")
    p.add_argument("--formats", default=",".join(d.formats), type=lambda v: parse_list(v, BACKENDS, "--formats"),
                   help="comma list (default: all); tensorrt is skipped with a message where unavailable")
    p.add_argument("--precision", default=",".join(d.precisions),
                   type=lambda v: parse_list(v, PRECISIONS, "--precision"),
                   help="comma list; fp16 only on CUDA (skipped with a message elsewhere)")
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:N or auto (CUDA when present)")
    p.add_argument("--min-batch", type=int, default=d.min_batch, help="smallest batch the artifacts accept")
    p.add_argument("--max-batch", type=int, default=d.max_batch,
                   help=f"largest batch the artifacts accept (default {DEFAULT_MAX_BATCH['cpu']} on CPU, "
                        f"{DEFAULT_MAX_BATCH['cuda']} on CUDA)")
    p.add_argument("--opt-batch", type=int, default=d.opt_batch,
                   help="batch size TensorRT tunes its kernels for (clamped to the batch range)")
    p.add_argument("--opset", type=int, default=d.opset, help="ONNX opset (>= 18)")
    p.add_argument("--trt-workspace-gib", type=float, default=d.trt_workspace_gib, help="TensorRT builder workspace")
    p.add_argument("--out", type=Path, default=d.out, help="folder for artifacts and reports")
    p.add_argument("--examples", type=Path, default=d.examples, help="images for the parity check")
    p.add_argument("--parity-images", type=int, default=d.parity_images,
                   help="how many fixed images the parity check uses")
    p.add_argument("--skip-parity", action="store_true", help="export only (not for release artifacts)")
    p.add_argument("--model-store", type=Path, default=d.model_store,
                   help="pack every artifact that passed parity into <dir>/deepfake-detector-<backend>.mar")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads for torch/onnxruntime (0: default)")
    return p


def parse_options(argv: list[str] | None = None) -> ExportOptions:
    """The command line as ExportOptions (argparse exits on a malformed one)."""
    args = build_parser().parse_args(argv)
    return ExportOptions(
        weights=args.weights, formats=tuple(args.formats), precisions=tuple(args.precision), device=args.device,
        min_batch=args.min_batch, max_batch=args.max_batch, opt_batch=args.opt_batch, opset=args.opset,
        trt_workspace_gib=args.trt_workspace_gib, out=args.out, examples=args.examples,
        parity_images=args.parity_images, skip_parity=args.skip_parity, model_store=args.model_store,
        threads=args.threads,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    command = " ".join(sys.argv) if argv is None else "python -m export " + " ".join(argv)
    try:
        result = export_all(options, command=command, log=log)
    except ExportError as exc:
        raise SystemExit(str(exc)) from None
    for failure in result.failures:
        log(f"[export] FAILED {failure}")
    log("[export] FAILED (see above)" if result.failures else "[export] all artifacts exported, parity-checked"
        + (" and packed" if options.model_store else ""))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
