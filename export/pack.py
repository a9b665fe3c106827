"""Pack exported artifacts into TorchServe archives with ``export.archive`` (the serving side owns
the archive layout; this module only decides names and device settings per artifact).

``model_store/deepfake-detector-<backend>.mar`` for FP32 artifacts and
``model_store/deepfake-detector-<backend>-fp16.mar`` for FP16 ones.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

from runtime.artifacts import MODEL_NAME, Artifact
from runtime.handler_settings import checked_section


def archive_name(artifact: Artifact) -> str:
    suffix = "" if artifact.precision == "fp32" else f"-{artifact.precision}"
    return f"{MODEL_NAME}-{artifact.backend}{suffix}"


def device_type(artifact: Artifact) -> str | None:
    """Pin the worker to the device the artifact can run on; None lets TorchServe choose."""
    compiled = artifact.backend in ("aoti", "tensorrt")  # native code for one device
    if artifact.device.startswith("cuda") and (compiled or artifact.precision == "fp16"):
        return "gpu"
    if compiled:
        return "cpu"
    return None


def pack(artifacts: list[Artifact], export_dir: Path, weights: Path, model_store: Path, log=print,
         handler: Mapping | None = None) -> list[Path]:
    """One archive per artifact; returns the .mar paths. Raises on the first failure. ``handler``: the
    archives' ``handler:`` settings (``runtime/handler_settings.py``), checked before anything is built:
    a misspelt key raises ``SettingsError`` naming it and the nearest valid key."""
    from export.archive import ServingConfig, build_archive

    settings = checked_section(handler, "handler settings to pack")
    archives = []
    for artifact in artifacts:
        name = archive_name(artifact)
        log(f"[archive] {name}.mar from {artifact.file} ...")
        start = time.perf_counter()
        defaults = ServingConfig()
        serving = ServingConfig(batch_size=min(defaults.batch_size, artifact.max_batch), device_type=device_type(artifact),
                                batch_range=(artifact.min_batch, artifact.max_batch), handler=dict(settings))
        mar = build_archive(
            weights,
            backend=artifact.backend,
            artifact=Path(export_dir) / artifact.file,
            export_path=model_store,
            model_name=name,
            precision=artifact.precision,
            serving=serving,
        )
        log(f"[archive] {mar} ({mar.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
        archives.append(mar)
    return archives
