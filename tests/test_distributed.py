"""torchrun data-parallel training with 2 CPU processes (gloo) against the single-process run of the
same config: the same images in every optimiser step, the same weights after a short run, an exact
resume, and rank 0 alone speaking."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from training.distributed import Distributed
from runtime.model import build_model
from training.config import TrainConfig
from training.sampling import prepare_crops
from training.train import Trainer, seed_everything, train

ROOT = Path(__file__).resolve().parents[1]
TINY = {"input_size": 32, "entry_channels": [8, 16], "entry_blocks": [16, 24, 32], "middle_channels": 32,
        "middle_blocks": 1, "exit_channels": [48, 64], "dropout": 0.0}
# no random draws per image: the two processes see exactly the images the single process sees
NO_AUG = {"flip": 0.0, "jitter": 0.0, "blur": 0.0, "jpeg": 0.0, "crop_scale": [1.0, 1.0]}
# float32 sums in another order (two half-batch reductions) move the weights by rounding only: after
# 6 SGD steps the largest difference measured 2.4e-7
ATOL = 1e-5


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp-data")
    rng = np.random.default_rng(1)
    for name, n in [("real", 24), ("fake", 24)]:
        (root / name).mkdir()
        for i in range(n):
            pixels = rng.uniform(0, 255, (32, 32, 3)) * (0.5 if name == "real" else 1.0)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


def settings(tmp_path, **changes) -> dict:
    return {**dict(size="small", model=TINY, epochs=3, batch_size=8, lr=3e-3, warmup_epochs=0.5, patience=10,
                   threads=1, cache_dir=str(tmp_path / "cache"), val_fraction=0.25, test_fraction=0.25, augment=NO_AUG,
                   pretrained=False), **changes}


class Indices(torch.utils.data.Dataset):
    """Answers each index itself, so a loader shows the order it draws."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return index


@pytest.mark.parametrize("balance", [False, True])
def test_two_ranks_share_each_global_batch_of_the_single_process_order(data, tmp_path, balance):
    cfg = TrainConfig(**settings(tmp_path, balance_datasets=balance))
    crops, _, _ = prepare_crops(cfg, data)
    trainer = Trainer(cfg, crops["train"], crops["val"], tmp_path / "run", seed=0)
    indices = Indices(trainer.train_set.items)
    orders = []
    for epoch in (1, 2):
        single = [batch.tolist() for batch in trainer.loader(indices, True, epoch)]
        ranks = []
        for rank in range(2):
            trainer.dist = Distributed(rank=rank, world_size=2)
            ranks.append([batch.tolist() for batch in trainer.loader(indices, True, epoch)])
        trainer.dist = Distributed()
        assert [len(b) for b in ranks[0]] == [len(b) for b in ranks[1]] == [4] * trainer.steps_per_epoch
        assert [a + b for a, b in zip(*ranks)] == single
        orders.append(single)
    assert orders[0] != orders[1]  # a new order each epoch, the same one on every rank


def test_a_global_batch_that_does_not_divide_is_refused(data, tmp_path):
    cfg = TrainConfig(**settings(tmp_path, batch_size=7))
    crops, _, _ = prepare_crops(cfg, data)
    trainer = Trainer(cfg, crops["train"], crops["val"], tmp_path / "run", seed=0)
    trainer.dist = Distributed(rank=0, world_size=2)
    with pytest.raises(ValueError, match="multiple of the 2 processes"):
        trainer.loader(trainer.train_set, True, 1)


def torchrun(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def sgd_steps(config: Path, data: Path, out: Path) -> None:
    """Two epochs of the trainer's own loop (loader, batch norm, DDP wrapper) with plain SGD, the
    weights saved by rank 0. AdamW divides each gradient by its running size, which turns float
    rounding of a near-zero gradient into a whole +-lr step; SGD keeps rounding at rounding size,
    so it shows whether the two runs take the same steps."""
    torch.set_num_threads(1)
    cfg = TrainConfig(**yaml.safe_load(config.read_text()))
    crops, _, _ = prepare_crops(cfg, data)
    trainer = Trainer(cfg, crops["train"], crops["val"], out, seed=0)
    head = list(trainer.dense_head.parameters()) if trainer.dense_head is not None else []
    trainer.optimizer = torch.optim.SGD(list(trainer.model.parameters()) + head, lr=0.05)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda step: 1.0)
    for epoch in (1, 2):
        trainer.train_epoch(epoch)
    if trainer.dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()}, str(out / "sgd.safetensors"))


@pytest.mark.server  # two torchrun processes
@pytest.mark.slow
@pytest.mark.parametrize("dense_loss", [0.0, 1.0], ids=["image-head", "with-region-head"])
def test_two_processes_take_the_single_process_steps(data, tmp_path, dense_loss):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings(tmp_path, dense_loss=dense_loss)))
    sgd_steps(config, data, tmp_path / "single")
    torchrun(__file__, str(config), str(data), str(tmp_path / "ddp"))
    a, b = (load_file(str(tmp_path / run / "sgd.safetensors")) for run in ("single", "ddp"))
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst < ATOL, f"largest weight difference {worst:.2e}"
    seed_everything(0)  # the initial weights, as the trainer draws them: the steps moved them far more than ATOL
    start = build_model("small", **TINY).state_dict()
    assert max((a[k] - start[k]).abs().max().item() for k in a if a[k].is_floating_point()) > 1000 * ATOL


@pytest.mark.server  # torchrun, three times
@pytest.mark.slow
def test_torchrun_training_speaks_once_writes_once_and_resumes_exactly(data, tmp_path):
    values = settings(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(values))
    single = train(TrainConfig(**values), data, tmp_path / "single", command="pytest")
    run = ["-m", "training.train", "--config", str(config), "--data", str(data)]

    out = torchrun(*run, "--out", str(tmp_path / "ddp"), "--output", str(tmp_path / "ddp.safetensors"))
    assert out.count("epoch 2/3:") == 1  # rank 0 alone prints
    meta = json.loads((tmp_path / "ddp.json").read_text())
    assert meta["training"]["processes"] == 2 and single["training"]["processes"] == 1
    logs = [np.genfromtxt(tmp_path / name / "log.csv", delimiter=",", names=True) for name in ("single", "ddp")]
    # the first epoch's job-wide loss: the same images and steps (later epochs drift, see sgd_steps)
    assert logs[1]["train_loss"][0] == pytest.approx(logs[0]["train_loss"][0], rel=1e-3)

    # stopped after one epoch, resumed by a second torchrun: the uninterrupted job's weights, bit for bit
    torchrun(*run, "--out", str(tmp_path / "resumed"), "--stop-after", "1")
    torchrun(*run, "--out", str(tmp_path / "resumed"), "--resume")
    b, c = (load_file(str(tmp_path / name / "last.safetensors")) for name in ("ddp", "resumed"))
    assert b.keys() == c.keys() and all(torch.equal(b[k], c[k]) for k in b)


if __name__ == "__main__":  # a rank of test_two_processes_take_the_single_process_steps
    sgd_steps(*(Path(arg) for arg in sys.argv[1:]))
