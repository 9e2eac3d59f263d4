"""Moving small host tensors (parameters, permutations) to the batch's device without a sync."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["to_device"]


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``. A CPU tensor bound for CUDA goes through pinned memory with a
    non-blocking copy: from pageable memory the copy waits for the stream's queued work (a host
    sync per parameter), from pinned memory it is queued like a kernel."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
