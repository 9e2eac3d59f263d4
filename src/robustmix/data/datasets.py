"""Dataset registry: facts about each dataset, whole-split arrays, and torch Datasets.

Every dataset yields float32 images in [0, 1] of shape (C, H, W) and an int label; the
channel mean/std in :class:`DatasetInfo` are for the model's ``normalize`` layer, not applied
here. Nothing downloads: each loader reads the standard files from ``root`` and explains how to
get them when they are missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets.folder import find_classes
from torchvision.transforms import v2

from .augment import AUGMENTATIONS, build_transform, to_float01
from .cifar import CIFAR10_CLASSES, CIFAR100_CLASSES, load_cifar
from .folders import image_folder
from .idx import FASHION_MNIST_CLASSES, load_fashion_mnist
from .synthetic import make_synthetic

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "DatasetInfo",
    "build_dataset",
    "dataset_info",
    "load_split_tensors",
]

DATASETS = ("fashion_mnist", "cifar10", "cifar100", "imagefolder", "synthetic", "synthetic_rgb")
SPLITS = ("train", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Default sizes of the synthetic set when no ``limit`` is given: big enough to learn, tiny to run.
_SYNTHETIC_SIZES = {"train": 512, "test": 256}


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a report need to know about a dataset.

    Attributes:
        name: Registry name.
        num_classes: Number of classes.
        in_channels: 1 (grayscale) or 3 (RGB).
        image_size: Native (or default) height = width in pixels.
        mean: Per-channel mean of the training pixels in [0, 1] units.
        std: Per-channel standard deviation, same units.
        class_names: One name per class index.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]


_FIXED_INFO = {
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,), FASHION_MNIST_CLASSES
    ),
    "cifar10": DatasetInfo(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), CIFAR10_CLASSES
    ),
    "cifar100": DatasetInfo(
        "cifar100",
        100,
        3,
        32,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        CIFAR100_CLASSES,
    ),
    # The synthetic patterns have mean ~0.5 and std ~0.2 by construction.
    "synthetic": DatasetInfo(
        "synthetic", 10, 1, 28, (0.5,), (0.2,), tuple(f"pattern_{i}" for i in range(10))
    ),
    "synthetic_rgb": DatasetInfo(
        "synthetic_rgb", 10, 3, 32, (0.5,) * 3, (0.2,) * 3, tuple(f"pattern_{i}" for i in range(10))
    ),
}


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    return key


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")


def _imagefolder_split(root: str | os.PathLike | None, split: str) -> Path:
    """``root/train`` for training; ``root/val`` (ImageNet's name) or ``root/test`` for testing."""
    if root is None:
        raise ValueError(
            "dataset 'imagefolder' needs root (--data-dir): a folder with train/ and val/ (or "
            "test/) subfolders, each holding one folder of images per class"
        )
    root = Path(root)
    candidates = ("train",) if split == "train" else ("val", "test")
    for sub in candidates:
        if (root / sub).is_dir():
            return root / sub
    present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else None
    where = f"folders present: {present}" if present is not None else "root does not exist"
    raise FileNotFoundError(
        f"imagefolder split {split!r}: expected {' or '.join(str(root / c) for c in candidates)} "
        f"(one subfolder per class); {where}"
    )


def dataset_info(name: str, *, root: str | os.PathLike | None = None) -> DatasetInfo:
    """Facts about a dataset, without loading it.

    Args:
        name: One of :data:`DATASETS` (``-`` and ``_`` are interchangeable).
        root: Only for ``"imagefolder"``, whose classes are the subfolders of ``root/train``;
            it uses the ImageNet mean/std and a default size of 224.

    Example:
        >>> dataset_info("fashion_mnist").mean
        (0.286,)
    """
    key = _canonical(name)
    if key != "imagefolder":
        return _FIXED_INFO[key]
    classes = tuple(find_classes(str(_imagefolder_split(root, "train")))[0])
    return DatasetInfo("imagefolder", len(classes), 3, 224, IMAGENET_MEAN, IMAGENET_STD, classes)


class ArrayDataset(Dataset):
    """In-memory uint8 images with a per-item transform.

    Args:
        images: uint8 ``(N, H, W, C)`` array (the layout every loader returns).
        labels: ``(N,)`` integer labels.
        transform: Called on a uint8 ``(C, H, W)`` tensor; ``None`` converts to float [0, 1].
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must have shape ({images.shape[0]},) to match images, got {labels.shape}"
            )
        # Stored as (N, C, H, W) once, so items are views and no per-item transpose is needed.
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        image = to_float01(image) if self.transform is None else self.transform(image)
        return image, int(self.labels[index])


def _load_arrays(
    key: str, root: Any, split: str, limit: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    if key == "fashion_mnist":
        images, labels = load_fashion_mnist(root, split=split)
    elif key in ("cifar10", "cifar100"):
        images, labels = load_cifar(root, name=key, split=split)
    else:  # synthetic
        info = _FIXED_INFO[key]
        images, labels = make_synthetic(
            split=split,
            num_samples=limit if limit is not None else _SYNTHETIC_SIZES[split],
            num_classes=info.num_classes,
            channels=info.in_channels,
            image_size=info.image_size,
            seed=seed,
        )
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")


def load_split_tensors(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    split: str = "test",
    limit: int | None = None,
    seed: int = 0,
    image_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A whole split as arrays, for evaluation and for writing corrupted copies.

    Args:
        name: A dataset name.
        root: Data folder; ``None`` uses the default location where there is one.
        split: ``"train"`` or ``"test"``.
        limit: Keep the first ``limit`` examples (synthetic: generate that many).
        seed: Seed of the synthetic set (ignored by file-backed sets).
        image_size: Only for ``"imagefolder"``: the resize + center-crop size (default 224).

    Returns:
        ``(images, labels)``: uint8 ``(N, H, W, C)`` numpy and int64 ``(N,)``.
    """
    key = _canonical(name)
    _check_split(split)
    _check_limit(limit)
    if key != "imagefolder":
        return _load_arrays(key, root, split, limit, seed)
    size = image_size or 224
    prep = v2.Compose(
        [v2.ToImage(), v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size)]
    )
    folder = image_folder(_imagefolder_split(root, split), prep, what=f"imagefolder split {split!r}")
    count = len(folder) if limit is None else min(limit, len(folder))
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    for i in range(count):
        image, label = folder[i]
        images[i] = image.permute(1, 2, 0).numpy()
        labels[i] = label
    return images, labels


def build_dataset(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    split: str = "train",
    augment: str = "standard",
    image_size: int | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> Dataset:
    """A torch Dataset yielding ``(float32 [0, 1] (C, H, W) tensor, int label)``.

    Args:
        name: One of :data:`DATASETS`.
        root: Data folder; ``None`` uses the default (Fashion-MNIST:
            ``/usr/share/datasets/fashion-mnist/``; synthetic needs none).
        split: ``"train"`` or ``"test"``; only ``"train"`` is augmented.
        augment: One of ``"none"``, ``"standard"`` (per dataset: nothing for Fashion-MNIST,
            pad-4 crop + flip for CIFAR, RandomResizedCrop + flip for ImageFolder), or a policy
            added to the standard recipe: ``"randaugment"``, ``"augmix"``, ``"trivialaugment"``.
        image_size: Output size; ``None`` keeps the dataset's native size (224 for ImageFolder).
        limit: Keep only the first ``limit`` examples (synthetic: generate that many).
        seed: Seed of the synthetic set (ignored by file-backed sets).

    Example:
        >>> ds = build_dataset("synthetic", split="test", limit=8)
        >>> ds[0][0].shape
        torch.Size([1, 28, 28])
    """
    key = _canonical(name)
    _check_split(split)
    _check_limit(limit)
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {list(AUGMENTATIONS)}, got {augment!r}")
    if image_size is not None and (isinstance(image_size, bool) or image_size < 1):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    if key == "imagefolder":
        size = image_size or 224
        transform = build_transform(
            key, split=split, augment=augment, image_size=size, native_size=None
        )
        folder = image_folder(_imagefolder_split(root, split), transform, what=f"imagefolder split {split!r}")
        if limit is not None and limit < len(folder):
            return torch.utils.data.Subset(folder, range(limit))
        return folder
    native = _FIXED_INFO[key].image_size
    transform = build_transform(
        key, split=split, augment=augment, image_size=image_size or native, native_size=native
    )
    images, labels = _load_arrays(key, root, split, limit, seed)
    return ArrayDataset(images, labels, transform)
