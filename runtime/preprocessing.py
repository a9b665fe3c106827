"""Find faces, crop the largest one square: the pixels the model sees.

Serving (the TorchServe handler) and training (the crop cache) both call this module, so that both
see the same pixels. It must not import TorchServe: it travels inside the model archive and is also
used without a server. Decoding the bytes is ``runtime/decoding.py``'s job, finding the faces
``runtime/detector.py``'s; ``PreprocessSettings`` says how, ``FacePreprocessor`` does it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np
from PIL import Image

import runtime.decoding  # noqa: F401  importing the preprocessor has always registered HEIC/HEIF with PIL
from runtime.detector import Face, FaceDetector
from runtime.photo import Photo

CROP_MODES = ("resize", "native")
# A native crop may cut the face box by up to this factor (forehead and chin go, the centre of the
# face stays): FFHQ-style 256 px portraits have 180-215 px face boxes and still get native pixels
# in a 192 px window.
NATIVE_FACE_LIMIT = 1.25
DEFAULT_MARGIN = 0.3  # face box growth for the crop, as a fraction of its longer side
BICUBIC_SUPPORT = 2.0  # Pillow's bicubic filter reads 2 source pixels either side (times the shrink)


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything that decides the pixels the model sees; stored as ``preprocessing`` in the weights'
    metadata, read back by serving, training, evaluation, export and the benchmarks alike.

    ``crop``: ``resize`` scales the face box grown by ``margin`` to ``input_size`` (every face the
    same size, at the price of resampling); ``native`` takes an ``input_size`` window of original
    pixels centred on the face whenever the face box about fits in it (no resampling: the finest traces of
    a generator survive; measured in docs/ABLATIONS.md), and resizes only larger faces.

    ``min_face`` (native crops): a face box smaller than this many pixels is upsampled until it is
    that large, so a downscaled upload shows the model a face of the size it was trained on (the
    cues are tied to the face's scale far more than to resampling: docs/ABLATIONS.md). 0: never.
    """

    input_size: int
    margin: float = DEFAULT_MARGIN
    crop: str = "resize"  # older weights have no key: they were trained on resized crops
    score_threshold: float = 0.8
    nms_threshold: float = 0.4
    max_side: int = 640
    min_face: int = 0
    # coarse-to-fine detection (FaceDetector): this many pixels first (320 measured); 0: off. It finds
    # the faces 640 px alone finds, boxes within a few pixels, but it costs more than it saves where
    # the face is large in the image (portraits, selfies): off by default (docs/ARCHITECTURE.md)
    coarse_side: int = 0

    def __post_init__(self):
        if self.crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {self.crop!r}")

    @classmethod
    def from_metadata(cls, meta: dict) -> "PreprocessSettings":
        """From a weights' metadata (the whole dict, or its ``preprocessing`` section)."""
        pre = meta.get("preprocessing", meta)
        if "input_size" not in pre and "architecture" in meta:
            pre = {**pre, "input_size": meta["architecture"]["input_size"]}
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in pre.items() if k in known})

    def to_metadata(self) -> dict:
        return asdict(self)

    def detector_options(self) -> dict:
        return {"score_threshold": self.score_threshold, "nms_threshold": self.nms_threshold, "max_side": self.max_side,
                "coarse_side": self.coarse_side}

    def key(self, version: int = 0) -> str:
        """A short hash of the settings (names crop-cache folders)."""
        settings = asdict(self)
        for name in ("min_face", "coarse_side"):  # added later: unset, they keep the folders of the weights before them
            if not settings[name]:
                del settings[name]
        text = json.dumps({**settings, "version": version}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Prepared:
    """What the model gets for one image: one square crop per face (largest first)."""

    crops: list[Image.Image]  # each input_size x input_size, RGB (x context for a widened native crop)
    faces: list[Face]  # same order as crops; empty when no face was found
    image_size: tuple[int, int]
    crop_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def face_found(self) -> bool:
        return bool(self.faces)


def square_box(
    box: tuple[float, float, float, float] | None, width: int, height: int, margin: float
) -> tuple[int, int, int, int]:
    """The square to crop: the face box grown by ``margin`` of its longer side, shifted to stay
    inside the image; with no box, the largest centred square."""
    limit = min(width, height)
    if box is None:
        side, cx, cy = limit, width / 2, height / 2
    else:
        x1, y1, x2, y2 = box
        side = min(max(x2 - x1, y2 - y1) * (1 + margin), limit)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(1, int(round(side)))
    left = int(round(min(max(cx - side / 2, 0), width - side)))
    top = int(round(min(max(cy - side / 2, 0), height - side)))
    return left, top, left + side, top + side


def native_window(box: tuple[float, float, float, float], side: int) -> tuple[int, int, int, int]:
    """A ``side`` square of original pixels centred on the face box (it may reach past the image's
    edges: PIL fills that part black). Integer centre, so a wider window shares the same centre."""
    cx, cy = round((box[0] + box[2]) / 2), round((box[1] + box[3]) / 2)
    left, top = cx - side // 2, cy - side // 2
    return left, top, left + side, top + side


class FacePreprocessor:
    """Image -> face crops at the model's input size. Configured from the weights' metadata
    (:meth:`from_settings` with :meth:`PreprocessSettings.from_metadata`).

    ``context`` > 1 widens native crops to ``context * input_size`` around the same centre (the
    training cache keeps that much, so augmentation can zoom out); serving uses 1.
    """

    def __init__(
        self,
        input_size: int,
        margin: float = DEFAULT_MARGIN,
        max_faces: int = 5,
        detector: FaceDetector | None = None,
        crop: str = "resize",
        context: int = 1,
        min_face: int = 0,
        **detector_options,
    ):
        if crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {crop!r}")
        self.input_size = input_size
        self.margin = margin
        self.max_faces = max_faces
        self.crop_mode = crop
        self.context = context
        self.min_face = min_face
        self.detector = detector or FaceDetector(**detector_options)

    @classmethod
    def from_settings(cls, settings: PreprocessSettings, **options) -> "FacePreprocessor":
        """``options``: max_faces, detector, context, threads, providers."""
        return cls(settings.input_size, settings.margin, crop=settings.crop, min_face=settings.min_face,
                   **settings.detector_options(), **options)

    def is_native(self, box: tuple[float, float, float, float] | None) -> bool:
        """Native pixels when the face box is at most NATIVE_FACE_LIMIT times the input window; larger
        faces are resized."""
        return (self.crop_mode == "native" and box is not None
                and max(box[2] - box[0], box[3] - box[1]) <= NATIVE_FACE_LIMIT * self.input_size)

    def detect(self, photos: list[Photo]) -> list[list[Face]]:
        """Faces of each photo (at most ``max_faces``, largest first) in full-resolution upright
        pixels; the detector sees each photo's coarsest view."""
        previews = [photo.preview for photo in photos]
        found = self.detector.detect([view for view, _ in previews])
        return [[_in_full(face, photo, scale) for face in faces[: self.max_faces]]
                for faces, photo, (_, scale) in zip(found, photos, previews)]

    def crop(self, image: Image.Image | Photo, box: tuple[float, float, float, float] | None) -> tuple[Image.Image, tuple]:
        """The model's input for one face (``box`` in full-resolution pixels; None: the centre) and
        the window it was cut from, always from the full decode (runtime/photo.py says why)."""
        photo = image if isinstance(image, Photo) else Photo.whole(image)
        if self.is_native(box):
            side = max(box[2] - box[0], box[3] - box[1])
            if side >= self.min_face:
                window = native_window(box, self.input_size * self.context)
                return _cut(photo, window), window
            # a small face: a narrower window, upsampled (the context window is the same multiple of it)
            served = max(2, 2 * round(self.input_size * side / self.min_face / 2))  # even: centres align
            window = native_window(box, served * self.context)
            size = (self.input_size * self.context,) * 2
            return _cut(photo, window).resize(size, Image.BICUBIC), window
        square = square_box(box, photo.size[0], photo.size[1], self.margin)
        size = (self.input_size, self.input_size)
        # the pixels the filter reads around the square: its support, widened when it shrinks
        reach = math.ceil(BICUBIC_SUPPORT * max(1.0, (square[2] - square[0]) / self.input_size)) + 2
        pixels, (dx, dy) = photo.window(square, reach)
        inside = (square[0] - dx, square[1] - dy, square[2] - dx, square[3] - dy)
        return pixels.resize(size, Image.BICUBIC, box=inside, reducing_gap=None), square

    def prepare_many(self, images: list[Image.Image | Photo]) -> list[Prepared]:
        """Detection runs once over all images (batched by size: ``FaceDetector.detect``)."""
        photos = [image if isinstance(image, Photo) else Photo.whole(image) for image in images]
        results = []
        for photo, faces in zip(photos, self.detect(photos)):
            crops, squares = [], []
            for box in [f.box for f in faces] or [None]:
                crop, square = self.crop(photo, box)
                crops.append(crop)
                squares.append(square)
            results.append(Prepared(crops, faces, photo.size, squares))
        return results

    def prepare(self, image: Image.Image | Photo) -> Prepared:
        return self.prepare_many([image])[0]


def _cut(photo: Photo, window: tuple[int, int, int, int]) -> Image.Image:
    """``window`` of the full decode (PIL fills what lies past the image's edges black)."""
    pixels, (dx, dy) = photo.window(window)
    return pixels.crop((window[0] - dx, window[1] - dy, window[2] - dx, window[3] - dy))


def _in_full(face: Face, photo: Photo, scale: int) -> Face:
    """A face found in the view at 1/``scale`` -> full-resolution upright pixels."""
    if scale == 1:
        return face
    (x1, y1), (x2, y2) = photo.to_full([face.box[:2], face.box[2:]], scale)
    width, height = photo.size
    box = (min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height))
    return Face(box, face.score, tuple(photo.to_full(list(face.landmarks), scale)))


def to_tensor_batch(crops: list[Image.Image]):
    """PIL crops -> float32 torch tensor (N, 3, S, S) in [0, 1]: the model's whole input contract.

    One contiguous pass in numpy: the values are exactly torch's ``.float().div_(255)`` (one
    correctly rounded division per value), without waking torch's intra-op thread pool for a few
    hundred kilobytes (that wake-up, and the first call's kernel set-up, were most of what the
    crop stage used to cost; benchmarks/README.md)."""
    import torch

    array = np.stack([np.asarray(c, dtype=np.uint8) for c in crops])
    out = np.empty((array.shape[0], 3, array.shape[1], array.shape[2]), dtype=np.float32)
    np.divide(array.transpose(0, 3, 1, 2), np.float32(255.0), out=out)
    return torch.from_numpy(out)
