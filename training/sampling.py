"""From data roots to the crops a run trains on, and how often each root is drawn.

``prepare_crops`` discovers and splits every root (``training.data.discover_roots``: by class, by
group, fake-only roots paired with a donor's reals), fills the crop cache, holds a root out for
leave-one-kind-out runs and subsamples for learning curves. ``draw_weights`` gives each training
image its probability of being drawn, so that every kind of fake appears in every epoch.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch

from runtime.preprocessing import PreprocessSettings
from training.config import TrainConfig, preprocess_settings, split_seed
from training.data import DEFAULT_SPLIT_FRACTION, CachedCrop, CropCache, SplitSpec, class_counts, discover_roots, root_name


def as_roots(data: str | Path | list) -> list[Path]:
    return [Path(d) for d in (data if isinstance(data, (list, tuple)) else [data])]


def subsample(crops: list[CachedCrop], fraction: float, seed: int) -> list[CachedCrop]:
    """``fraction`` of each (root, class) group, drawn by ``seed``; the order of the rest is kept."""
    rng = random.Random(seed)
    keep = set()
    for key in sorted({(c.dataset, c.label) for c in crops}):
        group = [i for i, c in enumerate(crops) if (c.dataset, c.label) == key]
        keep.update(rng.sample(group, max(1, round(fraction * len(group)))))
    return [c for i, c in enumerate(crops) if i in keep]


def draw_weights(items: list[CachedCrop], power: float) -> torch.Tensor:
    """Per image, a weight such that a root's share of the draws is proportional to its number of
    images ** ``power``: 0 gives every root the same share, 1 draws images uniformly."""
    names = [item.dataset for item in items]
    counts = {name: names.count(name) for name in set(names)}
    return torch.tensor([counts[name] ** (power - 1.0) for name in names], dtype=torch.float64)


def prepare_crops(config: TrainConfig, data: str | Path | list) -> tuple[dict[str, list[CachedCrop]], list, PreprocessSettings]:
    """Discover and split each data root (same seed and fractions), fill the crop cache, report what
    was skipped. Several roots are split separately and their splits concatenated."""
    spec = SplitSpec(config.val_fraction, config.test_fraction, split_seed(config))
    settings = preprocess_settings(config)
    cache = CropCache(config.cache_dir, settings, threads=config.threads)
    crops, skipped = {"train": [], "val": [], "test": []}, []
    for root, splits in discover_roots(as_roots(data), spec, config.real_from).items():
        for name, samples in splits.items():
            prepared, bad = cache.prepare(samples, name, root)
            crops[name] += prepared
            skipped += bad
            counts = class_counts(prepared)
            no_face = sum(1 for c in prepared if not c.face_found)
            print(f"{root} {name}: {counts['real']} real, {counts['fake']} fake ({no_face} without a detected face)")
    if config.holdout:
        if config.holdout not in {c.dataset for c in crops["test"]}:
            raise ValueError(f"holdout {config.holdout!r} is not one of the data roots")
        for name in ("train", "val"):
            crops[name] = [c for c in crops[name] if c.dataset != config.holdout]
        print(f"holding out {config.holdout}: test only")
    if config.train_fraction < 1:
        crops["train"] = subsample(crops["train"], config.train_fraction, split_seed(config))
        print(f"training on {len(crops['train'])} images ({config.train_fraction:.0%} of each class of each root)")
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s):", file=sys.stderr)
        for s in skipped:
            print(f"  {s.source}: {s.code}: {s.message}", file=sys.stderr)
    return crops, skipped, settings


def split_spec(meta: dict) -> SplitSpec:
    split = meta.get("data", {}).get("split", {})
    return SplitSpec(split.get("val", DEFAULT_SPLIT_FRACTION), split.get("test", DEFAULT_SPLIT_FRACTION), split.get("seed", 0))


def split_samples(meta: dict, roots: list[Path], split: str, real_from: dict[str, str] | None = None) -> dict[str, list]:
    """``{root name: samples}`` of one split, split as the weights' training split them; a fake-only
    root pairs with the real images named by the training's ``real_from`` updated with ``real_from``."""
    pairs = {**meta.get("data", {}).get("real_from", {}), **(real_from or {})}
    names = {root_name(r) for r in roots}
    pairs = {fake: real for fake, real in pairs.items() if fake in names and real in names}
    found = {name: splits[split] for name, splits in discover_roots(roots, split_spec(meta), pairs).items()}
    empty = [name for name, samples in found.items() if not samples]
    if empty:
        raise SystemExit(f"split '{split}' of {empty} is empty")
    return found
