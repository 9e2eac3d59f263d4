"""Where the Robustmix op's time goes on a GPU: host syncs, CUDA-graph memory, eager vs graphs.

Also the mixers with and without ``check_values`` (one host sync a call, or none), each timed
alone and queued 20 calls back to back.

Not a peer comparison (``mixing.py`` is): a diagnosis, printed, for the figures the docs quote
about the CUDA path (syncs per call, the graphs' memory, the kernels' share of a call, and the
kernels with the most GPU time, graph and eager). Needs CUDA; writes nothing.

    python benchmarks/cuda_overhead.py            # B128x3x224^2 bfloat16 and B256x1x28^2 float32
"""

from __future__ import annotations

import argparse
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

import _harness as H
import robustmix.functional as F
from robustmix import MixUp, RobustMix, _graphs

CASES = (((128, 3, 224, 224), torch.bfloat16), ((256, 1, 28, 28), torch.float32))


def median_ms(fn: Callable[[], Any], repeats: int = 30) -> float:
    return H.measure(fn, device="cuda", warmup=5, repeats=repeats).median_ms


def queued_ms(fn: Callable[[], Any], calls: int = 20) -> float:
    """Time a call when ``calls`` of them are queued back to back and synced once (as in a
    training loop, where the host runs ahead of the GPU unless a call syncs)."""
    return median_ms(lambda: [fn() for _ in range(calls)], repeats=10) / calls


def host_syncs(fn: Callable[[], Any]) -> list[str]:
    """Where ``fn`` synchronised with the GPU (torch's sync debug mode), as robustmix frames."""
    seen: list[str] = []

    def show(*_: Any, **__: Any) -> None:
        frames = [f"{f.filename.split('/')[-1]}:{f.lineno}:{f.name}"
                  for f in traceback.extract_stack()[:-1] if "robustmix" in f.filename]
        seen.append(" <- ".join(reversed(frames[-4:])) or "(outside robustmix)")

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode(1)
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return seen


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("cuda_overhead.py needs a CUDA device; none is available here")
    for shape, dtype in CASES:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g).to("cuda", dtype)
        y = torch.randint(0, 1000, (shape[0],), generator=g).to("cuda")
        index = torch.randperm(shape[0], generator=g).to("cuda")
        mixer, unchecked = RobustMix(1000, seed=0), RobustMix(1000, seed=0, check_values=False)
        mixup, mixup_unchecked = MixUp(1000, seed=0), MixUp(1000, seed=0, check_values=False)
        per_sample = RobustMix(1000, seed=0, per_sample=True)  # eager on CUDA: per-sample tensors
        calls = {
            "op": lambda x=x, y=y, index=index: F.robustmix(
                x, y, lam_low=0.7, lam_high=0.2, cutoff=0.5, index=index, num_classes=1000),
            "RobustMix": lambda x=x, y=y, mixer=mixer: mixer(x, y),
            "RobustMix check_values=False": lambda x=x, y=y, mixer=unchecked: mixer(x, y),
            "RobustMix per_sample=True": lambda x=x, y=y, mixer=per_sample: mixer(x, y),
            "MixUp": lambda x=x, y=y, mixer=mixup: mixer(x, y),
            "MixUp check_values=False": lambda x=x, y=y, mixer=mixup_unchecked: mixer(x, y),
        }  # fmt: skip
        label = f"{'x'.join(map(str, shape))} {str(dtype).removeprefix('torch.')}"
        _graphs.clear()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        calls["op"]()
        torch.cuda.synchronize()
        print(f"{label}: graph buffers and pool {(torch.cuda.memory_allocated() - before) / 2**20:.1f} MiB")
        for graphs in (False, True):
            _graphs.ENABLED = graphs
            for name, fn in calls.items():
                mode = "graphs" if graphs else "eager"
                syncs = host_syncs(fn)
                print(f"{label} {mode:6s} {name:28s} median {median_ms(fn):.3f} ms, {queued_ms(fn):.3f} ms a call "
                      f"queued back to back, {len(syncs)} host sync(s)")
                for where in syncs:
                    print(f"    sync at {where}")
        for graphs in (True, False):
            _graphs.ENABLED = graphs
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(PROFILED_CALLS):
                    calls["op"]()
                torch.cuda.synchronize()
            mode = "graphs" if graphs else "eager"
            print(f"{label} {mode}: the op's kernels take {gpu_ms_per_call(prof.key_averages()):.3f} ms of GPU "
                  "time a call (torch.profiler); the largest:")
            for name, count, ms in top_kernels(prof.key_averages()):
                print(f"    {ms:7.3f} ms  x{count:<3d} {name}")
        _graphs.ENABLED = True


PROFILED_CALLS = 5
TOP_KERNELS = 12


def gpu_ms_per_call(events: Any) -> float:
    """GPU time of the profiled calls (kernels and copies), per call, in ms."""
    return sum(e.self_device_time_total for e in events) / PROFILED_CALLS / 1e3


def top_kernels(events: Any) -> list[tuple[str, int, float]]:
    """``(name, launches a call, ms a call)`` of the profiled events with the most GPU time: what
    to look at first to shorten the op's GPU work."""
    timed = sorted((e for e in events if e.self_device_time_total > 0), key=lambda e: -e.self_device_time_total)
    return [(e.key[:90], e.count // PROFILED_CALLS, e.self_device_time_total / PROFILED_CALLS / 1e3)
            for e in timed[:TOP_KERNELS]]


if __name__ == "__main__":
    main()
