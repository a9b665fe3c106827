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


def draw_weights(items: list[CachedCrop], power: float, pool_reals: bool = False, real_share: float = 0.5,
                 downloaded_fakes: bool = True) -> torch.Tensor:
    """Per image, a weight such that a root's share of the draws is proportional to its number of
    images ** ``power``: 0 gives every root the same share, 1 draws images uniformly.

    ``pool_reals``: real and fake images are two pools instead, reals drawn ``real_share`` of the time;
    inside each pool a root's share goes by its count ** ``power``. Every kind of fake then meets the
    reals of every source, not mainly the reals of its own. ``downloaded_fakes`` False gives the
    fakes weight 0 (a run's self-made fakes come from its reals: ``training.forgery``)."""
    if not pool_reals:
        names = [item.dataset for item in items]
        counts = {name: names.count(name) for name in set(names)}
        weights = [counts[name] ** (power - 1.0) * (1.0 if downloaded_fakes or item.label == 0 else 0.0)
                   for name, item in zip(names, items)]
        return torch.tensor(weights, dtype=torch.float64)
    groups = [(item.label, item.dataset) for item in items]
    counts = {group: groups.count(group) for group in set(groups)}
    has_fakes = downloaded_fakes and any(label == 1 for label, _ in counts)
    pool_share = {0: real_share if has_fakes else 1.0, 1: (1.0 - real_share) if has_fakes else 0.0}
    totals = {label: sum(n**power for (l, _), n in counts.items() if l == label) for label in (0, 1)}
    share = {group: pool_share[group[0]] * n**power / totals[group[0]] for group, n in counts.items()}
    return torch.tensor([share[group] / counts[group] for group in groups], dtype=torch.float64)


def held_out_roots(holdout: str | list | None) -> list[str]:
    """A config's ``holdout`` (one root, a list, or nothing) as a list."""
    return [holdout] if isinstance(holdout, str) and holdout else list(holdout or [])


def hold_out(crops: list[CachedCrop], roots: list[str], keep_reals: bool) -> list[CachedCrop]:
    """``crops`` without the held-out roots' images (or, with ``keep_reals``, without their fakes alone)."""
    return [c for c in crops if c.dataset not in roots or (keep_reals and c.label == 0)]


def unique_reals(crops: list[CachedCrop]) -> list[CachedCrop]:
    """Each real crop once: a fake-only root paired with a donor's reals repeats them."""
    seen, out = set(), []
    for c in crops:
        if c.label == 0:
            if c.crop in seen:
                continue
            seen.add(c.crop)
        out.append(c)
    return out


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
    # the whole training split, before anything is held out or subsampled: what the run's simulator
    # of generator artefacts learns from, so runs that differ only in those share one simulator
    crops["train_whole"] = list(crops["train"])
    held = held_out_roots(config.holdout)
    if held:
        unknown = sorted(set(held) - {c.dataset for c in crops["test"]})
        if unknown:
            raise ValueError(f"holdout {unknown} is not one of the data roots")
        for name in ("train", "val"):
            crops[name] = hold_out(crops[name], held, config.holdout_reals)
        print(f"holding out {held}: " + ("their downloaded fakes are test only" if config.holdout_reals else "test only"))
    if config.pool_reals:
        crops["train"] = unique_reals(crops["train"])
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
