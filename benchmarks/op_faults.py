"""Does the op (or a corruption) page-fault on the CPU, and what does that cost? Fresh processes.

A diagnosis, printed. Whether a temporary of 1-4 MB is reused memory or a fresh mapping, faulted
in page by page, depends on glibc's mmap threshold, which moves with whatever the process freed
before, so the same call can fault in one process and not in the next. Each run here is a new
subprocess (a fresh allocator) that times ``robustmix.functional.robustmix`` on each shape (c=0.5,
or with ``--per-sample`` per-sample weights and cutoffs drawn once; a fixed partner permutation)
and counts its minor page faults (``getrusage``); with ``--corruptions NAME,...`` it times those
corruptions (severity 3, 8-bit images) instead. With ``--base REV`` every process also times
that revision (``revisions.import_revision``), alternating with the working tree's.

    python benchmarks/op_faults.py
    python benchmarks/op_faults.py --base fae4c16 --runs 6 --shapes 512x3x32x32,300x3x32x32
    python benchmarks/op_faults.py --per-sample --shapes 512x3x32x32
    python benchmarks/op_faults.py --corruptions glass_blur,gaussian_noise --base fae4c16
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import _harness as H


def _op_calls(module: Any, shape: tuple[int, ...], per_sample: bool) -> Callable[[], object]:
    """One call of ``module``'s op on a fixed batch of ``shape`` (c=0.5 or per-sample draws)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    y = torch.randint(0, 10, (shape[0],), generator=g)
    n = shape[0]
    kw = {"lam_low": 0.7, "lam_high": 0.2, "cutoff": 0.5, "index": torch.randperm(n, generator=g), "num_classes": 10}
    if per_sample:  # one draw, as RobustMix(per_sample=True) makes each call
        kw.update(lam_low=torch.rand(n, generator=g), lam_high=torch.rand(n, generator=g), cutoff=torch.rand(n, generator=g))
    op = importlib.import_module(module.__name__ + ".functional").robustmix
    return lambda: op(x, y, **kw)


def _corruption_calls(module: Any, shape: tuple[int, ...], name: str) -> Callable[[], object]:
    """One call of ``module``'s ``corrupt`` (severity 3) on 8-bit images of ``shape``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, shape, generator=g).float().div_(255)
    seeded = torch.Generator().manual_seed(1)
    corrupt = importlib.import_module(module.__name__ + ".corruptions").corrupt
    return lambda: corrupt(x, name, 3, generator=seeded)


def run_child(
    shapes: list[tuple[int, ...]], base: str | None, rounds: int, per_sample: bool, corruptions: list[str] | None = None
) -> dict[str, dict[str, list[float]]]:
    """In this process: per case and side, median ms a call and mean faults a call. A case is a
    shape of the op, or with ``corruptions`` a corruption on each shape."""
    import robustmix

    modules = {"tree": robustmix}
    if base:
        sys.path.insert(0, str(Path(__file__).parent))
        from revisions import import_revision

        modules["base"] = import_revision(base, Path(tempfile.mkdtemp()))
    result: dict[str, dict[str, list[float]]] = {}
    for shape in shapes:
        for name in corruptions or [None]:
            calls = {side: _op_calls(m, shape, per_sample) if name is None else _corruption_calls(m, shape, name)
                     for side, m in modules.items()}
            times: dict[str, list[float]] = {side: [] for side in calls}
            faulted: dict[str, list[int]] = {side: [] for side in calls}
            for call in calls.values():
                call()  # warm-up
            for _ in range(rounds):
                for side, call in calls.items():
                    f0, t0 = H.minor_faults(), time.perf_counter()
                    call()
                    times[side].append(time.perf_counter() - t0)
                    faulted[side].append(H.minor_faults() - f0)
            label = "B" + "x".join(map(str, shape)) + ("" if name is None else f" {name}")
            result[label] = {side: [1e3 * float(np.median(times[side])), float(np.mean(faulted[side]))] for side in calls}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", help="comma-separated NxCxHxW batches (default 512x3x32x32,300x3x32x32,256x1x28x28; "
                                         "with --corruptions 8x3x224x224)")
    parser.add_argument("--runs", type=int, default=4, help="fresh processes (default 4)")
    parser.add_argument("--rounds", type=int, default=40, help="timed calls per side and case (default 40)")
    parser.add_argument("--base", help="also time this git revision in each process")
    parser.add_argument("--per-sample", action="store_true", help="per-sample weights and cutoffs ~ U[0, 1] (one draw)")
    parser.add_argument("--corruptions", metavar="NAME[,NAME...]", help="time these corruptions (severity 3) instead of the op")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shapes_arg = args.shapes or ("8x3x224x224" if args.corruptions else "512x3x32x32,300x3x32x32,256x1x28x28")
    try:
        shapes = [tuple(int(v) for v in s.split("x")) for s in shapes_arg.split(",")]
    except ValueError:
        parser.error(f"--shapes: expected NxCxHxW integers, got {shapes_arg!r}")
    if any(len(s) != 4 or min(s) < 1 for s in shapes) or args.runs < 1 or args.rounds < 1:
        parser.error("--shapes needs 4 positive sizes each; --runs and --rounds must be >= 1")
    names = args.corruptions.split(",") if args.corruptions else None
    if names:
        from robustmix.corruptions import ALL_CORRUPTIONS

        unknown = sorted(set(names) - set(ALL_CORRUPTIONS))
        if unknown:
            parser.error(f"--corruptions: unknown {unknown}; known: {', '.join(ALL_CORRUPTIONS)}")
    if args.child:
        print(json.dumps(run_child(shapes, args.base, args.rounds, args.per_sample, names)))
        return 0
    what = f"corruptions ({args.corruptions}), severity 3" if names else (
        f"robustmix op, {'per-sample cutoffs' if args.per_sample else 'c=0.5'}")
    print(f"{what}, {torch.get_num_threads()} torch threads; each run a fresh process: "
          "median ms a call, minor page faults a call")
    child = [sys.executable, __file__, "--shapes", shapes_arg, "--rounds", str(args.rounds), "--child"]
    child += (["--per-sample"] if args.per_sample else []) + (["--corruptions", args.corruptions] if names else [])
    for run in range(args.runs):
        out = subprocess.run(child + (["--base", args.base] if args.base else []),
                             capture_output=True, text=True, check=True).stdout
        for label, sides in json.loads(out.strip().splitlines()[-1]).items():
            cells = "   ".join(f"{side} {ms:8.3f} ms {n:6.0f} faults" for side, (ms, n) in sides.items())
            print(f"  run {run + 1}  {label:<30} {cells}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
