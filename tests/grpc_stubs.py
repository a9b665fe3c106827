"""Python stubs for TorchServe's gRPC APIs, generated from the .proto files inside the installed
TorchServe jar, so they always match the frontend that answers them (nothing is copied into the
repository). Needs the test extras: grpcio-tools and googleapis-common-protos (inference.proto
imports google/rpc/status.proto).

    python tests/grpc_stubs.py build/grpc   # writes inference_pb2*.py and management_pb2*.py there

Tests call ``load(folder)``, which generates into ``folder`` and imports the four modules.
"""

from __future__ import annotations

import importlib
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

PROTOS = ("inference.proto", "management.proto")


def jar() -> Path:
    import ts

    return Path(ts.__file__).parent / "frontend" / "model-server.jar"


def generate(out: str | Path) -> Path:
    """Extract the jar's protos into ``out`` and compile them there with grpc_tools.protoc."""
    import google.rpc.status_pb2
    import grpc_tools
    from grpc_tools import protoc

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(jar()) as archive:
        for name in PROTOS:
            (out / name).write_bytes(archive.read(f"proto/{name}"))
    includes = [
        out,
        Path(grpc_tools.__file__).parent / "_proto",  # google/protobuf/empty.proto
        Path(google.rpc.status_pb2.__file__).parents[2],  # google/rpc/status.proto
    ]
    args = ["protoc", *(f"-I{path}" for path in includes), f"--python_out={out}", f"--grpc_python_out={out}", *PROTOS]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTOS} from {jar()}")
    return out


def load(out: str | Path) -> SimpleNamespace:
    """Generate into ``out`` and import: ``.inference_pb2``, ``.inference_pb2_grpc``,
    ``.management_pb2``, ``.management_pb2_grpc``."""
    folder = str(generate(out))
    if folder not in sys.path:
        sys.path.insert(0, folder)  # the generated *_grpc modules import their *_pb2 by top-level name
    names = [f"{Path(p).stem}_pb2{suffix}" for p in PROTOS for suffix in ("", "_grpc")]
    return SimpleNamespace(**{name: importlib.import_module(name) for name in names})


if __name__ == "__main__":
    print(generate(sys.argv[1] if len(sys.argv) > 1 else "build/grpc"))
