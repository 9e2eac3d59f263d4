"""What does a mixer add to a training step? ResNet-18: no mixing vs MixUp vs RobustMix.

One step is: mix the batch (if any), forward, soft-target cross entropy, backward, SGD step
(momentum 0.9), exactly as the trainer does it. The variants are timed round-robin
(:func:`_harness.measure_interleaved`) so machine drift hits them alike; the overhead of a mixer is
``median(step with mixer) / median(step without) - 1``. The mixer alone on the same batch is timed
in the same rounds for reference.

Mixers are the library's ``MixUp(alpha=1)`` and ``RobustMix(alpha=1, tau=0)`` (cutoff ~ U[0, 1]
per call, batch energy), i.e. the training defaults. On CUDA also both with ``check_values=False``
(no host sync a call), and every step variant 10 times back to back with one sync at the end (a
lone step is synced before and after, which hides what a mixer's sync costs a training loop).

Run: ``python benchmarks/train_step.py [--device cuda] [--quick]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torchvision
from torch import Tensor, nn

import _harness as H
from robustmix import MixUp, RobustMix

# (image size, batch) per device; CPU batches are small so a full run fits in a few minutes.
FULL_CASES = {"cpu": ((224, 16), (32, 128)), "cuda": ((224, 128), (32, 512))}
QUICK_CASES = ((64, 4), (32, 8))
NUM_CLASSES = 10
LOOP_STEPS = 10  # CUDA: steps queued back to back, synced once


def soft_cross_entropy(logits: Tensor, soft_targets: Tensor) -> Tensor:
    return torch.sum(-soft_targets * logits.log_softmax(-1), dim=-1).mean()


def make_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    targets: Tensor,
    mixer: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None,
) -> Callable[[], None]:
    """A closure doing one full training step on the fixed batch."""
    one_hot = nn.functional.one_hot(targets, NUM_CLASSES).float()

    def step() -> None:
        if mixer is None:
            x, soft = images, one_hot
        else:
            x, soft = mixer(images, targets)
        loss = soft_cross_entropy(model(x), soft)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def bench_case(size: int, batch: int, device: torch.device, repeats: int, *, gpu_cases: bool | None = None) -> dict[str, Any]:
    """One image size: the step variants and the mixers alone. ``gpu_cases`` (default: on CUDA)
    adds the ``check_values=False`` mixers and the back-to-back loops."""
    gpu_cases = device.type == "cuda" if gpu_cases is None else gpu_cases
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    targets = torch.randint(0, NUM_CLASSES, (batch,), generator=g).to(device)
    model = torchvision.models.resnet18(num_classes=NUM_CLASSES).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    mixers = {"none": None, "mixup": MixUp(NUM_CLASSES, seed=0), "robustmix": RobustMix(NUM_CLASSES, seed=0)}
    if gpu_cases:  # the mixers without their one host sync a call
        mixers["mixup check_values=False"] = MixUp(NUM_CLASSES, seed=0, check_values=False)
        mixers["robustmix check_values=False"] = RobustMix(NUM_CLASSES, seed=0, check_values=False)
    cases: dict[str, Callable[[], Any]] = {
        f"step {name}": make_step(model, optimizer, images, targets, mixer) for name, mixer in mixers.items()
    }
    if gpu_cases:
        # Each timed call is synced before and after, so a mixer's own sync costs a lone step
        # nothing; in a training loop it stops the host queueing the next step ahead of the GPU.
        for name in mixers:
            cases[f"{LOOP_STEPS}steps {name}"] = lambda step=cases[f"step {name}"]: [step() for _ in range(LOOP_STEPS)]
    for name, mixer in mixers.items():
        if mixer is not None:
            cases[f"mixer {name}"] = lambda mixer=mixer: mixer(images, targets)
    timings = H.measure_interleaved(cases, device=device, warmup=2, repeats=repeats)
    base = timings["step none"].median_s
    rows = []
    for name, timing in timings.items():
        row: dict[str, Any] = {"case": name, "timing": timing.to_dict()}
        kind = name.split(" ", 1)[0]
        if kind != "mixer" and not name.endswith(" none"):
            reference = timings[f"{kind} none"]
            row["overhead_pct"] = 100.0 * (timing.median_s / reference.median_s - 1.0)
            # Rounds are interleaved, so round r of each variant saw the same machine state:
            # the median of the per-round ratios cancels slow drift that the ratio of medians keeps.
            paired = np.asarray(timing.times_s) / np.asarray(reference.times_s) - 1.0
            q1, med, q3 = np.percentile(100.0 * paired, [25, 50, 75])
            row["paired_overhead_pct"] = {"median": float(med), "q1": float(q1), "q3": float(q3)}
        elif name.startswith("mixer "):
            row["share_of_step_pct"] = 100.0 * timing.median_s / base
        rows.append(row)
        extra = (f" overhead {row['overhead_pct']:+.2f} % (paired {row['paired_overhead_pct']['median']:+.2f} %)"
                 if "overhead_pct" in row else "")
        print(f"  {size:>3}px B{batch:<4} {name:<36} {timing.median_ms:9.2f} ms "
              f"(IQR {timing.stats['iqr_s'] * 1e3:.2f}){extra}", flush=True)
    return {"image_size": size, "batch": batch, "model": "torchvision resnet18", "num_classes": NUM_CLASSES,
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = H.add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), repeats=15)
    args = parser.parse_args(argv)
    device = H.resolve_device(args.device)
    H.apply_threads(args.threads)
    probe_start = H.machine_probe() if device.type == "cpu" and not args.quick else None
    cases = QUICK_CASES if args.quick else FULL_CASES[device.type]
    repeats = min(args.repeats, 2) if args.quick else args.repeats
    results = [bench_case(size, batch, device, repeats) for size, batch in cases]
    probe_end = H.machine_probe() if probe_start is not None else None
    result = {
        "benchmark": "train_step",
        "quick": args.quick,
        "meta": H.collect_metadata(device, extra={"probe_start": probe_start, "probe_end": probe_end, "torchvision": torchvision.__version__}),
        "config": {"repeats": repeats, "warmup": 2, "optimizer": "SGD(lr=1e-3, momentum=0.9)",
                   "loss": "soft-target cross entropy", "mixers": {"mixup": "MixUp(alpha=1)",
                   "robustmix": "RobustMix(alpha=1, tau=0, energy='batch')"}},
        "cases": results,
    }
    out = args.out or H.default_out_path("train_step", device, quick=args.quick)
    print(f"wrote {H.write_result(out, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
