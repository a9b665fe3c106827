"""Train the detector: ``python -m training.train --config configs/train_small.yaml --data DIR``.

One run = face crops cached once, AdamW with a warmed-up cosine schedule, early stopping on
validation ROC AUC, a checkpoint after every epoch (``--resume`` continues exactly), a CSV log, and
at the end the best weights with the decision threshold chosen on validation in their metadata.
``--folds K`` runs stratified K-fold cross-validation instead (fresh model and optimiser per fold)
and reports mean ± std.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from runtime.preprocessing import DEFAULT_MARGIN, PreprocessSettings
from training import distributed
from training.augment import Augment, AugmentConfig
from training.data import (
    CachedCrop,
    CropCache,
    CropDataset,
    SplitSpec,
    class_counts,
    discover_roots,
    root_name,
)
from training.kinds import FAKE_KINDS, WithKinds, kind_loss, kind_target
from training.metrics import binary_metrics, choose_threshold, fit_platt
from training.regions import DenseHead, WithRegionHead, dense_loss
from runtime.face_hybrid import load_pretrained_backbone
from runtime.model import build_model, count_parameters
from runtime.weights import Calibration, save_weights

LOG_FIELDS = ["epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_auc", "val_accuracy", "seconds"]
# with several data roots, the log also has val_auc_<dataset> columns and val_auc is their mean


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
    holdout: str = ""  # a data root kept out of training and validation, scored on test only: the
    #                    leave-one-kind-out estimate (its real images still serve a root that pairs with them)
    patience: int = 5  # epochs without a better val AUC before stopping
    seed: int = 0  # initialisation, order and augmentations; and the split, unless split_seed is set
    split_seed: int | None = None  # the train/val/test split alone (so runs of several seeds share one test set)
    train_fraction: float = 1.0  # < 1: train on this share of each class of each root (a learning curve)
    val_fraction: float = 0.15  # used when the data folder is not already split
    test_fraction: float = 0.15
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


@torch.no_grad()
def predict(model, loader, device: torch.device, amp: bool = False, desc: str = "eval") -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, logits, mean BCE loss) over a loader; ``Calibration.probability`` turns logits into P(fake)."""
    model.eval()
    labels, outputs, total = [], [], 0.0
    for images, targets in tqdm(loader, desc=desc, unit="batch", leave=False):
        images, targets = images.to(device, non_blocking=True), targets.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(images).float()
        total += F.binary_cross_entropy_with_logits(logits, targets, reduction="sum").item()
        labels.append(targets.cpu().numpy())
        outputs.append(logits.cpu().numpy())
    y = np.concatenate(labels).astype(int) if labels else np.zeros(0, int)
    return y, (np.concatenate(outputs) if outputs else np.zeros(0)), total / max(1, len(y))


def auc_or_nan(y: np.ndarray, p: np.ndarray) -> float:
    return binary_metrics(y, p)["roc_auc"] if len(y) and len(np.unique(y)) == 2 else float("nan")


def dataset_names(items: list[CachedCrop]) -> list[str]:
    return sorted({item.dataset for item in items})


def per_dataset_auc(items: list[CachedCrop], y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC AUC per data root, in ``items`` order."""
    names = np.array([item.dataset for item in items])
    return {name: auc_or_nan(y[names == name], p[names == name]) for name in dataset_names(items)}


class Trainer:
    """One model trained on one train/val split, checkpointed in ``out_dir``."""

    def __init__(self, config: TrainConfig, train: list[CachedCrop], val: list[CachedCrop], out_dir: Path, seed: int):
        self.config = config
        self.seed = seed
        self.out_dir = Path(out_dir)
        self.preprocessing = preprocess_settings(config).to_metadata()  # written with every checkpoint
        self.dist = distributed.join(resolve_device(config.device))  # a job of one without torchrun
        self.device = self.dist.device
        cuda = self.device.type == "cuda"
        self.amp = config.amp and cuda
        self.channels_last = config.channels_last
        if cuda:
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True

        augment = Augment(AugmentConfig.from_dict(config.augment))
        kind_of = (lambda item, label: kind_target(config.kinds, item.dataset, item.label, label)) if config.kind_loss > 0 else None
        self.train_set = CropDataset(train, augment, view=augment.view, dense_targets=config.dense_loss > 0, kind_of=kind_of)
        self.val_set = CropDataset(val)
        if len(self.train_set) == 0:
            raise ValueError("no training images")

        seed_everything(seed)  # every Trainer starts from a fresh, seeded initialisation
        self.model = build_model(config.size, **model_overrides(config))
        if config.pretrained and hasattr(self.model, "backbone"):
            load_pretrained_backbone(self.model.backbone)
        self.model = self.model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # the region head (training only) trains with the model; self.net is what training calls:
        # a DistributedDataParallel wrapper under torchrun
        self.dense_head = DenseHead(self.feature_channels()).to(self.device) if config.dense_loss > 0 else None
        if config.kind_loss > 0:
            both, self.net = self.dist.parallel(WithKinds(self.model))
            self.model = both.model
        elif self.dense_head is None:
            self.model, self.net = self.dist.parallel(self.model)
        else:
            both, self.net = self.dist.parallel(WithRegionHead(self.model, self.dense_head))
            self.model, self.dense_head = both.model, both.head
        groups = parameter_groups(self.model, config.weight_decay, config.lr, config.backbone_lr_scale)
        if self.dense_head is not None:
            groups += parameter_groups(self.dense_head, config.weight_decay, config.lr)
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr)
        self.datasets = dataset_names(self.val_set.items)
        self.log_fields = LOG_FIELDS + ([f"val_auc_{name}" for name in self.datasets] if len(self.datasets) > 1 else [])
        # a last batch of one image breaks batch norm in training mode: training drops the incomplete one
        self.drop_last = len(self.train_set) > config.batch_size
        self.steps_per_epoch = len(self.train_set) // config.batch_size if self.drop_last else 1
        total = self.steps_per_epoch * config.epochs
        warmup = max(1, round(self.steps_per_epoch * config.warmup_epochs))
        frozen = round(self.steps_per_epoch * config.freeze_epochs)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, [
            warmup_cosine(total, warmup, config.min_lr_ratio, frozen if group["pretrained"] else 0)
            for group in self.optimizer.param_groups])
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.ema = None
        if config.ema_decay:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
        self.state = {"epoch": 0, "best_auc": -1.0, "best_epoch": 0, "bad_epochs": 0}
        self.history: list[dict] = []
        self.commands: list[str] = []  # every invocation that trained this run, kept across resumes

    def feature_channels(self) -> int:
        """Channels of ``forward_features`` (one forward pass in eval mode, so no statistics move)."""
        size = self.model.config.input_size
        self.model.eval()
        with torch.no_grad():
            channels = self.model.forward_features(torch.zeros(1, 3, size, size, device=self.device)).shape[1]
        self.model.train()
        return channels

    @property
    def shipped(self) -> torch.nn.Module:
        """The model that is validated, kept as best and shipped: the EMA of the weights when enabled."""
        return self.ema.module if self.ema is not None else self.model

    # -- checkpoints -----------------------------------------------------------------------

    @property
    def checkpoint_weights(self) -> Path:
        return self.out_dir / "last.safetensors"

    @property
    def checkpoint_state(self) -> Path:
        return self.out_dir / "last_state.pt"

    @property
    def best_weights(self) -> Path:
        return self.out_dir / "best.safetensors"

    @property
    def log_path(self) -> Path:
        return self.out_dir / "log.csv"

    def checkpoint_metadata(self, epoch: int) -> dict:
        """Enough to evaluate a checkpoint as it is: its crops are made as the run's are."""
        return {"checkpoint_epoch": epoch, "preprocessing": self.preprocessing}

    def save_checkpoint(self) -> None:
        save_weights(self.model, self.checkpoint_weights, self.checkpoint_metadata(self.state["epoch"]))
        state = {
            **self.state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "dense_head": self.dense_head.state_dict() if self.dense_head is not None else None,
            "config": asdict(self.config),
            "commands": self.commands,
        }
        tmp = self.checkpoint_state.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_state)  # a crash mid-write never leaves a broken checkpoint

    def load_checkpoint(self) -> None:
        state = torch.load(self.checkpoint_state, map_location=self.device, weights_only=True)
        if state["config"] != asdict(self.config):
            changed = sorted(k for k in state["config"] if state["config"][k] != asdict(self.config).get(k))
            print(f"warning: resuming with changed settings: {changed}", file=sys.stderr)
        self.model.load_state_dict(load_file(str(self.checkpoint_weights), device=str(self.device)))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.dense_head is not None:
            self.dense_head.load_state_dict(state["dense_head"])
        self.state = {k: state[k] for k in self.state}
        self.commands = list(state.get("commands", [])) + self.commands
        if self.log_path.exists():
            with self.log_path.open() as f:
                self.history = [row for row in csv.DictReader(f) if int(row["epoch"]) <= self.state["epoch"]]

    # -- training --------------------------------------------------------------------------

    def loader(self, dataset: CropDataset, shuffle: bool, epoch: int) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        sampler = None
        if shuffle and self.config.balance_datasets:
            # a root's share of the draws ~ its size ** balance_power (0: equal); as many draws as images
            names = [item.dataset for item in dataset.items]
            counts = {name: names.count(name) for name in set(names)}
            power = self.config.balance_power
            weights = torch.tensor([counts[name] ** (power - 1.0) for name in names], dtype=torch.float64)
            sampler = torch.utils.data.WeightedRandomSampler(weights, len(names), replacement=True, generator=generator)
        if shuffle and self.dist.enabled:  # this rank's share of each global batch of the single-process order
            order = sampler or torch.utils.data.RandomSampler(dataset, generator=generator)
            return DataLoader(dataset, batch_sampler=self.dist.batches(order, self.config.batch_size, self.drop_last),
                              generator=generator, num_workers=self.config.workers, pin_memory=self.device.type == "cuda")
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            generator=generator,
            num_workers=self.config.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            drop_last=shuffle and self.drop_last,
        )

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        # reseeding per epoch makes the augmentations, dropout and order of epoch k independent of
        # whether the run was resumed, so a resumed run continues exactly
        seed_everything(self.seed * 100_003 + epoch)
        self.model.train()
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(self.loader(self.train_set, True, epoch), desc=f"epoch {epoch}/{self.config.epochs}", unit="batch", leave=False)
        for batch in bar:
            images, targets = batch[0].to(self.device, non_blocking=True), batch[1].to(self.device)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            smoothed = targets * (1 - self.config.label_smoothing) + 0.5 * self.config.label_smoothing
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                out = self.net(images)
                logits, second = out if isinstance(out, tuple) else (out, None)
            loss = F.binary_cross_entropy_with_logits(logits.float(), smoothed)
            if self.dense_head is not None:
                loss = loss + self.config.dense_loss * dense_loss(second, batch[2].to(self.device))
            elif second is not None:
                loss = loss + self.config.kind_loss * kind_loss(second, batch[2].to(self.device))
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            total_loss += loss.item() * len(targets)
            correct += ((logits.detach() > 0).float() == targets).sum().item()
            seen += len(targets)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
        total_loss, correct, seen = self.dist.sum(total_loss, correct, seen)
        return total_loss / seen, correct / seen

    def fit(self, resume: bool = False, stop_after: int | None = None) -> dict:
        """Train until ``config.epochs``, early stop, or ``stop_after`` epochs in this call."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume and self.checkpoint_state.exists():
            self.load_checkpoint()
            print(f"resumed from {self.checkpoint_state} after epoch {self.state['epoch']}")
        elif not resume:
            self.log_path.unlink(missing_ok=True)
        print(
            f"training {self.config.size} ({count_parameters(self.model) / 1e6:.2f} M parameters) on {self.device}: "
            f"{len(self.train_set)} train / {len(self.val_set)} val images, {self.steps_per_epoch} steps per epoch"
        )
        done_now = 0
        while self.state["epoch"] < self.config.epochs and self.state["bad_epochs"] < self.config.patience:
            if stop_after is not None and done_now >= stop_after:
                break
            epoch = self.state["epoch"] + 1
            start = time.time()
            lr = self.scheduler.get_last_lr()[0]
            train_loss, train_acc = self.train_epoch(epoch)
            y, z, val_loss = predict(self.shipped, self.loader(self.val_set, False, epoch), self.device, self.amp, "validate")
            aucs = per_dataset_auc(self.val_set.items, y, z) if len(self.datasets) > 1 else {}
            # several roots: the mean of their AUCs, so a small or easy root cannot hide a weak one
            val_auc = float(np.mean(list(aucs.values()))) if aucs else auc_or_nan(y, z)
            val_acc = float(((z >= 0) == y).mean()) if len(y) else float("nan")  # P(fake) >= 0.5
            # without validation data the latest epoch counts as the best
            improved = math.isnan(val_auc) or val_auc > self.state["best_auc"]
            if improved:
                self.state.update(best_auc=-1.0 if math.isnan(val_auc) else val_auc, best_epoch=epoch, bad_epochs=0)
                if self.dist.is_main:
                    save_weights(self.shipped, self.best_weights, self.checkpoint_metadata(epoch))
            else:
                self.state["bad_epochs"] += 1
            self.state["epoch"] = epoch
            row = dict(epoch=epoch, lr=lr, train_loss=train_loss, train_accuracy=train_acc, val_loss=val_loss,
                       val_auc=val_auc, val_accuracy=val_acc, seconds=round(time.time() - start, 2),
                       **{f"val_auc_{name}": auc for name, auc in aucs.items()})
            self.append_log(row)
            if self.dist.is_main:  # rank 0 alone writes
                self.save_checkpoint()
            done_now += 1
            print(
                f"epoch {epoch}/{self.config.epochs}: train loss {train_loss:.4f} acc {train_acc:.3f} | "
                f"val loss {val_loss:.4f} auc {val_auc:.4f} acc {val_acc:.3f} | {row['seconds']:.0f} s"
                + "".join(f" | {name} {auc:.4f}" for name, auc in aucs.items())
                + (" *" if improved else ""),
                flush=True,
            )
        if self.state["bad_epochs"] >= self.config.patience:
            print(f"early stop: no better val AUC for {self.config.patience} epochs (best epoch {self.state['best_epoch']})")
        return dict(self.state)

    def append_log(self, row: dict) -> None:
        self.history.append(row)
        if not self.dist.is_main:
            return
        with self.log_path.open("w", newline="") as f:  # rewritten whole: a resumed run drops stale rows
            writer = csv.DictWriter(f, fieldnames=self.log_fields)
            writer.writeheader()
            writer.writerows(self.history)

    def load_best(self) -> torch.nn.Module:
        self.shipped.load_state_dict(load_file(str(self.best_weights), device=str(self.device)))
        return self.shipped.eval()

    def evaluate(self, items: list[CachedCrop], desc: str) -> tuple[np.ndarray, np.ndarray]:
        """(labels, logits)."""
        y, z, _ = predict(self.shipped, self.loader(CropDataset(items), False, 0), self.device, self.amp, desc)
        return y, z


# ---------------------------------------------------------------------------------------------


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


def model_overrides(config: TrainConfig) -> dict:
    """The config's model fields, with the kind head sized when its loss is on."""
    return {**config.model, **({"kind_classes": len(FAKE_KINDS)} if config.kind_loss > 0 else {})}


def preprocess_settings(config: TrainConfig) -> PreprocessSettings:
    return PreprocessSettings(build_model(config.size, **config.model).config.input_size, config.margin, config.crop,
                              max_side=config.detector_side, min_face=config.min_face)


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


def cross_validate(config: TrainConfig, pool: list[CachedCrop], out_dir: Path, stop_after: int | None) -> dict:
    from sklearn.model_selection import StratifiedKFold

    labels = np.array([c.label for c in pool])
    folds = StratifiedKFold(config.folds, shuffle=True, random_state=config.seed).split(np.zeros(len(pool)), labels)
    results = []
    for fold, (train_idx, val_idx) in enumerate(folds, 1):
        print(f"=== fold {fold}/{config.folds} ===")
        trainer = Trainer(config, [pool[i] for i in train_idx], [pool[i] for i in val_idx], out_dir / f"fold{fold}", config.seed + fold)
        trainer.fit(stop_after=stop_after)
        trainer.load_best()
        y, z = trainer.evaluate(trainer.val_set.items, f"fold {fold} val")
        p = Calibration().probability(z)
        metrics = binary_metrics(y, p, choose_threshold(y, p, config.threshold_method))
        metrics["best_epoch"] = trainer.state["best_epoch"]
        results.append(metrics)
    keys = ["roc_auc", "average_precision", "eer", "accuracy", "f1"]
    summary = {k: {"mean": float(np.mean([r[k] for r in results])), "std": float(np.std([r[k] for r in results]))} for k in keys}
    report = {"folds": results, "summary": summary}
    (out_dir / "folds.json").write_text(json.dumps(report, indent=2) + "\n")
    for k, v in summary.items():
        print(f"{k}: {v['mean']:.4f} ± {v['std']:.4f}")
    return report


def train(config: TrainConfig, data: str | Path, out_dir: Path, output: Path | None = None, resume: bool = False,
          stop_after: int | None = None, command: str = "") -> dict:
    """The whole pipeline; returns the final metadata (or the K-fold report)."""
    torch.set_num_threads(config.threads)
    job = distributed.join(resolve_device(config.device))
    with job.main_first():  # rank 0 fills the crop cache, the others then read it
        crops, skipped, settings = prepare_crops(config, data)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.folds > 1:
        if job.enabled:
            raise ValueError("K-fold cross-validation runs in one process; launch the folds without torchrun")
        return cross_validate(config, crops["train"] + crops["val"], out_dir, stop_after)

    trainer = Trainer(config, crops["train"], crops["val"], out_dir, config.seed)
    trainer.commands = [command]
    state = trainer.fit(resume=resume, stop_after=stop_after)
    if not job.is_main:  # rank 0 alone evaluates and writes the weights
        return dict(state)
    trainer.load_best()
    metrics, threshold, calibration = {}, 0.5, Calibration()
    if crops["val"]:
        y, z = trainer.evaluate(crops["val"], "validation")
        calibration = Calibration(*fit_platt(z, y))
        p = calibration.probability(z)
        threshold = choose_threshold(y, p, config.threshold_method)
        metrics["val"] = binary_metrics(y, p, threshold)
        if len(trainer.datasets) > 1:
            metrics["val"]["per_dataset_auc"] = per_dataset_auc(crops["val"], y, p)
    if crops["test"]:
        y, z = trainer.evaluate(crops["test"], "test")
        p = calibration.probability(z)
        metrics["test"] = binary_metrics(y, p, threshold)
        if len(dataset_names(crops["test"])) > 1:
            metrics["test"]["per_dataset_auc"] = per_dataset_auc(crops["test"], y, p)
    seconds = [float(r["seconds"]) for r in trainer.history]
    metadata = {
        **({"kinds": list(FAKE_KINDS)} if config.kind_loss > 0 else {}),
        "threshold": threshold,
        "threshold_method": config.threshold_method,
        "calibration": calibration.to_metadata(),
        "preprocessing": settings.to_metadata(),
        "metrics": metrics,
        "data": {
            "root": [str(r) for r in as_roots(data)] if isinstance(data, (list, tuple)) else str(data),
            "name": config.data_name,
            "licence": config.data_licence,
            "split": {"val": config.val_fraction, "test": config.test_fraction, "seed": split_seed(config)},
            "real_from": config.real_from,
            "counts": {k: class_counts(v) for k, v in crops.items()},
            "skipped": [str(s.source) for s in skipped],
        },
        "training": {
            **asdict(config),
            "epochs_run": state["epoch"],
            "best_epoch": state["best_epoch"],
            "seconds_per_epoch": round(float(np.mean(seconds)), 1) if seconds else None,
            "device": str(trainer.device),
            "processes": job.world_size,
            "torch": torch.__version__,
            "log": str(trainer.log_path),
            "invocations": trainer.commands,
        },
        "command": trainer.commands[0],  # the one that started the run
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    save_weights(trainer.shipped, trainer.best_weights, metadata)
    if output:
        save_weights(trainer.shipped, output, metadata)
        print(f"wrote {output} and {output.with_suffix('.json')}")
    for split, m in metrics.items():
        print(f"{split}: auc {m['roc_auc']:.4f} ap {m['average_precision']:.4f} eer {m['eer']:.4f} "
              f"acc {m['accuracy']:.4f} f1 {m['f1']:.4f} at threshold {threshold:.4f}"
              + "".join(f" | {k} auc {v:.4f}" for k, v in m.get("per_dataset_auc", {}).items()))
    return metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of TrainConfig fields (configs/train_*.yaml)")
    parser.add_argument("--data", required=True, nargs="+",
                        help="ImageFolder root(s): {train,val,test}/{real,fake} or {real,fake}; several are split separately and pooled")
    parser.add_argument("--out", type=Path, help="run folder (checkpoints, log.csv); default runs/<size>")
    parser.add_argument("--output", type=Path, help="also write the final weights here (e.g. weights/default.safetensors)")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    parser.add_argument("--stop-after", type=int, help="train at most this many epochs in this invocation; "
                        "with --resume, 0 finishes a run now (best checkpoint -> threshold, test metrics, weights)")
    for name, kind in [("size", str), ("epochs", int), ("batch-size", int), ("lr", float), ("seed", int), ("folds", int),
                       ("patience", int), ("device", str), ("threads", int), ("workers", int), ("cache-dir", str)]:
        parser.add_argument(f"--{name}", type=kind, help="overrides the config file")
    parser.add_argument("--sbi", type=float, help="probability of a self-blended fake per real image (overrides augment.sbi)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                        help="override any config field, a dotted key for a nested one: --set kind_loss=0 --set augment.jpeg=0.3")
    args = parser.parse_args(argv)

    overrides = {k: getattr(args, k) for k in ("size", "epochs", "batch_size", "lr", "seed", "folds", "patience",
                                               "device", "threads", "workers", "cache_dir")}
    config = TrainConfig.load(args.config, **overrides)
    if args.sbi is not None:
        config.augment = {**config.augment, "sbi": args.sbi}
    config = with_settings(config, args.set)
    out_dir = args.out or Path("runs") / config.size
    command = "python -m training.train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    train(config, args.data if len(args.data) > 1 else args.data[0], out_dir, args.output, args.resume, args.stop_after, command)
    distributed.leave()
    return 0


if __name__ == "__main__":
    sys.exit(main())
