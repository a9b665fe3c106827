"""The baseline TorchServe is measured against: what a user would write instead of it.

A FastAPI app under uvicorn (one process, PyTorch's default threads: every core) that serves the same
weights with the same preprocessing, eagerly, one image per request:

    PLAIN_WEIGHTS=weights/default.safetensors python -m uvicorn benchmarks.plain_server:app --port 8090
    curl --data-binary @face.jpg http://127.0.0.1:8090/predictions/deepfake-detector

It answers the same path and the same verdict keys as the handler, so the Locust user of the load
benchmark drives both unchanged. Bad images get a 4xx JSON error (the load test counts them as
failures); no batching, no worker pool, no model export: the point is the comparison.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from fastapi import Body, FastAPI
from fastapi.responses import JSONResponse

from runtime.preprocessing import FacePreprocessor, ImageError, PreprocessSettings, decode_image, to_tensor_batch
from runtime.weights import Calibration, load_weights

WEIGHTS = Path(os.environ.get("PLAIN_WEIGHTS", "weights/default.safetensors"))

model, metadata = load_weights(WEIGHTS)
calibration = Calibration.from_metadata(metadata)
threshold = float(metadata.get("threshold", 0.5))
preprocessor = FacePreprocessor.from_settings(PreprocessSettings.from_metadata(metadata))
app = FastAPI(title="plain deepfake detector (benchmark baseline)")


# A plain `def`: FastAPI runs it in its thread pool, so requests overlap where torch and
# onnxruntime release the GIL, as most such apps do.
@app.post("/predictions/{name}")
def predict(name: str, body: bytes = Body(..., media_type="application/octet-stream")):
    try:
        image = decode_image(body)
    except ImageError as exc:
        return JSONResponse({"error": exc.code, "message": exc.message}, status_code=415)
    prepared = preprocessor.prepare_many([image])[0]
    with torch.inference_mode():
        logit = model(to_tensor_batch(prepared.crops[:1]))
    probability = float(calibration.probability(logit)[0])
    return {
        "label": "fake" if probability >= threshold else "real",
        "fake_probability": probability,
        "threshold": threshold,
        "face": {"box": list(prepared.faces[0].box), "score": prepared.faces[0].score} if prepared.faces else None,
        "model": {"name": name, "backend": "eager", "server": "plain"},
    }
