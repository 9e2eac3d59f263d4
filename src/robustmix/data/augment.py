"""Per-dataset preprocessing and augmentation pipelines (torchvision v2 transforms).

Pipelines run on uint8 (C, H, W) tensors (or PIL images for ImageFolder), because the policy
augmentations (RandAugment, AugMix, TrivialAugment) are defined on 8-bit pixels, and end with a
conversion to float32 in [0, 1]. Normalisation is *not* here: it lives in the model
(``ImageClassifier.normalize``) so corruptions and diagnostics can work in pixel space.

Randomness: torchvision v2 transforms draw from the global torch RNG and accept no generator.
That is acceptable because they run inside DataLoader workers, which PyTorch seeds per worker
from the DataLoader's own ``generator`` (``base_seed + worker_id``), so a seeded DataLoader gives
reproducible augmentation. With ``num_workers=0`` they draw from the main process's global RNG,
which the training entry point seeds once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchvision.transforms import v2

__all__ = ["AUGMENTATIONS", "build_transform", "to_float01"]

AUGMENTATIONS = ("none", "standard", "randaugment", "augmix", "trivialaugment")
# Which standard recipe a dataset uses: "plain" (no geometric augmentation, the usual choice for
# Fashion-MNIST), "crop_flip" (CIFAR: pad-4 random crop + flip), "imagenet" (RandomResizedCrop).
_STYLE = {
    "fashion_mnist": "plain",
    "synthetic": "plain",
    "synthetic_rgb": "plain",
    "cifar10": "crop_flip",
    "cifar100": "crop_flip",
    "imagefolder": "imagenet",
}
_POLICIES = {
    "randaugment": v2.RandAugment,
    "augmix": v2.AugMix,
    "trivialaugment": v2.TrivialAugmentWide,
}
# ImageNet convention: resize to size / 0.875 (256 for 224), then center-crop.
_CENTER_CROP_RATIO = 0.875


def to_float01(image: torch.Tensor) -> torch.Tensor:
    """uint8 (C, H, W) tensor -> float32 in [0, 1]; the fast path when nothing else is needed.

    Uses the same kernel as ``v2.ToDtype(scale=True)`` so both paths give identical floats.
    """
    return v2.functional.to_dtype(image, torch.float32, scale=True)


def build_transform(
    dataset: str,
    *,
    split: str,
    augment: str,
    image_size: int,
    native_size: int | None,
) -> Callable[[Any], torch.Tensor]:
    """The pipeline from a uint8 image (tensor or PIL) to a float32 [0, 1] (C, H, W) tensor.

    Args:
        dataset: A dataset name known to :func:`robustmix.data.dataset_info`.
        split: ``"train"`` gets augmentation; ``"test"`` only deterministic resizing.
        augment: One of :data:`AUGMENTATIONS`; the policies add to the standard recipe.
        image_size: Output height = width.
        native_size: The stored size of fixed-size datasets (resized when it differs from
            ``image_size``); ``None`` for variable-size images (ImageFolder).

    Returns:
        A callable on one image: a ``v2.Compose``, or :func:`to_float01` when there is nothing
        to do but convert (a per-item Compose costs ~0.3 ms, i.e. seconds per epoch).
    """
    if dataset not in _STYLE:
        raise ValueError(f"dataset must be one of {sorted(_STYLE)}, got {dataset!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {list(AUGMENTATIONS)}, got {augment!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    style = _STYLE[dataset]
    train_aug = split == "train" and augment != "none"
    steps: list[v2.Transform] = []
    if style == "imagenet":
        if train_aug:
            steps += [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            resize = round(image_size / _CENTER_CROP_RATIO)
            steps += [v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)]
    else:
        if native_size is not None and native_size != image_size:
            steps.append(v2.Resize([image_size, image_size], antialias=True))
        if train_aug and style == "crop_flip":
            # Pad 4 px at 32 px; scale the pad with the image so the shift is the same fraction.
            pad = max(1, round(4 * image_size / 32))
            steps += [v2.RandomCrop(image_size, padding=pad), v2.RandomHorizontalFlip()]
    if train_aug and augment in _POLICIES:
        steps.append(_POLICIES[augment]())
    if not steps:
        return to_float01
    steps = [v2.ToImage(), *steps, v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()]
    return v2.Compose(steps)
