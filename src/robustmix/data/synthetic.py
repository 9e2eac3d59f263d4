"""A tiny, deterministic, learnable image set for fast tests (no files needed).

Each class owns a smooth low-frequency pattern (a sum of two 2-D cosines with class-specific
frequencies, phases and per-channel weights); a sample is its class pattern with a random
contrast and brightness plus Gaussian pixel noise. A small CNN separates the classes within one
or two epochs, yet the noise keeps the task from being trivial, and because the signal lives in
low frequencies it behaves like natural images under low-/high-pass probes.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["make_synthetic"]

_SPLIT_OFFSET = {"train": 0, "test": 1}


def _class_patterns(
    num_classes: int, channels: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """(num_classes, size, size, channels) float patterns in roughly [-1, 1]."""
    coords = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    patterns = np.zeros((num_classes, size, size, channels))
    for k in range(num_classes):
        for _ in range(2):
            # Frequencies of 1..3 cycles per image keep the signal in the lowest DCT bands.
            fy, fx = rng.integers(0, 4, size=2)
            if fy == 0 and fx == 0:
                fx = 1
            phase = rng.uniform(0, 2 * math.pi)
            wave = np.cos(2 * math.pi * (fy * yy + fx * xx) + phase)
            weights = rng.uniform(0.3, 1.0, size=channels) * rng.choice([-1.0, 1.0], size=channels)
            patterns[k] += 0.5 * wave[..., None] * weights
    return patterns


def make_synthetic(
    *,
    split: str = "train",
    num_samples: int = 256,
    num_classes: int = 10,
    channels: int = 1,
    image_size: int = 28,
    noise: float = 0.15,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate the synthetic set.

    The class patterns depend only on ``seed`` (shared by both splits); the samples depend on
    ``seed`` and ``split``, so train and test are disjoint draws of the same task.

    Args:
        split: ``"train"`` or ``"test"``.
        num_samples: Number of images; labels cycle through the classes (balanced).
        num_classes: Number of classes (>= 2).
        channels: 1 or 3.
        image_size: Height = width in pixels (>= 4).
        noise: Std of the Gaussian pixel noise, in [0, 1] pixel units.
        seed: Seed for everything.

    Returns:
        ``(images, labels)``: uint8 ``(N, H, W, C)`` and int64 ``(N,)``.
    """
    if split not in _SPLIT_OFFSET:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if image_size < 4:
        raise ValueError(f"image_size must be >= 4, got {image_size}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must lie in [0, 1], got {noise}")
    patterns = _class_patterns(num_classes, channels, image_size, np.random.default_rng(seed))
    rng = np.random.default_rng([seed, 1 + _SPLIT_OFFSET[split]])
    labels = np.arange(num_samples, dtype=np.int64) % num_classes
    rng.shuffle(labels)
    contrast = rng.uniform(0.6, 1.0, size=(num_samples, 1, 1, 1))
    brightness = rng.uniform(0.4, 0.6, size=(num_samples, 1, 1, 1))
    pixels = brightness + 0.35 * contrast * patterns[labels]
    pixels += rng.normal(0.0, noise, size=pixels.shape)
    images = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
    return images, labels
