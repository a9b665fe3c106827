"""The training recipe: ``TrainConfig`` (the fields of ``configs/train_*.yaml``), overrides from the
command line, and what the recipe decides outside the loop: the model's fields, the pixels the model
sees (``PreprocessSettings``, stored with the weights for serving) and the device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import yaml

from runtime.model import build_model
from runtime.preprocessing import DEFAULT_MARGIN, PreprocessSettings
from training.data import DEFAULT_SPLIT_FRACTION
from training.kinds import FAKE_KINDS


@dataclass
class TrainConfig:
    size: str = "small"  # model size, see runtime.model.ALL_SIZES
    model: dict = field(default_factory=dict)  # ModelConfig overrides, e.g. {input_size: 64} for tests
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # the cosine ends at lr * min_lr_ratio
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # > 0: validate, keep and ship an exponential moving average of the weights
    dense_loss: float = 0.0  # > 0: weight of the per-region loss of a training-only head (training/regions.py)
    pretrained: bool = True  # start a model that has a pretrained backbone (the face family) from it
    backbone_lr_scale: float = 1.0  # learning rate of the pretrained parameters relative to lr
    freeze_epochs: float = 0.0  # pretrained parameters frozen this long first (linear probe, then fine-tune)
    balance_datasets: bool = False  # with several data roots, draw each root by balance_power (below)
    balance_power: float = 0.0  # a root's share of the draws ~ (its images) ** power: 0 equal, 0.5 by the
    #                             square root, 1 as often as its size (balance_datasets off)
    real_from: dict = field(default_factory=dict)  # fake-only root -> the root whose real images it pairs with
    kinds: dict = field(default_factory=dict)  # data root -> kind of fake (training.kinds.FAKE_KINDS)
    kind_loss: float = 0.0  # > 0: weight of the kind-of-fake head's loss (the head ships with the model)
    holdout: str | list = ""  # data root(s) kept out of training and validation, scored on test only: the
    #                    leave-one-kind-out estimate (its real images still serve a root that pairs with them)
    holdout_reals: bool = False  # keep the held-out roots' reals: only their downloaded fakes are left out
    pool_reals: bool = False  # reals and fakes drawn as two pools (training.sampling.draw_weights), each real once
    real_share: float = 0.5  # with pool_reals: the share of draws that are reals (self-made fakes come from them)
    draws_per_epoch: int = 0  # > 0: images drawn per epoch (with replacement), else as many as training images
    self_made_epochs: float = 0.0  # curriculum: the first epochs draw no downloaded fake, only reals (and their forgeries)
    source_adversary: float = 0.0  # > 0: weight of a source head behind a gradient reversal (training.adversary)
    simulator: dict = field(default_factory=dict)  # training.simulator.build_bank options: styles, width, steps
    patience: int = 5  # epochs without a better val AUC before stopping
    seed: int = 0  # initialisation, order and augmentations; and the split, unless split_seed is set
    split_seed: int | None = None  # the train/val/test split alone (so runs of several seeds share one test set)
    train_fraction: float = 1.0  # < 1: train on this share of each class of each root (a learning curve)
    val_fraction: float = DEFAULT_SPLIT_FRACTION  # used when the data folder is not already split
    test_fraction: float = DEFAULT_SPLIT_FRACTION
    folds: int = 1  # > 1: stratified K-fold cross-validation over train + val
    margin: float = DEFAULT_MARGIN  # face box growth for the crop (stored for serving)
    crop: str = "resize"  # resize | native: see runtime.preprocessing.PreprocessSettings
    min_face: int = 0  # native crops: smaller face boxes are upsampled to this many pixels (stored for serving)
    detector_side: int = 640  # the face detector's input: the image's longer side shrunk to this (stored for serving)
    threshold_method: str = "youden"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 2  # torch CPU threads (and the face detector's)
    workers: int = 0  # DataLoader worker processes
    amp: bool = True  # mixed precision, CUDA only
    channels_last: bool = True  # NHWC memory format: faster on CUDA, and on CPU too (measured)
    cache_dir: str = "build/crops"
    data_name: str = ""
    data_licence: str = ""
    augment: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None, **overrides) -> "TrainConfig":
        data = yaml.safe_load(Path(path).read_text()) if path else {}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown keys in {path}: {sorted(unknown)}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


def with_settings(config: TrainConfig, settings: list[str]) -> TrainConfig:
    """``config`` with ``KEY=YAML`` overrides; ``a.b=v`` sets key ``b`` of the dict field ``a``."""
    data = asdict(config)
    for item in settings:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        *parents, leaf = key.split(".")
        target = data
        for name in parents:
            target = target.setdefault(name, {})
        if not parents and leaf not in data:
            raise ValueError(f"unknown config key {leaf!r}")
        target[leaf] = yaml.safe_load(text)
    return TrainConfig(**data)


def split_seed(config: TrainConfig) -> int:
    return config.seed if config.split_seed is None else config.split_seed


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_overrides(config: TrainConfig) -> dict:
    """The config's model fields, with the kind head sized when its loss is on."""
    return {**config.model, **({"kind_classes": len(FAKE_KINDS)} if config.kind_loss > 0 else {})}


def preprocess_settings(config: TrainConfig) -> PreprocessSettings:
    return PreprocessSettings(build_model(config.size, **config.model).config.input_size, config.margin, config.crop,
                              max_side=config.detector_side, min_face=config.min_face)


def with_preprocessing(meta: dict, overrides: dict | None) -> dict:
    """The weights' metadata as if served with other preprocessing settings (e.g. ``max_side`` 128,
    the face detector's input, or ``min_face``); crops made with them are cached apart."""
    if not overrides:
        return meta
    settings = PreprocessSettings.from_metadata(meta).to_metadata()
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise SystemExit(f"unknown preprocessing setting(s) {unknown}; known: {sorted(settings)}")
    return {**meta, "preprocessing": {**settings, **overrides}}


def parse_settings(items: list[str]) -> dict:
    """``KEY=YAML`` items as a dict."""
    return {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in items)}
