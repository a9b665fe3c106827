"""Benchmark profiles: YAML files under ``benchmarks/profiles/`` read into typed settings.

Every knob of a run lives in its profile, so a report can record exactly what was measured;
``--set section.key=value`` on the command line overrides single values (parsed as YAML).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PROFILES = Path(__file__).parent / "profiles"


@dataclass
class ModelSettings:
    backends: list[str] = field(default_factory=lambda: ["eager"])
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    batch_sizes: dict[str, list[int]] = field(default_factory=lambda: {"cpu": [1, 8], "cuda": [1, 64, 256]})
    warmup_iters: int = 2
    warmup_seconds: float = 0.5
    min_iters: int = 5
    min_seconds: float = 1.0
    max_seconds: float = 5.0
    threads: int = 0  # 0: leave torch's default (every core)


@dataclass
class PreprocessSettings:
    images: int = 8
    repeats: int = 2
    batch: int = 4  # images per detector call in the batched-detection row (the served batchSize)
    photos: int = 8  # 12 MP phone photos made from the images (benchmarks/photos.py); 0: none
    detector_sides: list[int] = field(default_factory=list)  # the detector alone at these max_side values too


@dataclass(frozen=True)
class BatchSetting:
    batch_size: int
    max_batch_delay: int  # milliseconds

    @property
    def label(self) -> str:
        return f"b{self.batch_size}/d{self.max_batch_delay}"


@dataclass(frozen=True)
class Layout:
    """TorchServe workers for the model, and the intra-op threads each worker's torch/onnxruntime and
    face detector use (the handler's ``threads``)."""

    workers: int
    threads: int

    @property
    def label(self) -> str:
        return f"{self.workers}w x {self.threads}t"


@dataclass(frozen=True)
class LoadConfig:
    """One measured TorchServe configuration."""

    backend: str
    batching: BatchSetting
    layout: Layout


@dataclass
class LoadSettings:
    backends: list[str] = field(default_factory=lambda: ["eager"])
    # the naive configuration every other is compared with; workers/threads default to 1
    baseline: dict = field(default_factory=lambda: {"backend": "eager", "batch_size": 1, "max_batch_delay": 0})
    batching: list[dict] = field(default_factory=list)
    layouts: list[dict] = field(default_factory=list)  # [{workers, threads}]; empty: `workers` x 1 thread
    users: list[int] = field(default_factory=lambda: [1, 4, 16])
    workers: int = 1
    plain: bool = True  # also measure benchmarks/plain_server.py (FastAPI, one image per request)
    plain_variants: list[str] = field(default_factory=lambda: ["naive", "tuned"])  # see benchmarks/load.py: plain_variants
    warmup_s: float = 5.0
    window_s: float = 5.0
    min_windows: int = 2
    max_windows: int = 3
    tolerance: float = 0.1
    sample_interval_s: float = 1.0
    max_minutes: float = 10.0
    generators: int = 0  # 0: Locust in the measuring process; N: N worker processes (benchmarks/generators.py)

    def baseline_config(self) -> LoadConfig:
        b = self.baseline
        return LoadConfig(b["backend"], BatchSetting(int(b["batch_size"]), int(b["max_batch_delay"])),
                          Layout(int(b.get("workers", 1)), int(b.get("threads", 1))))

    def batch_settings(self) -> list[BatchSetting]:
        return [BatchSetting(int(b["batch_size"]), int(b["max_batch_delay"])) for b in self.batching]

    def layout_list(self) -> list[Layout]:
        return [Layout(int(x["workers"]), int(x["threads"])) for x in self.layouts] or [Layout(self.workers, 1)]

    def plan(self) -> list[LoadConfig]:
        """Configurations in run order: the naive baseline first, then every backend x batching x layout."""
        base = self.baseline_config()
        plan = [base]
        for backend in self.backends:
            for setting in self.batch_settings():
                for layout in self.layout_list():
                    config = LoadConfig(backend, setting, layout)
                    if config != base:
                        plan.append(config)
        return plan


@dataclass
class VideoSettings:
    """The video profile (benchmarks/video_bench.py): one TorchServe layout, clips made from the
    example faces, videos alone, images alone, and images beside videos."""

    backend: str = "onnx"  # the served backend; an eager archive is built when the store has none
    batch_size: int = 4
    max_batch_delay: int = 10  # ms
    workers: int = 2
    threads: int = 1
    frames: int = 32  # the handler's video_frames
    clip_seconds: float = 10.0
    fps: int = 25
    video_users: list[int] = field(default_factory=lambda: [1, 4])
    image_users: int = 4
    mixed_video_users: int = 1  # video users beside the image users in the last level
    separate_video_model: bool = False  # videos to a second registration of the archive, batch size 1
    video_workers: int = 1  # that registration's workers
    warmup_s: float = 3.0
    seconds: float = 20.0  # measured window per level
    clip_size: list[int] = field(default_factory=list)  # [width, height]: faces upscaled into frames this size; []: the faces' own
    gop: int = 0  # keyframe interval of the clip (phones: about one second); 0: the encoder's default


@dataclass
class PhotoSettings:
    """Full-size photos beside the shipped 256 px faces (benchmarks/photo_bench.py): make serve's
    layout, sets the harness makes, 1 user for latency and many for throughput, side by side."""

    backend: str = "onnx"
    batch_size: int = 4
    max_batch_delay: int = 10  # ms
    workers: int = 2
    threads: int = 1
    sets: list[str] = field(default_factory=lambda: ["256px", "12mp-jpeg", "12mp-heic"])  # HEIC only where pillow-heif is installed
    users: list[int] = field(default_factory=lambda: [1, 16])
    rounds: int = 2  # each set measured this many times per user level, in turn
    warmup_s: float = 3.0
    seconds: float = 15.0


@dataclass
class Profile:
    name: str = "custom"
    images: str = "examples"
    weights: str = "weights/default.safetensors"
    export_dir: str = "build/export"
    model_store: str = "model_store"
    model: ModelSettings = field(default_factory=ModelSettings)
    preprocess: PreprocessSettings = field(default_factory=PreprocessSettings)
    load: LoadSettings = field(default_factory=LoadSettings)
    video: VideoSettings = field(default_factory=VideoSettings)
    photos: PhotoSettings = field(default_factory=PhotoSettings)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTIONS = {"model": ModelSettings, "preprocess": PreprocessSettings, "load": LoadSettings, "video": VideoSettings,
             "photos": PhotoSettings}


def _apply(data: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def resolve(name_or_path: str | Path) -> Path:
    """``quick`` -> benchmarks/profiles/quick.yaml; a path is taken as it is."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return PROFILES / f"{name_or_path}.yaml"


def from_dict(data: dict) -> Profile:
    known = {f.name for f in dataclasses.fields(Profile)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown profile keys: {sorted(unknown)}")
    top = {k: v for k, v in data.items() if k not in _SECTIONS}
    sections = {}
    for key, cls in _SECTIONS.items():
        values = data.get(key) or {}
        allowed = {f.name for f in dataclasses.fields(cls)}
        bad = set(values) - allowed
        if bad:
            raise ValueError(f"unknown keys in profile section {key!r}: {sorted(bad)}")
        sections[key] = cls(**values)
    return Profile(**top, **sections)


def load_profile(name_or_path: str | Path, overrides: list[str] | None = None) -> Profile:
    """Read a profile and apply ``section.key=value`` overrides (values parsed as YAML)."""
    data = yaml.safe_load(resolve(name_or_path).read_text()) or {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        _apply(data, key.strip(), yaml.safe_load(raw))
    return from_dict(data)
