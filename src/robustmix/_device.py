"""Device-agnostic helpers: small host tensors (parameters, permutations) moved to the batch's
device without a sync, and divisions that round the same on every device."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["divide_exactly_", "to_device"]


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``. A CPU tensor bound for CUDA goes through pinned memory with a
    non-blocking copy: from pageable memory the copy waits for the stream's queued work (a host
    sync per parameter), from pinned memory it is queued like a kernel."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def divide_exactly_(t: Tensor, divisor: float) -> Tensor:
    """``t / divisor`` in place, correctly rounded on every device.

    CUDA divides a float tensor by a Python number as a product with its reciprocal, one ulp off
    for many values (126 of the 256 float32 levels ``k / 255``), so 8-bit levels made on a GPU
    would differ from the CPU's and from NumPy's ``uint8 / 255.``. Divided by a device value,
    CUDA divides exactly; the CPU already does for float32 and float64.
    """
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
        return t.div_(divisor)
    return t.div_(torch.full((), divisor, dtype=t.dtype, device=t.device))
