"""Shared timing method of the benchmark scripts: warm-up, repeats, device sync, median and IQR.

Every script times callables with :func:`measure` (or :func:`measure_interleaved` when small
differences between variants matter), records :func:`collect_metadata` next to the numbers, and
writes one JSON file with :func:`write_result`. The statistics are plain order statistics so a
reader can recompute them from the raw ``times_s`` kept in the JSON.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustmix import freq
from robustmix._io import write_json

__all__ = [
    "RESULTS_DIR",
    "Timing",
    "add_common_args",
    "apply_threads",
    "collect_metadata",
    "default_out_path",
    "geometric_mean",
    "machine_probe",
    "measure",
    "measure_interleaved",
    "resolve_device",
    "summarize_times",
    "sync",
    "write_result",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# Statistics


def summarize_times(times_s: Sequence[float]) -> dict[str, float]:
    """Median, quartiles (linear interpolation, numpy's default), IQR, min and max, in seconds."""
    if len(times_s) == 0:
        raise ValueError("times_s must hold at least one measurement, got an empty sequence")
    arr = np.asarray(times_s, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"times_s must be finite non-negative seconds, got {list(times_s)!r}")
    q25, median, q75 = np.percentile(arr, [25.0, 50.0, 75.0])
    return {
        "median_s": float(median),
        "q25_s": float(q25),
        "q75_s": float(q75),
        "iqr_s": float(q75 - q25),
        "min_s": float(arr.min()),
        "max_s": float(arr.max()),
    }


def geometric_mean(values: Sequence[float]) -> float:
    """Geometric mean of positive ratios (the right average for speedups)."""
    if len(values) == 0:
        raise ValueError("values must hold at least one ratio, got an empty sequence")
    if any(not v > 0 or math.isinf(v) for v in values):
        raise ValueError(f"values must be finite positive ratios, got {list(values)!r}")
    return math.exp(sum(math.log(v) for v in values) / len(values))


@dataclass(frozen=True)
class Timing:
    """Raw times of one measured case and their summary."""

    times_s: tuple[float, ...]
    warmup: int
    stats: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stats", summarize_times(self.times_s))

    @property
    def median_s(self) -> float:
        return self.stats["median_s"]

    @property
    def median_ms(self) -> float:
        return 1e3 * self.stats["median_s"]

    def to_dict(self) -> dict[str, Any]:
        """JSON form: milliseconds for reading, raw seconds for recomputing."""
        ms = {k.removesuffix("_s") + "_ms": 1e3 * v for k, v in self.stats.items()}
        return {**ms, "repeats": len(self.times_s), "warmup": self.warmup, "times_s": list(self.times_s)}


# --------------------------------------------------------------------------------------------
# Timing


def sync(device: torch.device | str) -> None:
    """Wait for queued kernels: without it a CUDA timing measures only the launch."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def minor_faults() -> int:
    """This process's minor page faults so far (``getrusage``): fresh memory touched page by page."""
    import resource  # POSIX only, like the scripts that count faults

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def machine_probe(repeats: int = 5) -> dict[str, float]:
    """Two CPU rates that show what state a shared VM is in when a benchmark runs: a float32
    GEMM of the issue's reference shape, (86016 x 224) @ (224 x 112), into a preallocated output,
    and a copy of 128 MB (read + write GB/s). Taken at the start and end of a run, they
    tell a reader whether a table was measured in a slow phase of the machine.
    """
    a, b = torch.randn(86016, 224), torch.randn(224, 112)
    out = torch.empty(86016, 112)
    gemm = measure(lambda: torch.mm(a, b, out=out), warmup=1, repeats=repeats)
    src = torch.empty(1 << 25)  # 128 MB of float32
    dst = torch.empty_like(src)
    src.fill_(1.0)
    copy = measure(lambda: dst.copy_(src), warmup=1, repeats=repeats)
    return {"gemm_fp32_gflops_per_s": 2 * 86016 * 224 * 112 / gemm.median_s / 1e9,
            "copy_gb_per_s": 2 * src.numel() * 4 / copy.median_s / 1e9}


def _check_counts(warmup: int, repeats: int, min_repeats: int, max_time_s: float | None) -> None:
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if isinstance(min_repeats, bool) or not isinstance(min_repeats, int) or not 1 <= min_repeats:
        raise ValueError(f"min_repeats must be an int >= 1, got {min_repeats!r}")
    if max_time_s is not None and not max_time_s > 0:
        raise ValueError(f"max_time_s must be a positive number of seconds or None, got {max_time_s!r}")


def measure(
    fn: Callable[[Any], Any] | Callable[[], Any],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 2,
    repeats: int = 10,
    setup: Callable[[], Any] | None = None,
    max_time_s: float | None = None,
    min_repeats: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Time ``fn`` after ``warmup`` untimed calls; each timed call is bracketed by device syncs.

    Args:
        fn: the work. Called as ``fn()``, or ``fn(setup())`` when ``setup`` is given.
        device: the device whose queue is synchronised before and after each call.
        warmup: untimed calls first (allocator, caches, lazy kernel selection).
        repeats: timed calls at most.
        setup: builds a fresh argument per call outside the timed region (e.g. a clone of the
            batch for a peer that mutates its input in place).
        max_time_s: stop early once the timed calls add up to this many seconds, but only after
            ``min_repeats`` calls; bounds the run for slow peers (the count is recorded).
        min_repeats: timed calls always made, even past ``max_time_s``.
        clock: the timer (a test hook).
    """
    _check_counts(warmup, repeats, min_repeats, max_time_s)

    def call() -> float:
        arg = setup() if setup is not None else None
        sync(device)
        start = clock()
        fn(arg) if setup is not None else fn()
        sync(device)
        return clock() - start

    for _ in range(warmup):
        call()
    times: list[float] = []
    total = 0.0
    while len(times) < repeats:
        t = call()
        times.append(t)
        total += t
        if max_time_s is not None and total >= max_time_s and len(times) >= min(min_repeats, repeats):
            break
    return Timing(times_s=tuple(times), warmup=warmup)


def measure_blocks(
    cases: Mapping[str, Callable[..., Any]],
    *,
    rounds: int,
    repeats: int,
    warmup: int,
    device: torch.device | str = "cpu",
    setups: Mapping[str, Callable[[], Any]] | None = None,
) -> dict[str, list[Timing]]:
    """Time each case in its own blocks, round-robin (A B A B ...): ``rounds`` blocks a case, each
    ``warmup`` untimed then ``repeats`` timed calls (:func:`measure`, with the case's ``setups``
    entry if any). One :class:`Timing` per block, in order.

    Blocks, not single interleaved calls: two forms that free and take buffers of different
    sizes page-fault each other's fresh memory when their calls alternate (the allocator would
    be timed, not the forms), while consecutive blocks still see the same drift of the machine.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    setups = setups or {}
    blocks: dict[str, list[Timing]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            blocks[name].append(measure(fn, device=device, warmup=warmup, repeats=repeats, setup=setups.get(name)))
    return blocks


def measure_interleaved(
    cases: Mapping[str, Callable[[], Any]],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 2,
    repeats: int = 10,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Time several variants round-robin (A, B, C, A, B, C, ...).

    Slow drift of a shared machine (frequency scaling, a neighbour's job) then hits every
    variant alike, so a few-percent difference between them means something.
    """
    _check_counts(warmup, repeats, 1, None)
    if not cases:
        raise ValueError("cases must name at least one callable, got an empty mapping")
    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(warmup + repeats):
        for name, fn in cases.items():
            sync(device)
            start = clock()
            fn()
            sync(device)
            if round_ >= warmup:
                times[name].append(clock() - start)
    return {name: Timing(times_s=tuple(t), warmup=warmup) for name, t in times.items()}


# --------------------------------------------------------------------------------------------
# Metadata and results


def dist_version(dist: str) -> str | None:
    """Installed version of distribution ``dist`` (a peer, recorded with its result), or None."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    # Read-only; a source tarball without .git simply records None.
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=_REPO_ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def _cpu_model(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The vector extensions that change which CPU kernels run (and so the numbers): the same VM
# image has landed on AVX-512 and on AVX2-only hosts between sessions.
_ISA_FLAGS = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16"))


def _cpu_isa(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str | None:
    """The relevant vector extensions of the CPU, e.g. ``"AVX2, AVX-512"`` (None off Linux)."""
    flags = freq._cpu_flags(os.fspath(cpuinfo))  # the flags the library itself dispatches on
    if flags is None:
        return None
    return ", ".join(name for flag, name in _ISA_FLAGS if flag in flags) or "none of AVX2/AVX-512"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {_cpu_model()}"


def collect_metadata(device: torch.device | str, *, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to judge a number later: commit, versions, threads, hardware, date."""
    device = torch.device(device)
    meta: dict[str, Any] = {
        "commit": _git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "cpu_isa": _cpu_isa(),
        "device": str(device),
        "device_name": _device_name(device),
        "platform": platform.platform(),
        "argv": list(sys.argv),
    }
    if device.type == "cuda":
        meta["cuda"] = torch.version.cuda
    if extra:
        meta.update(extra)
    return meta


def default_out_path(script: str, device: torch.device | str, *, quick: bool = False) -> Path:
    """``benchmarks/results/<script>-<device type>.json``; smoke runs go to the temp dir instead,
    so a ``--quick`` number never lands next to the real results."""
    name = f"{script}-{torch.device(device).type}.json"
    if quick:
        return Path(tempfile.gettempdir()) / "robustmix-bench-quick" / name
    return RESULTS_DIR / name


def write_result(path: str | os.PathLike, result: Mapping[str, Any]) -> Path:
    """Write the result JSON atomically (a killed run leaves the previous file intact)."""
    return write_json(path, dict(result))


# --------------------------------------------------------------------------------------------
# Command line


def add_common_args(parser: argparse.ArgumentParser, *, repeats: int) -> argparse.ArgumentParser:
    """``--device``, ``--repeats``, ``--quick``, ``--out``, ``--threads`` shared by every script."""
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to run (default cpu)")
    parser.add_argument("--repeats", type=int, default=repeats, help=f"timed calls per case (default {repeats})")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: a smoke run, not a result")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default benchmarks/results/<script>-<device>.json)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    return parser


def resolve_device(name: str) -> torch.device:
    """The device to benchmark on; CUDA must actually be there."""
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch.cuda.is_available() is False")
    return torch.device(name)


def apply_threads(threads: int | None) -> None:
    """Set torch's intra-op threads when asked (recorded in the metadata either way)."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
