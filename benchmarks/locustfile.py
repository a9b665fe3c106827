"""Locust user for the detector: each user posts real face images, one per request, back to back.

Works under the plain Locust CLI and from ``benchmarks.load`` (which sets the same values directly):

    BENCH_IMAGES=examples BENCH_MODEL=deepfake-detector BENCH_TOKEN=<inference key> \
        locust -f benchmarks/locustfile.py --headless -u 16 -r 16 -t 60s --host http://127.0.0.1:8080

BENCH_IMAGES: folder of images, posted round-robin (default: the shipped examples);
BENCH_MODEL: model name in /predictions/<name>; BENCH_TOKEN: TorchServe's inference key, if token
authorisation is on.

Distributed (``benchmarks/generators.py``): as ``locust --worker`` it also sends every answer's finish
time and latency, and its own CPU use, to the master with each report.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

import psutil
from locust import FastHttpUser, constant, events, task
from locust import runners

# Copies of runtime.photo.IMAGE_SUFFIXES and runtime.artifacts.MODEL_NAME: Locust workers on other hosts
# load this file alone (locust -f), without the project on sys.path, so it imports nothing of it.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
DEFAULT_IMAGES = Path(__file__).resolve().parent.parent / "examples"


def load_images(folder: str | Path) -> list[tuple[str, bytes]]:
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images under {folder}")
    return [(p.name, p.read_bytes()) for p in files]


class DetectorUser(FastHttpUser):
    """Closed loop: the next request leaves as soon as the answer to the previous one arrives."""

    wait_time = constant(0)
    network_timeout = 120.0
    connection_timeout = 10.0

    model = os.environ.get("BENCH_MODEL", "deepfake-detector")
    token = os.environ.get("BENCH_TOKEN", "")
    images: list[tuple[str, bytes]] = []
    folder = os.environ.get("BENCH_IMAGES", str(DEFAULT_IMAGES))  # where the images came from (worker processes reload them)
    _order = None  # shared round-robin so the image mix is the same at every concurrency

    @classmethod
    def configure(cls, images: list[tuple[str, bytes]], model: str, token: str = "", folder: str | Path | None = None) -> None:
        cls.images, cls.model, cls.token = images, model, token
        cls.folder = str(folder or cls.folder)
        cls._order = itertools.cycle(range(len(images)))

    def on_start(self) -> None:
        cls = type(self)
        if not cls.images:
            cls.configure(load_images(cls.folder), cls.model, cls.token)
        self.headers = {"Content-Type": "application/octet-stream"}
        if cls.token:
            self.headers["Authorization"] = f"Bearer {cls.token}"

    @task
    def predict(self) -> None:
        cls = type(self)
        _, body = cls.images[next(cls._order)]
        path = f"/predictions/{cls.model}"
        with self.client.post(path, data=body, headers=self.headers, name=path, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            try:
                answer = json.loads(response.text)
            except ValueError:
                response.failure("the answer is not JSON")
                return
            if not isinstance(answer, dict) or "label" not in answer:
                response.failure(f"no verdict in the answer: {response.text[:200]}")


@events.init.add_listener
def report_answers_to_the_master(environment, **_) -> None:
    """Only in a worker process: the master cuts windows and percentiles from these records."""
    if not isinstance(environment.runner, runners.WorkerRunner):
        return
    runners.WORKER_REPORT_INTERVAL = 1.0  # read by the reporting loop at every turn; default 3 s
    records: list[tuple[float, float, bool, str]] = []
    me = psutil.Process()
    me.cpu_percent(None)

    def on_request(response_time, exception=None, **_):
        records.append((time.time(), float(response_time), exception is not None, str(exception or "")[:200]))

    def on_report(client_id, data, **_):
        data["detector_records"] = records[:]
        data["detector_cpu_percent"] = me.cpu_percent(None)  # since the previous report, 100 = one core
        records.clear()

    environment.events.request.add_listener(on_request)
    environment.events.report_to_master.add_listener(on_report)
