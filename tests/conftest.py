"""Shared fixtures: weights, a real archive and one real TorchServe for the whole session.

Colleagues' tests use these directly (pytest finds them); nothing here needs ``../shared``:

- ``weights_path``: ``weights/default.safetensors`` when committed, otherwise a freshly saved
  random-init small model in a temp folder (same format, same metadata keys).
- ``model_store``: a session temp folder holding ``deepfake-detector.mar`` (eager), built with the
  real ``torch-model-archiver`` by ``export.archive.build_archive``. Build more archives into it
  (``build_archive(..., export_path=model_store)``) and ``torchserve.register("x.mar")`` them.
- ``torchserve``: a started ``handler.server.TorchServe`` (real Java frontend and Python worker) on
  free loopback ports, its own TMPDIR and logs, token auth on, batching on (batch 8, 100 ms delay).
  Use ``torchserve.predict(model, data)`` (token added), ``.headers()``, ``.metrics()``,
  ``.inference_url``, ``.management(...)``. Shared by every test in the session; don't stop it.
- ``astronaut_jpeg``: scikit-image's astronaut photo (a real face) as JPEG bytes.
- ``MODEL``: the served model's name.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

# 2 cores shared by everybody: keep the test process itself single-threaded
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

torch.set_num_threads(1)

# Fixtures that start a server of their own: a test using one is marked ``server`` whatever its module
# says, so `make test-fast` (-m "not slow and not server") cannot pick it up by an oversight.
SERVER_FIXTURES = {"torchserve", "postgres", "fresh_database"}


def pytest_collection_modifyitems(config, items):
    """``integration`` tests and those using a server fixture are ``server`` tests too. Tests marked
    ``gpu`` need CUDA; elsewhere they skip and say so."""
    for item in items:
        if "integration" in item.keywords or SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; this host has none (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = ROOT / "weights" / "default.safetensors"
MODEL = "deepfake-detector"
# Server-side batching for the session server: big enough delay that a concurrent burst batches.
SESSION_BATCH_SIZE = 8
SESSION_BATCH_DELAY_MS = 100


@pytest.fixture(scope="session")
def weights_path(tmp_path_factory) -> Path:
    if DEFAULT_WEIGHTS.is_file() and DEFAULT_WEIGHTS.with_suffix(".json").is_file():
        return DEFAULT_WEIGHTS
    from runtime.model import build_model
    from runtime.weights import save_weights

    torch.manual_seed(0)
    return save_weights(build_model("small"), tmp_path_factory.mktemp("weights") / "random.safetensors")


@pytest.fixture(scope="session")
def model_store(tmp_path_factory, weights_path) -> Path:
    from export.archive import ServingConfig, build_archive

    store = tmp_path_factory.mktemp("model_store")
    serving = ServingConfig(batch_size=SESSION_BATCH_SIZE, max_batch_delay=SESSION_BATCH_DELAY_MS, handler={"threads": 1})
    build_archive(weights_path, export_path=store, model_name=MODEL, serving=serving)
    return store


@pytest.fixture(scope="session")
def torchserve(tmp_path_factory, model_store):
    from handler.server import TorchServe

    with TorchServe(model_store, {MODEL: f"{MODEL}.mar"}, run_dir=tmp_path_factory.mktemp("torchserve")) as server:
        yield server


@pytest.fixture(scope="session")
def astronaut_jpeg() -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server of the module's own (tests/postgres_server.py); skipped, with the
    reason, where its binaries are missing."""
    from postgres_server import PostgresServer, skip_reason

    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    server = PostgresServer().init()
    yield server
    server.destroy()
