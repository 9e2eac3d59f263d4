"""Does the op page-fault on the CPU, and what does that cost? Each run in a fresh process.

A diagnosis, printed. Whether a temporary of 1-4 MB is reused memory or a fresh mapping, faulted
in page by page, depends on glibc's mmap threshold, which moves with whatever the process freed
before, so the same call can fault in one process and not in the next. Each run here is a new
subprocess (a fresh allocator) that times ``robustmix.functional.robustmix`` on each shape (c=0.5,
or with ``--per-sample`` per-sample weights and cutoffs drawn once; a fixed partner permutation)
and counts its minor page faults (``getrusage``). With ``--base REV`` every process also times
that revision of the op (``revisions.import_revision``), alternating with the working tree's.

    python benchmarks/op_faults.py
    python benchmarks/op_faults.py --base fae4c16 --runs 6 --shapes 512x3x32x32,300x3x32x32
    python benchmarks/op_faults.py --per-sample --shapes 512x3x32x32
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def run_child(
    shapes: list[tuple[int, ...]], base: str | None, rounds: int, per_sample: bool
) -> dict[str, dict[str, list[float]]]:
    """In this process: per side and shape, median ms a call and mean faults a call."""
    import robustmix.functional

    sides = {"tree": robustmix.functional.robustmix}
    if base:
        sys.path.insert(0, str(Path(__file__).parent))
        from revisions import import_revision

        sides["base"] = import_revision(base, Path(tempfile.mkdtemp())).functional.robustmix
    result: dict[str, dict[str, list[float]]] = {}
    for shape in shapes:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g)
        y = torch.randint(0, 10, (shape[0],), generator=g)
        n = shape[0]
        kw = {"lam_low": 0.7, "lam_high": 0.2, "cutoff": 0.5, "index": torch.randperm(n, generator=g), "num_classes": 10}
        if per_sample:  # one draw, as RobustMix(per_sample=True) makes each call
            kw.update(lam_low=torch.rand(n, generator=g), lam_high=torch.rand(n, generator=g), cutoff=torch.rand(n, generator=g))
        times: dict[str, list[float]] = {side: [] for side in sides}
        faulted: dict[str, list[int]] = {side: [] for side in sides}
        for op in sides.values():
            op(x, y, **kw)  # warm-up
        for _ in range(rounds):
            for side, op in sides.items():
                f0, t0 = faults(), time.perf_counter()
                op(x, y, **kw)
                times[side].append(time.perf_counter() - t0)
                faulted[side].append(faults() - f0)
        result["x".join(map(str, shape))] = {
            side: [1e3 * float(np.median(times[side])), float(np.mean(faulted[side]))] for side in sides
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="512x3x32x32,300x3x32x32,256x1x28x28",
                        help="comma-separated NxCxHxW batches (default 512x3x32x32,300x3x32x32,256x1x28x28)")
    parser.add_argument("--runs", type=int, default=4, help="fresh processes (default 4)")
    parser.add_argument("--rounds", type=int, default=40, help="timed calls per side and shape (default 40)")
    parser.add_argument("--base", help="also time this git revision of the op in each process")
    parser.add_argument("--per-sample", action="store_true", help="per-sample weights and cutoffs ~ U[0, 1] (one draw)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    except ValueError:
        parser.error(f"--shapes: expected NxCxHxW integers, got {args.shapes!r}")
    if any(len(s) != 4 or min(s) < 1 for s in shapes) or args.runs < 1 or args.rounds < 1:
        parser.error("--shapes needs 4 positive sizes each; --runs and --rounds must be >= 1")
    if args.child:
        print(json.dumps(run_child(shapes, args.base, args.rounds, args.per_sample)))
        return 0
    print(f"robustmix op, {'per-sample cutoffs' if args.per_sample else 'c=0.5'}, {torch.get_num_threads()} torch threads; "
          "each run a fresh process: "
          "median ms a call, minor page faults a call")
    child = [sys.executable, __file__, "--shapes", args.shapes, "--rounds", str(args.rounds), "--child"]
    child += ["--per-sample"] if args.per_sample else []
    for run in range(args.runs):
        out = subprocess.run(child + (["--base", args.base] if args.base else []),
                             capture_output=True, text=True, check=True).stdout
        for shape, sides in json.loads(out.strip().splitlines()[-1]).items():
            cells = "   ".join(f"{side} {ms:7.3f} ms {n:6.0f} faults" for side, (ms, n) in sides.items())
            print(f"  run {run + 1}  B{shape:<14} {cells}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
