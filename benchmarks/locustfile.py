"""Locust user for the detector: each user posts real face images, one per request, back to back.

Works under the plain Locust CLI and from ``benchmarks.load`` (which sets the same values directly):

    BENCH_IMAGES=examples BENCH_MODEL=deepfake-detector BENCH_TOKEN=<inference key> \
        locust -f benchmarks/locustfile.py --headless -u 16 -r 16 -t 60s --host http://127.0.0.1:8080

BENCH_IMAGES: folder of images, posted round-robin (default: the shipped examples);
BENCH_MODEL: model name in /predictions/<name>; BENCH_TOKEN: TorchServe's inference key, if token
authorisation is on.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from locust import FastHttpUser, constant, task

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
    _order = None  # shared round-robin so the image mix is the same at every concurrency

    @classmethod
    def configure(cls, images: list[tuple[str, bytes]], model: str, token: str = "") -> None:
        cls.images, cls.model, cls.token = images, model, token
        cls._order = itertools.cycle(range(len(images)))

    def on_start(self) -> None:
        cls = type(self)
        if not cls.images:
            cls.configure(load_images(os.environ.get("BENCH_IMAGES", DEFAULT_IMAGES)), cls.model, cls.token)
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
