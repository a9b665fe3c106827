"""Self-made fakes: a real training face turned into a fake of one kind, so that real and fake share
everything (person, framing, size, compression, source) but the manipulation's own traces.

Three forgeries, each drawn per real image with its probability from the augment config:

* ``sbi``: self-blended image (``training.augment.self_blend``), the face-swap imitation;
* ``simulator``: the face redrawn by a generator's upsampling layers (``training.simulator``), the
  GAN / latent-diffusion imitation;
* ``region``: an eye, the nose or the mouth pasted from another real face (aligned on the five
  landmarks) or from a warped, colour-shifted copy of the same face, in a feathered mask: the hand
  edit imitation. Its mask is also the dense target (``training.regions``).

The region blend works on the cached context crop, where the landmarks are known exactly; the other
two work on the model's view. All randomness comes from torch's global generator, like the rest of the
augmentations, so a resumed run forges the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageFilter

from training.augment import self_blend
from training.regions import FAKE, REAL, UNKNOWN, region_boxes

FORGERIES = ("sbi", "simulator", "region")
CONTROLS = ("", "blur", "resize")  # the simulator's fakes replaced by blurred or down-up resized reals


def _rand() -> float:
    return torch.rand(()).item()


def _seed() -> int:
    return int(torch.randint(0, 2**31 - 1, ()).item())


@dataclass(frozen=True)
class ForgeryOdds:
    """Probability that a drawn real image becomes each self-made fake (at most one applies)."""

    sbi: float = 0.0
    simulator: float = 0.0
    region: float = 0.0

    def __post_init__(self):
        if self.sbi + self.simulator + self.region > 1 + 1e-9:
            raise ValueError(f"forgery probabilities add up to more than 1: {self}")

    @property
    def any(self) -> bool:
        return self.sbi + self.simulator + self.region > 0


def context_points(window, landmarks, side: int) -> np.ndarray:
    """The five landmarks (original pixels) in a cached crop of ``side`` pixels cut at ``window``."""
    left, top, right, _ = window
    scale = side / (right - left)
    return np.array([((x - left) * scale, (y - top) * scale) for x, y in landmarks], np.float32)


def region_mask(points: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """A feathered mask over one to three of (left eye, right eye, nose, mouth), in [0, 1]."""
    count = int(rng.choice([1, 1, 2, 3]))
    chosen = rng.choice(4, count, replace=False)
    bits = "".join("1" if i in chosen else "0" for i in range(4))
    mask = np.zeros((side, side), np.float32)
    for x1, y1, x2, y2 in region_boxes([tuple(p) for p in points], bits):
        grow = rng.uniform(0.9, 1.3)
        centre = ((x1 + x2) / 2, (y1 + y2) / 2)
        axes = (max(2.0, (x2 - x1) / 2 * grow), max(2.0, (y2 - y1) / 2 * grow))
        cv2.ellipse(mask, (round(centre[0]), round(centre[1])), (round(axes[0]), round(axes[1])),
                    float(rng.uniform(-10, 10)), 0, 360, 1.0, -1)
    eye_distance = max(4.0, float(np.linalg.norm(points[1] - points[0])))
    feather = max(3, int(eye_distance * rng.uniform(0.1, 0.35))) | 1
    return cv2.GaussianBlur(mask, (feather, feather), 0)


def _match_colour(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``source`` with the per-channel mean and spread of ``target`` under ``mask`` (Reinhard-style),
    so a pasted region shows its boundary, not a colour block."""
    weight = mask[..., None] > 0.1
    if weight.sum() < 16:
        return source
    src = source[weight[..., 0]]
    tgt = target[weight[..., 0]]
    gain = (tgt.std(0) + 1) / (src.std(0) + 1)
    return (source - src.mean(0)) * gain + tgt.mean(0)


def _warped_self(target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A slightly moved, scaled, rotated and colour-shifted copy of the same face."""
    side = target.shape[0]
    matrix = cv2.getRotationMatrix2D((side / 2 + rng.uniform(-3, 3), side / 2 + rng.uniform(-3, 3)),
                                     float(rng.uniform(-6, 6)), float(rng.uniform(0.93, 1.07)))
    moved = cv2.warpAffine(target, matrix, (side, side), borderMode=cv2.BORDER_REFLECT)
    return moved * rng.uniform(0.92, 1.08, 3) + rng.uniform(-10, 10, 3)


def _aligned_donor(donor: np.ndarray, donor_points: np.ndarray, points: np.ndarray, side: int) -> np.ndarray | None:
    matrix, _ = cv2.estimateAffinePartial2D(donor_points, points)
    if matrix is None:
        return None
    return cv2.warpAffine(donor, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def region_blend(image: Image.Image, points: np.ndarray, seed: int, donor: tuple[Image.Image, np.ndarray] | None = None):
    """A hand-edit imitation of a real context crop: (forged image, blend mask in [0, 1]).
    ``donor`` (another real face's context crop and its landmarks in it) gives the pasted pixels;
    without one, or when it cannot be aligned, a warped copy of the same face does."""
    rng = np.random.default_rng(seed)
    target = np.asarray(image, np.float32)
    side = target.shape[0]
    source = None
    if donor is not None and rng.random() < 0.5:
        source = _aligned_donor(np.asarray(donor[0].convert("RGB").resize((side, side)), np.float32),
                                donor[1] * (side / donor[0].width), points, side)
    if source is None:
        source = _warped_self(target, rng)
    mask = region_mask(points, side, rng)
    source = _match_colour(source, target, mask)
    strength = rng.choice([0.7, 0.85, 1.0, 1.0])
    blended = source * (mask * strength)[..., None] + target * (1 - mask * strength)[..., None]
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), "RGB"), mask * strength


def blend_target(mask: np.ndarray) -> Image.Image:
    """The dense target of a region blend: fake where the paste shows, real where it does not, and
    unknown in the feathered rim between."""
    target = np.full(mask.shape, UNKNOWN, np.uint8)
    target[mask >= 0.5] = FAKE
    target[mask <= 0.02] = REAL
    return Image.fromarray(target, "L")


class Forger:
    """Chooses and makes the self-made fake of a real training image."""

    def __init__(self, odds: ForgeryOdds, simulators=None, control: str = ""):
        if control not in CONTROLS:
            raise ValueError(f"unknown forgery control {control!r}; one of {CONTROLS}")
        if odds.simulator > 0 and simulators is None and not control:
            raise ValueError("simulator fakes need a trained simulator bank (training.simulator)")
        self.odds = odds
        self.simulators = simulators
        self.control = control

    @classmethod
    def from_augment(cls, augment, simulators=None) -> "Forger | None":
        """From a ``training.augment.AugmentConfig``; None when it forges nothing."""
        odds = ForgeryOdds(augment.sbi, augment.simulator, augment.region_blend)
        return cls(odds, simulators, augment.forgery_control) if odds.any else None

    def choose(self, label: int) -> str | None:
        """Which forgery a drawn image gets: None for a fake, or a real left as it is."""
        if label != 0 or not self.odds.any:
            return None
        u, edge = _rand(), 0.0
        for name in FORGERIES:
            edge += getattr(self.odds, name)
            if u < edge:
                return name
        return None

    def before_view(self, forgery: str | None, context: Image.Image, points: np.ndarray | None, donor=None):
        """(context, blend mask or None): the region blend, made on the context crop."""
        if forgery != "region":
            return context, None
        return region_blend(context, points, _seed(), donor)

    def after_view(self, forgery: str | None, view: Image.Image) -> Image.Image:
        if forgery == "sbi":
            return self_blend(view, _seed())
        if forgery == "simulator" and self.control == "blur":
            return view.filter(ImageFilter.GaussianBlur(0.5 + 0.7 * _rand()))
        if forgery == "simulator" and self.control == "resize":
            factor = 0.5 + 0.3 * _rand()
            small = (max(8, round(view.width * factor)), max(8, round(view.height * factor)))
            return view.resize(small, Image.BICUBIC, reducing_gap=None).resize(view.size, Image.BICUBIC)
        if forgery == "simulator":
            return self.simulators.reconstruct(view, int(torch.randint(0, 1 << 16, ()).item()))
        return view


def simulator_folder(config, train_crops, styles=None) -> Path:
    """The simulator bank for a run: trained on the training split's real crops (never validation or
    test), found in ``<cache_dir>/../simulator`` when it exists."""
    from training.simulator import build_bank

    reals = sorted({(c.crop.stem, c.crop) for c in train_crops if c.label == 0 and c.face_found})
    options = dict(config.simulator)
    return build_bank(reals, Path(config.cache_dir).parent / "simulator", **options)
