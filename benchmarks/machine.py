"""What the benchmark ran on: CPU, GPU, driver, library versions, and the measured peak FLOP/s.

The peak is measured (a large matmul), not looked up, so "fraction of peak" compares the model with
what this very host reaches on its best-case kernel.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from importlib import metadata

VERSIONED = ["torch", "torchvision", "torchserve", "torch-model-archiver", "onnxruntime", "onnx", "locust", "numpy"]


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:
        return None


def gpu_info() -> list[dict]:
    """One dict per GPU from nvidia-smi (name, driver, memory); empty without an NVIDIA GPU."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        index, name, driver, memory = [part.strip() for part in line.split(",")]
        gpus.append({"index": int(index), "name": name, "driver": driver, "memory_mib": float(memory)})
    return gpus


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        import torch

        found["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            found["cudnn"] = torch.backends.cudnn.version()
    except ImportError:
        pass
    java = shutil.which("java", path=os.path.join(os.environ["JAVA_HOME"], "bin") if "JAVA_HOME" in os.environ else None)
    if java:
        try:
            probe = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=20)
            found["java"] = (probe.stderr or probe.stdout).splitlines()[0].strip()
        except (subprocess.SubprocessError, OSError, IndexError):
            pass
    return found


def describe(device: str) -> dict:
    """The machine section of summary.json."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "load_average_at_start": [round(v, 2) for v in load] if load else None,
        "gpus": gpu_info(),
        "device": device,
        "versions": versions(),
    }


def measure_peak_flops(device: str, dtype_name: str = "fp32", size: int | None = None, seconds: float = 1.0) -> float:
    """Best FLOP/s of a square matmul on ``device``: the ceiling the model is compared with."""
    import torch

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    cuda = device.startswith("cuda")
    n = size or (8192 if cuda else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(2):  # warm-up: kernels chosen, caches and clocks up
        a @ b
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        sync()
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best
