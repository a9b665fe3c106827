"""Cluster deployment, checked offline: the rendered manifests against the Kubernetes schemas
(kubernetes-validate, strict), and the KServe storage layout served by a real TorchServe started
the way KServe's TorchServe predictor starts it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import psutil
import pytest
import requests
import yaml

from deploy.k8s import main as k8s_main
from deploy.k8s import render
from deploy.layout import load_values, write_layout
from handler.server import TorchServe
from handler.tsclient import TorchServeClient, probe_image
from handler.tsconfig import Ports, read_properties
from handler.watchdog import verdict_or_reason

ROOT = Path(__file__).resolve().parents[1]
VALUES = ROOT / "deploy" / "values.yaml"
K8S = "1.37.0"  # the newest Kubernetes whose schemas the pinned kubernetes-validate ships
# fields of KServe's ModelSpec that are not those of a Kubernetes container
KSERVE_MODEL_FIELDS = {"modelFormat", "protocolVersion", "storageUri", "runtime", "runtimeVersion"}


def test_make_k8s_writes_manifests_that_validate_strictly(tmp_path):
    k8s_main(["--values", str(VALUES), "--out", str(tmp_path)])
    plain = list(yaml.safe_load_all((tmp_path / "deployment.yaml").read_text()))
    assert [m["kind"] for m in plain] == ["Deployment", "Service", "HorizontalPodAutoscaler", "Ingress", "NetworkPolicy"]
    for manifest in plain:
        kubernetes_validate.validate(manifest, K8S, strict=True)  # raises on any unknown or mistyped field

    # KServe's CRD schema ships in no PyPI package: its container part is checked as the Pod
    # container it becomes, the KServe fields by value
    (service,) = yaml.safe_load_all((tmp_path / "kserve.yaml").read_text())
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "pytorch"} and model["storageUri"].startswith("pvc://")
    container = {k: v for k, v in model.items() if k not in KSERVE_MODEL_FIELDS}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"},
           "spec": {"containers": [{"name": "kserve-container", **container}]}}
    kubernetes_validate.validate(pod, K8S, strict=True)
    assert set(predictor) == {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "model"}

    values = load_values(VALUES)
    deployment = plain[0]["spec"]["template"]["spec"]
    assert deployment["securityContext"]["runAsNonRoot"] is True
    (torchserve,) = deployment["containers"]
    assert torchserve["resources"] == model["resources"]
    assert torchserve["resources"]["limits"] == {"cpu": values["cpu_limit"], "memory": values["memory"]}
    assert torchserve["readinessProbe"]["exec"]["command"][:3] == ["python", "-m", "deploy.health"]
    assert plain[2]["spec"]["minReplicas"] == predictor["minReplicas"] == values["replicas"]


def test_the_validator_catches_a_misspelt_field():
    deployment = render(load_values(VALUES))["deployment.yaml"][0]
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(deployment, K8S, strict=True)


def test_gpu_values_ask_for_one_gpu_per_replica():
    values = {**load_values(VALUES), "device": "gpu"}
    manifests = render(values)
    container = manifests["deployment.yaml"][0]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    kubernetes_validate.validate(manifests["deployment.yaml"][0], K8S, strict=True)


@pytest.mark.integration
def test_the_kserve_layout_serves_a_prediction_as_the_predictor_starts_it(model_store, tmp_path):
    values = {**load_values(VALUES), "workers": 1, "threads": 1, "batch_size": 4, "max_batch_delay_ms": 10, "heap": "256m"}
    layout = tmp_path / "mnt-models"
    ports = Ports.free()
    # the pod's config, on this shared machine's loopback and free ports instead of 0.0.0.0:8080
    write_layout(model_store / "deepfake-detector.mar", values, layout, host="127.0.0.1",
                 ports=(ports.inference, ports.management, ports.metrics),
                 model_store=str(layout / "model-store"))
    config = layout / "config" / "config.properties"
    props = read_properties(config)
    assert props["disable_token_authorization"] == "true" and props["enable_model_api"] == "false"
    assert props["management_address"].startswith("http://127.0.0.1:")
    props.update(grpc_inference_port=str(ports.grpc_inference), grpc_management_port=str(ports.grpc_management))
    config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    run = tmp_path / "run"
    (run / "tmp").mkdir(parents=True)
    env = {**os.environ, "TMPDIR": str(run / "tmp"), "TEMP": str(run / "tmp"), "LOG_LOCATION": str(run / "logs"),
           "METRICS_LOCATION": str(run / "logs")}
    env.pop("PYTHONPATH", None)  # the worker imports the archive's code, never this checkout
    torchserve = TorchServe.executable()
    # KServe's TorchServe runtime: exactly these arguments, with /mnt/models = the layout
    client = TorchServeClient(f"http://127.0.0.1:{ports.inference}", f"http://127.0.0.1:{ports.management}")
    try:
        with open(run / "launcher.log", "w") as log:  # the frontend keeps its stdout: a file, not a pipe
            subprocess.run([torchserve, "--start", "--model-store", str(layout / "model-store"), "--ts-config", str(config)],
                           cwd=run, env=env, check=True, stdout=log, stderr=subprocess.STDOUT, timeout=120)
        deadline, reason = time.monotonic() + 400, "not started"
        while time.monotonic() < deadline:
            reason = verdict_or_reason(client, values["name"], probe_image())
            if reason is None:
                break
            time.sleep(2)
        assert reason is None, reason
        # no token needed in the pod (TLS and callers' auth at the ingress); the model is fixed
        answer = client.predict(values["name"], probe_image()).json()
        assert answer["label"] == answer["band"] == "no_face"  # the probe is a gradient: an answer, no verdict
        described = client.describe(values["name"])
        assert (described["batchSize"], described["maxBatchDelay"], len(described["workers"])) == (4, 10, 1)
        assert client.management("POST", "/models", params={"url": "x.mar"}).status_code >= 400
        metrics = requests.get(f"http://127.0.0.1:{ports.metrics}/metrics", timeout=30)  # what Prometheus scrapes
        assert metrics.status_code == 200 and "ts_inference_requests_total" in metrics.text

        health = [sys.executable, "-m", "deploy.health", "--url", client.inference_url, "--model"]
        assert subprocess.run(health + [values["name"]], cwd=ROOT, capture_output=True, timeout=60).returncode == 0
        missing = subprocess.run(health + ["no-such-model"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert missing.returncode == 1 and "HTTP 404" in missing.stderr
    finally:
        pid_file = run / "tmp" / ".model_server.pid"
        frontend = psutil.Process(int(pid_file.read_text())) if pid_file.exists() else None
        family = [frontend, *frontend.children(recursive=True)] if frontend else []
        subprocess.run([torchserve, "--stop"], cwd=run, env=env, capture_output=True, timeout=60)
        _, alive = psutil.wait_procs(family, timeout=60)
        for process in alive:
            process.kill()
        psutil.wait_procs(alive, timeout=10)


def test_the_image_copies_what_the_layout_writes_and_runs_as_a_user(model_store, tmp_path):
    """No container runtime here: the Dockerfile's contract is checked against the files instead.
    Every COPY source is in the build context (kept by .dockerignore) once the layout is written."""
    write_layout(model_store / "deepfake-detector.mar", load_values(VALUES), tmp_path / "build" / "kserve")
    lines = [line.split() for line in (ROOT / "Dockerfile").read_text().splitlines() if line and not line.startswith("#")]
    (base,) = [words[1] for words in lines if words[0] == "FROM"]
    assert base == "pytorch/torchserve:0.12.0-${VARIANT}"
    copied = [words[-2] for words in lines if words[0] == "COPY"]
    kept = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    for source in copied:
        path = tmp_path / source if source.startswith("build/") else ROOT / source
        assert path.exists(), source
        assert any(source == rule[1:] or source.startswith(rule[1:] + "/") for rule in kept), f"{source} is not in the build context"
    users = [words[1] for words in lines if words[0] == "USER"]
    assert users[-1] == "model-server"
    (health,) = [words for words in lines if words[0] == "HEALTHCHECK"]
    assert '"deploy.health"]' in health
