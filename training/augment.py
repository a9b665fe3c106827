"""Training augmentations on face crops, and the self-blended fake (SBI) that ``training.forgery`` draws.

All randomness comes from torch's global generator, which the trainer reseeds at every epoch, so a
run (and a resumed run) sees exactly the same augmented images.

SBI (Shiohara & Yamasaki, CVPR 2022): a real face is blended into a slightly colour- and
geometry-shifted copy of itself inside a soft, randomly deformed face-shaped mask. The result carries
blending boundaries and colour mismatches — traces shared by many face-swap methods — without any
identity change, which helps the detector generalise to generators it never saw.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import ColorJitter, RandomResizedCrop



@dataclass(frozen=True)
class AugmentConfig:
    flip: float = 0.5  # probability of a horizontal flip
    crop_scale: tuple[float, float] = (0.8, 1.0)  # area kept by the random resized crop
    jitter: float = 0.8  # probability of colour jitter
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02
    blur: float = 0.2  # probability of a Gaussian blur
    blur_sigma: tuple[float, float] = (0.2, 1.2)
    jpeg: float = 0.3  # probability of JPEG re-compression
    jpeg_quality: tuple[int, int] = (50, 95)
    downscale: float = 0.0  # probability of a down-and-up resize (a lower-resolution upload)
    downscale_factor: tuple[float, float] = (0.4, 0.9)
    # on a cached context crop (native crops): zoom out, i.e. a wider window shrunk to the input
    # size (the face as in a downscaled upload), and shift the window by up to `shift` pixels
    zoom_out: float = 0.0
    zoom_out_factor: tuple[float, float] = (0.5, 1.0)
    shift: int = 0
    noise: float = 0.0  # probability of Gaussian sensor-like noise
    noise_sigma: tuple[float, float] = (1.0, 4.0)  # its standard deviation, in 8-bit levels
    # self-made fakes (training.forgery): the probability that a drawn real face becomes each
    sbi: float = 0.0  # a self-blended fake (face swaps)
    simulator: float = 0.0  # the face redrawn by a generator's upsampling layers (GANs, diffusion)
    region_blend: float = 0.0  # an eye, the nose or the mouth pasted in (hand edits)
    # a control for the simulator: its fakes replaced by blurred ("blur") or down-up resized
    # ("resize") reals, to tell an upsampling artefact learned from plain smoothness
    forgery_control: str = ""

    @classmethod
    def from_dict(cls, data: dict | None) -> "AugmentConfig":
        data = dict(data or {})
        for key in ("crop_scale", "blur_sigma", "jpeg_quality", "downscale_factor", "zoom_out_factor", "noise_sigma"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


def _chance(p: float) -> bool:
    return p > 0 and torch.rand(()).item() < p


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def jpeg_recompress(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as f:
        return f.convert("RGB")


def add_noise(image: Image.Image, sigma: float) -> Image.Image:
    noise = torch.randn(image.height, image.width, 3).numpy() * sigma
    return Image.fromarray(np.clip(np.asarray(image, np.float32) + noise + 0.5, 0, 255).astype(np.uint8), "RGB")


def _soft_face_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random face-shaped blending mask in [0, 1]: a jittered ellipse, elastically deformed,
    grown or shrunk, then feathered by a Gaussian blur of random width."""
    mask = np.zeros((size, size), np.float32)
    # face crops are centred with a margin of about 30 %, so the face spans about 3/4 of the side
    centre = (int(size * rng.uniform(0.45, 0.55)), int(size * rng.uniform(0.47, 0.57)))
    axes = (int(size * rng.uniform(0.25, 0.36)), int(size * rng.uniform(0.3, 0.42)))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(-15, 15)), 0, 360, 1.0, -1)

    # elastic deformation: a smooth random displacement field
    grid = max(4, size // 16)
    strength = size * rng.uniform(0.02, 0.06)
    dx = cv2.resize(rng.normal(0, 1, (grid, grid)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    dy = cv2.resize(rng.normal(0, 1, (grid, grid)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    mask = cv2.remap(mask, xs + dx * strength, ys + dy * strength, cv2.INTER_LINEAR, borderValue=0)

    kernel = max(1, int(size * rng.uniform(0.01, 0.05))) | 1
    element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel, kernel))
    mask = cv2.erode(mask, element) if rng.random() < 0.5 else cv2.dilate(mask, element)
    feather = max(3, int(size * rng.uniform(0.03, 0.12))) | 1
    mask = cv2.GaussianBlur(mask, (feather, feather), 0)
    return np.clip(mask / max(mask.max(), 1e-6), 0, 1)


def self_blend(image: Image.Image, seed: int) -> Image.Image:
    """A self-blended fake from one real face crop (same size, RGB)."""
    rng = np.random.default_rng(seed)
    target = np.asarray(image, np.float32)
    size = target.shape[0]

    # source: colour-shifted (per-channel gain and offset, contrast) ...
    source = target * rng.uniform(0.9, 1.1, 3) + rng.uniform(-12, 12, 3)
    mean = source.mean()
    source = (source - mean) * rng.uniform(0.85, 1.15) + mean
    if rng.random() < 0.5:  # ... sometimes softened or sharpened ...
        blurred = cv2.GaussianBlur(source, (5, 5), 0)
        source = blurred if rng.random() < 0.5 else source + (source - blurred) * rng.uniform(0.3, 1.0)
    # ... and slightly rescaled and shifted
    scale = rng.uniform(0.94, 1.06)
    shift = rng.uniform(-0.03, 0.03, 2) * size
    matrix = np.array([[scale, 0, (1 - scale) * size / 2 + shift[0]], [0, scale, (1 - scale) * size / 2 + shift[1]]], np.float32)
    source = cv2.warpAffine(source, matrix, (size, size), borderMode=cv2.BORDER_REFLECT)

    mask = _soft_face_mask(size, rng) * rng.choice([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    blended = source * mask[..., None] + target * (1 - mask[..., None])
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), "RGB")


class Augment:
    """(PIL crop, label) -> (PIL crop, label) for training; real = 0, fake = 1."""

    def __init__(self, config: AugmentConfig = AugmentConfig()):
        self.config = config
        c = config
        self.jitter = ColorJitter(c.brightness, c.contrast, c.saturation, c.hue)

    def view(self, context: Image.Image, size: int, mask: Image.Image | None = None):
        """A ``size`` square from a wider context crop: the centre, shifted, sometimes zoomed out.
        A dense-target ``mask`` (same size as ``context``) is cut the same way and returned beside it."""
        c = self.config
        side = size
        if _chance(c.zoom_out):
            side = min(context.width, round(size / _uniform(*c.zoom_out_factor)))
        room = (context.width - side) // 2
        limit = min(c.shift, room)
        dx, dy = (int(torch.randint(-limit, limit + 1, (2,))[i]) for i in range(2)) if limit > 0 else (0, 0)
        box = (room + dx, room + dy, room + dx + side, room + dy + side)
        window = context.crop(box)
        if side != size:
            window = window.resize((size, size), Image.BICUBIC, reducing_gap=None)
        if mask is None:
            return window
        return window, mask.resize((size, size), Image.NEAREST, box=box)

    def __call__(self, image: Image.Image, label: int, mask: Image.Image | None = None):
        """(crop, label) -> (crop, label); with a dense-target ``mask``, (crop, label, mask), the mask
        moved with every geometric change (colour and quality changes leave it as it is). Real and
        fake, downloaded or self-made (``training.forgery``, before this), take the same chain, so
        the processing says nothing about the class."""
        c = self.config
        size = image.size
        if c.crop_scale[0] < 1.0:
            top, left, h, w = RandomResizedCrop.get_params(image, scale=list(c.crop_scale), ratio=[0.9, 1.1])
            image = image.resize(size, Image.BICUBIC, box=(left, top, left + w, top + h))
            if mask is not None:
                mask = mask.resize(size, Image.NEAREST, box=(left, top, left + w, top + h))
        if _chance(c.flip):
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            if mask is not None:
                mask = mask.transpose(Image.FLIP_LEFT_RIGHT)
        if _chance(c.jitter):
            image = self.jitter(image)
        if _chance(c.downscale):
            factor = _uniform(*c.downscale_factor)
            small = (max(8, round(size[0] * factor)), max(8, round(size[1] * factor)))
            image = image.resize(small, Image.BICUBIC, reducing_gap=None).resize(size, Image.BICUBIC)
        if _chance(c.blur):
            image = image.filter(ImageFilter.GaussianBlur(_uniform(*c.blur_sigma)))
        if _chance(c.noise):
            image = add_noise(image, _uniform(*c.noise_sigma))
        if _chance(c.jpeg):
            image = jpeg_recompress(image, round(_uniform(*c.jpeg_quality)))
        return (image, label) if mask is None else (image, label, mask)
