"""JPEG pixels through libjpeg-turbo's TurboJPEG API: Pillow's pixels, in half the time or less.

Pillow decodes a JPEG scanline by scanline through libjpeg; TurboJPEG (apt's ``libturbojpeg0``,
through PyTurboJPEG 1.x: 2.x wants libjpeg-turbo 3, which Debian 12 lacks) decodes the same way into
one buffer, with the same defaults (accurate integer IDCT, fancy upsampling) and the same DCT
scaling, so its pixels are Pillow's (tests/test_photo.py compares them over subsamplings, EXIF
orientations, progressive and greyscale files). Where it could differ it is not used: anything but a
YCbCr, RGB or greyscale file (CMYK and YCCK keep Pillow's inversion and conversion), any libjpeg
warning (Pillow decodes past some; a truncated file must still be refused as Pillow refuses it), any
size other than the one Pillow's draft chose. The caller then decodes with Pillow, as it would without
the library.
"""

from __future__ import annotations

import functools
import logging
import warnings

import numpy as np
from PIL import Image

from runtime.photo import FLIPS

logger = logging.getLogger(__name__)

EXIF_ORIENTATION = 0x0112
TJCS_RGB, TJCS_YCBCR, TJCS_GRAY = 0, 1, 2  # TurboJPEG's colour spaces this module decodes
TJPF_RGB = 0


@functools.cache
def turbo():
    """The TurboJPEG handle, or None (logged once) where PyTurboJPEG or libturbojpeg is missing."""
    try:
        from turbojpeg import TurboJPEG

        return TurboJPEG()
    except Exception as exc:  # ImportError, or the library not found (RuntimeError, OSError)
        logger.warning("JPEGs decode through Pillow: TurboJPEG is not available (%s)", exc)
        return None


def decoder() -> str:
    """Which decoder JPEGs get here: ``turbojpeg`` or ``pillow``."""
    return "pillow" if turbo() is None else "turbojpeg"


def decode_array(data: bytes, header: Image.Image) -> np.ndarray | None:
    """The upright RGB pixels (height, width, 3; a view, not always contiguous) that loading
    ``header`` (Pillow's opened JPEG, after any ``draft``), ``exif_transpose`` and RGB conversion
    would give, decoded by TurboJPEG; None where TurboJPEG is missing or might not give those
    pixels: decode with Pillow then. An array, because turning 12 MP into a PIL image is a copy
    that costs as much as TurboJPEG's decode: a crop converts only the pixels it reads."""
    jpeg = turbo()
    if jpeg is None or header.mode not in ("RGB", "L"):
        return None
    scale = header.decoderconfig[0] if header.decoderconfig else 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # PyTurboJPEG reports libjpeg's warnings as warnings
            if jpeg.decode_header(data)[3] not in (TJCS_YCBCR, TJCS_RGB, TJCS_GRAY):
                return None
            pixels = jpeg.decode(data, TJPF_RGB, scaling_factor=(1, scale) if scale > 1 else None)
        orientation = header.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a warning, a libjpeg error, unreadable EXIF: Pillow decides
        return None
    if pixels.shape[1::-1] != header.size or not isinstance(orientation, int):
        return None
    return upright(pixels, orientation)


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """``exif_transpose``'s transposition for an EXIF orientation, as a numpy view (no copy)."""
    if orientation in (5, 6, 7, 8):  # the transposed four: x and y swap first
        pixels = pixels.transpose(1, 0, 2)
    flip_x, flip_y = FLIPS.get(orientation, (False, False))
    return pixels[:: -1 if flip_y else 1, :: -1 if flip_x else 1]
