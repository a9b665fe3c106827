"""Decode an upload's bytes into upright 8-bit RGB pixels, or refuse them with a reason.

JPEG, PNG, WebP, HEIC/HEIF (pillow-heif, registered with PIL when this module is imported), AVIF,
BMP, TIFF and GIF; the pixel count is checked from the header before any pixel is decoded. Serving,
training and the tools all decode through here (``runtime/preprocessing.py`` then finds the faces and
crops them). It must not import TorchServe: it travels inside the model archive.
"""

from __future__ import annotations

import io
import re
import struct
import warnings

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
EXIF_ORIENTATION = 0x0112


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
