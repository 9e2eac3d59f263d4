"""A corrupted batch as the benchmark files store it, before a model sees it.

The benchmarks are files, not functions: CIFAR-10-C holds ``np.uint8(corruption(x))`` (values
truncated to 8 bits, ``make_cifar_c.py``) and ImageNet-C the same bytes saved as JPEG at quality 85
(``make_imagenet_c.py``: ``Image.fromarray(np.uint8(img)).save(path, quality=85, optimize=True)``).
Published errors, and the AlexNet errors that mCE divides by, were measured on those files, so an
on-the-fly evaluation that wants comparable numbers stores its corrupted images the same way:
``store(images, "release")``. Which format applies follows the package's size rule
(:func:`._common.reference_scale`): images of ``min(H, W) <= 32`` px are CIFAR-10-C's, larger ones
ImageNet-C's.

Example:
    >>> import torch
    >>> x = torch.full((1, 3, 8, 8), 0.5)
    >>> float(store(x, "release")[0, 0, 0, 0] * 255), float(store(x, "round")[0, 0, 0, 0] * 255)
    (127.0, 128.0)
"""

from __future__ import annotations

from torch import Tensor

from ._common import reference_scale, round_to_8bit, to_work, truncate_to_8bit

__all__ = ["RELEASE_JPEG_QUALITY", "STORAGE_MODES", "store"]

STORAGE_MODES = ("release", "round", "float")
"""``"release"``: as the released files (8-bit truncation; JPEG at quality 85 above 32 px);
``"round"``: rounded to 8-bit levels; ``"float"``: unchanged."""

RELEASE_JPEG_QUALITY = 85


def check_storage_mode(mode: str) -> str:
    if mode not in STORAGE_MODES:
        raise ValueError(f"store: expected one of {STORAGE_MODES}, got {mode!r}")
    return mode


def store(images: Tensor, mode: str = "release") -> Tensor:
    """``images`` as stored in ``mode`` (see :data:`STORAGE_MODES`), back as floats in [0, 1].

    ``"release"`` truncates ``clip(x, 0, 1) * 255`` to an integer as ``np.uint8`` does, then, for
    ImageNet-C-sized images (``min(H, W) > 32``), encodes and decodes a JPEG at quality 85 with
    libjpeg's defaults, as PIL saves it (4:2:0 chroma; ``optimize`` only re-codes the Huffman
    tables, so the decoded bytes are the same). JPEG needs 1 or 3 channels.

    Shape:
        (N, C, H, W) -> (N, C, H, W), same dtype and device.
    """
    check_storage_mode(mode)
    if mode == "float":
        return images
    work = to_work(images)
    if mode == "round":
        return round_to_8bit(work).to(images.dtype)
    stored = truncate_to_8bit(work)
    side = min(int(images.shape[-2]), int(images.shape[-1]))
    if reference_scale(side)[0] == "imagenet":
        stored = _jpeg_round_trip(stored, RELEASE_JPEG_QUALITY)
    return stored.to(images.dtype)


def _jpeg_round_trip(stored: Tensor, quality: int) -> Tensor:
    """JPEG round trip at ``quality`` of an image of 8-bit levels ``k / 255`` (float (N, C, H, W))."""
    from .digital import jpeg_levels  # jpeg_compression's codec path (libjpeg)

    channels = stored.shape[1]
    if channels not in (1, 3):
        raise ValueError(f"images: JPEG storage needs 1 or 3 channels, got {channels}")
    return jpeg_levels(stored, quality)
