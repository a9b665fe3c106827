"""A run folder: the last checkpoint (weights and the whole training state, written after every
epoch; what ``--resume`` continues from), the best weights so far, and the per-epoch CSV log."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from runtime.weights import save_weights


class RunFolder:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def last_weights(self) -> Path:
        return self.root / "last.safetensors"

    @property
    def last_state(self) -> Path:
        return self.root / "last_state.pt"

    @property
    def best_weights(self) -> Path:
        return self.root / "best.safetensors"

    @property
    def log(self) -> Path:
        return self.root / "log.csv"

    def save_last(self, model: torch.nn.Module, metadata: dict, state: dict) -> None:
        """The model's weights and the training state (optimiser, schedule, EMA, counters, ...)."""
        save_weights(model, self.last_weights, metadata)
        tmp = self.last_state.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.last_state)  # a crash mid-write never leaves a broken checkpoint

    def load_last(self, device: torch.device) -> tuple[dict, dict]:
        """(training state, model state dict) of the last checkpoint."""
        state = torch.load(self.last_state, map_location=device, weights_only=True)
        return state, load_file(str(self.last_weights), device=str(device))

    def load_best(self, device: torch.device) -> dict:
        return load_file(str(self.best_weights), device=str(device))

    def write_log(self, rows: list[dict], fields: list[str]) -> None:
        """The whole log, rewritten: a resumed run drops the rows of epochs it redoes."""
        with self.log.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    def read_log(self, last_epoch: int) -> list[dict]:
        if not self.log.exists():
            return []
        with self.log.open() as f:
            return [row for row in csv.DictReader(f) if int(row["epoch"]) <= last_epoch]
