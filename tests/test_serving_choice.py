"""What `make serve` packs: the fastest backend that passes parity here, laid out by the host rule."""

from __future__ import annotations

import pytest
import yaml
import zipfile

from export import serving
from export.archive import serving_settings


def served_config(mar) -> dict:
    with zipfile.ZipFile(mar) as archive:
        return yaml.safe_load(archive.read("model-config.yaml"))


@pytest.mark.parametrize(
    ("device", "cores", "gpus", "layout"),
    [("cpu", 2, 0, (2, 1)), ("cpu", 16, 0, (16, 1)), ("cuda", 16, 1, (1, 16)), ("cuda", 16, 4, (4, 4)), ("cuda", 2, 8, (8, 1))],
)
def test_layout_rule(device, cores, gpus, layout):
    assert serving.host_layout(device, cores, gpus) == layout


def test_auto_serves_onnx_on_a_cpu_host_with_one_worker_per_core(weights_path, tmp_path):
    mar, backend, workers, threads = serving.build_serving_archive(weights_path, tmp_path / "store", out=tmp_path / "export",
                                                                   device="cpu")
    config = served_config(mar)
    assert mar.name == "deepfake-detector.mar" and backend == "onnx"
    assert config["handler"]["backend"] == "onnx" and config["handler"]["threads"] == threads == 1
    assert config["minWorkers"] == config["maxWorkers"] == workers == serving.usable_cores()
    assert (tmp_path / "export" / "onnx" / "parity.json").exists()  # it was checked before it was packed
    # what the benchmark reads back as the served configuration: the settings packed, not assumed
    assert serving_settings(mar) == {"backend": "onnx", "batch_size": config["batchSize"], "max_batch_delay": config["maxBatchDelay"],
                                     "workers": workers, "threads": 1}
    assert (config["batchSize"], config["maxBatchDelay"]) == serving.BATCHING["cpu"]


def test_a_backend_that_cannot_be_built_here_falls_through_to_the_next(weights_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(serving.PREFERENCE, "cpu", ("tensorrt", "eager"))  # no TensorRT on a CPU host
    mar, backend, _, _ = serving.build_serving_archive(weights_path, tmp_path / "store", workers=1, threads=2,
                                                       out=tmp_path / "export", device="cpu")
    config = served_config(mar)
    assert backend == "eager" and config["handler"]["backend"] == "eager"
    assert (config["minWorkers"], config["handler"]["threads"]) == (1, 2)  # the override wins over the rule
    assert "tensorrt: export or parity failed on this host" in capsys.readouterr().out
