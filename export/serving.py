"""The archive ``make serve`` serves: the fastest backend that passes parity on this host, with workers
and threads laid out from the host.

    python -m export.serving --weights weights/default.safetensors            # auto: see PREFERENCE
    python -m export.serving --backend eager --workers 1 --threads 2          # overrides

Backends are tried in order of measured speed for the device (PREFERENCE); each is exported and
checked against the eager model (``export.library.export_all`` with its parity check), and the first
that passes is packed as ``model_store/deepfake-detector.mar``. A backend that cannot be built here or
fails parity is reported and the next one is tried, down to eager, which always works; when none is
left, ``ExportError``.

Layout rule (``host_layout``), for a host with C usable cores and G GPUs:
- CPU: C workers x 1 thread. A worker's request path (decode, face detection, crop, model) is one
  sequence of small operations that gains little from a second intra-op thread, while a second
  worker doubles the requests in flight; the measured sweep in the benchmark report compares
  1w x 1t, 2w x 1t and 1w x 2t on this machine.
- GPU: one worker per GPU (TorchServe gives each its own), and the cores shared out among them for
  the CPU-side preprocessing: max(1, C // G) threads each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from export.archive import ServingConfig, build_archive
from export.library import ExportError, ExportOptions, export_all, resolve_device
from runtime.artifacts import MODEL_NAME, artifact_name, read_manifest

ROOT = Path(__file__).resolve().parents[1]
# Measured order, fastest first (benchmarks/reports: ONNX Runtime beats eager, TorchScript and
# AOTInductor at the batch sizes a CPU server forms, and needs no per-host compilation; on CUDA
# TensorRT and AOTInductor lead, ONNX Runtime needs onnxruntime-gpu).
PREFERENCE = {"cpu": ("onnx", "eager"), "cuda": ("tensorrt", "aoti", "onnx", "eager")}
# (batchSize, maxBatchDelay ms). CPU: the delay sweep at 2 workers x 1 thread, 1-32 users, two runs
# beside both plain servers (benchmarks/reports/20261207-2329-cpu-batching, -2338-): a wait of 2 ms
# costs a lone request almost nothing (54-56 requests/s at 1 user against 27 with 20 ms), and at 16
# and 32 users the queue fills a batch within it (145-169 requests/s, as 20 ms). 0 ms is not "no
# wait": TorchServe then stops a batch at its second request (batches of 2.0 at 16 users, 118
# requests/s). CUDA: not measured yet.
BATCHING = {"cpu": (8, 2), "cuda": (8, 20)}


def usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def host_layout(device: str, cores: int | None = None, gpus: int | None = None) -> tuple[int, int]:
    """(workers, threads per worker) by the rule in the module docstring."""
    cores = cores or usable_cores()
    if device == "cuda":
        if gpus is None:
            import torch

            gpus = torch.cuda.device_count()
        gpus = max(1, gpus)
        return gpus, max(1, cores // gpus)
    return max(1, cores), 1


def export_backend(backend: str, weights: Path, out: Path, device: str, log=print) -> Path | None:
    """Export one backend with its parity check; the artifact's path when it passed, else None."""
    if backend == "eager":
        return weights
    options = ExportOptions(weights=weights, formats=(backend,), precisions=("fp32",), device=device, out=out / backend)
    try:
        ok = export_all(options).ok
    except ExportError:  # e.g. "nothing to export": the backend cannot be built on this host (logged)
        ok = False
    if not ok:
        log(f"[serving] {backend}: export or parity failed on this host (log above); trying the next backend")
        return None
    return out / backend / artifact_name(backend)


def build_serving_archive(weights: Path, model_store: Path, backend: str = "auto", workers: int = 0, threads: int = 0,
                          out: Path = ROOT / "build" / "serve-export", device: str | None = None,
                          log=print, version: str = "1.0", archive: str | None = None) -> tuple[Path, str, int, int]:
    """Build ``<model_store>/deepfake-detector.mar``; returns (archive, backend, workers, threads).
    ``device`` (cpu or cuda) defaults to CUDA when this host has it. ``version`` and ``archive`` (a
    file name in the store): another version of the model beside the served one (``make candidate``)."""
    device = device or resolve_device("auto")
    candidates = PREFERENCE[device] if backend == "auto" else (backend,)
    rule_workers, rule_threads = host_layout(device)
    workers, threads = workers or rule_workers, threads or rule_threads
    for candidate in candidates:
        artifact = export_backend(candidate, weights, out, device, log)
        if artifact is None:
            continue
        batch_range = None
        if candidate != "eager":
            _, (exported,) = read_manifest(artifact.parent)
            batch_range = (exported.min_batch, exported.max_batch)
        batch_size, max_batch_delay = BATCHING[device]
        serving = ServingConfig(batch_size=batch_size, max_batch_delay=max_batch_delay, min_workers=workers, max_workers=workers,
                                device_type="gpu" if device == "cuda" else "cpu", batch_range=batch_range,
                                handler={"threads": threads})
        mar = build_archive(weights, backend=candidate, artifact=artifact, export_path=out / "archive" if archive else model_store,
                            model_name=MODEL_NAME, version=version, serving=serving)  # fmt: skip
        if archive:  # the model's name inside, its own file name in the store
            Path(model_store).mkdir(parents=True, exist_ok=True)
            mar = Path(shutil.move(mar, Path(model_store) / archive))
        log(f"[serving] {mar}: {candidate} on {device}, {workers} worker(s) x {threads} thread(s)"
            + (" (host rule)" if (workers, threads) == (rule_workers, rule_threads) else " (overridden)"))
        return mar, candidate, workers, threads
    raise ExportError(f"no backend of {candidates} could be built and verified here")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=ROOT / "weights/default.safetensors")
    parser.add_argument("--model-store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--backend", default="auto", help="auto (fastest verified here) or eager|torchscript|onnx|aoti|tensorrt")
    parser.add_argument("--workers", type=int, default=0, help="TorchServe workers (0: host rule)")
    parser.add_argument("--threads", type=int, default=0, help="threads per worker (0: host rule)")
    parser.add_argument("--version", default="1.0", help="the model version in the archive's manifest (every answer's model.version)")
    parser.add_argument("--archive", help="the archive's file name in the store (default: deepfake-detector.mar); make candidate names its own")
    args = parser.parse_args(argv)
    try:
        build_serving_archive(args.weights, args.model_store, args.backend, args.workers, args.threads, version=args.version,
                              archive=args.archive)  # fmt: skip
    except ExportError as exc:
        raise SystemExit(str(exc)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
