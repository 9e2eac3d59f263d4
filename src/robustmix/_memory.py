"""Large CPU output buffers that page-fault 2 MiB at a time instead of 4 KiB.

A CPU tensor of tens of MB is a fresh ``mmap`` from the C allocator on every call (glibc maps
anything above its 32 MiB ceiling afresh and unmaps it on free), and its first write faults once
per 4 KiB page. On the VMs this project is measured on, that costs several times the write
itself: 77 MB (a B128x3x224² float32 batch) takes ~30 ms of faults against ~6 ms of copying,
a fifth of the Robustmix op. Advising the buffer ``MADV_HUGEPAGE`` before its first touch lets
the kernel back it with transparent huge pages where it is configured to honour the advice
(``/sys/kernel/mm/transparent_hugepage/enabled`` = ``madvise``, the common default; ``always``
needs no advice, ``never`` ignores it). torch has the same behind ``THP_MEM_ALLOC_ENABLE=1``,
but only for every allocation of the process and only when set before start-up, so the op asks
for it on its own few large outputs. Set ``ROBUSTMIX_HUGE_PAGES=0`` to turn it off.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Sequence
from functools import lru_cache

import torch
from torch import Tensor

__all__ = ["ENABLED", "MIN_BYTES", "empty_output", "huge_page_range"]

ENABLED = os.environ.get("ROBUSTMIX_HUGE_PAGES", "1") != "0"
MIN_BYTES = 8 << 20
"""Buffers from this size up are advised (smaller ones come from the allocator's reused heap)."""
_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14  # linux/mman.h, the same on every Linux architecture


@lru_cache(maxsize=1)
def _madvise() -> Callable[[int, int, int], int] | None:
    """libc's ``madvise``, or None where there is none to call (not Linux, no libc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):  # pragma: no cover - a Linux without a dynamic libc
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def huge_page_range(start: int, nbytes: int) -> tuple[int, int] | None:
    """The 2 MiB-aligned ``(address, length)`` inside ``[start, start + nbytes)``, if any.

    Only whole aligned huge pages inside the buffer are advised, so the advice never reaches
    memory the buffer does not own.
    """
    first = -(-start // _HUGE_PAGE) * _HUGE_PAGE
    last = (start + nbytes) // _HUGE_PAGE * _HUGE_PAGE
    return (first, last - first) if last > first else None


def empty_output(shape: Sequence[int], *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.empty(shape, dtype=, device=)``; a large CPU buffer is advised huge pages first.

    Advice is a hint: where the kernel declines it, or there is no ``madvise``, the buffer is an
    ordinary one. Nothing is written, so it must be fully overwritten like any ``torch.empty``.
    """
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    if ENABLED and out.device.type == "cpu" and out.numel() * out.element_size() >= MIN_BYTES:
        madvise, span = _madvise(), huge_page_range(out.data_ptr(), out.numel() * out.element_size())
        if madvise is not None and span is not None:
            madvise(span[0], span[1], _MADV_HUGEPAGE)  # a refusal (EINVAL: no THP) changes nothing
    return out
