"""torch.distributed plumbing: init from the ``torchrun`` environment, reductions, teardown.

A single process is the world-size-1 case of the same code path, so the trainer never branches
on "distributed or not" beyond asking :class:`DistContext`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistContext",
    "all_reduce_sum",
    "broadcast_buffers",
    "cleanup_distributed",
    "init_distributed",
    "resolve_device",
]


@dataclass(frozen=True)
class DistContext:
    """Who this process is: ``rank`` of ``world_size``, its ``device``, and whether we own the group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files, prints and shows progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, *, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; others as given."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available; use device='cpu'")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from exc


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Uses NCCL on CUDA and gloo on CPU. Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) this is a
    plain single-process context and no group is created.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank=local_rank)
    if world_size <= 1:
        return DistContext(rank=0, world_size=1, local_rank=0, device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
        owns = True
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=dev,
        owns_group=owns,
    )


def cleanup_distributed(ctx: DistContext) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: Tensor, ctx: DistContext) -> Tensor:
    """Sum ``values`` over all ranks (a no-op copy for a single process)."""
    out = values.detach().clone()
    if ctx.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def broadcast_buffers(module: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running stats) to every rank.

    DDP broadcasts buffers at the start of each forward, but each rank then updates them from its
    own shard, so after the last step they differ; this makes every rank evaluate and end with
    rank 0's model.
    """
    if not ctx.distributed:
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)
