"""Evaluate a checkpoint on clean data and on common corruptions -> one JSON-able results dict.

Corrupted images come either from :func:`robustmix.corruptions.corrupt` applied on the fly, or
from a precomputed set: a CIFAR-10-C style folder (``<corruption>.npy`` + ``labels.npy``) or an
ImageNet-C folder tree (``<corruption>/<severity>/<class>/<image>``).

On the fly, each (corruption, severity) pair draws from its own ``torch.Generator`` seeded from
``(seed, corruption, severity)``, so a pair's images do not depend on which other pairs run or in
which order, nor on ``batch_size`` (each image takes its draws after the previous image's, a
fixed number per image, see :func:`robustmix.corruptions.corrupt`). Before
the model sees them, the corrupted images are stored as the released benchmark files are
(:func:`robustmix.corruptions.store`, ``store="release"``: 8-bit truncation, and JPEG at quality 85
for ImageNet-C-sized images), so on-the-fly errors compare with published ones and with the
AlexNet baseline; a set written by ``robustmix corrupt`` holds the same bytes.

Results schema (:func:`evaluate_checkpoint`)::

    {"checkpoint": str, "dataset": str, "model": str, "epoch": int | None,
     "config": {"corruptions": [...], "severities": [...], "source": "on-the-fly" | path,
                "source_format": "on-the-fly" | "cifar-c" | "imagenet-c", "seed",
                "store": "release" | "round" | "float" | None (precomputed source), "batch_size",
                "limit", "device", "amp", "channels_last", "data_dir", "baseline"},
     "clean": {"error": float, "loss": float, "n": int},
     "corrupted": {corruption: {"1": error, ...}},
     "corrupted_loss": {corruption: {"1": loss, ...}},
     "corrupted_n": {corruption: {"1": n, ...}},
     "summary": robustmix.metrics.summarize(...) or None when no corruption was evaluated}
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustmix._device import divide_exactly_
from robustmix.metrics import summarize

__all__ = [
    "SEVERITIES",
    "evaluate_checkpoint",
    "evaluate_model",
    "pair_seed",
    "parse_corruptions",
    "parse_severities",
    "source_format",
]

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
_SEVERITY_DIRS = frozenset(str(s) for s in SEVERITIES)

ImagesLike = np.ndarray | Tensor | Iterable[tuple[Tensor, Tensor]]


# ---------------------------------------------------------------------------------- parsing


def parse_severities(severities: str | int | Iterable[int]) -> tuple[int, ...]:
    """``"1-5"``, ``"1,3"``, ``3`` or ``[1, 3]`` -> sorted unique tuple of severities in 1..5."""
    where = "severities"
    if isinstance(severities, str):
        values: list[int] = []
        for part in (p.strip() for p in severities.split(",")):
            try:
                if "-" in part:
                    low, high = (int(x) for x in part.split("-", 1))
                    if low > high:
                        raise ValueError
                    values.extend(range(low, high + 1))
                else:
                    values.append(int(part))
            except ValueError:
                raise ValueError(
                    f"{where}: expected a list like '1-5' or '1,3' of integers in 1..5, "
                    f"got {severities!r}"
                ) from None
    elif isinstance(severities, int) and not isinstance(severities, bool):
        values = [severities]
    else:
        try:
            values = list(severities)
        except TypeError:
            raise TypeError(
                f"{where}: expected a str, an int or an iterable of ints, "
                f"got {type(severities).__name__}"
            ) from None
    bad = [
        v for v in values if isinstance(v, bool) or not isinstance(v, int) or v not in SEVERITIES
    ]
    if bad or not values:
        raise ValueError(f"{where}: expected severities in {list(SEVERITIES)}, got {severities!r}")
    return tuple(sorted(set(values)))


def _known_corruptions() -> tuple[str, ...]:
    from robustmix.corruptions import ALL_CORRUPTIONS

    return tuple(ALL_CORRUPTIONS)


def parse_corruptions(
    corruptions: str | Iterable[str] | None, *, available: Sequence[str] | None = None
) -> tuple[str, ...]:
    """``"all"``, ``"none"``, ``"fog,snow"`` or a list of names -> tuple of validated names.

    Args:
        corruptions: the selection; ``None`` and ``"none"`` mean clean evaluation only.
        available: what ``"all"`` expands to (default: every registered corruption); names are
            always checked against the registry.
    """
    known = _known_corruptions()
    if corruptions is None:
        return ()
    if isinstance(corruptions, str):
        text = corruptions.strip()
        if text.lower() == "none" or text == "":
            return ()
        if text.lower() == "all":
            return tuple(available) if available is not None else known
        names = [n.strip() for n in text.split(",") if n.strip()]
    else:
        names = list(corruptions)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"corruptions: unknown names {unknown}; expected 'all', 'none' or names from "
            f"{', '.join(known)}"
        )
    return tuple(dict.fromkeys(names))


def pair_seed(seed: int, corruption: str, severity: int) -> int:
    """A 63-bit seed for one (corruption, severity), stable across runs, platforms and orders."""
    digest = hashlib.sha256(f"{int(seed)}:{corruption}:{int(severity)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def source_format(source: str | os.PathLike | None) -> str:
    """``"on-the-fly"`` (no source), ``"cifar-c"`` (``*.npy`` files) or ``"imagenet-c"`` (folders)."""
    if source is None or str(source) == "on-the-fly":
        return "on-the-fly"
    root = Path(source)
    if not root.is_dir():
        raise FileNotFoundError(f"source: corrupted-set folder {str(root)!r} does not exist")
    if (root / "labels.npy").is_file() or any(root.glob("*.npy")):
        return "cifar-c"
    if any(
        p.is_dir() and any(q.name in _SEVERITY_DIRS for q in p.iterdir()) for p in root.iterdir()
    ):
        return "imagenet-c"
    raise FileNotFoundError(
        f"source: {str(root)!r} holds neither CIFAR-10-C files (<corruption>.npy + labels.npy) "
        "nor an ImageNet-C tree (<corruption>/<severity>/<class>/<image>)"
    )


def _available_in_source(root: Path, fmt: str) -> tuple[str, ...]:
    known = _known_corruptions()
    if fmt == "cifar-c":
        present = {p.stem for p in root.glob("*.npy")}
    else:
        present = {p.name for p in root.iterdir() if p.is_dir()}
    names = tuple(n for n in known if n in present)
    if not names:
        raise FileNotFoundError(
            f"source: {str(root)!r} holds no known corruption; expected files or folders named "
            f"after {', '.join(known)}"
        )
    return names


# ------------------------------------------------------------------------------- evaluation


def _batches(
    images: ImagesLike, labels: np.ndarray | Tensor | None, batch_size: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (float-or-uint8 image batch, int64 labels) from arrays or a loader."""
    if labels is None:
        if isinstance(images, (np.ndarray, Tensor)):
            raise ValueError("labels: required when images is an array or a tensor, got None")
        yield from images  # type: ignore[misc]
        return
    n = len(images)  # type: ignore[arg-type]
    if len(labels) != n:
        raise ValueError(f"labels: expected {n} labels to match images, got {len(labels)}")
    for start in range(0, n, batch_size):
        x = images[start : start + batch_size]  # type: ignore[index]
        y = labels[start : start + batch_size]
        x = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        y = torch.from_numpy(np.asarray(y)) if isinstance(y, np.ndarray) else y
        yield x, y


def _to_float_nchw(x: Tensor, device: torch.device) -> Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [0, 1]; float (N, C, H, W) passes through."""
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        if x.ndim != 4:
            raise ValueError(f"images: expected uint8 (N, H, W, C), got shape {tuple(x.shape)}")
        return divide_exactly_(x.permute(0, 3, 1, 2).float(), 255)
    if not x.is_floating_point() or x.ndim != 4:
        raise ValueError(
            f"images: expected uint8 (N, H, W, C) or float (N, C, H, W) in [0, 1], "
            f"got {x.dtype} {tuple(x.shape)}"
        )
    return x.float()


@torch.inference_mode()
def evaluate_model(
    model: nn.Module,
    images: ImagesLike,
    labels: np.ndarray | Tensor | None = None,
    *,
    corruption: str | None = None,
    severity: int | None = None,
    generator: torch.Generator | None = None,
    store: str = "release",
    batch_size: int = 256,
    amp: str = "none",
    channels_last: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Top-1 error and mean cross-entropy of ``model`` on (optionally corrupted) images.

    Args:
        model: a classifier taking [0, 1] images (e.g. :class:`~robustmix.models.ImageClassifier`);
            put it in eval mode and on its device first; data moves to the model's device.
        images: uint8 ``(N, H, W, C)`` numpy/tensor, float ``(N, C, H, W)`` tensor in [0, 1], or an
            iterable of ``(images, labels)`` batches of either kind (then ``labels=None``).
        labels: ``(N,)`` integer labels for array input.
        corruption: apply :func:`robustmix.corruptions.corrupt` with this name to every batch.
        severity: its severity (1..5); required with ``corruption``.
        generator: the corruption's randomness (a seeded CPU generator for reproducible runs).
        store: how corrupted images are stored before the model sees them
            (:data:`robustmix.corruptions.STORAGE_MODES`): ``"release"`` as the benchmark files
            (8-bit truncation; JPEG at quality 85 above 32 px), ``"round"`` 8-bit rounding,
            ``"float"`` unchanged.
        batch_size: images per forward pass for array input.
        amp: ``"none"``, ``"bf16"`` or ``"fp16"`` (CUDA) autocast for the forward pass.
        channels_last: feed the model channels-last tensors.
        on_batch: called with each batch's size (progress bars).

    Returns:
        ``{"error", "loss", "n"}``; loss is the mean cross-entropy computed in float32.
    """
    from robustmix.train.engine import autocast_context

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if (corruption is None) != (severity is None):
        raise ValueError(
            f"corruption and severity: give both or neither, got corruption={corruption!r}, "
            f"severity={severity!r}"
        )
    if corruption is not None:
        from robustmix.corruptions import corrupt
        from robustmix.corruptions import store as store_images
        from robustmix.corruptions.storage import check_storage_mode

        check_storage_mode(store)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    wrong = torch.zeros((), dtype=torch.float64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for x, y in _batches(images, labels, batch_size):
        x = _to_float_nchw(x, device)
        y = torch.as_tensor(y).to(device, dtype=torch.int64, non_blocking=True)
        if y.shape != x.shape[:1]:
            raise ValueError(f"labels: expected shape ({x.shape[0]},), got {tuple(y.shape)}")
        if corruption is not None:
            x = store_images(corrupt(x, corruption, severity, generator=generator), store)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(amp, device):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        wrong += (logits.argmax(dim=1) != y).sum().double()
        count += int(y.shape[0])
        if on_batch is not None:
            on_batch(int(y.shape[0]))
    if count == 0:
        raise ValueError("images: expected at least one image, got an empty input")
    return {"error": float(wrong) / count, "loss": float(loss_sum) / count, "n": count}


class _Progress:
    """One tqdm bar over all images of the run (no bar off a terminal or without tqdm)."""

    def __init__(self, *, enabled: bool, total: int) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm
            except ModuleNotFoundError:  # tqdm is the `cli` extra; evaluation works without it
                return
            self.bar = tqdm(total=total, desc="evaluate", unit="img", dynamic_ncols=True)

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)

    def grow(self, extra: int) -> None:
        if self.bar is not None and extra:
            self.bar.total += extra
            self.bar.refresh()

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _image_transform(size: int) -> Callable[[Any], Tensor]:
    from torchvision.transforms import v2

    # ImageNet-C images are stored as 224 px center crops: resize/crop only changes other sizes.
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(size, antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
            v2.ToPureTensor(),
        ]
    )


def _folder_loader(dataset: Any, limit: int | None, batch_size: int) -> tuple[Any, int]:
    if limit is not None and limit < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(limit))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    return loader, len(dataset)


def _folder_classes(dataset: Any) -> list[str]:
    """Class folder names of an ImageFolder, or of the one under a Subset."""
    return list(getattr(dataset, "dataset", dataset).classes)


def _check_same_classes(
    classes: list[str], where: str, expected: tuple[list[str], str] | None
) -> tuple[list[str], str]:
    """Folder labels are the index of the class folder in sorted order, so a severity folder
    that lacks (or adds) a class shifts every label after it without any error (the reference's
    ImageFolder per folder does the same). Refuse that instead: every folder must hold the classes
    of the clean set, or of the first corrupted folder read."""
    if expected is None:
        return list(classes), where
    want, source = expected
    if list(classes) != want:
        missing = sorted(set(want) - set(classes))[:5]
        extra = sorted(set(classes) - set(want))[:5]
        raise ValueError(
            f"source folder {where}: its class folders differ from those of {source} "
            f"(missing {missing}, extra {extra}); labels are the sorted folder index, so every "
            "corruption and severity needs the same class folders"
        )
    return expected


def _check_cifar_c(
    root: Path, corruption: str, images: np.ndarray, labels: np.ndarray, spec: dict[str, Any]
) -> None:
    """Refuse a CIFAR-10-C file whose images or labels do not fit the model, naming the file.

    ``images`` and ``labels`` are the memory maps of :func:`robustmix.data.open_cifar_c`: only
    the header's shape and the (small) labels are read, no image data.
    """
    size, channels = int(spec["image_size"]), int(spec["in_channels"])
    h, w = images.shape[1:3]
    c = images.shape[3] if images.ndim == 4 else 1
    if (h, w, c) != (size, size, channels):
        raise ValueError(
            f"source: {root / f'{corruption}.npy'}: the source's images do not match the model's "
            f"input: they are {h}x{w} with {c} channel(s), the model takes {size}x{size} with "
            f"{channels}"
        )
    num_classes = int(spec["num_classes"])
    if labels.size and int(labels.max()) >= num_classes:
        raise ValueError(
            f"source: {root / 'labels.npy'}: label {int(labels.max())} is out of range for the "
            f"model's {num_classes} classes; expected labels in 0..{num_classes - 1}"
        )


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    dataset: str | None = None,
    corruptions: str | Iterable[str] | None = "all",
    severities: str | Iterable[int] = SEVERITIES,
    source: str | os.PathLike | None = None,
    baseline: str | dict[str, Any] | None = None,
    batch_size: int = 256,
    device: str = "auto",
    seed: int = 0,
    store: str = "release",
    limit: int | None = None,
    amp: str = "none",
    channels_last: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Clean and corrupted top-1 error of a saved model, with the robustness summary.

    Args:
        checkpoint: a ``checkpoint.pt`` written by :func:`robustmix.train.train`.
        data_dir: the clean dataset's folder (default: the training run's ``data_dir``).
        dataset: override the dataset recorded in the checkpoint (e.g. ``"imagefolder"``).
        corruptions: ``"all"``, ``"none"`` (clean only), ``"fog,snow"`` or a list of names.
            With a ``source``, ``"all"`` means every known corruption present there.
        severities: ``"1-5"``, ``"1,3"`` or ints in 1..5.
        source: ``None`` (corrupt on the fly) or a precomputed CIFAR-10-C / ImageNet-C folder.
        baseline: forwarded to :func:`robustmix.metrics.summarize` (``"alexnet"``, a results dict).
        batch_size: images per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        seed: seed of the on-the-fly corruptions.
        store: how on-the-fly corrupted images are stored before the model sees them
            (``"release"``, ``"round"``, ``"float"``; see :func:`evaluate_model`).
        limit: evaluate only the first ``limit`` test images (and of each corrupted set).
        amp: autocast mode ``"none"``, ``"bf16"``, ``"fp16"``.
        channels_last: channels-last memory format for the network and inputs.
        progress: a tqdm bar over all images (only on a terminal).

    Returns:
        The results dict described in the module docstring.

    Raises:
        ValueError: unknown corruption names, bad severities, limit or batch size.
        FileNotFoundError: missing checkpoint, data or corrupted-set files.
    """
    from robustmix.corruptions.storage import check_storage_mode
    from robustmix.data import (
        build_dataset,
        imagenet_c_folder,
        load_cifar_c,
        load_split_tensors,
        open_cifar_c,
    )
    from robustmix.data.corrupted import check_limit
    from robustmix.train.checkpoint import load_checkpoint_model
    from robustmix.train.distributed import resolve_device

    if Path(checkpoint).is_dir():
        raise ValueError(
            f"checkpoint: {str(checkpoint)!r} is a folder; expected a checkpoint.pt file "
            "written by `robustmix train`"
        )
    severities = parse_severities(severities)
    check_storage_mode(store)
    check_limit(limit)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    fmt = source_format(source)
    root = Path(source) if fmt != "on-the-fly" else None
    names = parse_corruptions(
        corruptions, available=_available_in_source(root, fmt) if root is not None else None
    )

    if names and baseline is not None:
        # Fail before hours of evaluation, not after: a dry run of the summary on a dummy table
        # catches a baseline that lacks a severity or corruption layout we are about to produce.
        try:
            summarize(
                {c: dict.fromkeys(severities, 0.5) for c in names},
                clean_error=0.5,
                baseline=baseline,
            )
        except ValueError as exc:
            raise ValueError(
                f"baseline: cannot score severities {list(severities)} against it: {exc}"
            ) from exc

    dev = resolve_device(device)
    model, meta = load_checkpoint_model(checkpoint, map_location=dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    config = meta.get("config") or {}
    name = dataset or meta.get("dataset") or config.get("dataset")
    if not name:
        raise ValueError(
            f"dataset: checkpoint {str(checkpoint)!r} records no dataset; pass dataset="
        )
    root_dir = data_dir if data_dir is not None else config.get("data_dir")
    spec = meta["model_spec"]
    image_size = int(spec["image_size"])
    if fmt == "cifar-c":  # every file matches the model before any evaluation runs
        for corruption in names:
            _check_cifar_c(root, corruption, *open_cifar_c(root, corruption), spec)
    run = {"batch_size": batch_size, "amp": amp, "channels_last": channels_last}

    if name == "imagefolder":
        clean_ds = build_dataset(
            name, root=root_dir, split="test", augment="none", image_size=image_size
        )
        clean_loader, n_clean = _folder_loader(clean_ds, limit, batch_size)
        clean_args: tuple[Any, Any] = (clean_loader, None)
        folder_classes: tuple[list[str], str] | None = (_folder_classes(clean_ds), "the clean set")
    else:
        images, labels = load_split_tensors(name, root=root_dir, split="test", limit=limit)
        n_clean = len(labels)
        clean_args = (images, labels)
        folder_classes = None

    bar = _Progress(enabled=progress, total=n_clean * (1 + len(names) * len(severities)))
    corrupted: dict[str, dict[str, float]] = {}
    corrupted_loss: dict[str, dict[str, float]] = {}
    corrupted_n: dict[str, dict[str, int]] = {}
    try:
        bar.describe("clean")
        clean = evaluate_model(model, *clean_args, on_batch=bar.update, **run)
        for corruption in names:
            for severity in severities:
                bar.describe(f"{corruption} s{severity}")
                if fmt == "on-the-fly":
                    gen = torch.Generator(device="cpu").manual_seed(
                        pair_seed(seed, corruption, severity)
                    )
                    result = evaluate_model(
                        model, *clean_args, corruption=corruption, severity=severity,
                        generator=gen, store=store, on_batch=bar.update, **run,
                    )  # fmt: skip
                elif fmt == "cifar-c":
                    # Checked above; only the first `limit` images of the slice are read.
                    c_images, c_labels = load_cifar_c(root, corruption, severity, limit=limit)
                    bar.grow(len(c_labels) - n_clean)
                    result = evaluate_model(model, c_images, c_labels, on_batch=bar.update, **run)
                else:
                    folder = imagenet_c_folder(
                        root, corruption, severity, _image_transform(image_size)
                    )
                    where = f"{corruption}/{severity}"
                    folder_classes = _check_same_classes(folder.classes, where, folder_classes)
                    loader, n = _folder_loader(folder, limit, batch_size)
                    bar.grow(n - n_clean)
                    result = evaluate_model(model, loader, on_batch=bar.update, **run)
                key = str(severity)
                corrupted.setdefault(corruption, {})[key] = result["error"]
                corrupted_loss.setdefault(corruption, {})[key] = result["loss"]
                corrupted_n.setdefault(corruption, {})[key] = result["n"]
    finally:
        bar.close()

    baseline_label = baseline if isinstance(baseline, str) or baseline is None else "results"
    summary = (
        summarize(corrupted, clean_error=clean["error"], baseline=baseline) if corrupted else None
    )
    return {
        "checkpoint": str(checkpoint),
        "dataset": name,
        "model": meta.get("model"),
        "epoch": meta.get("epoch"),
        "config": {
            "corruptions": list(names),
            "severities": list(severities),
            "source": "on-the-fly" if root is None else str(root),
            "source_format": fmt,
            "seed": seed,
            "store": store if root is None else None,
            "batch_size": batch_size,
            "limit": limit,
            "device": str(dev),
            "amp": amp,
            "channels_last": channels_last,
            "data_dir": None if root_dir is None else str(root_dir),
            "baseline": baseline_label,
        },
        "clean": clean,
        "corrupted": corrupted,
        "corrupted_loss": corrupted_loss,
        "corrupted_n": corrupted_n,
        "summary": summary,
    }
