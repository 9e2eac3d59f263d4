"""Are our MixUp and CutMix drop-in fast? vs timm's Mixup and torchvision's v2.MixUp / v2.CutMix.

One call of each mixer as a training loop makes it (its own parameter draws included), on the
mixing sizes, float32:

* ours: ``robustmix.MixUp(K, seed=0)`` and ``robustmix.CutMix(K, seed=0)``: new output tensors
  (a CPU batch of 4 MiB or more from the buffer pool), the value checks on.
* ``timm.data.Mixup(mixup_alpha=1, cutmix_alpha=0)`` and ``Mixup(mixup_alpha=0, cutmix_alpha=1)``:
  they mix the batch in place, so each timed call gets a fresh clone made outside the timed
  region; timm skips the output allocation the others pay for (the comparison favours timm).
* ``torchvision.transforms.v2.MixUp(alpha=1)`` and ``v2.CutMix(alpha=1)``.

The mixers of one kind are timed in blocks, round-robin (A B C A B C ...), each block
``--repeats // ROUNDS`` calls after its own warm-up, so drift of a shared machine hits all of them
alike; a row's time is the median over all its calls. Ratios are ours over each peer's.

Run: ``python benchmarks/mixers.py [--device cuda] [--quick]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

import _harness as H
from robustmix import CutMix, MixUp

SHAPES = ((128, 3, 224, 224), (512, 3, 32, 32), (256, 1, 28, 28))
QUICK_SHAPES = ((8, 3, 32, 32),)
ROUNDS = 5

# A mixer's constructor, given the number of classes.
Factory = Callable[[int], Callable[[torch.Tensor, torch.Tensor], Any]]


def num_classes_for(shape: tuple[int, ...]) -> int:
    return 1000 if shape[-1] >= 224 else 10


def mixers() -> tuple[dict[str, dict[str, Factory]], dict[str, str]]:
    """Per kind ("mixup", "cutmix"): ours first, then the installed peers; and why any is missing."""
    kinds: dict[str, dict[str, Factory]] = {
        "mixup": {"MixUp (ours)": lambda k: MixUp(k, seed=0)},
        "cutmix": {"CutMix (ours)": lambda k: CutMix(k, seed=0)},
    }
    missing: dict[str, str] = {}
    try:
        from timm.data import Mixup

        kinds["mixup"]["timm Mixup"] = lambda k: Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=k)
        kinds["cutmix"]["timm Mixup (cutmix)"] = lambda k: Mixup(
            mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=k)
    except ImportError as exc:
        missing["timm"] = f"timm not importable: {exc}"
    try:
        from torchvision.transforms import v2

        kinds["mixup"]["torchvision v2.MixUp"] = lambda k: v2.MixUp(alpha=1.0, num_classes=k)
        kinds["cutmix"]["torchvision v2.CutMix"] = lambda k: v2.CutMix(alpha=1.0, num_classes=k)
    except ImportError as exc:
        missing["torchvision"] = f"torchvision not importable: {exc}"
    return kinds, missing


def in_place(method: str) -> bool:
    return method.startswith("timm")


def timed_in_blocks(
    calls: dict[str, tuple[Callable[[Any], Any], Callable[[], Any]]], device: torch.device, repeats: int
) -> dict[str, H.Timing]:
    """Each ``(fn, setup)`` timed as ``fn(setup())`` in ROUNDS round-robin blocks."""
    blocks = H.measure_blocks({name: fn for name, (fn, _) in calls.items()}, rounds=ROUNDS,
                              repeats=max(1, repeats // ROUNDS), warmup=1, device=device,
                              setups={name: setup for name, (_, setup) in calls.items()})
    return {name: H.Timing(times_s=tuple(t for b in bs for t in b.times_s), warmup=1) for name, bs in blocks.items()}


def bench_shape(shape: tuple[int, ...], device: torch.device, repeats: int,
                kinds: dict[str, dict[str, Factory]]) -> list[dict[str, Any]]:
    num_classes = num_classes_for(shape)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g).to(device)
    y = torch.randint(0, num_classes, (shape[0],), generator=g).to(device)
    rows: list[dict[str, Any]] = []
    for kind, factories in kinds.items():
        calls = {}
        for method, factory in factories.items():
            mixer = factory(num_classes)
            setup = (lambda: x.clone()) if in_place(method) else (lambda: x)
            calls[method] = (lambda images, mixer=mixer: mixer(images, y), setup)
        timings = timed_in_blocks(calls, device, repeats)
        ours = next(iter(timings))
        for method, timing in timings.items():
            row: dict[str, Any] = {"shape": list(shape), "dtype": "float32", "kind": kind, "method": method,
                                   "side": "ours" if method == ours else "peer", "timing": timing.to_dict()}
            if method == ours:
                row["time_over_peer"] = {peer: timing.median_s / t.median_s for peer, t in timings.items() if peer != ours}
            rows.append(row)
            ratios = "  ".join(f"{v:.2f}x {k}" for k, v in row.get("time_over_peer", {}).items())
            print(f"  {'x'.join(map(str, shape)):>16} {method:<24} {timing.median_ms:9.3f} ms  {ratios}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = H.add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), repeats=30)
    args = parser.parse_args(argv)
    device = H.resolve_device(args.device)
    H.apply_threads(args.threads)
    repeats = ROUNDS if args.quick else args.repeats
    kinds, missing = mixers()
    rows = []
    for shape in QUICK_SHAPES if args.quick else SHAPES:
        rows += bench_shape(shape, device, repeats, kinds)
    versions = {dist: H.dist_version(dist) for dist in ("timm", "torchvision")}
    result = {
        "benchmark": "mixers",
        "quick": args.quick,
        "meta": H.collect_metadata(device, extra={"peer_versions": versions}),
        "config": {"alpha": 1.0, "repeats": repeats, "rounds": ROUNDS, "dtype": "float32"},
        "cases": rows,
        "unavailable": missing,
    }
    out = args.out or H.default_out_path("mixers", device, quick=args.quick)
    print(f"wrote {H.write_result(out, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
