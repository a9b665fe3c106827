"""The watchdog's failure paths (handler/watchdog.py) against a real HTTP server on a free loopback
port that plays a TorchServe gone wrong: predictions that fail, hang, answer without a verdict, and
management calls that help or do not. The watchdog, its client (handler/tsclient.py) and the
``TorchServe`` object are the real ones; only the server at the other end of the socket is made up.
Every call the watchdog makes is recorded, so the recovery order and its arguments are checked too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from handler import watchdog
from handler.payload import PROBE_HEADER
from handler.server import TorchServe
from handler.tsconfig import Ports

MODEL = "m"
ARCHIVE = "m.mar"
MIN_WORKERS, MAX_WORKERS = 1, 3  # declared by the archive: recovery must scale back to exactly these


class FakeTorchServe(ThreadingHTTPServer):
    """Inference and management on one port. ``predictions``: how /predictions answers ("ok",
    "fail" = HTTP 503, "no_verdict" = 200 with the handler's error JSON, "not_json", "hang").
    ``heals_on``: the management call after which predictions answer again ("scale", "register" or
    None). ``scale_status`` / ``unregister_status`` / ``register_status``: those calls' answers."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.predictions = "ok"
        self.heals_on: str | None = None
        self.scale_status = self.unregister_status = self.register_status = 200
        self.hang_s = 3.0
        self.calls: list[tuple[str, str, dict]] = []  # (method, path, query) in arrival order
        self.probe_headers: list[str | None] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def management_calls(self) -> list[tuple[str, str, dict]]:
        return [c for c in self.calls if not c[1].startswith("/predictions/") and c[0] != "GET"]


class Handler(BaseHTTPRequestHandler):
    server: FakeTorchServe

    def log_message(self, *args):  # quiet
        pass

    def _answer(self, status: int, body: object, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> tuple[str, dict]:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.server.calls.append((self.command, parts.path, query))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        return parts.path, query

    def _heal(self, on: str) -> None:
        if self.server.heals_on == on:
            self.server.predictions = "ok"

    def do_GET(self):
        path, _ = self._record()
        if path == f"/models/{MODEL}":
            return self._answer(200, [{"modelName": MODEL, "minWorkers": MIN_WORKERS, "maxWorkers": MAX_WORKERS, "workers": []}])
        self._answer(404, {"code": 404, "type": "ModelNotFoundException", "message": f"Model not found: {path}"})

    def do_POST(self):
        path, _ = self._record()
        if path == f"/predictions/{MODEL}":
            self.server.probe_headers.append(self.headers.get(PROBE_HEADER))
            mode = self.server.predictions
            if mode == "ok":
                return self._answer(200, {"label": "real", "fake_probability": 0.1})
            if mode == "no_verdict":
                return self._answer(200, {"error": "not_an_image", "message": "nope"})
            if mode == "not_json":
                return self._answer(200, b"<html>proxy page</html>", "text/html")
            if mode == "hang":
                time.sleep(self.server.hang_s)
                return self._answer(200, {"label": "real", "fake_probability": 0.1})
            return self._answer(503, {"code": 503, "type": "ServiceUnavailableException", "message": "Model not ready"})
        if path == "/models":
            self._heal("register") if self.server.register_status == 200 else None
            return self._answer(self.server.register_status, {"status": "registered"})
        self._answer(404, {"code": 404})

    def do_PUT(self):
        _, query = self._record()
        if self.server.scale_status == 200 and query.get("min_worker") != "0":
            self._heal("scale")
        self._answer(self.server.scale_status, {"status": "scaled"})

    def do_DELETE(self):
        self._record()
        self._answer(self.server.unregister_status, {"status": "unregistered"})


@pytest.fixture
def fake():
    server = FakeTorchServe()
    server.thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def served(fake, tmp_path) -> TorchServe:
    """The real TorchServe object (auth off) pointed at the fake's port."""
    p = fake.port
    return TorchServe(tmp_path / "store", {MODEL: ARCHIVE}, run_dir=tmp_path / "run", ports=Ports(p, p, p, p, p), token_auth=False)


@pytest.fixture
def dog(served, fake) -> watchdog.Watchdog:
    served.run_dir.mkdir(parents=True)
    instance = watchdog.Watchdog(served)
    fake.calls.clear()
    return instance


# --- one probe: what counts as a verdict ---------------------------------------------------------


def test_only_a_200_with_a_label_is_a_verdict(served, fake):
    image = b"\x89PNG..."
    fake.predictions = "ok"
    assert watchdog.verdict_or_reason(served.client, MODEL, image) is None
    fake.predictions = "fail"
    assert watchdog.verdict_or_reason(served.client, MODEL, image).startswith("HTTP 503: ")
    fake.predictions = "no_verdict"  # a 200 that carries the handler's error body, no label
    assert watchdog.verdict_or_reason(served.client, MODEL, image).startswith('HTTP 200: {"error": "not_an_image"')
    fake.predictions = "not_json"
    assert watchdog.verdict_or_reason(served.client, MODEL, image).startswith("JSONDecodeError: ")
    assert fake.probe_headers == ["1"] * 4  # marked as a probe: the handler does not record it


def test_a_probe_past_its_deadline_is_a_miss(served, fake):
    fake.predictions, fake.hang_s = "hang", 6.0
    started = time.monotonic()
    reason = watchdog.verdict_or_reason(served.client, MODEL, b"x", deadline=0.3)
    assert reason.startswith("ReadTimeout: ")
    assert time.monotonic() - started < 5.0  # gave up before the server answered: the deadline decides


def test_a_frontend_that_is_gone_is_a_miss(served, fake):
    fake.shutdown()
    fake.server_close()
    assert watchdog.verdict_or_reason(served.client, MODEL, b"x", deadline=2).startswith("ConnectionError: ")


# --- misses in a row and the recovery ladder -------------------------------------------------------


def test_the_declared_worker_counts_are_remembered(dog):
    (model,) = dog.models.values()
    assert (model.name, model.archive, model.min_workers, model.max_workers) == (MODEL, ARCHIVE, MIN_WORKERS, MAX_WORKERS)


def test_one_miss_is_counted_but_not_acted_on(dog, fake):
    assert watchdog.RECOVER_AFTER == 2  # the numbers below are worked out for two
    model = dog.models[MODEL]
    fake.predictions = "fail"
    dog.check(model)
    assert (model.probes, model.failures, model.consecutive_failures, model.recoveries) == (1, 1, 1, 0)
    assert model.last_failure.startswith("HTTP 503") and model.last_success is None
    assert fake.management_calls() == []
    # an answer resets the run of misses, not the total
    fake.predictions = "ok"
    dog.check(model)
    assert (model.probes, model.failures, model.consecutive_failures) == (2, 1, 0) and model.last_success
    fake.predictions = "fail"
    dog.check(model)
    assert model.consecutive_failures == 1 and fake.management_calls() == []


def test_second_miss_rescales_to_zero_and_back_to_the_declared_counts(dog, fake):
    model = dog.models[MODEL]
    fake.predictions, fake.heals_on = "fail", "scale"
    dog.check(model)
    dog.check(model)
    assert fake.management_calls() == [
        ("PUT", f"/models/{MODEL}", {"min_worker": "0", "max_worker": "0", "synchronous": "true"}),
        ("PUT", f"/models/{MODEL}", {"min_worker": str(MIN_WORKERS), "max_worker": str(MAX_WORKERS), "synchronous": "true"}),
    ]
    assert fake.calls[-1][1] == f"/predictions/{MODEL}"  # recovered only once a real verdict came back
    assert (model.recoveries, model.failed_recoveries, model.consecutive_failures, model.failures) == (1, 0, 0, 2)
    assert model.last_recovery["method"] == "rescale" and model.last_recovery["ok"] and model.last_recovery["error"] is None


def test_when_rescaling_does_not_help_the_archive_is_registered_again(dog, fake):
    model = dog.models[MODEL]
    fake.predictions, fake.heals_on = "fail", "register"
    dog.check(model)
    dog.check(model)
    methods = [(m, p) for m, p, _ in fake.calls]
    assert methods == [
        ("POST", f"/predictions/{MODEL}"), ("POST", f"/predictions/{MODEL}"),  # two misses
        ("PUT", f"/models/{MODEL}"), ("PUT", f"/models/{MODEL}"), ("POST", f"/predictions/{MODEL}"),  # rescale: still silent
        ("DELETE", f"/models/{MODEL}"), ("POST", "/models"), ("POST", f"/predictions/{MODEL}"),  # re-register: answers
    ]
    assert fake.calls[6][2] == {"url": ARCHIVE, "model_name": MODEL, "initial_workers": str(MIN_WORKERS), "synchronous": "true"}
    assert model.recoveries == 1 and model.failed_recoveries == 0
    assert model.last_recovery["method"] == "re-register" and model.last_recovery["ok"]


def test_a_model_that_is_gone_is_registered_again(dog, fake):
    """Unregistered behind the watchdog's back: scaling and unregistering answer 404 (TorchServeError),
    the registration still happens."""
    model = dog.models[MODEL]
    fake.predictions, fake.heals_on = "fail", "register"
    fake.scale_status = fake.unregister_status = 404
    dog.check(model)
    dog.check(model)
    assert [(m, p) for m, p, _ in fake.management_calls()] == [("PUT", f"/models/{MODEL}"), ("DELETE", f"/models/{MODEL}"), ("POST", "/models")]
    assert model.recoveries == 1 and model.last_recovery["method"] == "re-register" and model.last_recovery["ok"]


def test_a_failed_recovery_is_counted_and_tried_again_on_the_next_miss(dog, fake):
    model = dog.models[MODEL]
    fake.predictions, fake.heals_on = "fail", None
    fake.register_status = 500
    dog.check(model)
    dog.check(model)
    assert (model.recoveries, model.failed_recoveries, model.consecutive_failures) == (0, 1, 2)
    assert model.last_recovery["method"] == "re-register" and not model.last_recovery["ok"]
    assert model.last_recovery["error"].startswith("TorchServeError: registering m.mar failed: HTTP 500")
    before = len(fake.management_calls())
    dog.check(model)  # third miss in a row: the whole ladder again
    assert (model.failed_recoveries, model.consecutive_failures) == (2, 3)
    assert len(fake.management_calls()) == 2 * before
    # the server comes back by itself: the next probe resets the run, the counters stay
    fake.predictions = "ok"
    dog.check(model)
    assert (model.consecutive_failures, model.failures, model.recoveries, model.failed_recoveries) == (0, 3, 0, 2)


def test_state_and_prometheus_text_report_the_counts(dog, fake, served):
    model = dog.models[MODEL]
    fake.predictions, fake.heals_on = "fail", None
    fake.register_status = 500
    dog.check(model)
    dog.check(model)
    dog.write_state()
    state = json.loads(served.watchdog_state.read_text())
    assert state["stale_after_s"] == watchdog.DETECT_WITHIN_S == 30.0  # 5 + 2 x 10 + 1 x 5, the docstring's 30 s
    seen = state["models"][MODEL]
    assert (seen["probes"], seen["failures"], seen["consecutive_failures"], seen["recoveries"], seen["failed_recoveries"]) == (2, 2, 2, 0, 1)
    text = (served.run_dir / "watchdog.prom").read_text()
    assert f'deepfake_watchdog_failed_probes_total{{model="{MODEL}"}} 2\n' in text
    assert f'deepfake_watchdog_failed_recoveries_total{{model="{MODEL}"}} 1\n' in text
    assert f'deepfake_watchdog_last_success_timestamp_seconds{{model="{MODEL}"}} NaN\n' in text  # never answered
    assert not list(served.run_dir.glob("*.partial"))
    # `make status` reads it: never answered, so not answering
    assert served.status()["models"][MODEL]["answering"] is False


@pytest.mark.server  # a stand-in frontend process
def test_run_probes_until_the_frontend_is_gone(dog, fake, served, monkeypatch):
    """The loop exits by itself once the frontend process is gone (restarting it is not its job)."""
    monkeypatch.setattr(watchdog, "INTERVAL_S", 0.1)
    frontend = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=served.run_dir)
    served.pid = frontend.pid
    runner = threading.Thread(target=dog.run, daemon=True)
    try:
        runner.start()
        deadline = time.monotonic() + 30
        while dog.models[MODEL].probes < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dog.models[MODEL].probes >= 2 and served.watchdog_state.exists()
    finally:
        frontend.kill()
        frontend.wait()
    runner.join(timeout=10)
    assert not runner.is_alive()
