"""The corruptions by name, their standard groups, and the validating entry point :func:`corrupt`.

Names and order are those of ImageNet-C / CIFAR-10-C: the 15 benchmark corruptions in the order
of Hendrycks & Dietterich (ICLR 2019), then the 4 extra ones (held-out validation corruptions).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from types import MappingProxyType

import torch
from torch import Tensor

from robustmix._memory import empty_output
from robustmix._openmp import one_thread

from . import blur, digital, noise
from ._common import SeverityTable, check_images, check_severity, resolve_generator

__all__ = [
    "ALL_CORRUPTIONS",
    "BENCHMARK_CORRUPTIONS",
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "GROUPS",
    "SEVERITY_TABLES",
    "CorruptionFn",
    "corrupt",
    "resolve_corruptions",
]

CorruptionFn = Callable[[Tensor, int, "torch.Generator | None"], Tensor]

BENCHMARK_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS: tuple[str, ...] = BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS

GROUPS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {
        "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
        "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
        "weather": ("snow", "frost", "fog"),
        "digital": ("brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"),
        "extra": EXTRA_CORRUPTIONS,
    }
)
_WEATHER = ("snow", "frost", "fog", "spatter")


def _missing_weather(name: str) -> CorruptionFn:
    def unavailable(images: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError(f"corruption {name!r} needs robustmix.corruptions.weather, not in this build")

    unavailable.__name__ = name
    return unavailable


def _weather_functions() -> dict[str, CorruptionFn]:
    # The weather module is written separately; the rest of the registry must work without it.
    try:
        weather = importlib.import_module(f"{__package__}.weather")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.weather":
            raise
        return {name: _missing_weather(name) for name in _WEATHER}
    return {name: getattr(weather, name, None) or _missing_weather(name) for name in _WEATHER}


def _build() -> dict[str, CorruptionFn]:
    local = {
        "gaussian_noise": noise.gaussian_noise,
        "shot_noise": noise.shot_noise,
        "impulse_noise": noise.impulse_noise,
        "speckle_noise": noise.speckle_noise,
        "defocus_blur": blur.defocus_blur,
        "glass_blur": blur.glass_blur,
        "motion_blur": blur.motion_blur,
        "zoom_blur": blur.zoom_blur,
        "gaussian_blur": blur.gaussian_blur,
        "brightness": digital.brightness,
        "contrast": digital.contrast,
        "saturate": digital.saturate,
        "elastic_transform": digital.elastic_transform,
        "pixelate": digital.pixelate,
        "jpeg_compression": digital.jpeg_compression,
    }
    local.update(_weather_functions())
    return {name: local[name] for name in ALL_CORRUPTIONS}


CORRUPTIONS: MappingProxyType[str, CorruptionFn] = MappingProxyType(_build())
"""name -> ``fn(images, severity, generator)`` for all 19 corruptions, in ``ALL_CORRUPTIONS`` order."""


def _tables() -> dict[str, SeverityTable]:
    tables = {**noise.TABLES, **blur.TABLES, **digital.TABLES}
    try:
        weather = importlib.import_module(f"{__package__}.weather")
        tables.update(getattr(weather, "TABLES", {}))
    except ModuleNotFoundError:
        pass
    return {name: tables[name] for name in ALL_CORRUPTIONS if name in tables}


SEVERITY_TABLES: MappingProxyType[str, SeverityTable] = MappingProxyType(_tables())
"""name -> the reference parameter table (ImageNet-C and CIFAR-10-C rows)."""


def resolve_corruptions(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Expand ``"all"``, ``"benchmark"``, ``"extra"``, a group name or a comma list into names.

    Items of a comma list may themselves be groups; duplicates are dropped, order is kept.

    Example:
        >>> resolve_corruptions("noise,contrast")
        ('gaussian_noise', 'shot_noise', 'impulse_noise', 'contrast')
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in items:
        if not isinstance(raw, str):
            raise TypeError(f"corruptions must be names (str), got {type(raw).__name__}")
        item = raw.strip()
        if item == "all":
            names: tuple[str, ...] = ALL_CORRUPTIONS
        elif item == "benchmark":
            names = BENCHMARK_CORRUPTIONS
        elif item in GROUPS:
            names = GROUPS[item]
        elif item in CORRUPTIONS:
            names = (item,)
        else:
            choices = ", ".join(("all", "benchmark", *GROUPS, *ALL_CORRUPTIONS))
            raise ValueError(f"unknown corruption {item!r} in corruptions={spec!r}; valid: {choices}")
        out.extend(n for n in names if n not in out)
    if not out:
        raise ValueError(f"corruptions={spec!r} names no corruption")
    return tuple(out)


def corrupt(
    images: Tensor, name: str, severity: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """Apply corruption ``name`` at ``severity`` (1..5) to a batch of [0, 1] images.

    Args:
        images: float tensor (N, C, H, W) with C in {1, 3} and values in [0, 1].
        name: one of :data:`ALL_CORRUPTIONS`.
        severity: 1 (mild) to 5 (strong).
        generator: randomness for the random corruptions; the same seed gives the same output.
            ``None`` draws a fresh seed. On CPU a large batch goes through in cache-sized chunks
            (:data:`CPU_CHUNK_ELEMENTS`) that draw from this generator in turn. Each image's
            draws follow the previous image's in the generator's stream, a fixed number per
            image, so with a CPU generator an image gets the same corruption whether its batch
            is corrupted in one call, in chunks or in pieces (deterministic arithmetic may
            still round differently for other batch shapes).

    Returns:
        A new tensor with the input's shape, dtype, device and layout (channels-last input gives
        channels-last output, any other layout NCHW-contiguous), values in [0, 1]. A data
        transform, as the reference's on NumPy arrays: no gradient flows through it (an input
        that requires grad is read detached).

    Shape:
        (N, C, H, W) -> (N, C, H, W)

    Example:
        >>> x = torch.full((2, 3, 32, 32), 0.5)
        >>> corrupt(x, "contrast", 3).shape
        torch.Size([2, 3, 32, 32])
    """
    if not isinstance(name, str) or name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption name {name!r}; valid names: {', '.join(ALL_CORRUPTIONS)}")
    severity = check_severity(severity)
    if isinstance(images, Tensor):  # see Returns: several corruptions write into buffers (out=)
        images = images.detach()
    with one_thread() if name in OWN_THREADS and images.device.type == "cpu" else contextlib.nullcontext():
        check_images(images)  # see OWN_THREADS
    fn, generator = CORRUPTIONS[name], resolve_generator(generator)
    # The corruptions run on NCHW-contiguous planes: channels-last input (what permuting a stack
    # of HWC images gives) made the elementwise and per-plane passes 1.1-3.6x slower at 224 px,
    # more than the two layout copies cost; the output comes back in the input's layout.
    channels_last = not images.is_contiguous() and images.is_contiguous(memory_format=torch.channels_last)
    images = images.contiguous()
    step = _chunk_images(images, name)
    if step >= images.shape[0]:
        out = fn(images, severity, generator)
    else:
        # A large batch's output from the pool of large CPU buffers (no page faults once warm).
        out = empty_output(images.shape, dtype=images.dtype, device=images.device)
        for start in range(0, images.shape[0], step):
            out[start : start + step] = fn(images[start : start + step], severity, generator)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


CPU_CHUNK_ELEMENTS = 5 << 18
"""Input elements per call on CPU (5 MiB of float32: 8 images at 3x224x224, 426 at 3x32x32).

Most corruptions are chains of whole-tensor passes; once a batch's working set outgrows the
caches every pass streams from memory, so a large CPU batch goes through in chunks
(``benchmarks/corruptions.py`` times a 64-image batch at 224 px both ways).
"""


UNCHUNKED = frozenset({"jpeg_compression"})
"""Corruptions that take a large CPU batch in one call: JPEG's work is the codec, per image in the
worker threads, and a whole batch hands each thread more images per hand-off; its large
buffers come from the pool (no page faults once warm). 64 images at 224 px: 1,331 images/s in
one call against 881 in chunks of 8 (``benchmarks/corruptions.py``'s large-batch rows, which time
both ways for every corruption; 2-core AVX2 host, commit 7c023fb)."""


OWN_THREADS = frozenset({"jpeg_compression"})
"""Corruptions whose CPU work runs in robustmix's own threads (:func:`~._common.map_groups`),
each thread's torch ops on itself alone. Their input check runs on the calling thread alone too:
a parallel check would leave its OpenMP team spinning on the cores those threads need for
milliseconds after it returns (JPEG at 8 images of 224 px: ~3.2 ms a call after a parallel
check against ~1.7 ms without one, 2 cores)."""


def _chunk_images(images: Tensor, name: str | None = None) -> int:
    """Images per call: all of them on accelerators (and for :data:`UNCHUNKED`), a cache-sized
    chunk on CPU."""
    if images.device.type != "cpu" or name in UNCHUNKED:
        return images.shape[0]
    return max(1, CPU_CHUNK_ELEMENTS // images[0].numel())
