"""The optimiser and its schedule: AdamW over parameter groups (no decay on biases and norms, the
pretrained backbone at its own learning-rate scale) and a per-step warm-up + cosine multiplier, with
the pretrained groups held at zero while the backbone is frozen (the linear probe).
"""

from __future__ import annotations

import math

import torch

from training.config import TrainConfig


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float, start_step: int = 0):
    """LR multiplier per optimiser step: zero before ``start_step``, then linear warm-up, then cosine
    decay to ``min_ratio`` at ``total_steps``."""

    def factor(step: int) -> float:
        if step < start_step:
            return 0.0
        step -= start_step
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - start_step - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def parameter_groups(model: torch.nn.Module, weight_decay: float, lr: float, pretrained_lr_scale: float = 1.0) -> list[dict]:
    """No weight decay on biases and normalisation parameters (1-D tensors); pretrained parameters
    (``model.pretrained_parameters()``, where the family has them) at ``lr * pretrained_lr_scale``."""
    pretrained = {id(p) for p in getattr(model, "pretrained_parameters", list)()}
    groups = []
    for is_pretrained, scale in ((False, 1.0), (True, pretrained_lr_scale)):
        params = [p for p in model.parameters() if (id(p) in pretrained) == is_pretrained]
        decay = [p for p in params if p.ndim > 1]
        plain = [p for p in params if p.ndim <= 1]
        groups += [{"params": decay, "weight_decay": weight_decay, "lr": lr * scale, "pretrained": is_pretrained},
                   {"params": plain, "weight_decay": 0.0, "lr": lr * scale, "pretrained": is_pretrained}]
    return [g for g in groups if g["params"]]


def optimizer_and_schedule(config: TrainConfig, modules: list[torch.nn.Module], steps_per_epoch: int):
    """(AdamW, LambdaLR) for ``modules``: the model first (its pretrained parameters scaled), then any
    training-only head at the plain learning rate; the schedule steps once per optimiser step."""
    groups = parameter_groups(modules[0], config.weight_decay, config.lr, config.backbone_lr_scale)
    for head in modules[1:]:
        groups += parameter_groups(head, config.weight_decay, config.lr)
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    total = steps_per_epoch * config.epochs
    warmup = max(1, round(steps_per_epoch * config.warmup_epochs))
    frozen = round(steps_per_epoch * config.freeze_epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [
        warmup_cosine(total, warmup, config.min_lr_ratio, frozen if group["pretrained"] else 0)
        for group in optimizer.param_groups])
    return optimizer, scheduler
