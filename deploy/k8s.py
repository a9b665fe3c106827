"""Kubernetes manifests from a values file: ``make k8s`` =
``python -m deploy.k8s --values deploy/values.yaml --out build/k8s``.

* ``kserve.yaml``: a KServe ``InferenceService`` whose predictor is TorchServe (model format
  ``pytorch``) on the project's image, reading the storage layout of ``deploy/layout.py`` from
  ``storage_uri``; scaled by KServe on in-flight requests per replica.
* ``deployment.yaml``: for clusters without KServe, the same image (layout baked in) as a
  Deployment + Service + HorizontalPodAutoscaler (CPU), an Ingress that ends TLS, and a
  NetworkPolicy that admits only the ingress controller (and Prometheus on the metrics port).

Every pod runs as the image's non-root user, and is ready and alive only while it answers a real
prediction (``deploy/health.py``). Resources and worker counts come from the values, which
``deploy/plan.py`` derives from a benchmark report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from deploy.layout import INFERENCE_PORT, METRICS_PORT, ROOT, load_values

USER_ID = 1000  # the official TorchServe image's model-server user


def health_probe(values: dict, period: int, failures: int) -> dict:
    return {
        "exec": {"command": ["python", "-m", "deploy.health", "--url", f"http://127.0.0.1:{INFERENCE_PORT}",
                             "--model", values["name"]]},
        "periodSeconds": period, "timeoutSeconds": 15, "failureThreshold": failures,
    }


def resources(values: dict) -> dict:
    requests = {"cpu": str(values["cpu_request"]), "memory": values["memory"]}
    limits = {"cpu": str(values["cpu_limit"]), "memory": values["memory"]}  # memory: request = limit, never evicted for it
    if values["device"] == "gpu":
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = "1"
    return {"requests": requests, "limits": limits}


def container_security() -> dict:
    return {"runAsNonRoot": True, "runAsUser": USER_ID, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}}


def common(values: dict) -> dict:
    """Container fields both predictors share."""
    return {
        "image": values["image"],
        "env": [{"name": "OMP_NUM_THREADS", "value": str(values["threads"])}],
        "resources": resources(values),
        "readinessProbe": health_probe(values, period=10, failures=3),
        # a wedged model is restarted; the long start (model load) is covered by the initial delay
        "livenessProbe": {**health_probe(values, period=20, failures=3), "initialDelaySeconds": 120},
        "securityContext": container_security(),
    }


def inference_service(values: dict) -> dict:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": values["name"], "namespace": values["namespace"]},
        "spec": {
            "predictor": {
                "minReplicas": values["replicas"],
                "maxReplicas": values["max_replicas"],
                "scaleMetric": "concurrency",
                "scaleTarget": values["concurrency"],
                "model": {
                    "modelFormat": {"name": "pytorch"},
                    "protocolVersion": "v1",
                    "storageUri": values["storage_uri"],
                    **common(values),
                },
            }
        },
    }


def labels(values: dict) -> dict:
    return {"app.kubernetes.io/name": values["name"], "app.kubernetes.io/component": "predictor"}


def deployment(values: dict) -> dict:
    ports = [{"name": "http", "containerPort": INFERENCE_PORT}, {"name": "metrics", "containerPort": METRICS_PORT}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": values["name"], "namespace": values["namespace"], "labels": labels(values)},
        "spec": {
            "replicas": values["replicas"],
            "selector": {"matchLabels": labels(values)},
            "template": {
                "metadata": {"labels": labels(values),
                             "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT)}},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": USER_ID, "fsGroup": USER_ID},
                    "containers": [{
                        "name": "torchserve",
                        # the image's command starts TorchServe on the baked-in layout in the foreground
                        "ports": ports,
                        "startupProbe": health_probe(values, period=5, failures=60),
                        **common(values),
                    }],
                },
            },
        },
    }


def service(values: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": values["name"], "namespace": values["namespace"], "labels": labels(values)},
        "spec": {
            "selector": labels(values),
            "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                      {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"}],
        },
    }


def autoscaler(values: dict) -> dict:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": values["name"], "namespace": values["namespace"]},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": values["name"]},
            "minReplicas": values["replicas"],
            "maxReplicas": values["max_replicas"],
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": values["cpu_target_percent"]}}}],
        },
    }


def ingress(values: dict) -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": values["name"], "namespace": values["namespace"]},
        "spec": {
            "tls": [{"hosts": [values["ingress_host"]], "secretName": values["tls_secret"]}],
            "rules": [{"host": values["ingress_host"], "http": {"paths": [{
                "path": f"/predictions/{values['name']}", "pathType": "Prefix",
                "backend": {"service": {"name": values["name"], "port": {"name": "http"}}}}]}}],
        },
    }


def network_policy(values: dict) -> dict:
    def from_namespace(name: str, port: int) -> dict:
        return {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}],
                "ports": [{"protocol": "TCP", "port": port}]}

    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": values["name"], "namespace": values["namespace"]},
        "spec": {
            "podSelector": {"matchLabels": labels(values)},
            "policyTypes": ["Ingress"],
            "ingress": [from_namespace(values["ingress_namespace"], INFERENCE_PORT),
                        from_namespace(values["monitoring_namespace"], METRICS_PORT)],
        },
    }


def render(values: dict) -> dict[str, list[dict]]:
    """File name -> the manifests it holds."""
    return {
        "kserve.yaml": [inference_service(values)],
        "deployment.yaml": [deployment(values), service(values), autoscaler(values), ingress(values), network_policy(values)],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--values", nargs="+", default=[ROOT / "deploy" / "values.yaml"],
                        help="values files, later ones overriding earlier ones")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "k8s")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, manifests in render(load_values(*args.values)).items():
        (args.out / name).write_text(yaml.safe_dump_all(manifests, sort_keys=False))
        print(f"wrote {args.out / name}: {', '.join(m['kind'] for m in manifests)}")


if __name__ == "__main__":
    main()
