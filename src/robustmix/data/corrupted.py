"""Precomputed corrupted test sets: the CIFAR-10-C ``.npy`` layout and the ImageNet-C folder tree.

CIFAR-10-C layout (Hendrycks & Dietterich, 2019): ``<corruption>.npy`` holds uint8 images of
shape (5 * N, H, W, C), severity-major (rows ``(s - 1) * N : s * N`` are severity ``s``), and
``labels.npy`` holds the (5 * N,) labels (the clean labels repeated five times) or just (N,).
ImageNet-C layout: ``<corruption>/<severity>/<class>/<image>``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from .folders import image_folder

__all__ = ["SEVERITIES", "imagenet_c_folder", "list_cifar_c", "load_cifar_c", "open_cifar_c"]

SEVERITIES = (1, 2, 3, 4, 5)


def _check_severity(severity: int) -> int:
    if isinstance(severity, bool) or int(severity) != severity or severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {list(SEVERITIES)}, got {severity!r}")
    return int(severity)


def check_limit(limit: int | None) -> None:
    """``limit`` (images to evaluate or read) must be a positive int or None; raise naming it."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit: expected a positive int or None, got {limit!r}")


def list_cifar_c(root: str | os.PathLike) -> list[str]:
    """Corruption names present in a CIFAR-10-C style folder (``*.npy`` except ``labels``)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"corrupted-set folder {root} does not exist")
    return sorted(p.stem for p in root.glob("*.npy") if p.stem != "labels")


def load_cifar_c(
    root: str | os.PathLike, corruption: str, severity: int, *, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load one (corruption, severity) slice of a CIFAR-10-C style set.

    Only the requested slice is read (the file is memory-mapped), so evaluating one severity of
    a 5 x 10,000-image file does not load the other four; with ``limit`` only its first
    ``limit`` images are read.

    Args:
        root: Folder holding ``<corruption>.npy`` and ``labels.npy``.
        corruption: e.g. ``"gaussian_noise"``.
        severity: 1..5.
        limit: read at most this many images of the slice (its first ones); None reads all.

    Returns:
        ``(images, labels)``: uint8 ``(N, H, W, C)`` (a grayscale ``(5N, H, W)`` file gets
        ``C = 1``) and int64 ``(N,)``.
    """
    severity = _check_severity(severity)
    check_limit(limit)
    images, labels = open_cifar_c(root, corruption)
    n = images.shape[0] // len(SEVERITIES)
    count = min(n, limit or n)
    rows = slice((severity - 1) * n, (severity - 1) * n + count)
    out = np.array(images[rows])
    if out.ndim == 3:
        out = out[..., None]
    out_labels = np.array(labels[rows] if labels.shape[0] == images.shape[0] else labels[:count], dtype=np.int64)
    return out, out_labels


def open_cifar_c(root: str | os.PathLike, corruption: str) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map and validate ``<corruption>.npy`` and ``labels.npy``, reading no image data.

    Returns the two read-only memory maps: images ``(5*N, H, W[, C])`` uint8 and labels
    ``(5*N,)`` or ``(N,)``, after checking dtypes, shapes and that labels are integers >= 0 (the
    labels are read; they are small). Callers that only need the layout, e.g. to refuse a set
    that does not fit a model before any work, use this instead of :func:`load_cifar_c`.
    """
    root = Path(root)
    path = root / f"{corruption}.npy"
    if not path.is_file():
        available = list_cifar_c(root)
        raise FileNotFoundError(
            f"corruption {corruption!r}: {path} does not exist; available in {root}: "
            f"{available if available else 'none (no <corruption>.npy files)'}"
        )
    labels_path = root / "labels.npy"
    if not labels_path.is_file():
        raise FileNotFoundError(
            f"{labels_path} does not exist; a CIFAR-10-C style folder needs labels.npy "
            "with shape (5*N,) or (N,)"
        )
    images, labels = _load_npy(path), _load_npy(labels_path)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(
            f"{path}: expected uint8 images of shape (5*N, H, W, C) or (5*N, H, W), got "
            f"{images.dtype} {images.shape}"
        )
    if images.ndim == 4 and images.shape[-1] not in (1, 3):
        raise ValueError(
            f"{path}: last dim must be channels (1 or 3) in NHWC layout, got shape {images.shape}"
        )
    total = images.shape[0]
    if total % len(SEVERITIES):
        raise ValueError(
            f"{path}: first dim {total} is not a multiple of 5; expected 5*N images stacked "
            "severity-major (severities 1..5)"
        )
    n = total // len(SEVERITIES)
    if labels.ndim != 1 or labels.shape[0] not in (n, total):
        raise ValueError(
            f"{labels_path}: shape {labels.shape} does not match {path} with {total} images; "
            f"expected ({total},) or ({n},)"
        )
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{labels_path}: expected integer class labels, got dtype {labels.dtype}")
    if labels.size and int(labels.min()) < 0:
        raise ValueError(
            f"{labels_path}: expected class labels >= 0, found {int(labels.min())}"
        )
    return images, labels


def _load_npy(path: Path) -> np.ndarray:
    """Memory-map a ``.npy`` array; a truncated or foreign file is reported by name."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        # numpy parses the header as Python text: a damaged length byte there surfaces as
        # tokenize.TokenError or SyntaxError as well as ValueError / OSError.
        raise ValueError(
            f"{path}: not a readable .npy array ({exc}); the file may be truncated: re-extract it"
        ) from exc


def imagenet_c_folder(
    root: str | os.PathLike,
    corruption: str,
    severity: int,
    transform: Callable[[Any], Any] | None = None,
) -> ImageFolder:
    """An ``ImageFolder`` over ``root/<corruption>/<severity>/<class>/<image>``.

    Args:
        root: The ImageNet-C style root folder.
        corruption: Corruption folder name.
        severity: 1..5.
        transform: Applied to each PIL image; the default converts to a float32 [0, 1] (C, H, W)
            tensor without resizing (ImageNet-C images are already 224 x 224 center crops).

    Returns:
        A ``torchvision.datasets.ImageFolder`` yielding ``(image, class_index)``.
    """
    severity = _check_severity(severity)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet-C root {root} does not exist")
    folder = root / corruption
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"corruption {corruption!r}: folder {folder} does not exist; corruptions present in "
            f"{root}: {present if present else 'none'}"
        )
    sev_folder = folder / str(severity)
    if not sev_folder.is_dir():
        present = sorted(p.name for p in folder.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"severity {severity}: folder {sev_folder} does not exist; severities present for "
            f"{corruption!r}: {present if present else 'none'}"
        )
    if transform is None:
        transform = v2.Compose(
            [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()]
        )
    return image_folder(sev_folder, transform, what=f"ImageNet-C {corruption!r} severity {severity}")
