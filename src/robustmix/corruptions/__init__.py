"""Batched torch versions of the ImageNet-C / CIFAR-10-C common corruptions.

Each corruption is ``fn(images, severity, generator) -> images``: a float batch (N, C, H, W) in
[0, 1] (C = 1 or 3), a severity 1..5 and a ``torch.Generator``; the result has the input's shape,
dtype and device, values in [0, 1]. Everything is batched (no loop over images, except inside the
JPEG codec), runs on CPU and CUDA, and the same seed gives the same output. Half dtypes are
computed in float32.

Definitions and severity tables are those of Hendrycks & Dietterich, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations" (ICLR 2019), reference code
``ImageNet-C/create_c/make_imagenet_c.py`` (224 px) and ``make_cifar_c.py`` (32 px).

Size rule: images with ``min(H, W) <= 32`` use the CIFAR-10-C table unchanged; larger images use
the ImageNet-C table with lengths (blur radii and sigmas, glass-blur shifts, motion radius and
sigma, elastic jitter and displacement field) scaled by ``side / 224`` (glass-blur shifts rounded,
at least 1; the elastic field is drawn at 224 px and resized, see :mod:`.digital`). Ratios
(pixelate, zoom factors) and intensities are never scaled. So 32 px reproduces CIFAR-10-C, 224 px
reproduces ImageNet-C, 28 px (Fashion-MNIST) gets CIFAR-10-C's parameters and 64 px a shrunken
ImageNet-C. (CIFAR-10-C lengths are not shrunk below 32 px: they already sit at
the pixel scale, where shrinking a binary disk radius or an integer shift reorders severities.)

Deviations from the reference are listed, with the reason, in each module's docstring
(:mod:`.noise`, :mod:`.blur`, :mod:`.digital`, :mod:`.weather`).

Example:
    >>> import torch
    >>> from robustmix.corruptions import corrupt
    >>> x = torch.rand(4, 3, 32, 32)
    >>> y = corrupt(x, "gaussian_noise", 3, generator=torch.Generator().manual_seed(0))
    >>> y.shape, bool(y.min() >= 0), bool(y.max() <= 1)
    (torch.Size([4, 3, 32, 32]), True, True)
"""

from __future__ import annotations

from .registry import (
    ALL_CORRUPTIONS,
    BENCHMARK_CORRUPTIONS,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    GROUPS,
    SEVERITY_TABLES,
    corrupt,
    resolve_corruptions,
)
from .storage import STORAGE_MODES, store

__all__ = [
    "ALL_CORRUPTIONS",
    "BENCHMARK_CORRUPTIONS",
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "GROUPS",
    "SEVERITY_TABLES",
    "STORAGE_MODES",
    "corrupt",
    "resolve_corruptions",
    "store",
]
