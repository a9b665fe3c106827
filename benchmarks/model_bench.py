"""Model-level benchmark, no HTTP: every backend x precision x batch size on one device.

Per combination: latency percentiles of one forward pass and images/s, after warm-up, with the
device synchronised around every timed call. The model's FLOPs are counted once (eager, batch 1) and
the achieved FLOP/s is stated as a fraction of the device's measured matmul peak.

    python -m benchmarks.model_bench --profile quick [--device cuda] [--out model.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmarks import machine
from benchmarks.profile import ModelSettings, Profile, load_profile
from benchmarks.stats import POINTS_WITH_P95, latency_percentiles

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class Unavailable(Exception):
    """A backend that cannot run here; the reason goes into the report."""


@dataclass
class Runner:
    call: Callable[[torch.Tensor], object]  # float32 input on the device -> logits
    note: str = ""


def _eager_model(weights: Path, device: str, precision: str):
    from runtime.weights import load_weights

    if not weights.exists():
        raise Unavailable(f"weights {weights} not found (run `make train` or pass --set weights=...)")
    model, _ = load_weights(weights, map_location=device)
    return model.to(DTYPES[precision])


def load_runner(backend: str, precision: str, device: str, weights: Path, export_dir: Path) -> Runner:
    """The serving path's own loader (runtime.backends) for each artifact, so the numbers are the
    handler's; ``compile`` (torch.compile of the eager model) is measured here only."""
    from runtime.artifacts import artifact_name
    from runtime.backends import load_backend

    cuda = device.startswith("cuda")
    if precision == "fp16" and not cuda:
        raise Unavailable("fp16 is measured on CUDA only")
    if backend == "compile":
        model = _eager_model(weights, device, precision)
        # CUDA graphs remove the launch overhead that dominates small batches; no autotuning, so
        # compiling every batch size of a profile stays within minutes
        compiled = torch.compile(model, mode="reduce-overhead" if cuda else "default", dynamic=False)
        dtype = DTYPES[precision]
        return Runner(lambda x: compiled(x.to(dtype)), note="torch.compile")
    path = weights if backend == "eager" else export_dir / artifact_name(backend, precision)
    if not path.exists():
        raise Unavailable(f"{path} not found (run `make export`)")
    try:
        runner = load_backend(backend, path, torch.device(device), precision, threads=torch.get_num_threads())
    except ImportError as exc:
        raise Unavailable(f"{backend} runtime is not installed: {exc}") from None
    except Exception as exc:  # e.g. an AOTInductor package compiled for another device
        raise Unavailable(f"{backend} does not load here: {exc}".splitlines()[0][:300]) from None
    note = ""
    if backend == "onnx":
        providers = runner.session.get_providers()
        if cuda and "CUDAExecutionProvider" not in providers:
            # the handler falls back to the CPU; timing that as a GPU result would mislead
            raise Unavailable("onnxruntime has no CUDA provider here (onnxruntime-gpu is not installed)")
        note = ",".join(providers)
    return Runner(runner, note=note)


def count_flops(weights: Path, input_size: int) -> int:
    """FLOPs of one image through the eager model (matmuls and convolutions, as torch counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _eager_model(weights, "cpu", "fp32")
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, input_size, input_size))
    return int(counter.get_total_flops())


def percentiles(values_ms: list[float]) -> dict:
    """Mean, p50/p90/p95/p99 and min of one stage's or one forward pass's times."""
    a = np.asarray(values_ms, dtype=np.float64)
    return {"mean": float(a.mean()), **latency_percentiles(a, POINTS_WITH_P95), "min": float(a.min())}


def time_calls(call: Callable[[], object], sync: Callable[[], None], settings: ModelSettings) -> list[float]:
    """Seconds per call: warm-up first (at least warmup_iters calls and warmup_seconds: the first
    calls pick kernels and fill caches), then until both min_iters and min_seconds are reached
    (or max_seconds has passed)."""
    began, done = time.perf_counter(), 0
    while done < settings.warmup_iters or time.perf_counter() - began < settings.warmup_seconds:
        call()
        sync()
        done += 1
    times: list[float] = []
    began = time.perf_counter()
    while True:
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
        elapsed = time.perf_counter() - began
        if (len(times) >= settings.min_iters and elapsed >= settings.min_seconds) or elapsed >= settings.max_seconds:
            return times


def input_size_of(weights: Path) -> int:
    from runtime.weights import load_metadata

    meta = load_metadata(weights)
    return int(meta.get("preprocessing", {}).get("input_size") or meta["architecture"]["input_size"])


def run(profile: Profile, device: str, log=print) -> dict:
    """The ``model`` section of summary.json."""
    settings = profile.model
    if settings.threads:
        torch.set_num_threads(settings.threads)
    weights, export_dir = Path(profile.weights), Path(profile.export_dir)
    cuda = device.startswith("cuda")
    batches = settings.batch_sizes["cuda" if cuda else "cpu"]
    size = input_size_of(weights)
    flops = count_flops(weights, size)
    log(f"[model] {flops / 1e9:.2f} GFLOP per image at {size}x{size}; measuring the device peak ...")
    peaks = {p: machine.measure_peak_flops(device, p) for p in settings.precisions if p == "fp32" or cuda}
    log("[model] peak " + ", ".join(f"{p} {v / 1e12:.2f} TFLOP/s" for p, v in peaks.items()))

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    results, skipped = [], []
    combos = [(b, p) for b in settings.backends for p in settings.precisions]
    for index, (backend, precision) in enumerate(combos, 1):
        try:
            runner = load_runner(backend, precision, device, weights, export_dir)
        except Unavailable as exc:
            skipped.append({"backend": backend, "precision": precision, "reason": str(exc)})
            log(f"[model] ({index}/{len(combos)}) {backend} {precision}: skipped, {exc}")
            continue
        for batch in batches:
            x = torch.rand(batch, 3, size, size, device=device)
            try:
                with torch.inference_mode():
                    times = time_calls(lambda: runner.call(x), sync, settings)
            except Exception as exc:  # e.g. an artifact exported with a fixed batch, or out of memory
                reason = f"batch {batch} failed: {type(exc).__name__}: {exc}".splitlines()[0][:300]
                skipped.append({"backend": backend, "precision": precision, "batch": batch, "reason": reason})
                log(f"[model] {backend} {precision} {reason}")
                if cuda:
                    torch.cuda.empty_cache()
                continue
            latency = percentiles([t * 1000 for t in times])
            images_per_s = batch * len(times) / sum(times)
            achieved = images_per_s * flops
            peak = peaks.get(precision)
            results.append({
                "backend": backend, "precision": precision, "batch": batch, "iters": len(times),
                "latency_ms": latency, "images_per_s": images_per_s,
                "tflops": achieved / 1e12, "peak_fraction": achieved / peak if peak else None,
                "note": runner.note,
            })
            log(f"[model] ({index}/{len(combos)}) {backend} {precision} batch {batch:>3}: "
                f"p50 {latency['p50']:.2f} ms, p99 {latency['p99']:.2f} ms, {images_per_s:,.1f} images/s")
        del runner
    return {
        "device": device, "threads": torch.get_num_threads(), "input_size": size,
        "flops_per_image": flops, "peak_flops": peaks, "results": results, "skipped": skipped,
    }


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", help="profile name or YAML path")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a profile value")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    result = run(load_profile(args.profile, args.set), args.device)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
