"""The training engine: one epoch of optimisation, and clean evaluation.

No wiring and no file I/O here: the caller hands in a built model, loaders, optimizer and mixer
(see :mod:`robustmix.train.run`). Metrics are sums and counts reduced across ranks, so the
numbers are exact under DDP whatever the shard sizes.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from robustmix.train.distributed import DistContext, all_reduce_sum
from robustmix.train.losses import classification_loss

__all__ = ["autocast_context", "evaluate", "train_one_epoch"]

Mixer = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp`` in {"bf16", "fp16"}; a no-op for "none"."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp not in _AMP_DTYPES:
        raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp='fp16' needs a CUDA device, got {device}; use amp='bf16' on CPU")
    return torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[amp])


def _progress(
    iterable: Iterable, *, enabled: bool, desc: str, total: int | None
) -> Any:
    """A tqdm bar on a terminal when ``enabled``; otherwise the iterable itself."""
    if not enabled or not sys.stderr.isatty():
        return _NoBar(iterable)
    try:
        from tqdm.auto import tqdm
    except ModuleNotFoundError:  # tqdm is the `cli` extra; training works without it
        return _NoBar(iterable)
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


class _NoBar:
    """The part of tqdm's interface the engine uses, doing nothing."""

    def __init__(self, iterable: Iterable) -> None:
        self._iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(self._iterable)

    def set_postfix(self, **_: Any) -> None:
        pass

    def close(self) -> None:
        pass


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    net: nn.Module | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    mixer: Mixer | None = None,
    scaler: torch.amp.GradScaler | None = None,
    ctx: DistContext,
    amp: str = "none",
    label_smoothing: float = 0.0,
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "train",
) -> dict[str, float]:
    """One pass over ``loader``: normalise, mix, forward ``net``, soft-target CE, step.

    Args:
        model: the ``ImageClassifier``; its ``normalize`` maps [0, 1] images to network input.
        loader: yields ``(images in [0, 1] (N, C, H, W), int labels (N,))``.
        optimizer: steps once per batch.
        net: what computes logits from normalised images: ``model.net``, possibly wrapped in
            DDP and/or ``torch.compile`` (default ``model.net``).
        scheduler: stepped once per batch (per-step LR schedule).
        mixer: ``(images, int targets) -> (images, soft targets)``, or ``None`` for no mixing.
        scaler: GradScaler for fp16 (``None`` or disabled otherwise).
        ctx: distributed context (device and reductions).
        amp: "none", "bf16" or "fp16".
        label_smoothing: used for unmixed batches (mixers smooth their own targets).
        channels_last: feed the network channels-last tensors.
        progress: show a progress bar (only on rank 0 and a terminal).
        desc: progress bar label.

    Returns:
        ``{"loss", "acc", "n", "seconds", "images_per_s"}`` over all ranks; ``acc`` compares the
        prediction with the dominant class of each (mixed) target.

    Raises:
        FloatingPointError: the epoch's loss is not finite (diverged; lower the learning rate).
    """
    net = model.net if net is None else net
    device = ctx.device
    model.train()
    net.train()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss*n, correct, n
    bar = _progress(loader, enabled=progress and ctx.is_main, desc=desc, total=_safe_len(loader))
    start = time.perf_counter()
    for step, (images, labels) in enumerate(bar):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        # Mix normalised images (see docs/INTERFACES.md): Robustmix's energy weighting and the
        # DCT bands are defined on what the network sees.
        x = model.normalize(images)
        targets: Tensor = labels
        if mixer is not None:
            x, targets = mixer(x, labels)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(amp, device):
            logits = net(x)
        loss = classification_loss(logits, targets, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = labels.shape[0]
        hard = targets.argmax(dim=1) if targets.ndim == 2 else targets
        sums += torch.stack(
            [loss.detach().double() * n, (logits.argmax(dim=1) == hard).sum().double(),
             torch.tensor(float(n), dtype=torch.float64, device=device)]
        )
        if step % 20 == 0:
            seen = float(sums[2])
            bar.set_postfix(
                loss=f"{float(sums[0]) / seen:.4f}",
                acc=f"{float(sums[1]) / seen:.3f}",
                img_s=f"{seen * ctx.world_size / max(time.perf_counter() - start, 1e-9):.0f}",
            )
    bar.close()
    seconds = time.perf_counter() - start
    total = all_reduce_sum(sums, ctx).cpu()
    count = float(total[2])
    loss_mean = float(total[0]) / count if count else float("nan")
    if count and not math.isfinite(loss_mean):
        raise FloatingPointError(
            f"training loss is {loss_mean} in {desc}: the run diverged; lower lr (or use amp='none')"
        )
    return {
        "loss": loss_mean,
        "acc": float(total[1]) / count if count else float("nan"),
        "n": int(count),
        "seconds": seconds,
        "images_per_s": count / seconds if seconds > 0 else float("nan"),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    ctx: DistContext,
    amp: str = "none",
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, float]:
    """Clean top-1 error and mean cross-entropy of ``model`` (which takes [0, 1] images).

    Each rank evaluates its own shard; sums and counts are reduced, so the result is the exact
    figure over the union of the shards.

    Returns:
        ``{"error", "loss", "n"}``.
    """
    model.eval()
    device = ctx.device
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, wrong, n
    bar = _progress(loader, enabled=progress and ctx.is_main, desc=desc, total=_safe_len(loader))
    for images, labels in bar:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(amp, device):
            logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        wrong = (logits.argmax(dim=1) != labels).sum()
        sums += torch.stack(
            [loss.double(), wrong.double(),
             torch.tensor(float(labels.shape[0]), dtype=torch.float64, device=device)]
        )
    bar.close()
    total = all_reduce_sum(sums, ctx).cpu()
    count = float(total[2])
    return {
        "error": float(total[1]) / count if count else float("nan"),
        "loss": float(total[0]) / count if count else float("nan"),
        "n": int(count),
    }


def _safe_len(obj: Any) -> int | None:
    try:
        return len(obj)
    except TypeError:
        return None
