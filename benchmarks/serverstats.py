"""What the server side did during a measurement window.

- TorchServe's metrics endpoint (Prometheus text): counters give exact per-request means as deltas
  (queue time, total inference time); gauges (HandlerTime, PredictionTime, the handler's own
  preprocess / inference / postprocess times) hold the latest batch only, so they are sampled through
  the window and averaged; histograms are read as sum/count deltas.
- Host: CPU and RSS of the frontend (Java) and of its worker processes, the load generator itself,
  and the whole machine (which shows load from anything else on a shared host), via psutil.
- GPU: utilisation and memory via NVML, else nvidia-smi, when an NVIDIA GPU is present.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field

import psutil

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
MODEL_LABELS = ("ModelName", "model_name")
IGNORED_LABELS = {"Hostname", "hostname", "Level", "model_version", "WorkerName", *MODEL_LABELS}
# Frontend counters that split one request's time: microseconds summed over requests.
COUNTERS = {
    "requests": "ts_inference_requests_total",
    "total": "ts_inference_latency_microseconds",
    "queue": "ts_queue_latency_microseconds",
}


@dataclass
class Scrape:
    types: dict[str, str] = field(default_factory=dict)  # family -> counter/gauge/histogram/...
    samples: list[tuple[str, dict, float]] = field(default_factory=list)


def parse_prometheus(text: str) -> Scrape:
    scrape = Scrape()
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            parts = line.split()
            if len(parts) >= 4:
                scrape.types[parts[2]] = parts[3]
            continue
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        scrape.samples.append((name, dict(_LABEL.findall(labels or "")), number))
    return scrape


def _series(name: str, labels: dict) -> str:
    extra = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in IGNORED_LABELS)
    return f"{name}{{{extra}}}" if extra else name


def model_values(scrape: Scrape, model: str) -> dict[str, float]:
    """The series of one model (and host-level Requests2XX/4XX/5XX), summed over hosts."""
    values: dict[str, float] = defaultdict(float)
    for name, labels, number in scrape.samples:
        owner = next((labels[k] for k in MODEL_LABELS if k in labels), None)
        if owner == model or (owner is None and name.startswith("Requests")):
            values[_series(name, labels)] += number
    return dict(values)


def _family(series: str, types: dict[str, str]) -> tuple[str, str]:
    name = series.split("{", 1)[0]
    for suffix in ("_sum", "_count", "_bucket", "_total"):
        base = name[: -len(suffix)] if name.endswith(suffix) else None
        if base and types.get(base) in ("histogram", "summary"):
            return base, types[base]
    return name, types.get(name, "untyped")


def server_split(first: Scrape, last: Scrape, gauges: list[dict[str, float]], model: str) -> dict:
    """Per-window server metrics for ``model``: counter deltas, gauge means, histogram means."""
    before, after = model_values(first, model), model_values(last, model)
    types = {**first.types, **last.types}
    out: dict[str, float] = {}
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    requests = delta.get(COUNTERS["requests"], 0.0)
    if requests > 0:
        out["requests"] = requests
        out["total_ms"] = delta.get(COUNTERS["total"], 0.0) / requests / 1000
        out["queue_ms"] = delta.get(COUNTERS["queue"], 0.0) / requests / 1000
    for series, change in delta.items():
        family, kind = _family(series, types)
        if series.startswith("Requests") and kind == "counter":
            out[series] = change
        elif kind in ("histogram", "summary") and series.split("{")[0].endswith("_sum"):
            count = delta.get(series.replace("_sum", "_count", 1), 0.0)
            if count:
                out[f"{family}_mean"] = change / count
        elif kind == "counter" and series not in COUNTERS.values():
            out[series] = change
    for series in {s for sample in gauges for s in sample}:
        family, kind = _family(series, types)
        if kind in ("gauge", "untyped") and not series.startswith(("ts_", "Requests")):
            points = [sample[series] for sample in gauges if series in sample]
            out[series] = sum(points) / len(points)
    return out


class HostSampler:
    """CPU% and RSS of the frontend, its workers, this process and the whole host, sampled repeatedly."""

    def __init__(self, frontend_pid: int | None):
        self.frontend = psutil.Process(frontend_pid) if frontend_pid else None
        self.me = psutil.Process(os.getpid())
        self._seen: dict[int, psutil.Process] = {}
        self.reset()

    def reset(self) -> None:
        self.samples: list[dict] = []
        psutil.cpu_percent(None)
        for members in self._processes().values():
            for proc in members:
                self._cpu(proc)

    def _processes(self) -> dict[str, list[psutil.Process]]:
        workers = []
        if self.frontend:
            try:
                workers = self.frontend.children(recursive=True)
            except psutil.Error:
                workers = []
        # keep one Process object per pid: cpu_percent measures since that object's previous call
        procs = {"frontend": [self.frontend] if self.frontend else [], "workers": [], "client": [self.me]}
        for child in workers:
            procs["workers"].append(self._seen.setdefault(child.pid, child))
        return procs

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        try:
            return proc.cpu_percent(None)
        except psutil.Error:
            return 0.0

    @staticmethod
    def _rss(proc: psutil.Process) -> float:
        try:
            return proc.memory_info().rss / 2**20
        except psutil.Error:
            return 0.0

    def sample(self) -> None:
        procs = self._processes()
        row = {"host_cpu_percent": psutil.cpu_percent(None) * (os.cpu_count() or 1)}
        for role, members in procs.items():
            row[f"{role}_cpu_percent"] = sum(self._cpu(p) for p in members)
            row[f"{role}_rss_mib"] = sum(self._rss(p) for p in members)
        row["workers"] = len(procs["workers"])
        self.samples.append(row)

    def summary(self) -> dict:
        """Means over the window (CPU% where 100 = one core), RSS at its largest."""
        if not self.samples:
            return {}
        out = {}
        for key in self.samples[0]:
            values = [s[key] for s in self.samples]
            out[key] = max(values) if key.endswith("rss_mib") or key == "workers" else sum(values) / len(values)
        # CPU used by anything but the server and this load generator: other tenants of a shared host
        out["other_cpu_percent"] = max(
            0.0, out["host_cpu_percent"] - out["frontend_cpu_percent"] - out["workers_cpu_percent"] - out["client_cpu_percent"]
        )
        return out


class GpuSampler:
    """Utilisation (%) and memory (MiB) per GPU; inactive without an NVIDIA GPU."""

    def __init__(self):
        self.samples: list[list[dict]] = []
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:
            self._nvml = None
        self.active = bool(self._nvml) or bool(shutil.which("nvidia-smi"))

    def reset(self) -> None:
        self.samples = []

    def read(self) -> list[dict]:
        if self._nvml:
            rows = []
            for handle in self._handles:
                util = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                rows.append({"util_percent": float(util.gpu), "memory_mib": memory.used / 2**20})
            return rows
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10,
        ).stdout
        return [
            {"util_percent": float(u), "memory_mib": float(m)}
            for u, m in (line.split(",") for line in out.strip().splitlines() if "," in line)
        ]

    def sample(self) -> None:
        if self.active:
            try:
                self.samples.append(self.read())
            except (subprocess.SubprocessError, OSError, ValueError):
                pass

    def summary(self) -> list[dict]:
        if not self.samples:
            return []
        gpus = len(self.samples[0])
        return [
            {
                "index": i,
                "util_percent": sum(s[i]["util_percent"] for s in self.samples) / len(self.samples),
                "memory_mib": max(s[i]["memory_mib"] for s in self.samples),
            }
            for i in range(gpus)
        ]


SATURATED_PERCENT = 90.0  # a load generator above this share of its one core limits the rate, not the server


def generator_summary(cpu_percent: list[float]) -> dict:
    """How many Locust processes generated the load, the CPU of each (100 = one core: Locust runs on
    one) and which of them were saturated (their rate is then a lower bound of the server's)."""
    return {"count": len(cpu_percent), "cpu_percent": cpu_percent,
            "saturated": [i for i, percent in enumerate(cpu_percent) if percent >= SATURATED_PERCENT]}
