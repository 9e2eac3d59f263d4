"""One thread's OpenMP team size, set through the OpenMP runtime that torch runs its CPU ops on.

torch has no per-thread control: ``torch.set_num_threads`` is process-wide (it also sets the
count that threads started later take). OpenMP's own ``omp_set_num_threads`` sets the calling
thread's count only (its ``nthreads-var``, by the OpenMP specification), which is what code that
spreads work over its own threads needs: there each thread's torch ops must run on that thread
alone. A parallel op in one of them would start a second OpenMP team on cores already taken, and
one in the caller leaves the caller's team spinning on those cores after it returns: a JPEG
round trip of 8 images at 224 px took ~1.9 ms right after a parallel torch op against ~0.9 ms
alone (2 cores, timed by hand).

Where no OpenMP runtime is found (another OS, a torch built without OpenMP) these are no-ops:
only speed depends on them, never values.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from functools import lru_cache

import torch

_RUNTIMES = ("libgomp", "libomp", "libiomp5")  # GNU (pip wheels on Linux), LLVM, Intel


@lru_cache(maxsize=1)
def _runtimes() -> tuple[ctypes.CDLL, ...]:
    """The OpenMP runtimes loaded in this process (read from ``/proc/self/maps``; none elsewhere)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = sorted({line.split()[-1] for line in maps if "/" in line and ".so" in line})
    except OSError:
        return ()
    found = []
    for path in paths:
        if not path.rsplit("/", 1)[-1].startswith(_RUNTIMES):
            continue
        try:
            lib = ctypes.CDLL(path)
            lib.omp_get_max_threads.restype = ctypes.c_int
            lib.omp_set_num_threads.argtypes = [ctypes.c_int]
        except (OSError, AttributeError):
            continue
        found.append(lib)
    return tuple(found)


def set_this_threads_count(n: int) -> None:
    """This thread's OpenMP team size for later torch ops; other threads keep theirs."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    torch.get_num_threads()  # torch's setup of this thread first: it would overwrite the count
    for lib in _runtimes():
        lib.omp_set_num_threads(n)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch's CPU ops inside run on the calling thread alone (no OpenMP team woken)."""
    before = torch.get_num_threads()
    set_this_threads_count(1)
    try:
        yield
    finally:
        set_this_threads_count(before)
