"""The baselines TorchServe is measured against: what a user would write instead of it.

A FastAPI app under uvicorn that serves the same model with the same preprocessing (the handler's
own ``decode_photo`` and face preprocessor), one image per request, no batching. Two variants are
measured (``benchmarks/load.py: run_plain``):

- ``naive``: one uvicorn process, the eager PyTorch model with torch's default threads (every core);
- ``tuned``: what a good engineer would run: ``uvicorn --workers <usable cores>``, each process
  serving the same exported artifact that ``make serve`` serves (ONNX Runtime on a CPU) with one
  intra-op thread, like one TorchServe worker.

    PLAIN_WEIGHTS=weights/default.safetensors python -m uvicorn benchmarks.plain_server:app --port 8090
    PLAIN_BACKEND=onnx PLAIN_ARTIFACT=build/plain/model.onnx PLAIN_THREADS=1 \\
        python -m uvicorn benchmarks.plain_server:app --port 8090 --workers 2
    curl --data-binary @face.jpg http://127.0.0.1:8090/predictions/deepfake-detector

Settings (environment, read by every worker process): PLAIN_WEIGHTS (the weights; their JSON holds
the threshold, calibration and preprocessing), PLAIN_BACKEND (``eager`` by default, or any kind of
``runtime/backends.py``), PLAIN_ARTIFACT (that backend's file; the weights for eager),
PLAIN_THREADS (intra-op threads of the model and the face detector; 0 = torch's default).

It answers the same path and verdict keys as the handler, so the Locust user drives both unchanged.
Bad images get a 4xx JSON error (the load test counts them as failures).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from fastapi import Body, FastAPI
from fastapi.responses import JSONResponse

from runtime.backends import load_backend
from runtime.decoding import ImageError, decode_photo
from runtime.preprocessing import FacePreprocessor, PreprocessSettings, to_tensor_batch
from runtime.verdict import DEFAULT_THRESHOLD
from runtime.weights import Calibration, load_metadata

WEIGHTS = Path(os.environ.get("PLAIN_WEIGHTS", "weights/default.safetensors"))
BACKEND = os.environ.get("PLAIN_BACKEND", "eager")
ARTIFACT = Path(os.environ.get("PLAIN_ARTIFACT", WEIGHTS))
THREADS = int(os.environ.get("PLAIN_THREADS", "0"))

if THREADS:
    torch.set_num_threads(THREADS)
metadata = load_metadata(WEIGHTS)
model = load_backend(BACKEND, ARTIFACT, torch.device("cpu"), "fp32", threads=THREADS or 1)
calibration = Calibration.from_metadata(metadata)
threshold = float(metadata.get("threshold", DEFAULT_THRESHOLD))
settings = PreprocessSettings.from_metadata(metadata)
preprocessor = FacePreprocessor.from_settings(settings, threads=THREADS or 1)
app = FastAPI(title="plain deepfake detector (benchmark baseline)")


# A plain `def`: FastAPI runs it in its thread pool, so requests overlap where torch and
# onnxruntime release the GIL, as most such apps do.
@app.post("/predictions/{name}")
def predict(name: str, body: bytes = Body(..., media_type="application/octet-stream")):
    try:
        photo = decode_photo(body, max_side=settings.max_side)
    except ImageError as exc:
        return JSONResponse({"error": exc.code, "message": exc.message}, status_code=415)
    prepared = preprocessor.prepare_many([photo])[0]
    with torch.inference_mode():
        logit = model(to_tensor_batch(prepared.crops[:1]))
    probability = float(calibration.probability(logit)[0])
    return {
        "label": "fake" if probability >= threshold else "real",
        "fake_probability": probability,
        "threshold": threshold,
        "face": {"box": list(prepared.faces[0].box), "score": prepared.faces[0].score} if prepared.faces else None,
        "model": {"name": name, "backend": BACKEND, "server": "plain"},
    }
