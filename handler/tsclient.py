"""The one HTTP client for a running TorchServe: inference, management and metrics, with its tokens.

Used by the server control (``handler/server.py``), the CLI client (``handler/client.py``), the load
benchmark and the soak (``benchmarks/``)::

    client = TorchServeClient("http://127.0.0.1:8080", "http://127.0.0.1:8081", "http://127.0.0.1:8082",
                              keys={"inference": "...", "management": "..."})
    client.predict("deepfake-detector", jpeg_bytes).json()

Keys are TorchServe's token-authorisation keys (``key_file.json``); None or a missing entry sends no
Authorization header (auth off). Each thread gets its own keep-alive session, so one client can be
shared by a thread pool.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import requests


class TorchServeError(RuntimeError):
    """A management call TorchServe refused; carries the status and body."""


def read_keys(key_file: str | Path) -> dict[str, str]:
    """{"inference": key, "management": key} from TorchServe's key_file.json."""
    data = json.loads(Path(key_file).read_text())
    return {api: data[api]["key"] for api in ("inference", "management") if api in data}


def probe_image() -> bytes:
    """A small valid PNG (a gradient, no face): enough for a real end-to-end prediction."""
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, 96, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (96, 1)), np.tile(ramp[:, None], (1, 96)), np.full((96, 96), 128, np.uint8)], -1)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class TorchServeClient:
    def __init__(
        self,
        inference_url: str,
        management_url: str | None = None,
        metrics_url: str | None = None,
        keys: dict[str, str] | None = None,
    ):
        self.inference_url = inference_url.rstrip("/")
        self.management_url = (management_url or "").rstrip("/")
        self.metrics_url = (metrics_url or "").rstrip("/")
        self.keys = dict(keys or {})
        self._local = threading.local()

    # --- plumbing ---------------------------------------------------------------------------------

    def key(self, api: str = "inference") -> str | None:
        return self.keys.get(api) or None

    def headers(self, api: str = "inference") -> dict[str, str]:
        key = self.key(api)
        return {"Authorization": f"Bearer {key}"} if key else {}

    @property
    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _request(self, api: str, method: str, url: str, timeout: float, **kwargs) -> requests.Response:
        headers = {**self.headers(api), **kwargs.pop("headers", {})}
        return self.session.request(method, url, headers=headers, timeout=timeout, **kwargs)

    # --- inference --------------------------------------------------------------------------------

    def predict(self, model: str, data: bytes | None = None, timeout: float = 120, **kwargs) -> requests.Response:
        """POST /predictions/<model>; ``data`` is sent raw, or pass files=/json= as in requests."""
        return self._request("inference", "POST", f"{self.inference_url}/predictions/{model}", timeout, data=data, **kwargs)

    def explain(self, model: str, data: bytes | None = None, timeout: float = 120, **kwargs) -> requests.Response:
        return self._request("inference", "POST", f"{self.inference_url}/explanations/{model}", timeout, data=data, **kwargs)

    # --- management -------------------------------------------------------------------------------

    def management(self, method: str, path: str, timeout: float = 60, **kwargs) -> requests.Response:
        return self._request("management", method, f"{self.management_url}{path}", timeout, **kwargs)

    def _checked(self, response: requests.Response, what: str) -> requests.Response:
        if response.status_code != 200:
            raise TorchServeError(f"{what} failed: HTTP {response.status_code} {response.text[:300]}")
        return response

    def register(
        self,
        archive: str,
        name: str,
        workers: int = 1,
        batch_size: int | None = None,
        max_batch_delay: int | None = None,
        timeout: float = 600,
    ) -> None:
        """Register an archive of the server's model store and wait until its workers are up."""
        params = {"url": archive, "model_name": name, "initial_workers": workers, "synchronous": "true"}
        if batch_size is not None:
            params["batch_size"] = batch_size
        if max_batch_delay is not None:
            params["max_batch_delay"] = max_batch_delay
        self._checked(self.management("POST", "/models", params=params, timeout=timeout), f"registering {archive}")

    def unregister(self, name: str, timeout: float = 120) -> None:
        self._checked(self.management("DELETE", f"/models/{name}", timeout=timeout), f"unregistering {name}")

    def describe(self, name: str) -> dict:
        """The first (default) version's description: workers, batch settings, status."""
        return self._checked(self.management("GET", f"/models/{name}", timeout=30), f"describing {name}").json()[0]

    def scale(self, name: str, workers: int, max_workers: int | None = None, timeout: float = 300) -> None:
        """Set min workers (and max, = min by default) and wait until TorchServe has them."""
        params = {"min_worker": workers, "max_worker": max(workers, max_workers or workers), "synchronous": "true"}
        self._checked(self.management("PUT", f"/models/{name}", params=params, timeout=timeout), f"scaling {name}")

    def worker_pids(self, name: str) -> dict[str, int]:
        """{worker id: pid} of a model's live workers."""
        return {w["id"]: int(w["pid"]) for w in self.describe(name).get("workers", []) if w.get("pid")}

    # --- metrics ----------------------------------------------------------------------------------

    def metrics(self, timeout: float = 30) -> str:
        """Prometheus text from the metrics endpoint (it takes no token)."""
        response = self.session.get(f"{self.metrics_url}/metrics", timeout=timeout)
        response.raise_for_status()
        return response.text
