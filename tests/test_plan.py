"""The capacity planner on a small summary.json written here (the schema of benchmarks/report.py):
which measured point it picks, the replica count worked out by hand, its refusal when no point is
fast enough, and its values feeding the manifest renderer."""

import json
from pathlib import Path

import kubernetes_validate
import pytest

from deploy.k8s import render
from deploy.layout import load_values
from deploy.plan import PlanError, main, plan

VALUES = Path(__file__).resolve().parents[1] / "deploy" / "values.yaml"
K8S = "1.37.0"  # as in tests/test_deploy.py


def point(server="torchserve", rps=100.0, p99=50.0, failures=0, users=8, **setting):
    return {"server": server, "backend": "onnx", "batch_size": 4, "max_batch_delay": 10, "workers": 2, "threads": 1,
            **setting, "users": users, "rps": rps, "failures": failures, "stable": True,
            "latency_ms": {"mean": 1000 * users / rps, "p50": p99 / 2, "p99": p99},
            "host": {"workers_cpu_percent": 150.0, "frontend_cpu_percent": 20.0, "workers_rss_mib": 1500.0,
                     "frontend_rss_mib": 1100.0}}


SUMMARY = {
    "device": "cpu",
    "machine": {"cpu": "test CPU", "cpu_count": 4},
    "load": {"results": [
        point(rps=100.0, p99=50.0, users=8),
        point(rps=120.0, p99=90.0, users=16, batch_size=8, max_batch_delay=20),  # the best within 100 ms
        point(rps=200.0, p99=300.0, users=64),  # faster but too slow per request
        point(rps=180.0, p99=60.0, failures=3),  # failed requests: never planned on
        point(server="plain", rps=500.0, p99=10.0),  # not TorchServe
    ]},
}


def test_the_fastest_clean_point_within_the_p99_sets_the_replicas():
    result = plan(SUMMARY, rps=250, p99_ms=100, headroom=0.25, burst=2)
    assert (result.point["batch_size"], result.point["rps"]) == (8, 120.0)
    # 120 req/s x 0.75 = 90 per replica; 250 / 90 = 2.8 -> 3 replicas, at most 6
    assert (result.replicas, result.max_replicas) == (3, 6)
    assert result.concurrency == 12  # 16 users x 0.75
    assert (result.cpu, result.memory_mib) == (4, 3328)  # the machine's 4 cores; 2600 MiB x 1.25 = 3250 -> 3328
    assert any("ceil(250 / 90.0) = 3" in line for line in result.lines)


def test_no_measured_point_within_the_p99_is_refused_with_the_closest():
    with pytest.raises(PlanError, match="lowest measured p99 is 50 ms"):
        plan(SUMMARY, rps=10, p99_ms=40)


def test_the_command_prints_the_arithmetic_and_writes_values_the_renderer_takes(tmp_path, capsys):
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps(SUMMARY))
    plan_values = tmp_path / "plan.yaml"
    assert main(["--summary", str(summary), "--rps", "250", "--p99-ms", "100", "--values-out", str(plan_values)]) == 0
    printed = capsys.readouterr().out
    assert "onnx, batch 8 within 20 ms, 2 workers x 1 threads: 120.0 req/s at 16 users" in printed
    assert "replicas: ceil(250 / 84.0) = 3" in printed  # default headroom 30 %: 120 x 0.7 = 84

    values = load_values(VALUES, plan_values)
    assert (values["replicas"], values["workers"], values["batch_size"], values["memory"]) == (3, 2, 8, "3328Mi")
    manifests = render(values)
    for manifest in manifests["deployment.yaml"]:
        kubernetes_validate.validate(manifest, K8S, strict=True)
    assert manifests["kserve.yaml"][0]["spec"]["predictor"]["scaleTarget"] == 11  # floor(16 x 0.7)

    assert main(["--summary", str(summary), "--rps", "250", "--p99-ms", "40"]) == 2
    assert "no plan" in capsys.readouterr().err
