"""Data-parallel training under ``torchrun``: one process per GPU (or per share of a CPU's cores), the same config file.

``torchrun --standalone --nproc-per-node 2 -m training.train --config configs/train_small.yaml --data DIR``
(several machines: ``--nnodes N --rdzv-endpoint HOST:PORT`` instead of ``--standalone``).

The trainer asks :func:`join` for its place in the job; without torchrun's environment that is a
job of one process and nothing changes. With it:

* the process group is gloo on CPU, NCCL on GPU (one GPU per local rank);
* ``batch_size`` stays the *global* batch: every optimiser step takes the same images as the
  single-process run — the single-process order cut into global batches, each rank taking its
  contiguous share (:class:`RankBatches`) — and the gradient average over ranks equals the
  single-process gradient of the batch mean;
* batch norm uses the statistics of the whole global batch (:meth:`Distributed.parallel`), so each
  step's gradient is the single-process one up to float rounding (``tests/test_distributed.py``
  states the tolerance, and why AdamW lets the runs drift apart faster than SGD);
* rank 0 alone writes checkpoints, the log, the best and final weights and prints; every rank reads
  the checkpoint on ``--resume``, so the run folder and the crop cache must be on storage all
  machines see.

Random augmentation and dropout draw from each rank's generator, so with them on a distributed run
is statistically, not bitwise, the single-process run.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, Sampler


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def batches(self, order: Sampler, batch_size: int, drop_last: bool) -> "RankBatches":
        return RankBatches(order, batch_size, drop_last, self.rank, self.world_size)

    def parallel(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        """(the model with job-wide batch norm, the module to call in training): the model itself
        when alone; else a DistributedDataParallel wrapper over the same parameters (the model
        itself stays the one that is saved, validated and averaged)."""
        if not self.enabled:
            return model, model
        model = convert_batch_norm(model, cuda=self.device.type == "cuda")
        ids = [self.device.index] if self.device.type == "cuda" else None
        return model, nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def sum(self, *values: float) -> tuple[float, ...]:
        """Job-wide sums of per-rank numbers (epoch loss and counts)."""
        if not self.enabled:
            return values
        totals = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(totals)
        return tuple(totals.tolist())

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (e.g. fills the crop cache), the others after it is done."""
        if self.enabled and not self.is_main:
            dist.barrier()
        yield
        if self.enabled and self.is_main:
            dist.barrier()


_joined: Distributed | None = None


def join(device: torch.device) -> Distributed:
    """This process's place, from torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; joins the
    process group on the first call. ``device`` is the configured one; a GPU job gives each local
    rank its own GPU."""
    global _joined
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(device=device)
    if _joined is None:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _joined = Distributed(rank, world_size, local_rank, device)
        if rank != 0:  # one voice: rank 0 prints the progress; errors still reach stderr
            sys.stdout = open(os.devnull, "w")
    return _joined


def leave() -> None:
    global _joined
    if dist.is_initialized():
        dist.destroy_process_group()
    _joined = None


class RankBatches(Sampler[list[int]]):
    """One rank's share of every global batch: ``order`` (the single-process sampler, same
    generator) cut into batches of ``batch_size``; rank r takes the r-th contiguous slice of each."""

    def __init__(self, order: Sampler, batch_size: int, drop_last: bool, rank: int, world_size: int):
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} (the global batch) must be a multiple of the {world_size} processes")
        self.global_batches = BatchSampler(order, batch_size, drop_last)
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return len(self.global_batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches:
            if len(batch) % self.world_size:
                raise ValueError(f"a global batch of {len(batch)} images cannot be split evenly over "
                                 f"{self.world_size} processes; use more training images than batch_size")
            share = len(batch) // self.world_size
            yield batch[self.rank * share : (self.rank + 1) * share]


# ---------------------------------------------------------------------------------------------
# Batch norm over the global batch


class _Summed(torch.autograd.Function):
    """All-reduce (sum) that autograd sees through: the gradient of a job-wide sum is the job-wide
    sum of the gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


_summed = _Summed.apply


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the whole global batch, on any backend:
    ``torch.nn.SyncBatchNorm`` refuses CPU modules, so gloo jobs use this. The per-rank sums go
    through :class:`_Summed`, so the statistics' gradients reach every rank as in the single-process graph."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        channels = x.size(1)
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        # two passes (mean, then squared deviations): E[x^2] - E[x]^2 loses digits when the mean is large
        sums = _summed(torch.cat([x.sum(dims), x.new_tensor([x.numel() // channels])]))
        n = sums[-1]
        mean = sums[:channels] / n
        var = _summed(((x - mean.view(shape)) ** 2).sum(dims)) / n  # biased, as batch norm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1), momentum)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_batch_norm(model: nn.Module, cuda: bool) -> nn.Module:
    """Every batch-norm layer computing global-batch statistics: torch's SyncBatchNorm on CUDA,
    :class:`GlobalBatchNorm` elsewhere; parameters and buffers are kept (the same tensors)."""
    if cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
            replacement = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                          module.track_running_stats)
            replacement.train(module.training)
            for key, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                setattr(replacement, key, tensor)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
    return model

