"""JPEG pixels through libjpeg-turbo's TurboJPEG API: Pillow's pixels, about four times sooner.

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

from PIL import Image

logger = logging.getLogger(__name__)

# what exif_transpose applies for each EXIF orientation
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
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


def decode_upright(data: bytes, header: Image.Image) -> Image.Image | None:
    """The upright RGB image that loading ``header`` (Pillow's opened JPEG, after any ``draft``),
    ``exif_transpose`` and RGB conversion would give, decoded by TurboJPEG; None where TurboJPEG is
    missing or might not give those pixels: decode with Pillow then."""
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
        method = TRANSPOSE.get(header.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a warning, a libjpeg error, unreadable EXIF: Pillow decides
        return None
    if pixels.shape[1::-1] != header.size:
        return None
    image = Image.fromarray(pixels, "RGB")
    return image if method is None else image.transpose(method)
