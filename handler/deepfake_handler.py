"""TorchServe handler: image or video bytes in, a real/fake verdict out.

One handler serves every artifact kind (``runtime/backends.py``). Each batch TorchServe hands over is
decoded per request, face detection runs once over all decodable images, and the face crops of every
request go through the model in one forward pass. A bad request gets its own 4xx status and JSON
reason; its batch-mates are answered normally. A video (``runtime/video.py``, ``handler/video.py``)
adds one crop per sampled frame to the same forward pass and gets one verdict with a timeline.
Every answer carries the upload's provenance (``handler/provenance.py``: C2PA and generator
metadata) beside the verdict; reading it never changes the verdict and never fails the request.

Archive layout (``export/archive.py``): this file at the root beside the ``runtime`` package and the
handler's own worker-side modules (``export/archive.py: HANDLER_MODULES``: payload, gradcam, video, the records
and provenance modules, spool), the artifact, ``model.json`` (the weights' metadata) and ``model-config.yaml`` whose
``handler:`` section (``runtime/handler_settings.py``: every key, its type and default) picks backend,
precision, artifact, limits, provenance and records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

# Inside an archive the packages below sit beside this file; make them win over any installed copy,
# so the server runs exactly the code that was archived.
_ARCHIVE_ROOT = Path(__file__).resolve().parent
if (_ARCHIVE_ROOT / "runtime" / "model.py").is_file() and sys.path[:1] != [str(_ARCHIVE_ROOT)]:
    sys.path.insert(0, str(_ARCHIVE_ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from ts.metrics.dimension import Dimension  # noqa: E402
from ts.metrics.metric_type_enum import MetricTypes  # noqa: E402
from ts.torch_handler.base_handler import BaseHandler  # noqa: E402

from handler import gradcam, records  # noqa: E402
from handler.payload import PROBE_HEADER, Request, http_status, image_bytes  # noqa: E402
from handler.provenance import ProvenanceReader  # noqa: E402
from handler.provenance_declared import beside_verdict  # noqa: E402
from handler.video import most_suspicious, prepare_video, video_verdict  # noqa: E402
from runtime.backends import ARTIFACTS, detect_backend, exact_fp32, load_backend  # noqa: E402
from runtime.decoding import ImageError, decode_photo, register_image_formats  # noqa: E402
from runtime.handler_settings import HandlerSettings  # noqa: E402
from runtime.jpeg import decoder as jpeg_decoder  # noqa: E402
from runtime.preprocessing import FacePreprocessor, PreprocessSettings, to_tensor_batch  # noqa: E402
from runtime.verdict import DEFAULT_THRESHOLD, NO_FACE, band  # noqa: E402
from runtime.video import VideoLimits, is_video, open_video  # noqa: E402
from runtime.weights import Calibration  # noqa: E402

logger = logging.getLogger(__name__)

NO_FACE_WARNING = ("no face found: no verdict on a face was made (label and band no_face); fake_probability is the "
                   "model's score of the image's centre crop, which is not a face")
KIND_NOTE = ("the model's guess of which kind of fake this looks like, from the four kinds it was trained on; "
             "not evidence of how the image was made")


class DeepfakeHandler(BaseHandler):
    def initialize(self, context):
        """Worker start, step by step: the settings (refused on a misspelt key), the device, the model,
        the face detector, the input limits, the model's decision rule, then records and provenance."""
        model_dir = Path(context.system_properties["model_dir"])
        self.settings = self._load_settings(context)
        self._load_device(context.system_properties)
        self.metadata = json.loads((model_dir / "model.json").read_text())
        self._load_backend(model_dir)
        self._load_detector()
        self._load_limits()
        self._load_decision()
        self._load_model_info(context)
        self._load_records()
        self._load_provenance(model_dir)
        self.initialized = True
        logger.info("deepfake handler ready: %s", self.model_info)

    # --- worker start -----------------------------------------------------------------------------

    @staticmethod
    def _load_settings(context) -> HandlerSettings:
        """The archive's ``handler:`` section, typed (``runtime/handler_settings.py``); an unknown key
        or a wrong type stops the worker with one line naming it."""
        return HandlerSettings.from_model_config(getattr(context, "model_yaml_config", None))

    def _load_device(self, properties: dict) -> None:
        gpu = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu")
        self.threads = self.settings.threads
        if self.device.type == "cpu":
            torch.set_num_threads(self.threads)
        register_image_formats(self.threads)  # HEIC and AVIF decoders: the worker's threads, not every core

    def _load_backend(self, model_dir: Path) -> None:
        settings = self.settings
        self.backend_kind = settings.backend or detect_backend(model_dir)
        self.precision = settings.precision
        artifact = model_dir / (settings.artifact or ARTIFACTS[self.backend_kind])
        self.backend = load_backend(self.backend_kind, artifact, self.device, self.precision, self.threads,
                                    min_batch=settings.min_batch, max_batch=settings.max_batch or None)  # fmt: skip
        # Grad-CAM differentiates the eager model; compiled archives carry its weights for that.
        self.eager_weights = model_dir / ARTIFACTS["eager"]
        self._explainer = self.backend.model if (self.backend_kind, self.precision) == ("eager", "fp32") else None

    def _load_detector(self) -> None:
        preprocessing = PreprocessSettings.from_metadata(self.metadata)
        self.input_size = preprocessing.input_size
        self.max_side = preprocessing.max_side  # the detector's input: large JPEGs are decoded no finer than it needs
        providers = None  # the detector follows the model onto the GPU when onnxruntime can
        if self.device.type == "cuda":
            import onnxruntime

            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                providers = [("CUDAExecutionProvider", {"device_id": self.device.index or 0}), "CPUExecutionProvider"]
        self.preprocessor = FacePreprocessor.from_settings(
            preprocessing, max_faces=self.settings.max_faces, threads=self.threads, providers=providers
        )

    def _load_limits(self) -> None:
        settings = self.settings
        # PIL refuses bigger images itself (decompression bombs); decoding checks the same limit.
        self.max_pixels = settings.max_pixels
        self.min_side = settings.min_side
        Image.MAX_IMAGE_PIXELS = self.max_pixels
        self.max_image_bytes = settings.max_image_bytes
        self.video_limits = VideoLimits(frames=settings.video_frames, max_seconds=settings.max_video_seconds,
                                        max_bytes=settings.max_video_bytes, max_pixels=self.max_pixels, min_side=self.min_side)  # fmt: skip
        self.max_crops_per_pass = max(1, settings.max_crops_per_pass)

    def _load_decision(self) -> None:
        """The threshold, the calibration (P(fake) as fitted on validation), the labels and the kinds."""
        self.threshold = float(self.metadata.get("threshold", DEFAULT_THRESHOLD))
        self.calibration = Calibration.from_metadata(self.metadata)
        self.labels = {int(k): v for k, v in self.metadata.get("labels", {"0": "real", "1": "fake"}).items()}
        self.kinds = self.metadata.get("kinds")  # the kind head's classes, where the model has one
        self.bands = self.metadata.get("bands")  # the uncertain band's cut-offs, set on validation

    def _load_model_info(self, context) -> None:
        self.manifest = context.manifest or {}
        self.model_info = {
            "name": context.model_name,
            "version": self.manifest.get("model", {}).get("modelVersion"),
            "backend": self.backend_kind,
            "precision": self.precision,
            "architecture": self.metadata["architecture"].get("size"),
            "device": self.backend.device.type,  # where the model really runs (ONNX may fall back to CPU)
        }

    def _load_records(self) -> None:
        """Prediction records (handler/records.py): journalled before each answer, delivered by a thread."""
        self.recorder = records.recorder_for_worker(self.settings.records_config(), os.environ)

    def _load_provenance(self, model_dir: Path) -> None:
        """C2PA and generator metadata beside the verdict, under a time budget (None: turned off)."""
        self.provenance = ProvenanceReader.from_settings(self.settings, model_dir)

    # --- TorchServe entry point -------------------------------------------------------------------

    def handle(self, data, context):
        self.context = context
        if self._is_describe():  # GET /models/<name>?customized=true: no prediction, no error counted
            return [self.describe_handle()]
        start = time.perf_counter()
        batch = None
        try:
            batch = self.preprocess(data)
            responses = self.postprocess(self.inference(batch))
        except Exception:
            # A server fault (bad input never raises here): bad requests keep their own 4xx, the
            # rest get a JSON 500 instead of TorchServe's bare 503, and the worker stays alive.
            logger.exception("batch of %d failed", len(data))
            fault = ImageError("internal_error", "the server failed on this batch; see the model log")
            known = batch[0] if batch else [Request() for _ in data]
            responses = [self._error(i, r.error) if r.error else self._error(i, fault, 500) for i, r in enumerate(known)]
        self._end_grpc_streams(len(data))
        elapsed_ms = (time.perf_counter() - start) * 1000
        self._metric("HandlerTime", elapsed_ms, "ms")
        self._record(batch[0] if batch else [Request() for _ in data], responses, elapsed_ms)
        return responses

    def describe_handle(self) -> dict:
        """The model's description for ``customized=true`` (TorchServe puts it under
        ``customizedMetadata``): what serves, how it decides and what it looks at."""
        return {
            **self.model_info,
            "threshold": self.threshold,
            "labels": {str(k): v for k, v in self.labels.items()},
            "calibration": self.metadata.get("calibration"),
            "preprocessing": PreprocessSettings.from_metadata(self.metadata).to_metadata(),
            "limits": {"max_faces": self.preprocessor.max_faces, "max_pixels": self.max_pixels, "min_side": self.min_side,
                       "max_image_bytes": self.max_image_bytes, "video_frames": self.video_limits.sampled,
                       "max_video_seconds": self.video_limits.max_seconds, "max_video_bytes": self.video_limits.max_bytes,
                       "max_crops_per_pass": self.max_crops_per_pass},
            "provenance": None if self.provenance is None else {
                "budget_ms": round(self.provenance.budget_s * 1000), "c2pa": self.provenance.c2pa is not None,
                "trust_list": self.provenance.trust_list},
            "decoders": {"jpeg": jpeg_decoder()},  # turbojpeg, or pillow where libturbojpeg is missing
        }

    # --- stages -----------------------------------------------------------------------------------

    def preprocess(self, data) -> tuple[list[Request], torch.Tensor | None]:
        """Decode each request on its own (errors stay per request), detect faces once for all
        images; then each video's sampled frames. Images' crops come first in the batch tensor."""
        start = time.perf_counter()
        requests, images, image_requests, provenance_s = [], [], [], 0.0
        for idx, row in enumerate(data):
            request = Request(explain=self._header(idx, "explain") == "True",
                              probe=bool(self._header(idx, PROBE_HEADER)))
            try:
                content_type = self._header(idx, "Content-Type")
                data_bytes = image_bytes(row, content_type)
                request.digest, request.byte_count = hashlib.sha256(data_bytes).hexdigest(), len(data_bytes)
                if is_video(data_bytes):  # by content: MP4, MOV, MKV, WebM
                    request.clip = open_video(data_bytes, self.video_limits, self.threads)
                else:
                    if len(data_bytes) > self.max_image_bytes:
                        raise ImageError("image_too_large", f"{len(data_bytes)} bytes exceeds the image limit of {self.max_image_bytes} bytes")
                    images.append(decode_photo(data_bytes, self.max_pixels, self.min_side, self.max_side))
                    image_requests.append(request)
                provenance_start = time.perf_counter()
                request.provenance = self._provenance(data_bytes, request.clip.container if request.clip else None)
                provenance_s += time.perf_counter() - provenance_start
            except ImageError as error:
                request.error = error
            requests.append(request)
        if self.provenance is not None:
            self._metric("ProvenanceTime", provenance_s * 1000, "ms")

        crops = []
        for request, prepared in zip(image_requests, self._prepare(images)):
            if isinstance(prepared, ImageError):
                request.error = prepared
                continue
            request.prepared = prepared
            request.rows = slice(len(crops), len(crops) + len(prepared.crops))
            crops.extend(prepared.crops)
            self._metric("FacesPerImage", len(prepared.faces), "count", MetricTypes.HISTOGRAM)
        for request in requests:
            if request.clip is None or request.error is not None:
                continue
            try:
                request.video = prepare_video(request.clip, self._prepare)
            except ImageError as error:
                request.error = error
                continue
            request.rows = slice(len(crops), len(crops) + len(request.video.crops))
            crops.extend(request.video.crops)
            self._metric("FramesPerVideo", len(request.video.crops), "count", MetricTypes.HISTOGRAM)
        tensor = to_tensor_batch(crops) if crops else None
        self._metric("PreprocessTime", (time.perf_counter() - start) * 1000, "ms")
        return requests, tensor

    def inference(self, batch, *args, **kwargs):
        """The face crops of every request in the batch, in forward passes of at most
        ``max_crops_per_pass`` crops (one pass for any batch of images alone)."""
        requests, tensor = batch
        start = time.perf_counter()
        if tensor is not None:
            step = self.max_crops_per_pass
            passes = [self.backend.outputs(tensor[i : i + step]) for i in range(0, len(tensor), step)]
            probabilities = self.calibration.probability(torch.cat([logits for logits, _ in passes])).tolist()
            kinds = [k for _, k in passes if k is not None]
            kinds = torch.softmax(torch.cat(kinds), dim=1).tolist() if kinds and self.kinds else None
            for request in requests:
                if request.rows is not None:
                    request.probabilities = probabilities[request.rows]
                    request.kind_probabilities = kinds[request.rows] if kinds else []
        self._metric("InferenceTime", (time.perf_counter() - start) * 1000, "ms")
        self._metric("BatchSize", len(requests), "count")
        self._metric("BatchCrops", 0 if tensor is None else len(tensor), "count")
        return requests, tensor

    def postprocess(self, batch) -> list:
        requests, tensor = batch
        start = time.perf_counter()
        responses = []
        for idx, request in enumerate(requests):
            if request.explain and request.error is None:
                try:
                    # an image's largest face; a video's most suspicious frame
                    row = most_suspicious(request.video, request.probabilities) if request.video is not None else 0
                    crop = tensor[request.rows][row : row + 1].to(self.device, torch.float32)
                    with exact_fp32(self.backend.exact_fp32):  # a CUDA FP32 heatmap without TF32, as the backend's calls
                        request.explanation = gradcam.explain(self._explain_model(), crop)
                    if request.video is not None:
                        request.explanation["frame_time_s"] = request.video.times[row]
                    else:  # where the crop lies in the image, [x1, y1, x2, y2]: the page lays the map there
                        request.explanation["region"] = [int(v) for v in request.prepared.crop_boxes[0]]
                except ImageError as error:
                    request.error = error
            if request.error is not None:
                responses.append(self._error(idx, request.error))
                continue
            if request.video is not None:
                answer = video_verdict(request.video, request.probabilities, self.threshold, self._label)
                answer["model"] = self.model_info
                with_face = [k for k, face in zip(request.kind_probabilities, request.video.faces) if face is not None]
                kind_rows = with_face or request.kind_probabilities
            else:
                answer = self._verdict(request)
                kind_rows = request.kind_probabilities[:1]  # the largest face, whose verdict it is
            face_found = bool(request.video.frames_with_face if request.video is not None else request.prepared.faces)
            answer["band"] = band(answer["fake_probability"], self.bands, face_found)
            if not face_found:  # a verdict is about a face: without one, none is made
                answer["label"] = NO_FACE
            if answer["label"] == self.labels[1] and kind_rows:
                answer["kind"] = self._kind(kind_rows)
            if request.provenance is not None:  # beside the verdict, which it never changes
                answer["provenance"] = beside_verdict(request.provenance, answer["label"], answer["fake_probability"], self.threshold)
            answer["batch_size"] = len(requests)  # how many requests shared this forward pass
            if request.explanation is not None:
                answer["explanation"] = request.explanation
            responses.append(answer)
        self._metric("PostprocessTime", (time.perf_counter() - start) * 1000, "ms")
        return responses

    # --- helpers ----------------------------------------------------------------------------------

    def _prepare(self, images: list) -> list:
        """Face detection for all images in one call; if that call fails, image by image, so an
        image the detector cannot take fails alone instead of taking its batch-mates down."""
        try:
            return self.preprocessor.prepare_many(images)
        except Exception:
            logger.exception("batched face detection failed; retrying image by image")
        results = []
        for image in images:
            try:
                results.append(self.preprocessor.prepare(image))
            except Exception as exc:
                results.append(ImageError("unprocessable_image", f"face detection failed on this image: {exc}"))
        return results

    def _provenance(self, data: bytes, video_container: str | None) -> dict | None:
        """The upload's provenance; a failure here is the answer's ``provenance.error``, never the request's."""
        if self.provenance is None:
            return None
        try:
            return self.provenance.read(data, video_container)  # never raises by design; this is the last guard
        except Exception as exc:
            logger.exception("provenance reading failed")
            return {"declared": "none", "error": f"provenance could not be read: {type(exc).__name__}"}

    def _explain_model(self):
        if self._explainer is None:
            if not self.eager_weights.is_file():
                raise ImageError("explain_unavailable", f"this {self.backend_kind} archive carries no eager weights for Grad-CAM")
            from runtime.weights import load_weights

            self._explainer, _ = load_weights(self.eager_weights, map_location=self.device)
        return self._explainer

    def _verdict(self, request: Request) -> dict:
        prepared = request.prepared
        probability = request.probabilities[0]  # the largest face, or the centre crop
        faces = [
            {**face.to_dict(), "fake_probability": round(p, 6), "label": self._label(p)}
            for face, p in zip(prepared.faces, request.probabilities)
        ]
        answer = {
            "media": "image",
            "label": self._label(probability),
            "fake_probability": round(probability, 6),
            "threshold": self.threshold,
            "face": prepared.faces[0].to_dict() if prepared.faces else None,
            "faces": faces,
            "image_size": list(prepared.image_size),
            "model": self.model_info,
        }
        if not prepared.faces:
            answer["warning"] = NO_FACE_WARNING
        return answer

    def _kind(self, rows: list[list[float]]) -> dict:
        """The kind head's guess for a fake verdict: its probabilities (the mean over a video's face
        frames), the most likely kind, and what the guess is not."""
        mean = [sum(column) / len(rows) for column in zip(*rows)]
        probabilities = {name: round(p, 4) for name, p in zip(self.kinds, mean)}
        return {"guess": max(probabilities, key=probabilities.get), "probabilities": probabilities, "note": KIND_NOTE}

    def _label(self, probability: float) -> str:
        return self.labels[int(probability >= self.threshold)]

    def _error(self, idx: int, error: ImageError, status: int | None = None) -> dict:
        # One line: the message is also the HTTP reason phrase, and the frontend drops the worker when
        # a phrase holds CR or LF (libheif's messages end with a newline).
        message = " ".join(error.message.split())
        self.context.set_response_status(status or http_status(error), message, idx)
        self._metric("Errors", 1, "count", MetricTypes.COUNTER, kind=error.code)
        return {"error": error.code, "message": message}

    def _record(self, requests: list[Request], responses: list, elapsed_ms: float) -> None:
        """Journal one record per answer before the answers leave (never raises), and report the
        recorder's counts and spool depth."""
        if self.recorder is None:
            return
        try:
            rows = []
            for idx, (request, answer) in enumerate(zip(requests, responses)):
                if request.probe:
                    continue
                status = 200 if "error" not in answer else (http_status(request.error) if request.error else 500)
                request_id = self.context.get_request_id(idx) if hasattr(self.context, "get_request_id") else None
                rows.append(records.prediction_row(answer, status, self.model_info, request_id, request.digest,
                                                   request.byte_count, elapsed_ms, request.explain))  # fmt: skip
            self.recorder.record(rows)
            for key, n in self.recorder.drain_counts().items():
                if n and key.startswith("dropped_"):
                    self._metric("RecordsDropped", n, "count", MetricTypes.COUNTER, reason=key.removeprefix("dropped_"))
                elif n:  # RecordsWritten, RecordsSpooled, RecordsReplayed
                    self._metric(f"Records{key.capitalize()}", n, "count", MetricTypes.COUNTER)
            self._metric("RecordsSpoolDepth", self.recorder.depth, "count")
        except Exception:  # recording must never cost a prediction
            logger.exception("could not record the predictions of this batch")

    def _end_grpc_streams(self, count: int) -> None:
        """Mark each gRPC request's answer as the last of its stream. TorchServe 0.12's frontend
        reads ``ts_stream_next`` from every StreamPredictions answer, and a missing key is a
        NullPointerException that kills the worker; unary gRPC Predictions ignore it. REST must not
        get the key (it switches the reply to chunked), so only requests without any HTTP header
        get it: over gRPC a request's properties are just its inputs' content types (dicts), while
        REST ones always carry headers (the frontend adds ``explain`` and ``url_path``)."""
        for idx in range(count):
            try:
                properties = self.context.get_all_request_header(idx)
                if not any(isinstance(value, str) for value in properties.values()):
                    self.context.set_response_header(idx, "ts_stream_next", "false")
            except (AttributeError, IndexError, KeyError, TypeError):
                pass

    def _header(self, idx: int, key: str) -> str | None:
        """A request header as sent, else in lower case (the frontend may pass either spelling)."""
        for name in (key, key.lower()):
            try:
                value = self.context.get_request_header(idx, name)
            except (AttributeError, IndexError, KeyError, TypeError):
                value = None
            if value is not None:
                return value
        return None

    def _metric(self, name: str, value: float, unit: str, metric_type: MetricTypes = MetricTypes.GAUGE, **dims):
        """Custom metrics through TorchServe's metrics API, prefixed so operators can find them."""
        metrics = getattr(self.context, "metrics", None)
        if metrics is None:
            return
        dimensions = [Dimension(k, v) for k, v in dims.items()]
        metrics.add_metric(f"Deepfake{name}", round(float(value), 3), unit, None, dimensions, metric_type)
