"""Server-side split from TorchServe's Prometheus text (the format its metrics endpoint writes)."""

from __future__ import annotations

import pytest

from benchmarks.serverstats import model_values, parse_prometheus, server_split

def exposition(requests, latency_us, queue_us, faces_count, faces_sum, errors, ok) -> str:
    """Metrics text as TorchServe 0.12 writes it (Prometheus mode), for one model ``m``."""
    return f"""\
# HELP ts_inference_requests_total Torchserve prometheus counter metric with unit: Count
# TYPE ts_inference_requests_total counter
ts_inference_requests_total{{model_name="m",model_version="default",hostname="vm",}} {requests}
ts_inference_requests_total{{model_name="other",model_version="default",hostname="vm",}} 99.0
# TYPE ts_inference_latency_microseconds counter
ts_inference_latency_microseconds{{model_name="m",model_version="default",hostname="vm",}} {latency_us}
# TYPE ts_queue_latency_microseconds counter
ts_queue_latency_microseconds{{model_name="m",model_version="default",hostname="vm",}} {queue_us}
# TYPE DeepfakeFacesPerImage histogram
DeepfakeFacesPerImage_bucket{{ModelName="m",Level="Model",Hostname="vm",le="+Inf",}} {faces_count}
DeepfakeFacesPerImage_count{{ModelName="m",Level="Model",Hostname="vm",}} {faces_count}
DeepfakeFacesPerImage_sum{{ModelName="m",Level="Model",Hostname="vm",}} {faces_sum}
# TYPE DeepfakeErrors counter
DeepfakeErrors{{ModelName="m",Level="Model",Hostname="vm",kind="not_an_image",}} {errors}
# TYPE Requests2XX counter
Requests2XX{{Level="Host",Hostname="vm",}} {ok}
# TYPE DeepfakeInferenceTime gauge
DeepfakeInferenceTime{{ModelName="m",Level="Model",Hostname="vm",}} 50.0
"""


BEFORE = exposition(10.0, 1_000_000.0, 200_000.0, 10.0, 10.0, 1.0, 10.0)
AFTER = exposition(30.0, 3_000_000.0, 600_000.0, 20.0, 25.0, 4.0, 30.0)


def test_parse_keeps_types_and_labels():
    scrape = parse_prometheus(BEFORE)
    assert scrape.types["DeepfakeFacesPerImage"] == "histogram"
    values = model_values(scrape, "m")
    assert values["ts_inference_requests_total"] == 10.0  # the other model's series is not ours
    assert values["DeepfakeErrors{kind=not_an_image}"] == 1.0
    assert "Requests2XX" in values


def test_split_is_counter_deltas_histogram_means_and_sampled_gauges():
    gauges = [{"DeepfakeInferenceTime": 40.0}, {"DeepfakeInferenceTime": 60.0}, {"DeepfakeInferenceTime": 80.0}]
    split = server_split(parse_prometheus(BEFORE), parse_prometheus(AFTER), gauges, "m")
    assert split["requests"] == 20
    assert split["total_ms"] == pytest.approx(2_000_000 / 20 / 1000)  # 100 ms per request
    assert split["queue_ms"] == pytest.approx(400_000 / 20 / 1000)  # 20 ms per request
    assert split["DeepfakeFacesPerImage_mean"] == pytest.approx(15 / 10)
    assert split["DeepfakeErrors{kind=not_an_image}"] == 3
    assert split["Requests2XX"] == 20
    assert split["DeepfakeInferenceTime"] == pytest.approx(60.0)


def test_split_without_traffic_has_no_per_request_means():
    scrape = parse_prometheus(BEFORE)
    split = server_split(scrape, scrape, [], "m")
    assert "total_ms" not in split and "queue_ms" not in split
