"""What an artifact is: its file name, its I/O contract and the manifest describing a build.

Every artifact, whatever the backend or precision, has the model's contract: one input named
``input``, float32 RGB in [0, 1] of shape (N, 3, S, S) with N dynamic in [min_batch, max_batch], and
one output named ``logits``, float32 of shape (N,). A model with a kind-of-fake head has a second
output, ``kind_logits``, float32 of shape (N, K) (K = the weights' ``kinds``). FP16 variants cast
inside, so callers never change their tensors.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
KIND_OUTPUT_NAME = "kind_logits"  # only where the model has a kind head
BATCH_AXIS = "batch"

BACKENDS = ("eager", "torchscript", "onnx", "aoti", "tensorrt")
PRECISIONS = ("fp32", "fp16")

# The one table of file names (export folders and archives alike; docs/ARCHITECTURE.md lists them).
# These are the fp32 names; fp16 variants insert ".fp16" after "model" (artifact_name).
ARTIFACTS = {
    "eager": "model.safetensors",
    "torchscript": "model.torchscript.pt",
    "onnx": "model.onnx",
    "aoti": "model.pt2",
    "tensorrt": "model.engine",
}

MANIFEST_NAME = "manifest.json"
# The served model's name: TorchServe's model name and the archive's file stem
# (deepfake-detector.mar; deepfake-detector-<backend>[-fp16].mar for the other built archives).
MODEL_NAME = "deepfake-detector"


def artifact_name(backend: str, precision: str = "fp32") -> str:
    name = ARTIFACTS[backend]
    if precision == "fp32" or backend == "eager":  # eager fp16 is the same weights, cast at load time
        return name
    return name.replace("model.", "model.fp16.", 1)


@dataclass
class Artifact:
    """One exported file and how it was made."""

    backend: str
    precision: str
    file: str  # relative to the export folder
    device: str  # where it was built; AOTInductor and TensorRT artifacts only run there
    input_size: int
    min_batch: int
    max_batch: int
    export_seconds: float
    size_bytes: int
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    extra: dict = field(default_factory=dict)  # backend specifics (opset, optimisation profile, ...)

    @property
    def key(self) -> str:
        return f"{self.backend}-{self.precision}"


def write_manifest(out_dir: Path, artifacts: list[Artifact], info: dict) -> Path:
    path = Path(out_dir) / MANIFEST_NAME
    payload = {**info, "artifacts": [asdict(a) for a in artifacts]}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(out_dir: Path) -> tuple[dict, list[Artifact]]:
    payload = json.loads((Path(out_dir) / MANIFEST_NAME).read_text())
    artifacts = [Artifact(**a) for a in payload.pop("artifacts")]
    return payload, artifacts
