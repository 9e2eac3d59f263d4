"""Does a peer's time depend on what else the process allocates? timm's Mixup beside our mixers.

A diagnosis, printed: it explains why the peers' rows of ``mixers.py`` swing between runs at
B512x3x32^2. timm's ``Mixup`` mixes in place but allocates a batch-sized temporary each call
(``x.flip(0)``); whether glibc hands it reused memory or a fresh mapping, faulted in page by
page, depends on what the process freed before. Three loops, each in its own subprocess (a
fresh allocator), timm on a fresh clone per call (made outside its timed region) as in
``mixers.py``:

* ``timm alone``: only timm's calls;
* ``beside pooled MixUp``: timm's calls alternating with blocks of our ``MixUp``, whose output
  at this size comes from the buffer pool (``robustmix._memory``) and is never freed;
* ``beside unpooled MixUp``: the same with the pool off (``ROBUSTMIX_BUFFER_POOL_MB=0``), so our
  output is freed to the allocator after each call.

Printed per loop: median ms a call and minor page faults a call (``getrusage``), for timm and
for ours.

    python benchmarks/peer_memory.py
    python benchmarks/peer_memory.py --shape 512,3,32,32 --rounds 30
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

import _harness as H

LOOPS = {"timm alone": (False, "256"), "beside pooled MixUp": (True, "256"), "beside unpooled MixUp": (True, "0")}



def run_loop(shape: tuple[int, ...], rounds: int, calls: int, with_ours: bool) -> dict[str, float]:
    """One loop in this process: medians (ms) and mean minor faults a call, for timm and ours."""
    import timm.data

    from robustmix import MixUp

    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (shape[0],), generator=torch.Generator().manual_seed(1))
    timm_mix = timm.data.Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, num_classes=10)
    ours = MixUp(10, seed=0)
    times: dict[str, list[float]] = {"timm": [], "ours": []}
    faulted: dict[str, list[int]] = {"timm": [], "ours": []}
    for _ in range(rounds):
        for _ in range(calls):
            fresh = x.clone()
            f0, t0 = H.minor_faults(), time.perf_counter()
            timm_mix(fresh, y)
            times["timm"].append(time.perf_counter() - t0)
            faulted["timm"].append(H.minor_faults() - f0)
        for _ in range(calls if with_ours else 0):
            f0, t0 = H.minor_faults(), time.perf_counter()
            ours(x, y)
            times["ours"].append(time.perf_counter() - t0)
            faulted["ours"].append(H.minor_faults() - f0)
    return {f"{side}_{stat}": value for side in times if times[side]
            for stat, value in (("ms", 1e3 * float(np.median(times[side]))), ("faults", float(np.mean(faulted[side]))))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="512,3,32,32", help="batch shape N,C,H,W (default 512,3,32,32)")
    parser.add_argument("--rounds", type=int, default=20, help="blocks per side (default 20)")
    parser.add_argument("--calls", type=int, default=10, help="calls per block (default 10)")
    parser.add_argument("--child", choices=sorted(LOOPS), help=argparse.SUPPRESS)  # one loop, in a subprocess
    args = parser.parse_args(argv)
    try:
        shape = tuple(int(v) for v in args.shape.split(","))
    except ValueError:
        parser.error(f"--shape: expected N,C,H,W integers, got {args.shape!r}")
    if len(shape) != 4 or min(shape) < 1 or args.rounds < 1 or args.calls < 1:
        parser.error("--shape needs 4 positive sizes; --rounds and --calls must be >= 1")
    if args.child:
        print(json.dumps(run_loop(shape, args.rounds, args.calls, LOOPS[args.child][0])))
        return 0
    print(f"timm Mixup on B{'x'.join(map(str, shape))}, {torch.get_num_threads()} torch threads; "
          "each loop in a fresh process: median ms a call, minor page faults a call")
    for name, (_, pool_mb) in LOOPS.items():
        env = {**os.environ, "ROBUSTMIX_BUFFER_POOL_MB": pool_mb}
        out = subprocess.run([sys.executable, __file__, "--shape", args.shape, "--rounds", str(args.rounds),
                              "--calls", str(args.calls), "--child", name],
                             capture_output=True, text=True, env=env, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        ours = f"   ours {r['ours_ms']:7.3f} ms {r['ours_faults']:6.0f} faults" if "ours_ms" in r else ""
        print(f"  {name:<22} timm {r['timm_ms']:7.3f} ms {r['timm_faults']:6.0f} faults{ours}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
