"""Large CPU output buffers that do not page-fault on every call.

A CPU tensor of tens of MB is a fresh ``mmap`` from the C allocator on every call (glibc maps
anything above its 32 MiB ceiling afresh and unmaps it on free), and its first write faults once
per 4 KiB page. On the VMs this project is measured on, that costs several times the write
itself: filling a fresh 77 MB buffer (a B128x3x224² float32 batch) took 31.8 ms against 3.8 ms
for a reused one (``benchmarks/mixing.py``, its buffer-pool table), a quarter of the op. torch has no caching allocator on the CPU, so the op keeps its own,
for its own few large buffers only (output, dtype conversions and the :class:`Scratch` of the
op's band products; also the outputs of ``functional.mixup`` and ``cutmix``, the corruptions'
chunked outputs, JPEG's buffers, shot noise's batch-sized temporaries, glass blur's float64 sums
and ``imagemagick_8bit``'s levels):

* a **pool** of host buffers lent by size class (quarter steps between powers of two, so a
  random cutoff's coefficient block finds a buffer; at most 25 % unused). A lent buffer is
  wrapped by ``torch.frombuffer`` through a fresh view object that only the tensor's storage
  holds; when the last tensor, view or autograd reference on it dies, that object dies and a
  finalizer puts the buffer back. So a buffer is never lent twice at once, and a training loop
  (which drops the previous batch before mixing the next) reuses the same pages every step.
  The pool owns at most ``ROBUSTMIX_BUFFER_POOL_MB`` (default 256; 0 turns it off), keeps at
  most ``MAX_IDLE_PER_CLASS`` idle buffers per class and drops idle ones of other classes
  before it grows past its cap (beyond it, buffers are ordinary tensors); ``POOL.clear()``
  drops every idle buffer.
* new buffers are advised ``MADV_HUGEPAGE`` before their first touch, so the kernel backs them
  with 2 MiB pages where it honours the advice (``transparent_hugepage/enabled`` = ``madvise``,
  the common default): 512x fewer faults. ``ROBUSTMIX_HUGE_PAGES=0`` turns it off. torch has the
  same behind ``THP_MEM_ALLOC_ENABLE=1``, for every allocation and only if set before start-up.
* a :class:`Scratch` per thread (:func:`lend_scratch`): one pooled buffer, kept between calls,
  that the op carves its 1-10 MB temporaries from, views 64-byte aligned as ``torch.empty``'s.

None changes a value: they only decide where the bytes live. One visible difference: a
pooled tensor's storage is not resizable (``resize_`` to a larger size raises), as for any
``torch.frombuffer`` tensor.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = ["ENABLED", "MAX_IDLE_PER_CLASS", "MIN_BYTES", "POOL", "BufferPool", "Scratch", "aligned", "empty_output",
           "give_back_scratch", "huge_page_range", "lend_scratch", "pool_bytes_from_env", "size_class"]

ENABLED = os.environ.get("ROBUSTMIX_HUGE_PAGES", "1") != "0"
MIN_BYTES = 4 << 20
"""Buffers from this size up are pooled and advised (smaller ones come from the allocator's heap).

4 MiB (8 MiB until 3ec1f5a): glibc's mmap threshold follows the largest block freed so far,
so below 8 MiB a buffer could still be a fresh mapping faulted in on every call, depending on
what else the process allocated. ``python benchmarks/revisions.py --base 3ec1f5a`` at the change,
B512x3x32^2 (6.3 MB): ``RobustMix(per_sample=True)`` 1.54x (1.47-1.62), ``MixUp`` 1.13x and
``CutMix`` 1.18x (quartiles on both sides of 1), the rest within noise (B256x1x28^2, 0.8 MB, is
below the threshold either way). The other side: a pooled buffer is not freed to the allocator, so
other code's temporaries of that size may be the fresh mappings instead (timm's Mixup beside
ours, ``benchmarks/peer_memory.py``)."""
_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14  # linux/mman.h, the same on every Linux architecture
_ALIGN = 64  # cache line / AVX-512 vector
MAX_IDLE_PER_CLASS = 2


def size_class(nbytes: int) -> int:
    """``nbytes`` rounded up to a quarter step between powers of two (e.g. 77 MB -> 80 MiB)."""
    if nbytes <= 4:
        return max(nbytes, 0)
    step = 1 << (nbytes.bit_length() - 3)  # a quarter of the power of two at or below nbytes
    return -(-nbytes // step) * step


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


def _advise_huge_pages(start: int, nbytes: int) -> None:
    madvise, span = _madvise(), huge_page_range(start, nbytes)
    if ENABLED and madvise is not None and span is not None:
        madvise(span[0], span[1], _MADV_HUGEPAGE)  # a refusal (EINVAL: no THP) changes nothing


def _new_host_buffer(nbytes: int) -> np.ndarray:
    """``nbytes`` of untouched host memory, 64-byte aligned, advised huge pages."""
    raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
    offset = -raw.ctypes.data % _ALIGN
    buf = raw[offset : offset + nbytes]
    _advise_huge_pages(buf.ctypes.data, nbytes)
    return buf


class BufferPool:
    """Host buffers lent by size class and given back when the last tensor on them dies."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._free: dict[int, list[np.ndarray]] = {}
        self._owned = 0  # bytes of every buffer the pool made and has not dropped, lent or free
        self._retired = False  # set in a forked child: buffers coming back are dropped
        # Reentrant: a garbage collection inside the lock can finalize a loan, which gives back.
        self._lock = threading.RLock()

    @property
    def owned_bytes(self) -> int:
        return self._owned

    def lend(self, nbytes: int) -> np.ndarray | None:
        """A view of ``nbytes`` on a free buffer of its size class (new if none is free), or
        None past the cap.

        The view is what the caller's tensor must hold (``torch.frombuffer``): when it dies, the
        buffer returns to the pool.
        """
        cls = size_class(nbytes)
        with self._lock:
            free = self._free.get(cls)
            buf = free.pop() if free else None
            if buf is None:
                self._make_room(cls)
                if self._owned + cls > self.max_bytes:
                    return None
                self._owned += cls
        if buf is None:
            buf = _new_host_buffer(cls)
        loan = buf[:nbytes]
        finalizer = weakref.finalize(loan, self._give_back, buf)
        finalizer.atexit = False
        return loan

    def _make_room(self, nbytes: int) -> None:
        """Drop idle buffers (other sizes first met, none lent) until ``nbytes`` more fit."""
        for size in list(self._free):
            while self._free[size] and self._owned + nbytes > self.max_bytes:
                self._free[size].pop()
                self._owned -= size
            if not self._free[size]:
                del self._free[size]

    def _give_back(self, buf: np.ndarray) -> None:
        if self._retired:
            return
        with self._lock:
            free = self._free.setdefault(buf.nbytes, [])
            if len(free) < MAX_IDLE_PER_CLASS:
                free.append(buf)
            else:
                self._owned -= buf.nbytes

    def clear(self) -> None:
        """Drop every idle buffer (lent ones return, and are kept, when their tensors die), and
        first the calling thread's kept :class:`Scratch` (idle between calls too)."""
        _THREAD.scratch = None  # its buffer comes back to its pool now, and goes with the rest
        with self._lock:
            for size, bufs in self._free.items():
                self._owned -= size * len(bufs)
            self._free.clear()


def pool_bytes_from_env(value: str | None) -> int:
    """The pool's cap from ``ROBUSTMIX_BUFFER_POOL_MB`` (MiB; unset: 256, 0: off)."""
    if value is None:
        return 256 << 20
    try:
        mib = int(value)
    except ValueError:
        mib = -1
    if mib < 0:
        raise ValueError(f"ROBUSTMIX_BUFFER_POOL_MB must be a non-negative whole number of MiB (0 turns the "
                         f"buffer pool off), got {value!r}")
    return mib << 20


POOL = BufferPool(pool_bytes_from_env(os.environ.get("ROBUSTMIX_BUFFER_POOL_MB")))


def _reset_pool_in_child() -> None:
    # A forked child (DataLoader worker) starts with an empty pool and a fresh lock: the parent's
    # lock may have been held by another thread at the fork, and its buffers belong to the parent.
    # The parent's pool is retired without its lock: the child has one thread right after the fork.
    global POOL
    POOL._retired = True
    POOL._free = {}
    POOL = BufferPool(POOL.max_bytes)
    _THREAD.scratch = None  # the forking thread's, a loan of the parent's pool


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool_in_child)


def empty_output(shape: Sequence[int], *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.empty(shape, dtype=, device=)``; a large CPU buffer comes from the pool.

    Like any ``torch.empty``, the contents are arbitrary (a reused buffer holds an earlier
    call's bytes): the caller overwrites every element.
    """
    shape = tuple(shape)
    numel = math.prod(shape)
    nbytes = numel * dtype.itemsize
    if torch.device(device).type != "cpu" or nbytes < MIN_BYTES or torch.compiler.is_compiling():
        # (under torch.compile the graph owns its buffers: host pointers and finalizers have no place)
        return torch.empty(shape, dtype=dtype, device=device)
    loan = POOL.lend(nbytes) if POOL.max_bytes > 0 else None
    if loan is None:
        out = torch.empty(shape, dtype=dtype, device=device)
        _advise_huge_pages(out.data_ptr(), nbytes)
        return out
    return torch.frombuffer(loan, dtype=dtype, count=numel).view(shape)


def aligned(t: Tensor) -> bool:
    """Whether ``t``'s data starts on a 64-byte boundary, as ``torch.empty``'s and the pool's do."""
    return t.data_ptr() % _ALIGN == 0


class Scratch:
    """A loop's temporaries carved in turn from one pooled CPU buffer.

    A chunked loop makes the same few temporaries (band products, gathered coefficients) on
    every chunk and every call. At 1-4 MB each they sit around glibc's mmap threshold, which
    moves with what the process freed before, so depending on the process they are fresh
    mappings faulted in on every call. ``python benchmarks/op_faults.py --base fae4c16 --runs 6``
    (B512x3x32^2 Robustmix, six fresh processes): the op before this made 121-261 page faults a
    call in five and 1,376 in one (8.6 ms a call against 5.1 ms), the op with its scratch none.
    Views of one buffer lent by :data:`POOL` (at least :data:`MIN_BYTES`, so it is always
    pooled) reuse the same pages in every process.

    :meth:`keep` takes a view for the whole call; :meth:`take` one until the next :meth:`reset`.
    Every view starts on a 64-byte boundary, as ``torch.empty``'s memory does: BLAS results can
    depend on where the output starts (a float64 ``bmm`` into an output 8 bytes off differs in
    the last bits). ``numel`` is what the views need; room for the alignment of a few views is
    added. A request that does not fit (or in another dtype) gets an ordinary ``torch.empty``,
    so a wrong size estimate costs speed, never values. The caller overwrites every element.
    """

    _ALIGNED_VIEWS = 8  # views per call whose alignment padding the buffer has room for

    def __init__(self, numel: int, dtype: torch.dtype) -> None:
        self._align = max(1, _ALIGN // dtype.itemsize)
        self._flat = empty_output((max(self._padded(numel), -(-MIN_BYTES // dtype.itemsize)),), dtype=dtype, device="cpu")
        self._kept = self._used = 0
        self._top = self._flat.numel()

    def _padded(self, numel: int) -> int:
        return numel + self._ALIGNED_VIEWS * self._align

    def fits(self, numel: int, dtype: torch.dtype) -> bool:
        """Room for ``numel`` of ``dtype``, writable here (a buffer made under
        ``torch.inference_mode`` cannot be written outside it)."""
        return (
            dtype == self._flat.dtype
            and self._padded(numel) <= self._flat.numel()
            and (torch.is_inference_mode_enabled() or not self._flat.is_inference())
        )

    def take(self, shape: Sequence[int], dtype: torch.dtype | None = None, *, from_end: bool = False) -> Tensor:
        """A view of ``shape``; ``from_end``: from the buffer's far end (so that the next views
        from the start land where the previous pass's did, still in cache)."""
        shape = tuple(shape)
        numel = math.prod(shape)
        if from_end:
            start = (self._top - numel) // self._align * self._align
        else:
            start = -(-self._used // self._align) * self._align  # _flat itself starts aligned
        if (dtype is not None and dtype != self._flat.dtype) or start < self._used or start + numel > self._top:
            return torch.empty(shape, dtype=dtype or self._flat.dtype, device="cpu")
        if from_end:
            self._top = start
        else:
            self._used = start + numel
        strides = [1] * len(shape)
        for i in range(len(shape) - 2, -1, -1):
            strides[i] = strides[i + 1] * shape[i + 1]
        return self._flat.as_strided(shape, strides, start)  # one op: slicing and viewing cost two

    def keep(self, shape: Sequence[int]) -> Tensor:
        view = self.take(shape)
        self._kept = self._used
        return view

    def reset(self) -> None:
        """Free every view but the kept ones."""
        self._used = self._kept
        self._top = self._flat.numel()

    def clear(self) -> None:
        """Free every view, the kept ones too."""
        self._kept = 0
        self.reset()


_THREAD = threading.local()


def lend_scratch(numel: int, dtype: torch.dtype) -> Scratch:
    """An empty :class:`Scratch` with room for ``numel``: this thread's last one given back
    (:func:`give_back_scratch`) if it is large enough, else a new one.

    Kept between calls, a scratch is not wrapped anew from a pool loan on every call (a
    measurable cost at small batches). A scratch that is never given back (an exception on the
    way) is simply not reused; a call nested in another gets its own.
    """
    held = getattr(_THREAD, "scratch", None)
    _THREAD.scratch = None
    if held is None or POOL.max_bytes == 0 or not held.fits(numel, dtype):  # pool off: none kept
        return Scratch(numel, dtype)
    held.clear()
    return held


def give_back_scratch(scratch: Scratch) -> None:
    """Keep ``scratch`` for this thread's next :func:`lend_scratch` (not with the pool off)."""
    if POOL.max_bytes > 0:
        _THREAD.scratch = scratch
