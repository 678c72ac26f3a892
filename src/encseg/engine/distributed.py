"""Distributed helpers: one process per device under `torchrun`, DDP, rank-0-only side effects.

Without torchrun (no WORLD_SIZE in the environment) everything degrades to a single process.
Backend: NCCL when CUDA is used, gloo otherwise (CPU runs, and the tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def init(device: str = "auto") -> Dist:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, dev)


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def convert_norms(model: nn.Module, d: Dist) -> nn.Module:
    """BatchNorm -> SyncBatchNorm for multi-process CUDA runs (call before building the optimizer).

    PyTorch's SyncBatchNorm runs on GPUs only; on CPU (gloo) each process keeps its own BatchNorm
    statistics (SyncBatchNorm layers become BatchNorm2d) and DDP broadcasts rank 0's buffers at
    every forward, as plain DDP does.
    """
    if d.enabled and d.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if d.device.type != "cuda":
        return _plain_batchnorm(model)
    return model


def wrap(model: nn.Module, d: Dist) -> nn.Module:
    """DDP around `model` (already on its device and converted by `convert_norms`)."""
    if not d.enabled:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def _plain_batchnorm(module: nn.Module) -> nn.Module:
    """SyncBatchNorm -> BatchNorm2d (same parameters), for CPU processes."""
    if isinstance(module, nn.SyncBatchNorm):
        bn = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        bn.load_state_dict(module.state_dict())
        return bn.to(module.weight.device if module.affine else "cpu")
    for name, child in module.named_children():
        setattr(module, name, _plain_batchnorm(child))
    return module


def mean_over_ranks(value: float, d: Dist) -> float:
    """The mean of a scalar over all processes (for logging)."""
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return float(t.item()) / d.world
