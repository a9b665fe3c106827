"""Train the detector: ``python -m training.train --config configs/train_face.yaml --data DIR [DIR ...]``.

One run = face crops cached once, AdamW with a warmed-up cosine schedule, early stopping on
validation ROC AUC, a checkpoint after every epoch (``--resume`` continues exactly), a CSV log, and
at the end the best weights with the calibration and the decision threshold fitted on validation in
their metadata. ``--folds K`` runs stratified K-fold cross-validation instead (fresh model and
optimiser per fold) and reports mean ± std.

This module is the loop; the recipe is ``training.config``, the data and sampling
``training.sampling``, the optimiser and schedule ``training.optim``, the run folder
``training.checkpoints`` and the calibration ``training.calibrate``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from runtime.face_hybrid import load_pretrained_backbone
from runtime.model import build_model, count_parameters
from runtime.weights import Calibration, save_weights
from training import distributed
from training.adversary import NO_SOURCE, SourceHead, WithSourceHead, ramp, source_index, source_loss
from training.augment import Augment, AugmentConfig
from training.calibrate import fit_on_validation, validation_reference
from training.checkpoints import RunFolder
from training.config import TrainConfig, model_overrides, preprocess_settings, resolve_device, split_seed, with_settings
from training.data import CachedCrop, CropDataset, class_counts
from training.forgery import Forger, simulator_folder
from training.kinds import FAKE_KINDS, WithKinds, kind_loss, kind_target
from training.metrics import binary_metrics, choose_threshold
from training.optim import optimizer_and_schedule
from training.regions import DenseHead, WithRegionHead, dense_loss
from training.sampling import as_roots, draw_weights, prepare_crops
from training.scoring import auc_or_nan, dataset_names, per_dataset_auc, predict
from training.simulator import SimulatorBank

LOG_FIELDS = ["epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_auc", "val_accuracy", "seconds"]
# with several data roots, the log also has val_auc_<dataset> columns and val_auc is their mean


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """One model trained on one train/val split, checkpointed in ``out_dir``."""

    def __init__(self, config: TrainConfig, train: list[CachedCrop], val: list[CachedCrop], out_dir: Path, seed: int,
                 simulator_reals: list[CachedCrop] | None = None):
        self.config = config
        self.seed = seed
        self.run = RunFolder(out_dir)
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
        kind_of = (lambda item, label, forgery: kind_target(config.kinds, item.dataset, item.label, label, forgery)) if config.kind_loss > 0 else None
        # the roots the source adversary must not be able to tell apart: those with real training photos,
        # a fake-only root's reals counted as the root they come from (real_from: the same photos)
        origin = lambda dataset: config.real_from.get(dataset, dataset)  # noqa: E731
        self.sources = sorted({origin(item.dataset) for item in train if item.label == 0}) if config.source_adversary > 0 else []
        source_of = (lambda item, label: source_index(self.sources, origin(item.dataset), label)) if self.sources else None
        self.train_set = CropDataset(train, augment, view=augment.view, dense_targets=config.dense_loss > 0, kind_of=kind_of,
                                     forger=make_forger(config, augment.config, simulator_reals or train), source_of=source_of)
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
        self.source_head = SourceHead(self.pooled_width(), len(self.sources)).to(self.device) if self.sources else None
        self.adversary = None  # the wrapper whose reversal strength ramps up (training.adversary)
        if self.source_head is not None:
            self.adversary, self.net = self.dist.parallel(WithSourceHead(self.model, self.source_head))
            self.model, self.source_head = self.adversary.model, self.adversary.head
        elif config.kind_loss > 0:
            both, self.net = self.dist.parallel(WithKinds(self.model))
            self.model = both.model
        elif self.dense_head is None:
            self.model, self.net = self.dist.parallel(self.model)
        else:
            both, self.net = self.dist.parallel(WithRegionHead(self.model, self.dense_head))
            self.model, self.dense_head = both.model, both.head
        self.datasets = dataset_names(self.val_set.items)
        self.log_fields = (LOG_FIELDS + ([f"val_auc_{name}" for name in self.datasets] if len(self.datasets) > 1 else [])
                           + (["train_source_accuracy"] if self.source_head is not None else []))
        self.source_accuracy = float("nan")  # the source head's accuracy on the last epoch's reals
        # a last batch of one image breaks batch norm in training mode: training drops the incomplete one
        self.drop_last = len(self.train_set) > config.batch_size
        self.draws = config.draws_per_epoch or len(self.train_set)  # images drawn per epoch
        self.steps_per_epoch = self.draws // config.batch_size if self.drop_last else 1
        heads = [head for head in (self.dense_head, self.source_head) if head is not None]
        self.optimizer, self.scheduler = optimizer_and_schedule(config, [self.model, *heads], self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.ema = None
        if config.ema_decay:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
        self.state = {"epoch": 0, "best_auc": -1.0, "best_epoch": 0, "bad_epochs": 0}
        self.history: list[dict] = []
        self.commands: list[str] = []  # every invocation that trained this run, kept across resumes

    def _blank_pass(self, pooled: bool = False) -> torch.Tensor:
        """``forward_features`` (or, with ``pooled``, the vector the binary head reads) of one blank
        image, in eval mode so no statistics move: what sizes the training-only heads."""
        size = self.model.config.input_size
        self.model.eval()
        with torch.no_grad():
            out = self.model.forward_features(torch.zeros(1, 3, size, size, device=self.device))
            if pooled:
                out = self.model.forward_head(out, pre_logits=True)
        self.model.train()
        return out

    def feature_channels(self) -> int:
        """Channels of ``forward_features``."""
        return self._blank_pass().shape[1]

    def pooled_width(self) -> int:
        """Width of the pooled vector the binary head reads (``forward_head(..., pre_logits=True)``)."""
        return self._blank_pass(pooled=True).shape[1]

    @property
    def shipped(self) -> torch.nn.Module:
        """The model that is validated, kept as best and shipped: the EMA of the weights when enabled."""
        return self.ema.module if self.ema is not None else self.model

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoint_metadata(self, epoch: int) -> dict:
        """Enough to evaluate a checkpoint as it is: its crops are made as the run's are."""
        return {"checkpoint_epoch": epoch, "preprocessing": self.preprocessing}

    def save_checkpoint(self) -> None:
        self.run.save_last(self.model, self.checkpoint_metadata(self.state["epoch"]), {
            **self.state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "dense_head": self.dense_head.state_dict() if self.dense_head is not None else None,
            "source_head": self.source_head.state_dict() if self.source_head is not None else None,
            "config": asdict(self.config),
            "commands": self.commands,
        })

    def load_checkpoint(self) -> None:
        state, weights = self.run.load_last(self.device)
        if state["config"] != asdict(self.config):
            changed = sorted(k for k in state["config"] if state["config"][k] != asdict(self.config).get(k))
            print(f"warning: resuming with changed settings: {changed}", file=sys.stderr)
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.dense_head is not None:
            self.dense_head.load_state_dict(state["dense_head"])
        if self.source_head is not None:
            self.source_head.load_state_dict(state["source_head"])
        self.state = {k: state[k] for k in self.state}
        self.commands = list(state.get("commands", [])) + self.commands
        self.history = self.run.read_log(self.state["epoch"])

    # -- training --------------------------------------------------------------------------

    def loader(self, dataset: CropDataset, shuffle: bool, epoch: int) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        sampler = None
        c = self.config
        if shuffle and (c.balance_datasets or c.pool_reals or c.self_made_epochs or c.draws_per_epoch):
            # every root in every epoch, by a power of its size; as many draws as images; in the
            # curriculum's first epochs, no downloaded fake
            power = c.balance_power if c.balance_datasets else 1.0
            weights = draw_weights(dataset.items, power, c.pool_reals, c.real_share, downloaded_fakes=epoch > c.self_made_epochs)
            sampler = torch.utils.data.WeightedRandomSampler(weights, self.draws, replacement=True, generator=generator)
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
        source_correct, source_seen = 0, 0
        bar = tqdm(self.loader(self.train_set, True, epoch), desc=f"epoch {epoch}/{self.config.epochs}", unit="batch", leave=False)
        for step, batch in enumerate(bar):
            if self.adversary is not None:
                done = (epoch - 1) * self.steps_per_epoch + step
                self.adversary.strength = ramp(done / max(1, self.steps_per_epoch * self.config.epochs))
            images, targets = batch[0].to(self.device, non_blocking=True), batch[1].to(self.device)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            smoothed = targets * (1 - self.config.label_smoothing) + 0.5 * self.config.label_smoothing
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                out = self.net(images)
                logits, *heads = out if isinstance(out, tuple) else (out,)
            loss = F.binary_cross_entropy_with_logits(logits.float(), smoothed)
            if self.dense_head is not None:
                loss = loss + self.config.dense_loss * dense_loss(heads[0], batch[2].to(self.device))
            elif self.config.kind_loss > 0:
                loss = loss + self.config.kind_loss * kind_loss(heads[0], batch[2].to(self.device))
            if self.source_head is not None:
                sources = batch[-1].to(self.device)
                loss = loss + self.config.source_adversary * source_loss(heads[-1], sources)
                known = sources != NO_SOURCE
                source_correct += (heads[-1].detach().argmax(1)[known] == sources[known]).sum().item()
                source_seen += int(known.sum().item())
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
        total_loss, correct, seen, source_correct, source_seen = self.dist.sum(total_loss, correct, seen, source_correct, source_seen)
        self.source_accuracy = source_correct / source_seen if source_seen else float("nan")
        return total_loss / seen, correct / seen

    def fit(self, resume: bool = False, stop_after: int | None = None) -> dict:
        """Train until ``config.epochs``, early stop, or ``stop_after`` epochs in this call."""
        self.run.root.mkdir(parents=True, exist_ok=True)
        if resume and self.run.last_state.exists():
            self.load_checkpoint()
            print(f"resumed from {self.run.last_state} after epoch {self.state['epoch']}")
        elif not resume:
            self.run.log.unlink(missing_ok=True)
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
            aucs = {name: auc for name, auc in aucs.items() if not math.isnan(auc)}  # a held-out root's reals alone
            # several roots: the mean of their AUCs, so a small or easy root cannot hide a weak one
            val_auc = float(np.mean(list(aucs.values()))) if aucs else auc_or_nan(y, z)
            val_acc = float(((z >= 0) == y).mean()) if len(y) else float("nan")  # P(fake) >= 0.5
            # without validation data the latest epoch counts as the best
            improved = math.isnan(val_auc) or val_auc > self.state["best_auc"]
            if improved:
                self.state.update(best_auc=-1.0 if math.isnan(val_auc) else val_auc, best_epoch=epoch, bad_epochs=0)
                if self.dist.is_main:
                    save_weights(self.shipped, self.run.best_weights, self.checkpoint_metadata(epoch))
            else:
                self.state["bad_epochs"] += 1
            self.state["epoch"] = epoch
            row = dict(epoch=epoch, lr=lr, train_loss=train_loss, train_accuracy=train_acc, val_loss=val_loss,
                       val_auc=val_auc, val_accuracy=val_acc, seconds=round(time.time() - start, 2),
                       **{f"val_auc_{name}": auc for name, auc in aucs.items()},
                       **({"train_source_accuracy": round(self.source_accuracy, 4)} if self.source_head is not None else {}))
            self.append_log(row)
            if self.dist.is_main:  # rank 0 alone writes
                self.save_checkpoint()
            done_now += 1
            print(
                f"epoch {epoch}/{self.config.epochs}: train loss {train_loss:.4f} acc {train_acc:.3f} | "
                f"val loss {val_loss:.4f} auc {val_auc:.4f} acc {val_acc:.3f} | {row['seconds']:.0f} s"
                + "".join(f" | {name} {auc:.4f}" for name, auc in aucs.items())
                + (f" | source head acc {self.source_accuracy:.3f} of {len(self.sources)} roots" if self.source_head is not None else "")
                + (" *" if improved else ""),
                flush=True,
            )
        if self.state["bad_epochs"] >= self.config.patience:
            print(f"early stop: no better val AUC for {self.config.patience} epochs (best epoch {self.state['best_epoch']})")
        return dict(self.state)

    def append_log(self, row: dict) -> None:
        self.history.append(row)
        if self.dist.is_main:
            self.run.write_log(self.history, self.log_fields)

    def load_best(self) -> torch.nn.Module:
        self.shipped.load_state_dict(self.run.load_best(self.device))
        return self.shipped.eval()

    def evaluate(self, items: list[CachedCrop], desc: str) -> tuple[np.ndarray, np.ndarray]:
        """(labels, logits)."""
        y, z, _ = predict(self.shipped, self.loader(CropDataset(items), False, 0), self.device, self.amp, desc)
        return y, z


def make_forger(config: TrainConfig, augment: AugmentConfig, reals: list[CachedCrop]) -> Forger | None:
    """The run's self-made fakes; the simulator bank is trained on ``reals`` (training crops) first if needed."""
    bank = None
    if augment.simulator > 0 and not augment.forgery_control:
        bank = SimulatorBank.load(simulator_folder(config, reals))
    return Forger.from_augment(augment, bank)


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

    trainer = Trainer(config, crops["train"], crops["val"], out_dir, config.seed, simulator_reals=crops["train_whole"])
    trainer.commands = [command]
    state = trainer.fit(resume=resume, stop_after=stop_after)
    if not job.is_main:  # rank 0 alone evaluates and writes the weights
        return dict(state)
    trainer.load_best()
    scored = {split: (crops[split], *trainer.evaluate(crops[split], split)) if crops[split] else None for split in ("val", "test")}
    calibration, threshold, metrics = fit_on_validation(scored["val"], scored["test"], config.threshold_method)
    metadata = {
        **({"kinds": list(FAKE_KINDS)} if config.kind_loss > 0 else {}),
        "threshold": threshold,
        **({"bands": metrics.pop("bands")} if "bands" in metrics else {}),
        "threshold_method": config.threshold_method,
        "calibration": calibration.to_metadata(),
        **validation_reference(scored["val"], calibration),  # what `records_cli quality` measures drift against
        "preprocessing": settings.to_metadata(),
        "metrics": metrics,
        "data": data_metadata(config, data, crops, skipped),
        "training": training_metadata(config, trainer, state, job.world_size),
        "command": trainer.commands[0],  # the one that started the run
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    save_weights(trainer.shipped, trainer.run.best_weights, metadata)
    if output:
        save_weights(trainer.shipped, output, metadata)
        print(f"wrote {output} and {output.with_suffix('.json')}")
    for split, m in metrics.items():
        print(f"{split}: auc {m['roc_auc']:.4f} ap {m['average_precision']:.4f} eer {m['eer']:.4f} "
              f"acc {m['accuracy']:.4f} f1 {m['f1']:.4f} at threshold {threshold:.4f}"
              + "".join(f" | {k} auc {v:.4f}" for k, v in m.get("per_dataset_auc", {}).items()))
    return metadata


def data_metadata(config: TrainConfig, data, crops: dict, skipped: list) -> dict:
    """What the weights were trained on, and how it was split (evaluation splits it again from this)."""
    return {
        "root": [str(r) for r in as_roots(data)] if isinstance(data, (list, tuple)) else str(data),
        "name": config.data_name,
        "licence": config.data_licence,
        "split": {"val": config.val_fraction, "test": config.test_fraction, "seed": split_seed(config)},
        "real_from": config.real_from,
        "counts": {k: class_counts(crops[k]) for k in ("train", "val", "test")},
        "skipped": [str(s.source) for s in skipped],
    }


def training_metadata(config: TrainConfig, trainer: Trainer, state: dict, processes: int) -> dict:
    seconds = [float(r["seconds"]) for r in trainer.history]
    return {
        **asdict(config),
        "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"],
        "seconds_per_epoch": round(float(np.mean(seconds)), 1) if seconds else None,
        "device": str(trainer.device),
        "processes": processes,
        "torch": torch.__version__,
        "log": str(trainer.run.log),
        "invocations": trainer.commands,
    }


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
