"""What a request carries: the image bytes out of any accepted encoding, and HTTP codes for errors.

No TorchServe import: the parsing rules can be tested, and reused by clients, without a server.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runtime.decoding import ImageError
from runtime.preprocessing import Prepared

if TYPE_CHECKING:
    from handler.video import PreparedVideo
    from runtime.video import Clip

# Sent by the watchdog and the container health check: their predictions are real, but a probe every
# few seconds would bury the users' predictions in the records.
PROBE_HEADER = "X-Deepfake-Probe"

# ImageError code -> HTTP status. Unknown codes are client errors too (400).
HTTP_STATUS = {
    "empty_body": 400,
    "bad_base64": 400,
    "bad_json": 400,
    "missing_image": 400,
    "image_too_large": 413,
    "not_an_image": 415,
    "unsupported_format": 415,
    "corrupt_image": 422,
    "image_too_small": 422,
    "unprocessable_image": 422,
    "explain_unavailable": 422,
    # videos (runtime/video.py)
    "video_too_large": 413,
    "video_too_long": 413,
    "frame_too_large": 413,
    "frame_too_small": 422,
    "no_video_stream": 422,
    "corrupt_video": 422,
}
# Multipart field names tried in order; any other single field is accepted too.
IMAGE_FIELDS = ("image", "file", "data", "body")


def http_status(error: ImageError) -> int:
    return HTTP_STATUS.get(error.code, 400)


def image_bytes(row: dict, content_type: str | None = None) -> bytes:
    """The image bytes of one TorchServe request row: the raw body, one multipart field, or a JSON
    body ``{"image": "<base64>"}`` or ``{"video": "<base64>"}`` (TorchServe hands JSON over already
    parsed; a data URL is fine). Whether the bytes are an image or a video is decided from them later."""
    value = next((row[k] for k in IMAGE_FIELDS if k in row), None)
    if value is None:
        fields = [v for v in row.values() if v is not None]
        if len(fields) != 1:
            raise ImageError("missing_image", 'send the image as the body, one multipart field, or JSON {"image": base64}')
        value = fields[0]
    if isinstance(value, dict):
        encoded = value.get("image", value.get("video"))
        if not isinstance(encoded, str):
            raise ImageError("missing_image", 'JSON bodies must look like {"image": "<base64>"} or {"video": "<base64>"}')
        if encoded.startswith("data:") and "," in encoded:
            encoded = encoded.split(",", 1)[1]
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError("bad_base64", "the image field is not valid base64") from None
    if isinstance(value, (bytes, bytearray)) and (content_type or "").startswith("application/json"):
        raise ImageError("bad_json", "the body is declared as JSON but does not parse")
    if isinstance(value, str):  # text/* bodies arrive decoded
        value = value.encode("utf-8", "surrogateescape")
    if not isinstance(value, (bytes, bytearray)):  # JSON that is a list, number, ...
        raise ImageError("bad_json", 'the JSON body must be an object like {"image": "<base64>"}')
    return bytes(value)


@dataclass
class Request:
    """One request of a batch as it moves through the handler's stages."""

    explain: bool = False
    probe: bool = False  # a health probe (PROBE_HEADER): answered like any request, not recorded
    error: ImageError | None = None
    prepared: Prepared | None = None
    clip: Clip | None = None  # a video request, checked but not decoded yet
    video: PreparedVideo | None = None  # a video request's frames, one crop each
    rows: slice | None = None  # its crops' rows in the batch tensor
    probabilities: list[float] = field(default_factory=list)
    kind_probabilities: list[list[float]] = field(default_factory=list)  # per crop, where the model has a kind head
    explanation: dict | None = None
    provenance: dict | None = None  # what the upload declares about its origin (handler/provenance.py)
    digest: str | None = None  # SHA-256 of the image bytes, for the prediction records
    byte_count: int | None = None
