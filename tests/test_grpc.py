"""TorchServe's gRPC APIs (config.properties opens them on loopback; TorchServe 0.12 cannot switch
them off) against real servers, with stubs generated from the protos inside TorchServe's own jar.

What a gRPC client gets, pinned down here:
- Predictions: the same JSON body as REST. A refusal comes back with status OK (TorchServe 0.12's
  GRPCJob drops the per-request status code) and the handler's ``{"error", "message"}`` body, so
  clients must read the body, never only the status;
- StreamPredictions: one message, the verdict, then the stream ends; the worker survives;
- StreamPredictions2 with a sequence id on this model (no sequence batching) wedges the frontend
  before the handler runs: the watchdog (handler/watchdog.py) must heal it within its deadline;
- DescribeModel customized=true: the handler's description, no prediction, no error counted;
- token checks: no key or a wrong one is PERMISSION_DENIED.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import grpc
import pytest
import requests
from google.protobuf import empty_pb2

from conftest import MODEL, ROOT
from grpc_stubs import load
from test_handler import FakeContext, handler, model_dir  # noqa: F401  (fixtures: the session archive's handler, in process)

pytestmark = pytest.mark.integration

RPC_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def stubs(tmp_path_factory):
    return load(tmp_path_factory.mktemp("grpc_stubs"))


class Grpc:
    """Stubs bound to one server's gRPC ports, with its keys as call metadata."""

    def __init__(self, server, stubs):
        self.server, self.pb = server, stubs
        inference = grpc.insecure_channel(f"127.0.0.1:{server.ports.grpc_inference}")
        management = grpc.insecure_channel(f"127.0.0.1:{server.ports.grpc_management}")
        self.inference = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(inference)
        self.management = stubs.management_pb2_grpc.ManagementAPIsServiceStub(management)
        self.channels = (inference, management)

    def auth(self, api: str = "inference") -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.server.key(api)}")]

    def request(self, data: bytes, **fields):
        return self.pb.inference_pb2.PredictionsRequest(model_name=MODEL, input={"data": data}, **fields)

    def predict(self, data: bytes):
        """(PredictionResponse, status code) of a unary Predictions call."""
        reply, call = self.inference.Predictions.with_call(self.request(data), metadata=self.auth(), timeout=RPC_TIMEOUT_S)
        return reply, call.code()

    def describe(self, customized: bool = False) -> list[dict]:
        request = self.pb.management_pb2.DescribeModelRequest(model_name=MODEL, customized=customized)
        return json.loads(self.management.DescribeModel(request, metadata=self.auth("management"), timeout=RPC_TIMEOUT_S).msg)

    def close(self):
        for channel in self.channels:
            channel.close()


@pytest.fixture(scope="module")
def api(torchserve, stubs):
    client = Grpc(torchserve, stubs)
    yield client
    client.close()


def errors_counted(server) -> float:
    """The handler's DeepfakeErrors counter, summed over kinds."""
    return sum(float(v) for v in re.findall(r"^DeepfakeErrors\{.*\} (\S+)$", server.metrics(), re.M))


# --- the session server: answers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def in_process(handler, model_dir, astronaut_jpeg) -> dict:
    """The session archive's handler, run here on the same JPEG: the answer the server must give."""
    (answer,) = handler.handle([{"body": astronaut_jpeg}], FakeContext(model_dir, {}))
    assert answer["face"] is not None
    return answer


def same_verdict(answer: dict, expected: dict) -> None:
    assert answer["label"] == expected["label"] and answer["threshold"] == expected["threshold"]
    # another batch composition on the server: the same verdict up to float rounding
    assert answer["fake_probability"] == pytest.approx(expected["fake_probability"], abs=1e-4)
    assert answer["faces"][0]["box"] == expected["faces"][0]["box"]


def test_grpc_prediction_is_the_rest_answer(torchserve, api, astronaut_jpeg, in_process):
    reply, code = api.predict(astronaut_jpeg)
    rest = torchserve.predict(MODEL, astronaut_jpeg)
    assert code == grpc.StatusCode.OK and rest.status_code == 200
    assert json.loads(reply.prediction) == rest.json()
    same_verdict(json.loads(reply.prediction), in_process)


@pytest.mark.parametrize("body, code, http", [(b"definitely not an image", "not_an_image", 415), (b"", "empty_body", 400)])
def test_grpc_refusal_is_status_ok_with_the_json_error(torchserve, api, body, code, http):
    """TorchServe 0.12 sends the handler's 4xx as gRPC status OK: the JSON body is the only signal."""
    reply, status = api.predict(body)
    rest = torchserve.predict(MODEL, body, headers={"Content-Type": "application/octet-stream"})
    assert status == grpc.StatusCode.OK
    answer = json.loads(reply.prediction)
    assert answer["error"] == code and answer["message"] and "label" not in answer
    assert rest.status_code == http and rest.json() == answer


def test_grpc_needs_the_right_key(api, astronaut_jpeg):
    request = api.request(astronaut_jpeg)
    for metadata in ([], [("authorization", "Bearer wrong-key")], api.auth("management")):
        with pytest.raises(grpc.RpcError) as refused:
            api.inference.Predictions(request, metadata=metadata, timeout=RPC_TIMEOUT_S)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    listing = api.pb.management_pb2.ListModelsRequest(limit=10)
    for metadata in ([], api.auth("inference")):
        with pytest.raises(grpc.RpcError) as refused:
            api.management.ListModels(listing, metadata=metadata, timeout=RPC_TIMEOUT_S)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    models = json.loads(api.management.ListModels(listing, metadata=api.auth("management"), timeout=RPC_TIMEOUT_S).msg)
    assert [m["modelName"] for m in models["models"]] == [MODEL]


def test_stream_predictions_answers_once_and_keeps_the_worker(torchserve, api, astronaut_jpeg, in_process):
    """Without ts_stream_next in the handler's answer, 0.12's frontend throws after the first message
    ("Worker died.") and reloads the worker; the handler marks gRPC answers as the stream's last."""
    pid = torchserve.client.worker_pids(MODEL)
    log = torchserve.log_dir / "ts_log.log"
    died_before = log.read_text(errors="replace").count("Worker died")
    messages = list(api.inference.StreamPredictions(api.request(astronaut_jpeg), metadata=api.auth(), timeout=RPC_TIMEOUT_S))
    assert len(messages) == 1
    assert json.loads(messages[0].prediction) == torchserve.predict(MODEL, astronaut_jpeg).json()
    same_verdict(json.loads(messages[0].prediction), in_process)
    assert torchserve.client.worker_pids(MODEL) == pid
    assert log.read_text(errors="replace").count("Worker died") == died_before
    # a refusal is one message too, with the JSON error
    (refusal,) = api.inference.StreamPredictions(api.request(b"nope"), metadata=api.auth(), timeout=RPC_TIMEOUT_S)
    assert json.loads(refusal.prediction)["error"] == "not_an_image"


def test_customized_describe_over_rest_and_grpc_counts_no_error(torchserve, api):
    before = errors_counted(torchserve)
    rest = torchserve.management("GET", f"/models/{MODEL}?customized=true")
    assert rest.status_code == 200, rest.text
    description = rest.json()[0]["customizedMetadata"]
    assert description["backend"] == "eager" and description["name"] == MODEL
    assert {"threshold", "calibration", "preprocessing", "labels", "limits"} <= set(description)
    assert api.describe(customized=True)[0]["customizedMetadata"] == description
    assert "customizedMetadata" not in api.describe()[0]
    # one refusal afterwards: once the counter shows it, anything the describes counted would show too
    torchserve.predict(MODEL, b"not an image", headers={"Content-Type": "application/octet-stream"})
    deadline = time.monotonic() + 60
    while errors_counted(torchserve) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert errors_counted(torchserve) == before + 1


# --- a server of its own, started as `make serve` does (watchdog included), to be wedged ----------


@pytest.fixture(scope="module")
def watched(tmp_path_factory, weights_path, stubs):
    """`python -m handler.server start` (the `make serve` path, on free ports) and `... stop`."""
    from export.archive import ServingConfig, build_archive
    from handler.server import TorchServe

    store = tmp_path_factory.mktemp("watched_store")
    build_archive(weights_path, export_path=store, model_name=MODEL, serving=ServingConfig(handler={"threads": 1}), check=False)
    run_dir = tmp_path_factory.mktemp("watched_server")
    cli = [sys.executable, "-m", "handler.server"]
    started = subprocess.run([*cli, "start", "--run-dir", str(run_dir), "--model-store", str(store),
                              "--models", f"{MODEL}={MODEL}.mar", "--free-ports"],
                             cwd=ROOT, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    server = TorchServe.attach(run_dir)
    client = Grpc(server, stubs)
    try:
        yield server, client
    finally:
        client.close()
        watchdog = server.watchdog_process()
        subprocess.run([*cli, "stop", "--run-dir", str(run_dir)], cwd=ROOT, timeout=300)
        assert watchdog is None or not watchdog.is_running(), "`make stop` left the watchdog running"


def watchdog_state(server) -> dict:
    return json.loads(server.watchdog_state.read_text())["models"][MODEL] if server.watchdog_state.exists() else {}


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def healed_after(server, wedged_at: float, recoveries: int, image: bytes) -> float:
    """Seconds from ``wedged_at`` until the watchdog recovered the model and REST answered again."""
    from handler.watchdog import HEAL_WITHIN_S

    wait_for(lambda: watchdog_state(server).get("recoveries", 0) >= recoveries, 3 * HEAL_WITHIN_S, "the watchdog's recovery")
    reply = server.predict(MODEL, image, timeout=RPC_TIMEOUT_S)
    assert reply.status_code == 200, reply.text
    return time.monotonic() - wedged_at


@pytest.mark.slow
def test_watchdog_heals_the_stream_predictions2_wedge(watched, astronaut_jpeg):
    from handler.watchdog import HEAL_WITHIN_S

    server, api = watched
    wait_for(lambda: watchdog_state(server).get("last_success"), 60, "the watchdog's first real prediction")
    assert server.status()["healthy"]

    wedged_at = time.monotonic()
    with pytest.raises(grpc.RpcError):
        list(api.inference.StreamPredictions2(iter([api.request(astronaut_jpeg, sequence_id="seq-1")]),
                                              metadata=api.auth(), timeout=RPC_TIMEOUT_S))  # fmt: skip
    # wedged: TorchServe still says Healthy and READY, but a prediction waits forever
    ping = api.inference.Ping(empty_pb2.Empty(), metadata=api.auth(), timeout=RPC_TIMEOUT_S)
    assert json.loads(ping.health)["status"] == "Healthy"
    assert [w["status"] for w in server.client.describe(MODEL)["workers"]] == ["READY"]
    with pytest.raises(requests.Timeout):
        server.predict(MODEL, astronaut_jpeg, timeout=5)

    healed = healed_after(server, wedged_at, 1, astronaut_jpeg)
    state = watchdog_state(server)
    print(f"\nStreamPredictions2 wedge healed in {healed:.1f}s (deadline {HEAL_WITHIN_S:.0f}s): {state['last_recovery']}")
    assert healed <= HEAL_WITHIN_S
    assert state["last_recovery"]["method"] == "rescale" and state["failures"] >= 2
    for _ in range(3):
        assert server.predict(MODEL, astronaut_jpeg, timeout=RPC_TIMEOUT_S).status_code == 200
    metrics = (server.run_dir / "watchdog.prom").read_text()
    assert f'deepfake_watchdog_recoveries_total{{model="{MODEL}"}} 1' in metrics

    # `make status` reports the last real prediction, and exits 0 once the model answers
    wait_for(lambda: server.status()["healthy"], 60, "status to report healthy")
    status = subprocess.run([sys.executable, "-m", "handler.server", "status", "--run-dir", str(server.run_dir)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    report = json.loads(status.stdout)
    assert status.returncode == 0, status.stdout + status.stderr
    assert report["models"][MODEL]["last_real_prediction"] and report["models"][MODEL]["recoveries"] == 1


@pytest.mark.slow
def test_watchdog_registers_the_archive_again_when_scaling_cannot_help(watched, astronaut_jpeg):
    """The model unregistered behind its back: scaling fails (404), so the watchdog registers the
    archive again."""
    from handler.watchdog import HEAL_WITHIN_S

    server, _ = watched
    recoveries = watchdog_state(server).get("recoveries", 0)
    gone_at = time.monotonic()
    server.client.unregister(MODEL)
    healed = healed_after(server, gone_at, recoveries + 1, astronaut_jpeg)
    state = watchdog_state(server)
    print(f"\nunregistered model back in {healed:.1f}s: {state['last_recovery']}")
    assert state["last_recovery"]["method"] == "re-register" and state["last_recovery"]["ok"]
    assert healed <= HEAL_WITHIN_S
    assert server.client.describe(MODEL)["minWorkers"] == 1
