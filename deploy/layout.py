"""The storage layout KServe's TorchServe predictor reads, also baked into the image (Dockerfile)::

    <out>/model-store/<name>.mar          the served archive, repacked with the values' batch and worker settings
    <out>/config/config.properties        the project's config adapted for a pod (below)
    <out>/requirements.txt                the handler's packages, for the image

    python -m deploy.layout --archive model_store/deepfake-detector.mar --values deploy/values.yaml --out build/kserve

The predictor starts ``torchserve --start --model-store=/mnt/models/model-store
--ts-config=/mnt/models/config/config.properties``; the config then loads the archive itself.

What changes from ``config.properties`` for a pod, and why:

* inference (8080, the port KServe and the Service route to) and metrics (8082, for Prometheus)
  listen on all interfaces, since the pod's network is the way in; management and gRPC stay on the
  pod's loopback, and registering models is off: the model is fixed when the pod starts.
* token authorisation is off: TorchServe 0.12 draws new keys at every start, which no client or
  ingress could know. Callers are authenticated and TLS ends at the ingress (KServe's gateway or the
  rendered Ingress); the plain Deployment's NetworkPolicy admits only the ingress controller's namespace.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from export.archive import repack, requirements
from handler.tsconfig import read_properties

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "config.properties"
INFERENCE_PORT, MANAGEMENT_PORT, METRICS_PORT = 8080, 8081, 8082
MOUNT = "/mnt/models"  # where KServe's storage initializer puts the storage URI's content


def load_values(*paths: str | Path) -> dict:
    """The values files merged in order: a later file's keys win."""
    values: dict = {}
    for path in paths:
        values.update(yaml.safe_load(Path(path).read_text()) or {})
    return values


def pod_config(values: dict, model_store: str = f"{MOUNT}/model-store", host: str = "0.0.0.0",
               ports: tuple[int, int, int] = (INFERENCE_PORT, MANAGEMENT_PORT, METRICS_PORT)) -> str:
    """config.properties for a pod. ``host`` and ``ports`` are parameters only so that a test can run
    the same file on a shared machine's loopback."""
    inference, management, metrics = ports
    props = read_properties(BASE_CONFIG)
    props.update(
        inference_address=f"http://{host}:{inference}",
        metrics_address=f"http://{host}:{metrics}",
        management_address=f"http://127.0.0.1:{management}",
        grpc_inference_address="127.0.0.1",
        grpc_management_address="127.0.0.1",
        enable_model_api="false",
        disable_token_authorization="true",
        model_store=model_store,
        load_models=f"{values['name']}={values['name']}.mar",
        default_workers_per_model=str(values["workers"]),
        vmargs=f"-Xms{values['heap']} -Xmx{values['heap']} -XX:+AlwaysPreTouch",
    )
    header = "# Written by python -m deploy.layout for a pod (deploy/layout.py says what differs and why).\n"
    return header + "".join(f"{key}={value}\n" for key, value in props.items())


def write_layout(archive: Path, values: dict, out: Path, **config) -> Path:
    """``out`` holding model-store/, config/ and requirements.txt; ``config`` goes to :func:`pod_config`."""
    mar = repack(archive, out / "model-store" / f"{values['name']}.mar",
                 batchSize=values["batch_size"], maxBatchDelay=values["max_batch_delay_ms"],
                 minWorkers=values["workers"], maxWorkers=values["workers"],
                 deviceType="gpu" if values["device"] == "gpu" else "cpu",
                 handler={"threads": values["threads"]})
    (out / "config").mkdir(parents=True, exist_ok=True)
    (out / "config" / "config.properties").write_text(pod_config(values, **config))
    (out / "requirements.txt").write_text(requirements())
    return mar


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, default=ROOT / "model_store" / "deepfake-detector.mar")
    parser.add_argument("--values", nargs="+", default=[ROOT / "deploy" / "values.yaml"])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "kserve")
    args = parser.parse_args(argv)
    values = load_values(*args.values)
    mar = write_layout(args.archive, values, args.out)
    print(json.dumps({"archive": str(mar), "config": str(args.out / "config" / "config.properties")}))


if __name__ == "__main__":
    main()
