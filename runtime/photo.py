"""A photo decoded at the resolution each stage needs, not at the resolution it was taken.

The face detector looks at no more than ``max_side`` pixels (640 by default) and a phone photo has
12 MP: decoding all of it and shrinking it again costs more than the rest of a request. A JPEG can be
decoded at 1/2, 1/4 or 1/8 of its size for little more than its entropy decoding (libjpeg's DCT
scaling, PIL's ``draft``). So the detector gets the coarsest such decode that still has ``max_side``
pixels on its longer side, and the model's crop is cut from the full decode, made only when a face
was found: the crop is then exactly the one the full-decode path gives. (Resized crops used to come
from a 1/2-1/8 decode with twice the model's input across the window. Their pixels differ from the
full decode's by one level at most, but that moved the four-kind default's P(fake) by up to 0.038,
over the 0.02 that tests/test_photo.py allows; three and five times moved it by up to 0.028.)

A HEIC's embedded thumbnail of at least ``max_side`` pixels is such a view too (at a scale that need
not be whole; upright as its image is, so with no flips). The full decode may be an array (TurboJPEG's,
runtime/jpeg.py): ``window`` converts only the pixels a crop reads.

Coordinates: faces and crop windows are in full-resolution upright pixels everywhere; a view decoded
at 1/s maps to them by ``s`` and, along an axis that EXIF orientation flips, an offset (libjpeg rounds
a scaled size up, so the partial last block lands on the far edge once flipped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

# File names taken for images wherever a folder is read (training data, parity and benchmark sets).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

JPEG_SCALES = (8, 4, 2, 1)  # what libjpeg's DCT scaling gives through PIL's draft
# EXIF orientation -> (upright x runs against the stored axis, upright y does): the flips of the
# transposition exif_transpose applies
FLIPS = {2: (True, False), 3: (True, True), 4: (False, True), 6: (True, False), 7: (True, True), 8: (False, True)}


def detection_scale(size: tuple[int, int], max_side: int) -> int:
    """The coarsest JPEG scale whose decode still has ``max_side`` pixels on the longer side (1 when
    the image is not that large): the detector shrinks to ``max_side`` anyway."""
    return next(s for s in JPEG_SCALES if s == 1 or max(size) / s >= max_side)


@dataclass
class Photo:
    """Upright RGB views of one image at 1/scale (``views[1]`` is the full decode), with the means to
    decode more. ``Photo.whole(image)`` wraps an image that is already decoded (video frames,
    training, anything not a large JPEG): every stage then sees exactly that image."""

    size: tuple[int, int]  # full-resolution upright width, height
    # views[1] may be an array (height, width, 3): TurboJPEG's full decode, converted only where read
    views: dict[int, Image.Image | np.ndarray] = field(default_factory=dict)
    decode: Callable[[int], Image.Image | np.ndarray] | None = field(default=None, repr=False)
    flips: tuple[bool, bool] = (False, False)

    @classmethod
    def whole(cls, image: Image.Image) -> "Photo":
        return cls(image.size, {1: image})

    @classmethod
    def scaled(cls, decode: Callable, size: tuple[int, int], scale: float, orientation: int = 1) -> "Photo":
        """A photo of upright ``size`` whose first view is decoded at 1/``scale``; ``decode(s)``
        gives the upright view at 1/s."""
        photo = cls(size, {}, decode, FLIPS.get(orientation, (False, False)))
        photo.views[scale] = decode(scale)
        return photo

    @property
    def preview(self) -> tuple[Image.Image, int]:
        """The coarsest view decoded so far, and its scale: what the detector gets."""
        scale = max(self.views)
        return self.views[scale], scale

    def full(self) -> Image.Image:
        """The full-resolution decode as a PIL image, made now if not yet."""
        pixels = self._full_pixels()
        if not isinstance(pixels, Image.Image):
            self.views[1] = pixels = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
        return pixels

    def window(self, box: tuple[float, float, float, float], margin: int = 0) -> tuple[Image.Image, tuple[int, int]]:
        """The full decode's pixels under ``box`` grown by ``margin`` (clipped to the image) and the
        full-resolution position of their top left corner: all that a crop of ``box`` reads (what
        every crop is cut from). A PIL full decode is given whole; an array only there, so 12 MP
        are not copied into a PIL image for one face."""
        pixels = self._full_pixels()
        if isinstance(pixels, Image.Image):
            return pixels, (0, 0)
        left, top = max(0, math.floor(box[0]) - margin), max(0, math.floor(box[1]) - margin)
        right = min(self.size[0], math.ceil(box[2]) + margin)
        bottom = min(self.size[1], math.ceil(box[3]) + margin)
        if right <= left or bottom <= top:  # nothing of the image under it: the whole image, as before
            return self.full(), (0, 0)
        return Image.fromarray(np.ascontiguousarray(pixels[top:bottom, left:right]), "RGB"), (left, top)

    def _full_pixels(self) -> Image.Image | np.ndarray:
        if 1 not in self.views:
            self.views[1] = self.decode(1)
        return self.views[1]

    def _offsets(self, scale: int) -> tuple[int, int]:
        width, height = self.views[scale].size
        return ((width * scale - self.size[0]) if self.flips[0] else 0,
                (height * scale - self.size[1]) if self.flips[1] else 0)

    def to_full(self, points: list[tuple[float, float]], scale: int) -> list[tuple[float, float]]:
        """View pixels at 1/``scale`` -> full-resolution upright pixels."""
        if scale == 1:
            return list(points)
        dx, dy = self._offsets(scale)
        return [(x * scale - dx, y * scale - dy) for x, y in points]
