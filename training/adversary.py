"""A source adversary: features that cannot tell which data root a real photo came from.

Every kind of fake here comes from one source with its own framing, size and compression, and the
cheapest thing to learn is the source (the model card's "What the model keys on": soft DFDC reals
read as fake, crisp unseen GAN faces as real). A training-only head reads the pooled vector the
binary head reads and guesses the root of each *real* image; between the two sits a gradient
reversal layer (Ganin and Lempitsky, ICML 2015), so the head learns to tell the roots apart while
the features are pushed to make that impossible. Self-made and downloaded fakes carry no source
target. The reversal's strength ramps from 0 to 1 over training as in that paper, so the early
features are not scrambled before the detector has any.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.kinds import NO_KIND, kind_loss

NO_SOURCE = NO_KIND  # fakes: ignored by the source loss, as reals are by the kind loss


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.strength * grad, None


def reverse_gradient(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Identity forward; the gradient flowing back is multiplied by ``-strength``."""
    return _Reverse.apply(x, strength)


def ramp(progress: float) -> float:
    """The reversal's strength at ``progress`` (0..1) of training: 2 / (1 + e^(-10 p)) - 1."""
    return 2.0 / (1.0 + math.exp(-10.0 * min(max(progress, 0.0), 1.0))) - 1.0


class SourceHead(nn.Module):
    """Pooled features -> logits over the real images' data roots."""

    def __init__(self, features: int, sources: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, sources))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled)


class WithSourceHead(nn.Module):
    """The model, its kind head when it has one, and the source head behind a gradient reversal, in
    one forward (one module for DistributedDataParallel): (logits, [kind logits,] source logits)."""

    def __init__(self, model: nn.Module, head: SourceHead):
        super().__init__()
        self.model = model
        self.head = head
        self.strength = 0.0  # set by the trainer each step (``ramp``)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pooled = self.model.forward_head(self.model.forward_features(images), pre_logits=True)
        logits = self.model.classifier(pooled).squeeze(1)
        sources = self.head(reverse_gradient(pooled, self.strength))
        kind_classifier = getattr(self.model, "kind_classifier", None)
        return (logits, kind_classifier(pooled), sources) if kind_classifier is not None else (logits, sources)


def source_index(sources: list[str], dataset: str, label: int) -> int:
    """The source target of a training image after augmentation: its root's index for a real photo,
    ``NO_SOURCE`` for any fake (a self-made one included)."""
    return sources.index(dataset) if label == 0 and dataset in sources else NO_SOURCE


def source_loss(source_logits: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the real images (zero, with a gradient, when a batch has none): the
    kind loss's masking, over other targets."""
    return kind_loss(source_logits, sources)
