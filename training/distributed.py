"""Data-parallel training through `torchrun` and torch.distributed (gloo on CPU, NCCL on CUDA).

    torchrun --nproc-per-node 2 -m pipeline.cli train ...     # or: torchrun --nproc-per-node 2 $(which ssn) train

Global-batch semantics: N processes with per-process batch b train exactly like one process with batch N*b.
- data: `DistributedSampler` (rank r takes positions r, r+N, ... of the epoch's global order);
- synthetic anomalies are keyed by the global position (training/generator.py);
- loss means divide by global counts (training/losses.py), DDP averages the gradients;
- batch norm in the heads uses statistics of the global batch: `torch.nn.SyncBatchNorm` on CUDA, and on CPU
  (where SyncBatchNorm is not available) `GlobalBatchNorm2d`, which all-reduces the per-channel sums with
  torch.distributed's differentiable functional collective.
Only rank 0 writes files and shows a progress bar.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes in the environment; a plain run is rank 0 of 1."""
    if not launched_by_torchrun():
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return info


def process_device(requested: str, info: DistInfo) -> torch.device:
    """cuda -> this process's GPU (LOCAL_RANK) under torchrun; cpu stays cpu."""
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but no CUDA device is available")
        device = torch.device("cuda", info.local_rank if launched_by_torchrun() else (device.index or 0))
        torch.cuda.set_device(device)
    return device


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def sum_across(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of `tensor` over processes (a copy; no autograd)."""
    out = tensor.clone()
    if info.enabled:
        dist.all_reduce(out)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the batches of all processes (any device, any backend).

    Same numbers as one BatchNorm2d over the concatenated global batch: mean and biased variance for the
    normalisation, unbiased variance for the running estimate, momentum update of the running buffers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        # x: [B, C, H, W]; per-channel sum, sum of squares and count, summed over processes (differentiable)
        from torch.distributed._functional_collectives import all_reduce

        xf = x.float()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)
        stats = torch.cat([xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3)), count])
        stats = all_reduce(stats, "sum", dist.group.WORLD)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp(min=0)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        return (y * self.weight[None, :, None, None] + self.bias[None, :, None, None]).to(x.dtype)


def global_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm2d in `module` by the global-statistics version for `device` (in place)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new.to(child.weight.device))
        else:
            global_batchnorm(child, device)
    return module


def plain_batchnorm(module: nn.Module) -> nn.Module:
    """Undo `global_batchnorm` (same state-dict keys and values), e.g. before saving or evaluating."""
    for name, child in module.named_children():
        if isinstance(child, (nn.SyncBatchNorm, GlobalBatchNorm2d)):
            new = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new.to(child.weight.device))
        else:
            plain_batchnorm(child)
    return module


def wrap(module: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DistributedDataParallel around the training forward when running under torchrun."""
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # batch-norm buffers are identical on every rank (global statistics): no per-forward broadcast needed
    return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)
