"""Dense targets: which pixels of a training crop are known to be real, known to be fake, or unknown.

One label per image says little about a hand edit, which changes an eye or a mouth of a real photo:
the evidence is a few dozen pixels, averaged away by a head that pools the whole face. A training-only
head (``training.train``, ``dense_loss``) predicts a map at the feature stride and is supervised
wherever the truth is known:

* a real photo: every pixel of the image is real;
* a fake without an edit mask (a GAN face): every pixel was generated;
* a hand-edited face whose file name carries its edit mask (the naming of the Yonsei "Real and Fake
  Face Detection" data, ``easy_104_1000.jpg``: left eye, right eye, nose, mouth, left and right as
  seen in the image): the edited regions, placed with the face's landmarks, are fake; the rest of
  the face is unknown (edits are blended past any box drawn here);
* outside the original image (the black border of a crop reaching past its edges): unknown.

Targets are an 8-bit mask the size of the cached crop (``REAL``, ``FAKE``, ``UNKNOWN``), so the
augmentations move them with the pixels (``training.augment``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

REAL, FAKE, UNKNOWN = 0, 255, 128
# the Yonsei naming: difficulty, number, one bit per region (left eye, right eye, nose, mouth)
EDIT_LEVELS = ("easy", "mid", "hard")  # how hard the edit is for a person to see
EDIT_NAME = re.compile(rf"^({'|'.join(EDIT_LEVELS)})_\d+_([01]*)$")
# region half-sizes as fractions of the distance between the eyes, which sets the face's scale
EYE_HALF = 0.45
NOSE_HALF_WIDTH = 0.4
MOUTH_MARGIN = 0.3
MOUTH_HALF_HEIGHT = 0.35


def edit_mask(path: str | Path) -> str | None:
    """The edit mask in a hand-edited file's name ("1000" = left eye only), "" for a hand edit whose
    mask is unreadable, None for a file not named as a hand edit."""
    match = EDIT_NAME.match(Path(path).stem)
    if match is None:
        return None
    bits = match.group(2)
    return bits if len(bits) == 4 else ""


def edit_level(path: str | Path) -> str | None:
    """The difficulty in a hand-edited file's name (one of ``EDIT_LEVELS``), None for a file not
    named as a hand edit."""
    match = EDIT_NAME.match(Path(path).stem)
    return match.group(1) if match else None


def region_boxes(landmarks, bits: str) -> list[tuple[float, float, float, float]]:
    """Boxes (x1, y1, x2, y2) around the regions whose bit is set, from RetinaFace's five points
    (two eyes, nose tip, two mouth corners), in the landmarks' own pixels."""
    if len(landmarks) != 5 or len(bits) != 4:
        return []
    eyes = sorted(landmarks[:2])  # image left first
    nose = landmarks[2]
    mouth = sorted(landmarks[3:])
    scale = max(1.0, ((eyes[1][0] - eyes[0][0]) ** 2 + (eyes[1][1] - eyes[0][1]) ** 2) ** 0.5)
    eye_y = (eyes[0][1] + eyes[1][1]) / 2
    mouth_y = (mouth[0][1] + mouth[1][1]) / 2
    regions = [
        (eyes[0][0] - EYE_HALF * scale, eyes[0][1] - EYE_HALF * scale, eyes[0][0] + EYE_HALF * scale, eyes[0][1] + EYE_HALF * scale),
        (eyes[1][0] - EYE_HALF * scale, eyes[1][1] - EYE_HALF * scale, eyes[1][0] + EYE_HALF * scale, eyes[1][1] + EYE_HALF * scale),
        (nose[0] - NOSE_HALF_WIDTH * scale, (eye_y + nose[1]) / 2, nose[0] + NOSE_HALF_WIDTH * scale, nose[1] + 0.2 * scale),
        (mouth[0][0] - MOUTH_MARGIN * scale, mouth_y - MOUTH_HALF_HEIGHT * scale,
         mouth[1][0] + MOUTH_MARGIN * scale, mouth_y + MOUTH_HALF_HEIGHT * scale),
    ]
    return [box for box, bit in zip(regions, bits) if bit == "1"]


def target_mask(item, size: int) -> Image.Image:
    """The dense target of a cached crop (``training.data.CachedCrop``) whose side is ``size``."""
    mask = Image.new("L", (size, size), UNKNOWN)
    if item.window is None or item.image_size is None:
        return mask
    left, top, right, _ = item.window
    scale = size / (right - left)

    def to_crop(x: float, y: float) -> tuple[float, float]:
        return (x - left) * scale, (y - top) * scale

    draw = ImageDraw.Draw(mask)
    extent = (*to_crop(0, 0), *to_crop(*item.image_size))
    bits = edit_mask(item.source) if item.label == 1 else None
    if bits is None:
        draw.rectangle(_inclusive(extent), fill=FAKE if item.label == 1 else REAL)
        return mask
    for x1, y1, x2, y2 in region_boxes(item.landmarks, bits):
        box = (*to_crop(x1, y1), *to_crop(x2, y2))
        clipped = (max(box[0], extent[0]), max(box[1], extent[1]), min(box[2], extent[2]), min(box[3], extent[3]))
        if clipped[2] > clipped[0] and clipped[3] > clipped[1]:
            draw.rectangle(_inclusive(clipped), fill=FAKE)
    return mask


def _inclusive(box) -> tuple[int, int, int, int]:
    """PIL's rectangle includes its right and bottom edges: the pixels covered by [x1, x2) x [y1, y2)."""
    x1, y1, x2, y2 = (round(v) for v in box)
    return x1, y1, x2 - 1, y2 - 1


class DenseHead(nn.Module):
    """One logit per feature-map position: "is this part of the face fake?". Training only: it shapes
    the features the image head pools, and is not part of the shipped model."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv(features).squeeze(1)


def dense_loss(logits: torch.Tensor, masks: torch.Tensor, min_known: float = 0.25) -> torch.Tensor:
    """Binary cross-entropy of a (N, h, w) logit map against (N, S, S) target masks.

    Each position's target is the fraction of fake pixels among the known ones in its cell; cells
    less than ``min_known`` known are left out. Averaged per image first, so a hand edit's few known
    cells weigh as much as a whole real face."""
    cell = masks.shape[-1] // logits.shape[-1]
    known = F.avg_pool2d((masks != UNKNOWN).float().unsqueeze(1), cell).squeeze(1)
    fake = F.avg_pool2d((masks == FAKE).float().unsqueeze(1), cell).squeeze(1)
    valid = (known >= min_known).float()
    target = fake / known.clamp(min=1e-6)
    per_cell = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none") * valid
    cells = valid.flatten(1).sum(1)
    has_cells = cells > 0
    if not has_cells.any():
        return logits.sum() * 0.0
    return (per_cell.flatten(1).sum(1)[has_cells] / cells[has_cells]).mean()


class WithRegionHead(nn.Module):
    """The model and its region head in one forward, (image logits, region logits): one module for
    a DistributedDataParallel wrapper to synchronise."""

    def __init__(self, model: nn.Module, head: DenseHead):
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(images)
        return self.model.forward_head(features), self.head(features)
