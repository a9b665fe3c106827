"""Which kind of fake: the auxiliary head trained beside the binary one.

Each data root is one kind of fake (the config's ``kinds`` maps root names to these names). The
kind head is trained on fake images only (a real face has no kind), with cross-entropy weighted by
``kind_loss`` beside the binary loss; a self-blended fake made from a real face (SBI) counts as a
face swap, the manipulation it imitates. Its softmax is the model's guess, shown only beside a fake
verdict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FAKE_KINDS = ("gan", "diffusion", "face_swap", "hand_edit")
SELF_BLENDED_KIND = "face_swap"
# the kind each self-made fake (training.forgery) imitates; the simulator imitates GANs and latent
# diffusion alike, so its fakes teach the kind head nothing
FORGERY_KINDS = {"sbi": SELF_BLENDED_KIND, "region": "hand_edit", "simulator": None}
NO_KIND = -1  # real images, and fakes from a root with no kind: ignored by the kind loss


def kind_index(kinds: dict[str, str], dataset: str) -> int:
    """The class index of a data root's fakes (``NO_KIND`` when the config names none)."""
    name = kinds.get(dataset)
    if name is None:
        return NO_KIND
    if name not in FAKE_KINDS:
        raise ValueError(f"unknown kind {name!r} for data root {dataset!r}; kinds are {FAKE_KINDS}")
    return FAKE_KINDS.index(name)


class WithKinds(nn.Module):
    """The model with its kind head in one forward, (logits, kind logits): one module for a
    DistributedDataParallel wrapper to synchronise."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_with_kinds(images)


def kind_loss(kind_logits: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the images that have a kind (zero, with a gradient, when none has)."""
    known = kinds != NO_KIND
    if not bool(known.any()):
        return kind_logits.sum() * 0.0
    return F.cross_entropy(kind_logits[known].float(), kinds[known])


def kind_target(kinds: dict[str, str], dataset: str, original_label: int, label: int, forgery: str | None = None) -> int:
    """The kind class of one training image after augmentation: none for a real face, the kind a
    self-made fake imitates (``training.forgery.FORGERY_KIND``; a face swap for a self-blend), else
    its root's kind."""
    if label == 0:
        return NO_KIND
    if original_label == 0:
        kind = FORGERY_KINDS.get(forgery or "sbi")
        return NO_KIND if kind is None else FAKE_KINDS.index(kind)
    return kind_index(kinds, dataset)
