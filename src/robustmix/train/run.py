"""Wiring: build data, model, optimizer, schedule and mixer from a :class:`TrainConfig`, then loop.

Reproducibility contract: every random stream of epoch ``e`` on rank ``r`` (data order,
DataLoader worker seeds, dropout, mixing parameters) is re-derived at the start of the epoch
from ``(seed, e, r)``; per-image augmentation from ``(seed, e, image index)`` (:class:`SeededItems`),
so it does not depend on which worker or rank reads the image. The model, optimizer, scheduler and scaler states
are checkpointed after every epoch, so a run resumed from the checkpoint after epoch ``e``
computes exactly what the uninterrupted run computes from there (bit-exact on CPU), also under
DDP and with any number of workers; no RNG state has to be gathered from the ranks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from robustmix._io import append_jsonl, atomic_write, write_json
from robustmix.data import DatasetInfo, build_dataset, dataset_info
from robustmix.models import build_model
from robustmix.train.checkpoint import load_checkpoint, save_checkpoint, state_dict_sha256
from robustmix.train.config import RUNTIME_FIELDS, TrainConfig, config_to_dict
from robustmix.train.distributed import (
    DistContext,
    broadcast_buffers,
    cleanup_distributed,
    init_distributed,
)
from robustmix.train.engine import evaluate, train_one_epoch
from robustmix.transforms import build_mixer

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "METRICS_JSONL_NAME",
    "METRICS_NAME",
    "Components",
    "Loaders",
    "build_components",
    "build_loaders",
    "build_optimizer",
    "build_scheduler",
    "derive_seed",
    "lr_factor",
    "train",
]

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"
METRICS_JSONL_NAME = "metrics.jsonl"
METRICS_NAME = "metrics.json"

# Stream ids for derive_seed: one independent stream per consumer of randomness.
_MODEL, _EPOCH, _LOADER, _MIXER, _SUBSET, _AUGMENT = range(6)


def derive_seed(seed: int, *keys: int) -> int:
    """An independent 63-bit seed for the stream named by ``keys`` (numpy SeedSequence hashing)."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the peak LR at optimisation ``step`` (0-based).

    Linear warm-up from ``1/warmup_steps`` to 1, then "constant" (1) or "cosine" decay
    ``0.5 * (1 + cos(pi * t))`` with ``t`` going from 0 to 1 over the remaining steps.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    decay_steps = max(total_steps - warmup_steps, 1)
    t = min((step - warmup_steps) / decay_steps, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def build_optimizer(params: Any, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum or AdamW, at the peak learning rate."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, *, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR following :func:`lr_factor`."""
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    factor = partial(lr_factor, total_steps=total, warmup_steps=warmup, schedule=config.schedule)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)


def _mixer_options(config: TrainConfig, generator: torch.Generator) -> dict[str, Any]:
    """Options for ``build_mixer`` (it drops the ones a mixer does not take, e.g. tau for Mixup)."""
    options: dict[str, Any] = {
        "alpha": config.alpha,
        "p": config.mix_prob,
        "label_smoothing": config.label_smoothing,
        "energy": config.energy,
        "per_sample": config.per_sample,
        "transform": config.band,
        "lam_low": config.lam_low,
        "lam_high": config.lam_high,
        "check_values": config.check_values,
        "generator": generator,
    }
    if config.tau is not None:  # None keeps the mixer's own default
        options["tau"] = config.tau
    return options


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One SplitMix64 step: a cheap, well-mixed 64-bit hash (per-item seeds, millions per run)."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class SeededItems(Dataset):
    """``dataset[i]`` with torch's default generator seeded from ``(epoch_seed, i)`` first.

    Random per-image transforms (crop, flip, RandAugment, ...) draw from torch's default
    generator, which DataLoader seeds per *worker*: which worker reads an image, and so its
    augmentation, would depend on the worker count. Seeding per item makes an epoch's
    augmentation a function of ``(seed, epoch, index)`` alone: the same for any number of
    workers or ranks, so ``workers`` may change on resume. In the main process (no workers)
    the generator's state is restored afterwards, so dropout's stream is not disturbed either.
    Set :attr:`epoch_seed` before each epoch's iterator is made (workers copy the dataset then).
    """

    def __init__(self, dataset: Dataset, epoch_seed: int = 0) -> None:
        self.dataset = dataset
        self.epoch_seed = epoch_seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        generator = torch.default_generator
        saved = generator.get_state() if torch.utils.data.get_worker_info() is None else None
        generator.manual_seed(_splitmix64(self.epoch_seed ^ _splitmix64(int(index))) >> 1)
        try:
            return self.dataset[index]
        finally:
            if saved is not None:
                generator.set_state(saved)


def _subset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """A seeded random subset of ``limit`` items (sorted, so reading stays sequential)."""
    n = len(dataset)  # type: ignore[arg-type]
    if limit is None or limit >= n:
        return dataset
    g = torch.Generator().manual_seed(seed)
    indices = torch.randperm(n, generator=g, device="cpu")[:limit].sort().values.tolist()
    return Subset(dataset, indices)


def _model_spec(config: TrainConfig, info: DatasetInfo) -> dict[str, Any]:
    return {
        "name": config.model,
        "num_classes": info.num_classes,
        "in_channels": info.in_channels,
        "image_size": info.image_size,
        "mean": list(info.mean),
        "std": list(info.std),
    }


def _check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse to resume with settings that change what is computed."""
    current = config_to_dict(config)
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs now {current[k]!r}"
        for k in current
        if k not in RUNTIME_FIELDS and saved.get(k) != current[k]
    ]
    if diffs:
        raise ValueError(
            f"cannot resume from {str(path)!r}: the config differs in " + "; ".join(diffs)
            + " (resume with the same settings, or start a new output_dir)"
        )


def _seed_global_rngs(seed: int, device: torch.device) -> None:
    # Per-image transforms in the main process (workers=0) and dropout draw from torch's
    # default generators; they are reseeded per epoch inside train()'s fork_rng block, so the
    # caller's global RNG state is left as it was.
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


def _prepare_output(out: Path, config: TrainConfig, *, overwrite: bool) -> None:
    checkpoint = out / CHECKPOINT_NAME
    if config.resume:
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"resume=True but there is no checkpoint at {str(checkpoint)!r}; "
                "run without --resume to start training"
            )
        return
    if checkpoint.exists() or (out / METRICS_JSONL_NAME).exists():
        if not overwrite:
            raise ValueError(
                f"output_dir {str(out)!r} already holds a run; pass resume=True (--resume) to "
                "continue it, overwrite=True (--overwrite) to replace it, or choose another output_dir"
            )
        for name in (CHECKPOINT_NAME, METRICS_JSONL_NAME, METRICS_NAME):
            (out / name).unlink(missing_ok=True)


@dataclass(frozen=True)
class Loaders:
    """The data side of a run: loaders plus the handles that reseed them per epoch."""

    info: DatasetInfo
    train: DataLoader
    test: DataLoader
    sampler: DistributedSampler
    generator: torch.Generator


def build_loaders(config: TrainConfig, ctx: DistContext) -> Loaders:
    """Train/test loaders; the train order is a function of (seed, epoch) via the sampler.

    A single process is the ``num_replicas=1`` case of ``DistributedSampler``. The synthetic
    set's own seed stays 0: it is data, not training randomness.
    """
    info = dataset_info(config.dataset, root=config.data_dir)
    train_set = build_dataset(config.dataset, root=config.data_dir, split="train", augment=config.augment)
    test_set = build_dataset(config.dataset, root=config.data_dir, split="test", augment="none")
    train_set = SeededItems(_subset(train_set, config.limit_train, derive_seed(config.seed, _SUBSET, 0)))
    test_set = _subset(test_set, config.limit_test, derive_seed(config.seed, _SUBSET, 1))
    sampler = DistributedSampler(
        train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
        seed=config.seed, drop_last=False,
    )
    generator = torch.Generator()
    pin = ctx.device.type == "cuda"
    train_loader = DataLoader(
        train_set, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
        generator=generator, pin_memory=pin,
        # Drop the ragged last batch (a batch of one breaks BatchNorm and mixing) unless it is all.
        drop_last=len(sampler) >= config.batch_size,
    )
    # Evaluation shards are disjoint and unpadded; the engine reduces sums, so error is exact.
    test_loader = DataLoader(
        test_set, batch_size=2 * config.batch_size,
        sampler=list(range(ctx.rank, len(test_set), ctx.world_size)),  # type: ignore[arg-type]
        num_workers=config.workers, pin_memory=pin,
    )
    if len(train_loader) == 0:
        raise ValueError(f"the training set of {config.dataset!r} is empty after limit_train")
    return Loaders(
        info=info, train=train_loader, test=test_loader, sampler=sampler, generator=generator
    )


@dataclass(frozen=True)
class Components:
    """What the optimisation loop updates, and the mixer with its (reseedable) generator."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    mixer: Callable | None
    mixer_generator: torch.Generator


def build_components(
    config: TrainConfig, info: DatasetInfo, ctx: DistContext, *, steps_per_epoch: int
) -> Components:
    """Model (initialised from the seed alone, identical on every rank), optimizer, schedule,
    grad scaler and mixer."""
    _seed_global_rngs(derive_seed(config.seed, _MODEL), ctx.device)
    model = build_model(
        config.model, num_classes=info.num_classes, in_channels=info.in_channels,
        image_size=info.image_size, mean=info.mean, std=info.std,
    ).to(ctx.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.parameters(), config)
    mixer_generator = torch.Generator()
    return Components(
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config, steps_per_epoch=steps_per_epoch),
        scaler=torch.amp.GradScaler(ctx.device.type, enabled=config.amp == "fp16"),
        mixer=build_mixer(config.mixer, info.num_classes, **_mixer_options(config, mixer_generator)),
        mixer_generator=mixer_generator,
    )


def _checkpoint_state(
    parts: Components, config: TrainConfig, info: DatasetInfo, epoch: int, history: list
) -> dict[str, Any]:
    """Everything a resume needs (see :mod:`robustmix.train.checkpoint` for the format)."""
    return {
        "epoch": epoch,
        "model": parts.model.state_dict(),
        "model_spec": _model_spec(config, info),
        "dataset": info.name,
        "config": config_to_dict(config),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict() if parts.scaler.is_enabled() else {},
        "history": history,
    }


def _restore(
    parts: Components, config: TrainConfig, path: Path, ctx: DistContext
) -> tuple[int, list[dict[str, Any]]]:
    """Load model/optimizer/scheduler/scaler states; return (completed epochs, history)."""
    state = load_checkpoint(path, map_location=ctx.device)
    _check_resumable(state.get("config", {}), config, path)
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        parts.scaler.load_state_dict(state["scaler"])
    return int(state["epoch"]), list(state.get("history", []))


def train(
    config: TrainConfig,
    *,
    overwrite: bool = False,
    stop_after_epoch: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train a classifier as ``config`` says; write config, checkpoint and metrics.

    Under ``torchrun`` every rank calls this; only rank 0 writes files. Metrics are reduced
    over ranks, so every rank returns the same numbers (timings are each rank's own).

    Args:
        config: the run's settings; ``config.output_dir`` receives ``config.json``,
            ``checkpoint.pt`` (after every epoch, atomically), ``metrics.jsonl`` (one line per
            epoch) and, once all epochs are done, ``metrics.json``.
        overwrite: replace a previous run in ``output_dir`` instead of refusing.
        stop_after_epoch: return after this many completed epochs (as if the run were killed
            right after its checkpoint); ``config.resume`` continues it.
        log: receives one summary line per epoch (rank 0 only), e.g. ``print``.

    Returns:
        ``{"output_dir", "checkpoint", "metrics", "epochs_completed", "finished", "final",
        "history", "weights_sha256", "world_size"}``; ``final`` is the last epoch's record
        (``test_error``, ``test_loss``, ``train_loss``, ...).

    Raises:
        FileNotFoundError: missing data, or ``resume`` without a checkpoint.
        ValueError: bad settings, a non-empty ``output_dir`` without resume/overwrite, or a
            resume whose config differs from the checkpoint's.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if stop_after_epoch is not None and stop_after_epoch < 1:
        raise ValueError(f"stop_after_epoch must be >= 1 or None, got {stop_after_epoch}")
    ctx = init_distributed(config.device)
    try:
        devices = [ctx.device.index or 0] if ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return _train(config, ctx, overwrite=overwrite, stop_after_epoch=stop_after_epoch, log=log)
    finally:
        cleanup_distributed(ctx)


def _train(
    config: TrainConfig,
    ctx: DistContext,
    *,
    overwrite: bool,
    stop_after_epoch: int | None,
    log: Callable[[str], None] | None,
) -> dict[str, Any]:
    out = Path(config.output_dir)
    ckpt_path = out / CHECKPOINT_NAME
    if config.amp == "fp16" and ctx.device.type != "cuda":
        raise ValueError(f"amp='fp16' needs a CUDA device, got {ctx.device}; use amp='bf16' on CPU")
    if ctx.is_main:
        _prepare_output(out, config, overwrite=overwrite)
    elif config.resume and not ckpt_path.is_file():
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {str(ckpt_path)!r}")

    data = build_loaders(config, ctx)
    parts = build_components(config, data.info, ctx, steps_per_epoch=len(data.train))
    model, optimizer = parts.model, parts.optimizer

    start_epoch, history, train_time = 0, [], 0.0
    if config.resume:
        start_epoch, history = _restore(parts, config, ckpt_path, ctx)
        train_time = float(history[-1]["train_time_s"]) if history else 0.0
        if ctx.is_main:
            # The JSONL may lag the checkpoint (killed between the two writes): rewrite it.
            lines = "".join(_jsonl_line(r) for r in history).encode()
            atomic_write(out / METRICS_JSONL_NAME, lambda f: f.write(lines))
    if ctx.is_main:
        write_json(out / CONFIG_NAME, config_to_dict(config))

    net: nn.Module = model.net
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    if config.compile:
        net = torch.compile(net)  # type: ignore[assignment]

    stop_at = config.epochs if stop_after_epoch is None else min(config.epochs, stop_after_epoch)
    for epoch in range(start_epoch, stop_at):
        data.sampler.set_epoch(epoch)
        data.generator.manual_seed(derive_seed(config.seed, _LOADER, epoch, ctx.rank))
        parts.mixer_generator.manual_seed(derive_seed(config.seed, _MIXER, epoch, ctx.rank))
        data.train.dataset.epoch_seed = derive_seed(config.seed, _AUGMENT, epoch)  # type: ignore[attr-defined]
        _seed_global_rngs(derive_seed(config.seed, _EPOCH, epoch, ctx.rank), ctx.device)
        lr = optimizer.param_groups[0]["lr"]
        tr = train_one_epoch(
            model, data.train, optimizer, net=net, scheduler=parts.scheduler, mixer=parts.mixer,
            scaler=parts.scaler, ctx=ctx, amp=config.amp, label_smoothing=config.label_smoothing,
            channels_last=config.channels_last, progress=config.progress,
            desc=f"epoch {epoch + 1}/{config.epochs}",
        )
        broadcast_buffers(model, ctx)
        ev = evaluate(
            model, data.test, ctx=ctx, amp=config.amp, channels_last=config.channels_last,
            progress=config.progress, desc="eval",
        )
        train_time += tr["seconds"]
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": tr["loss"],
            "train_acc": tr["acc"],
            "test_error": ev["error"],
            "test_loss": ev["loss"],
            "n_train": tr["n"],
            "n_test": ev["n"],
            "images_per_s": tr["images_per_s"],
            "epoch_time_s": tr["seconds"],
            "train_time_s": train_time,
        }
        history.append(record)
        if ctx.is_main:
            save_checkpoint(ckpt_path, _checkpoint_state(parts, config, data.info, epoch + 1, history))
            append_jsonl(out / METRICS_JSONL_NAME, record)
            if log is not None:
                log(
                    f"epoch {epoch + 1}/{config.epochs}  train loss {tr['loss']:.4f} "
                    f"acc {tr['acc']:.3f}  test error {ev['error']:.4f} loss {ev['loss']:.4f}  "
                    f"{tr['images_per_s']:.0f} img/s  {tr['seconds']:.1f}s"
                )

    epochs_done = max(start_epoch, stop_at)
    finished = epochs_done >= config.epochs
    result: dict[str, Any] = {
        "output_dir": str(out),
        "checkpoint": str(ckpt_path),
        "metrics": str(out / METRICS_NAME),
        "metrics_jsonl": str(out / METRICS_JSONL_NAME),
        "epochs_completed": epochs_done,
        "finished": finished,
        "final": history[-1] if history else None,
        "history": history,
        "weights_sha256": state_dict_sha256(model.state_dict()),
        "world_size": ctx.world_size,
        "dataset": data.info.name,
        "model": config.model,
        "mixer": config.mixer,
    }
    if finished and ctx.is_main:
        write_json(out / METRICS_NAME, {**result, "config": config_to_dict(config)})
    return result


def _jsonl_line(record: dict[str, Any]) -> str:
    return json.dumps(record) + "\n"
