"""Shared helpers for the corruptions: severity tables, randomness, padding, filters, colour.

Every corruption module builds on these so that the size rule, the border conventions and the
random-number handling are the same everywhere (and written once):

* :class:`SeverityTable` holds the reference parameters of one corruption for ImageNet-C (224 px)
  and CIFAR-10-C (32 px) and picks the row and the spatial scale for a batch (size rule in
  :func:`reference_scale`).
* ``random_*`` draw on the generator's device and move the result to the images' device, so a CPU
  generator drives CUDA images and the same seed gives the same numbers on every device. Draws
  are image-major with a fixed count per image (:func:`per_image_draws`): with a CPU generator,
  image ``i`` gets the same numbers whether the batch is corrupted in one call, in pieces or in
  the CPU chunks of :func:`robustmix.corruptions.corrupt`, so a seed fixes a dataset's corrupted
  copy whatever the batch size.
* :func:`pad2d` supports the border modes of the reference code for any pad width (scipy
  ``nearest``/``reflect``/``mirror``, i.e. torch ``replicate``, half-sample symmetric and OpenCV's
  ``BORDER_REFLECT_101``), which ``F.pad`` cannot do (no symmetric mode, pad < size only).
* :func:`gaussian_filter` equals ``scipy.ndimage.gaussian_filter`` (and so ``skimage.filters.gaussian``)
  over the two spatial dims.
* :func:`rgb_to_hsv` / :func:`hsv_to_rgb` follow ``skimage.color`` (H, S, V all in [0, 1]).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from robustmix._device import divide_exactly_
from robustmix._memory import empty_output
from robustmix._openmp import one_thread, set_this_threads_count

__all__ = [
    "CIFAR_SIDE",
    "IMAGENET_SIDE",
    "SEVERITIES",
    "BorderMode",
    "SeverityTable",
    "apply_motion_blur",
    "banded_product",
    "bernoulli_rows",
    "check_images",
    "check_severity",
    "clipped_zoom",
    "eight_bit_images",
    "filter2d",
    "finish",
    "gaussian_filter",
    "gaussian_kernel1d",
    "hsv_to_rgb",
    "imagemagick_8bit",
    "linear_resample_matrix",
    "map_groups",
    "map_split",
    "motion_blur_offsets",
    "motion_blur_taps",
    "nonzero_where",
    "pad2d",
    "per_image_draws",
    "positive_weight",
    "random_integers",
    "random_normal",
    "random_poisson",
    "random_uniform",
    "reference_scale",
    "reference_size",
    "resize_layer",
    "resolve_generator",
    "rgb_to_gray",
    "rgb_to_hsv",
    "round_to_8bit",
    "scaled_draws",
    "to_work",
    "truncate_to_8bit",
    "with_rgb",
    "worker_pool",
    "zero_below",
]

IMAGENET_SIDE = 224
"""Side length the ImageNet-C parameter tables were written for."""
CIFAR_SIDE = 32
"""Side length the CIFAR-10-C parameter tables were written for."""
SEVERITIES = (1, 2, 3, 4, 5)

BorderMode = str
"""scipy.ndimage names: ``"nearest"`` (edge), ``"reflect"`` (d c b a | a b c d), ``"mirror"`` (d c b | a b c d)."""
_BORDER_MODES = ("nearest", "reflect", "mirror")


# --------------------------------------------------------------------------------------------
# Validation, dtype and the size rule


def check_severity(severity: Any) -> int:
    """Return ``severity`` as an int in 1..5 or raise ``ValueError``/``TypeError`` naming it."""
    if isinstance(severity, bool) or not isinstance(severity, int):
        raise TypeError(f"severity must be an int in 1..5, got {type(severity).__name__} {severity!r}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be an int in 1..5, got {severity}")
    return severity


def check_images(images: Any, *, name: str = "images", eps: float = 1e-4) -> Tensor:
    """Check ``images`` is a floating (N, C, H, W) tensor with C in {1, 3} and values in [0, 1]."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor with values in [0, 1], got dtype {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels, got {images.shape[1]} (shape {tuple(images.shape)})")
    if images.numel():
        lo, hi = (float(v) for v in torch.aminmax(images))  # one pass; NaN propagates
        if not (lo >= -eps and hi <= 1 + eps):  # also catches NaN
            raise ValueError(f"{name} values must lie in [0, 1], got min {lo:.4g} and max {hi:.4g}")
    return images


def to_work(images: Tensor) -> Tensor:
    """The working copy: float32 for half dtypes (their rounding biases noise and blur), else as is."""
    if images.dtype in (torch.float16, torch.bfloat16):
        return images.float()
    return images


def finish(out: Tensor, like: Tensor) -> Tensor:
    """Clip to [0, 1] and return in ``like``'s dtype (the contract of every corruption).

    A temporary is clipped in place (a fresh full-size output costs page faults on CPU); a
    tensor that shares memory with the caller's ``like`` is never written.
    """
    if out.untyped_storage().data_ptr() == like.untyped_storage().data_ptr():
        return out.clamp(0.0, 1.0).to(like.dtype)
    return out.clamp_(0.0, 1.0).to(like.dtype)


def reference_scale(side: int, *, has_cifar: bool = True) -> tuple[str, float]:
    """Which reference table applies to images of ``side`` px, and the factor for spatial parameters.

    The one size rule of this package: images with ``min(H, W) <= 32`` use the CIFAR-10-C table
    as is (scale 1); larger images use the ImageNet-C table with spatial parameters scaled by
    ``side / 224``. So 32 px reproduces CIFAR-10-C and 224 px ImageNet-C exactly, and 28 px
    (Fashion-MNIST) gets exactly the CIFAR-10-C parameters. CIFAR-10-C lengths are not rescaled
    below 32 px because they already sit at the pixel scale, where rescaling a binary disk radius
    or an integer shift reorders the severities (defocus radius 1 -> 0.875 px is a no-op disk).
    Returns ``("cifar" | "imagenet", scale)``.
    """
    if has_cifar and side <= CIFAR_SIDE:
        return "cifar", 1.0
    return "imagenet", side / IMAGENET_SIDE


def reference_size(h: int, w: int, side: int) -> tuple[int, int]:
    """``(h, w)`` scaled so that the short side is ``side`` (a reference size), aspect kept,
    at least 1 px: where random layers and fields are rendered before :func:`resize_layer`."""
    short = min(h, w)
    return max(1, round(h * side / short)), max(1, round(w * side / short))


def resize_layer(layer: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear, antialiased resize of (N, C, h, w) to ``size``; identity when sizes agree."""
    if tuple(layer.shape[-2:]) == tuple(size):
        return layer
    return F.interpolate(layer, size=size, mode="bilinear", align_corners=False, antialias=True)


@dataclass(frozen=True)
class SeverityTable:
    """Reference parameters of one corruption, one row per severity 1..5.

    Attributes:
        imagenet: rows of ``make_imagenet_c.py`` (224 px).
        cifar: rows of ``make_cifar_c.py`` (32 px), or ``None`` when CIFAR-10-C has no own table.
    """

    imagenet: tuple[Any, ...]
    cifar: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        for field, rows in (("imagenet", self.imagenet), ("cifar", self.cifar)):
            if rows is not None and len(rows) != len(SEVERITIES):
                raise ValueError(f"SeverityTable.{field} needs 5 rows, got {len(rows)}")

    def row(self, images: Tensor, severity: int) -> tuple[Any, float]:
        """The row for ``severity`` and the spatial scale for ``images`` (see :func:`reference_scale`)."""
        severity = check_severity(severity)
        side = min(int(images.shape[-2]), int(images.shape[-1]))
        which, scale = reference_scale(side, has_cifar=self.cifar is not None)
        rows = self.cifar if which == "cifar" else self.imagenet
        return rows[severity - 1], scale  # type: ignore[index]


# --------------------------------------------------------------------------------------------
# Randomness: draw on the generator's device, then move


def resolve_generator(generator: torch.Generator | None) -> torch.Generator:
    """``generator`` itself, or a fresh CPU generator seeded from OS entropy when ``None``.

    Pass a seeded generator for reproducible output; ``None`` means "any randomness is fine".
    """
    if generator is None:
        fresh = torch.Generator(device="cpu")
        fresh.seed()
        return fresh
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


@lru_cache(maxsize=1)
def worker_pool() -> ThreadPoolExecutor | None:
    """Threads for work that releases the GIL (random draws, the JPEG codec): one per usable
    core besides the caller's; ``None`` on one core. Shared, started on first use. Their torch
    ops run on themselves alone (an OpenMP team of one, :mod:`robustmix._openmp`)."""
    cores = usable_cores()
    if cores <= 1:
        return None
    return ThreadPoolExecutor(
        max_workers=cores - 1, thread_name_prefix="robustmix-worker", initializer=set_this_threads_count, initargs=(1,)
    )


if hasattr(os, "register_at_fork"):
    # A forked child (a DataLoader worker) has none of the parent's pool threads, but would find
    # the parent's executor here, which hands work to threads that do not exist: the first
    # corruption that used it (JPEG, shot noise of float images) hung forever. It starts its own.
    os.register_at_fork(after_in_child=worker_pool.cache_clear)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def map_groups(fn: Callable[[Sequence[Any]], Any], items: Sequence[Any]) -> list[Any]:
    """``[fn(group) for group in groups]``, the items cut into one contiguous group per core.

    The caller's thread runs the first group while the :func:`worker_pool` threads (one per
    extra core) run the others: one hand-off per extra core, not one per item (waking a thread
    costs ~0.1 ms on a VM, as much as a JPEG round trip of a 224 px image). ``fn`` should release
    the GIL; its torch ops run on their own thread alone, the caller's too while it runs a group
    (:func:`robustmix._openmp.one_thread`), so that no OpenMP team competes for the cores. At
    most ``torch.get_num_threads()`` groups, as torch's own ops: a DataLoader worker (one torch
    thread) runs them all itself instead of adding a thread per core in every worker.
    """
    pool = worker_pool()
    workers = 1 if pool is None else min(usable_cores(), torch.get_num_threads(), len(items))
    if workers <= 1:
        return [fn(items)] if len(items) else []
    bounds = [len(items) * i // workers for i in range(workers + 1)]
    groups = [items[a:b] for a, b in itertools.pairwise(bounds)]
    # autograd's modes are per thread: the pool's threads take the caller's (a tensor made under
    # inference_mode can only be written in it)
    modes = (torch.is_inference_mode_enabled(), torch.is_grad_enabled())
    futures = [pool.submit(_in_modes, modes, fn, group) for group in groups[1:]]
    with one_thread():
        out = [fn(groups[0])]
    return out + [future.result() for future in futures]


def _in_modes(modes: tuple[bool, bool], fn: Callable[[Sequence[Any]], Any], group: Sequence[Any]) -> Any:
    inference, grad = modes
    with torch.inference_mode(inference), torch.set_grad_enabled(grad):
        return fn(group)


def map_split(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``[fn(item) for item in items]``, run as :func:`map_groups` (same threads, same rules)."""
    return [y for ys in map_groups(lambda group: [fn(item) for item in group], items) for y in ys]


NORMAL_BLOCK = 16
"""torch's CPU normal sampler turns uniforms into normals 16 at a time (Box-Muller on pairs 8
apart within a block; a tail shorter than 16 redraws a whole block), so draws in rows of a
multiple of 16 give each row the same normals however many rows one call holds."""


def per_image_draws(
    n: int,
    shapes: Sequence[Sequence[int]],
    generator: torch.Generator,
    *,
    like: Tensor,
    kind: str = "uniform",
    dtype: torch.dtype = torch.float32,
) -> list[Tensor]:
    """Draws for ``n`` images, one tensor ``(n, *shape)`` per entry of ``shapes``, from one call.

    All of image ``i``'s numbers come from one row of a single ``(n, T)`` draw (``kind``
    ``"uniform"`` in [0, 1) or ``"normal"``; normal rows padded to :data:`NORMAL_BLOCK`), so on a
    CPU generator they are the stream's next ``T`` numbers after image ``i - 1``'s: the same
    whatever the batch. (Two separate draws, say a layer then an angle per image, would hand the
    second one's numbers to other images when the batch is split differently.)
    """
    if kind not in ("uniform", "normal"):
        raise ValueError(f"kind must be 'uniform' or 'normal', got {kind!r}")
    counts = [math.prod(shape) for shape in shapes]
    total = sum(counts)
    row = -(-total // NORMAL_BLOCK) * NORMAL_BLOCK if kind == "normal" else total
    draw = torch.randn if kind == "normal" else torch.rand
    # into a pooled buffer (the same draws): a fresh batch-sized one was faulted in on most calls
    flat = draw((n, row), generator=generator, dtype=dtype, device=generator.device,
                out=empty_output((n, row), dtype=dtype, device=generator.device))
    out, start = [], 0
    for shape, count in zip(shapes, counts):
        out.append(flat[:, start : start + count].reshape(n, *shape).to(like.device))
        start += count
    return out


def random_uniform(
    shape: Sequence[int], generator: torch.Generator, *, like: Tensor, low: float = 0.0, high: float = 1.0
) -> Tensor:
    """Uniform float32 draws in [low, high) of ``shape`` (dim 0 the images) on ``like``'s device."""
    shape = tuple(shape)
    u = torch.rand(shape, generator=generator, device=generator.device,
                   out=empty_output(shape, dtype=torch.float32, device=generator.device))
    return scaled_draws(u, low, high - low).to(like.device)


def scaled_draws(u: Tensor, offset: float, scale: float) -> Tensor:
    """``u * scale + offset`` in place (no second full-size buffer), e.g. uniforms in [0, 1) to
    [offset, offset + scale)."""
    return u.mul_(scale).add_(offset) if (offset, scale) != (0.0, 1.0) else u


def random_normal(
    shape: Sequence[int], generator: torch.Generator, *, like: Tensor, mean: float = 0.0, std: float = 1.0
) -> Tensor:
    """Normal float32 draws of ``shape`` (dim 0 the images, see :func:`per_image_draws`) on
    ``like``'s device."""
    shape = tuple(shape)
    (z,) = per_image_draws(shape[0], [shape[1:]], generator, like=like, kind="normal")
    return scaled_draws(z, mean, std)


def random_integers(
    low: int, high: int, shape: Sequence[int], generator: torch.Generator, *, like: Tensor
) -> Tensor:
    """Integer draws in ``[low, high)`` (int64, NumPy's ``randint`` convention) on ``like``'s device."""
    r = torch.randint(low, high, tuple(shape), generator=generator, device=generator.device)
    return r.to(like.device)


_GAP_SIGMAS, _GAP_SLACK = 6.0, 16


def bernoulli_rows(n: int, length: int, p: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The successes among ``n`` rows of ``length`` independent Bernoulli(``p``) trials.

    Returns their flat indices ``row * length + column`` (int64) and one uniform in [0, 1) per
    success (float64, e.g. to pick salt or pepper), both on the generator's device.

    Exact, and ~``1/p`` times fewer draws than one uniform per trial: the gaps between a row's
    successes are i.i.d. geometric, so each row draws a fixed budget of gaps (mean + 6 sd of
    what the row needs) and a running sum places them. The budget is the same for every row,
    so a row's numbers do not depend on the other rows (:func:`per_image_draws`); a row whose
    gaps fall short of its end (odds ~1e-9) continues from a generator seeded by a draw of its
    own that is used for nothing else.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p}")
    device = generator.device
    if n == 0 or length == 0 or p == 0.0:
        return torch.empty(0, dtype=torch.int64, device=device), torch.empty(0, dtype=torch.float64, device=device)
    on_device = torch.empty(0, device=device)
    if p == 1.0:
        (u,) = per_image_draws(n, [(length,)], generator, like=on_device, dtype=torch.float64)
        return torch.arange(n * length, device=device), u.reshape(-1)
    m = max(1, int(length * p + _GAP_SIGMAS * math.sqrt(length * p * (1.0 - p)) + _GAP_SLACK))
    gaps, extra, seeds = per_image_draws(n, [(m,), (m,), (1,)], generator, like=on_device, dtype=torch.float64)
    pos = _geometric_gaps(gaps, p).cumsum_(1).sub_(1.0)  # a row's success columns, increasing
    keep = pos < length
    rows = torch.arange(n, device=device).view(n, 1).expand(n, m)
    # One nonzero for both selections (a bool-mask index runs its own), gathered by index_select
    chosen = keep.view(-1).nonzero().view(-1)
    flat = (rows * length + pos.long()).view(-1).index_select(0, chosen)
    uniforms = extra.reshape(-1).index_select(0, chosen)
    short = (pos[:, -1] < length - 1).nonzero().flatten().tolist()  # rows whose gaps ran out early
    if short:
        more = [_row_tail(float(pos[r, -1]), length, p, float(seeds[r, 0]), device) for r in short]
        flat = torch.cat([flat, *(r * length + cols for r, (cols, _) in zip(short, more))])
        uniforms = torch.cat([uniforms, *(u for _, u in more)])
    return flat, uniforms


def _row_tail(last: float, length: int, p: float, seed: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """Successes of one row after column ``last`` (int64 columns, a uniform each), drawn from a
    generator seeded by the row's own ``seed`` uniform."""
    g = torch.Generator(device=device).manual_seed(int(seed * 2**53))
    cols, uniforms = [], []
    while last < length - 1:
        m = max(1, int((length - 1 - last) * p) + _GAP_SLACK)
        pos = _geometric_gaps(torch.rand(m, dtype=torch.float64, device=device, generator=g), p).cumsum_(0).add_(last)
        u = torch.rand(m, dtype=torch.float64, device=device, generator=g)
        keep = pos < length
        cols.append(pos[keep].long())
        uniforms.append(u[keep])
        last = float(pos[-1])
    return torch.cat(cols), torch.cat(uniforms)


def _geometric_gaps(u: Tensor, p: float) -> Tensor:
    """Geometric(``p``) draws (trials up to the first success, >= 1) from float64 uniforms ``u``.

    By inversion, ``1 + floor(log(v) / log(1 - p))`` for ``v = 1 - u`` uniform in (0, 1]: exact,
    since ``P(G = k) = P((1 - p)**k < v <= (1 - p)**(k - 1))``. torch's ``geometric_`` is the same
    formula run element by element (~2x slower on CPU, timed by hand at 110k draws); here the
    logarithm and the rest are vectorised passes. Overwrites ``u``.
    """
    return u.neg_().add_(1.0).log_().mul_(1.0 / math.log1p(-p)).floor_().add_(1.0)


def random_poisson(rates: Tensor, generator: torch.Generator) -> Tensor:
    """Poisson draws with the given (float32) rates ``(N, ...)``, returned on ``rates``' device.

    On a CPU generator each image draws from its own generator, seeded by one int64 per image
    from ``generator`` (so image ``i``'s counts do not depend on the batch it comes in), and the
    images are spread over the cores (:func:`map_split`): torch's CPU Poisson sampler is serial
    (one core, ~45 ns a draw, like NumPy's). The cheap samplers (uniform, normal: ~2-3 ns a
    draw) stay in one stream: a pool thread only gets the second core after the OpenMP worker
    of the caller's last parallel op stops spinning, which takes about as long as their whole
    draw (timed by hand on 2 cores: no gain for them, ~1.5x for Poisson).
    """
    flat = rates.float().to(generator.device).reshape(rates.shape[0], -1)
    if generator.device.type != "cpu" or rates.shape[0] == 0:
        return torch.poisson(flat, generator=generator).view(rates.shape).to(rates.device)
    seeds = torch.randint(0, 2**63 - 1, (flat.shape[0],), generator=generator, device="cpu").tolist()
    counts = torch.empty_like(flat)

    def draw(i: int) -> None:
        # In pieces of POISSON_BLOCK: a pool thread must run no parallel torch op (it would
        # start a second OpenMP team), and torch.poisson's zero-fill and the copy of a piece
        # stay below torch's parallel grain.
        g = torch.Generator().manual_seed(seeds[i])
        for s in range(0, flat.shape[1], POISSON_BLOCK):
            counts[i, s : s + POISSON_BLOCK].copy_(torch.poisson(flat[i, s : s + POISSON_BLOCK], generator=g))

    map_split(draw, range(flat.shape[0]))
    return counts.view(rates.shape).to(rates.device)


POISSON_BLOCK = 1 << 15
"""Elements per ``torch.poisson`` call in :func:`random_poisson`: at most torch's parallel grain."""


EIGHT_BIT_LEVELS = 256
EIGHT_BIT_TOLERANCE = 1e-3
"""How far (in units of one level, 1/255) a value may sit from a level ``k / 255`` and still
count as 8-bit: float32 ``k / 255`` and its rounding noise pass, anything resampled does not."""


def truncate_to_8bit(x: Tensor) -> Tensor:
    """``np.uint8(clip(x, 0, 1) * 255) / 255`` in ``x``'s dtype: a float image stored as uint8
    the way the reference code stores it (the cast truncates)."""
    return divide_exactly_(torch.floor(x.clamp(0.0, 1.0) * 255), 255)


def round_to_8bit(x: Tensor) -> Tensor:
    """``clip(x, 0, 1)`` rounded to the nearest level ``k / 255`` (as PNG writers and codecs do)."""
    return divide_exactly_(torch.round(x.clamp(0.0, 1.0) * 255), 255)


def imagemagick_8bit(x: Tensor) -> Tensor:
    """The 8-bit PNG ImageMagick (Q16) writes for an image ``x`` in [0, 1] it computed, as ``k / 255``.

    ImageMagick keeps the result as a 16-bit quantum ``q = round(65535 x)`` (257 per 8-bit
    level) and its 8-bit PNG holds ``q // 257``: nearly ``floor(255 x)``, one level higher only
    within 1/514 of a level below an integer, never rounded to the nearest level. Measured
    through the reference's own path (PNG blob, Wand ``motion_blur``, ``make_blob``,
    ``cv2.imdecode``) on ImageMagick 6.9.11-60 Q16: equal on 100 % of pixels (16 images at
    random angles); rounding to the nearest level matched 51 %.
    """
    # One buffer, in place (the same operations and roundings as out of place): six fresh
    # batch-sized temporaries were six fresh mappings faulted in on most CPU calls.
    q = torch.clamp(x, 0.0, 1.0, out=empty_output(x.shape, dtype=x.dtype, device=x.device))
    q.mul_(65535).add_(0.5).floor_()
    # floor(q / 257) is exact on every device, CUDA's product with 1/257 too: checked for every
    # multiple of 257 up to 65535 in float32 and float64 (nothing else lies near an integer).
    return divide_exactly_(q.div_(257).floor_(), 255)


def eight_bit_images(x: Tensor, *, tolerance: float = EIGHT_BIT_TOLERANCE) -> Tensor:
    """(N,) bool: whether every value of image ``i`` is within ``tolerance / 255`` of a level ``k / 255``.

    One scratch buffer and in-place passes (``round(255 x) - 255 x``, then its largest magnitude
    per image): a fresh full-size buffer per step costs more in page faults than the arithmetic.
    """
    if x.numel() == 0:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    scratch = x.mul(255).round_()
    return scratch.sub_(x, alpha=255).abs_().flatten(1).amax(dim=1) <= tolerance


def positive_weight(values: Tensor) -> Tensor:
    """1.0 where ``values > 0``, else 0.0 (same dtype): a 0/1 weight for exact selections.

    On CPU ``torch.where`` and ``masked_fill`` run element by element (4-5.5 ns a value on one
    core, ~10x a lerp and ~20x an add; ``benchmarks/cpu_ops.py`` prints them side by side), and
    a bool -> float cast is 5-7x a uint8 -> float one; this is two vectorised passes. A
    selection ``where(m, a, b)`` of finite ``a``, ``b`` is then ``torch.lerp(b, a, w)`` (weight
    0 gives ``b + 0 (a - b)``, weight 1 ``a - (a - b) 0``: exactly ``b`` and ``a``), or a
    multiplication by ``w`` when ``b`` is 0.
    """
    return torch.sign(values).clamp_(min=0.0)


def zero_below(values: Tensor, threshold: float, *, inplace: bool = False) -> Tensor:
    """``torch.where(values < threshold, 0, values)``, as one vectorised pass.

    ``F.threshold`` keeps ``x > t``; with ``t`` the float just below ``threshold`` in the
    tensor's dtype (where the comparison with a Python float happens) that is ``x >= threshold``
    exactly. ``torch.where``/``masked_fill`` run element by element on CPU (see
    :func:`positive_weight`): 15-25x slower here (``benchmarks/cpu_ops.py``).
    """
    bound = torch.tensor(threshold, dtype=values.dtype, device="cpu")
    below = float(torch.nextafter(bound, torch.tensor(-math.inf, dtype=values.dtype, device="cpu")))
    return (F.threshold_ if inplace else F.threshold)(values, below, 0.0)


def nonzero_where(values: Tensor, weight: Tensor) -> Tensor:
    """``values`` where ``weight`` is 1, else 1.0: a divisor that is never 0 (``weight`` from
    :func:`positive_weight`)."""
    one = torch.ones((), dtype=values.dtype, device=values.device).expand_as(values)  # no buffer
    return torch.lerp(one, values, weight)


def random_poisson_levels(levels: Tensor, scale: float, generator: torch.Generator) -> Tensor:
    """Poisson draws of rate ``scale * k / 255`` for 8-bit levels ``k`` (float32 counts).

    An 8-bit image has only 256 rates, so each gets an alias table (Walker; built once per
    ``scale``) and a draw is one float64 uniform, two table lookups and a comparison: ~5x less
    work than torch's serial CPU sampler, and the rates are the reference's exactly
    (``uint8 / 255 * c`` in float64). The pmf is truncated where the tail is below 1e-20.
    """
    prob, alias, width = _poisson_alias_table(float(scale), str(levels.device))
    shape, device = levels.shape, levels.device
    # Its batch-sized temporaries (float64 and int64: 9.6 MB each at B8x3x224^2) come from
    # the buffer pool: fresh, they were page-faulted in on every call (the same values either way;
    # `python benchmarks/corruptions.py`: shot noise 4.00x -> 4.53x the reference at 224 px).
    u = torch.rand(shape, dtype=torch.float64, generator=generator, device=generator.device,
                   out=empty_output(shape, dtype=torch.float64, device=generator.device))
    u = u.to(device).mul_(width)
    column = torch.floor(u, out=empty_output(shape, dtype=torch.float64, device=device))
    index = empty_output(shape, dtype=torch.int64, device=device).copy_(column).add_(levels, alpha=width)
    keep = u.sub_(column) < torch.take(prob, index, out=empty_output(shape, dtype=torch.float64, device=device))
    drawn = torch.take(alias, index, out=empty_output(shape, dtype=alias.dtype, device=device))
    return torch.where(keep, empty_output(shape, dtype=drawn.dtype, device=device).copy_(column), drawn, out=drawn)


@lru_cache(maxsize=32)
def _poisson_alias_table(scale: float, device: str) -> tuple[Tensor, Tensor, int]:
    """Alias tables ``(prob, alias)``, flattened (level, count), and the counts per level."""
    width = math.ceil(scale + 10.0 * math.sqrt(scale) + 10.0)  # P(K >= width) < 1e-20
    rates = torch.arange(EIGHT_BIT_LEVELS, dtype=torch.float64, device="cpu") * (scale / (EIGHT_BIT_LEVELS - 1))
    k = torch.arange(width, dtype=torch.float64, device="cpu")
    log_pmf = k * rates.clamp_min(1e-300).log().unsqueeze(1) - rates.unsqueeze(1) - torch.lgamma(k + 1)
    pmf = log_pmf.exp()
    pmf[0] = 0.0
    pmf[0, 0] = 1.0  # rate 0: always 0
    pmf /= pmf.sum(dim=1, keepdim=True)
    prob, alias = zip(*(_vose_alias(row.tolist()) for row in pmf))
    return (
        torch.tensor(prob, dtype=torch.float64, device=device).reshape(-1),
        torch.tensor(alias, dtype=torch.float32, device=device).reshape(-1),
        width,
    )


def _vose_alias(pmf: list[float]) -> tuple[list[float], list[int]]:
    """Vose's alias method: column ``j`` keeps itself with probability ``prob[j]``, else
    ``alias[j]``; drawing a uniform column gives outcome ``k`` with probability ``pmf[k]``."""
    n = len(pmf)
    scaled = [p * n for p in pmf]
    prob, alias = [1.0] * n, list(range(n))
    small = [i for i, q in enumerate(scaled) if q < 1.0]
    large = [i for i, q in enumerate(scaled) if q >= 1.0]
    while small and large:
        s, big = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], big
        scaled[big] = (scaled[big] + scaled[s]) - 1.0
        (small if scaled[big] < 1.0 else large).append(big)
    return prob, alias  # leftovers (rounding) keep prob 1.0


# --------------------------------------------------------------------------------------------
# Borders and filters


def _border_index(n: int, pad_before: int, pad_after: int, mode: BorderMode, device: torch.device) -> Tensor:
    i = torch.arange(-pad_before, n + pad_after, device=device)
    if mode == "nearest" or n == 1:
        return i.clamp(0, n - 1)
    if mode == "reflect":  # half-sample symmetric, period 2n
        j = i.remainder(2 * n)
        return torch.where(j < n, j, 2 * n - 1 - j)
    if mode == "mirror":  # whole-sample symmetric (OpenCV BORDER_REFLECT_101), period 2n - 2
        j = i.remainder(2 * n - 2)
        return torch.where(j < n, j, 2 * n - 2 - j)
    raise ValueError(f"mode must be one of {_BORDER_MODES}, got {mode!r}")


def pad2d(images: Tensor, pad: tuple[int, int, int, int], *, mode: BorderMode = "nearest") -> Tensor:
    """Pad the last two dims by ``(top, bottom, left, right)`` with a scipy border mode, any width.

    Shape:
        (..., H, W) -> (..., H + top + bottom, W + left + right)
    """
    top, bottom, left, right = (int(p) for p in pad)
    if min(top, bottom, left, right) < 0:
        raise ValueError(f"pad must be non-negative, got {pad}")
    h, w = images.shape[-2:]
    native = images.ndim in (3, 4) and images.is_floating_point()
    if mode == "nearest" and native:
        # torch's native replicate padding: the same values, ~15x faster than two gathers.
        return F.pad(images, (left, right, top, bottom), mode="replicate")
    if mode == "mirror" and native and max(top, bottom) < h and max(left, right) < w:
        # torch's "reflect" is whole-sample symmetric (d c b | a b c d), i.e. scipy's "mirror".
        return F.pad(images, (left, right, top, bottom), mode="reflect")
    rows = _border_index(h, top, bottom, mode, images.device)
    cols = _border_index(w, left, right, mode, images.device)
    return images.index_select(-2, rows).index_select(-1, cols)


def gaussian_kernel1d(sigma: float, *, truncate: float = 4.0) -> Tensor:
    """Normalised float64 Gaussian taps of radius ``int(truncate * sigma + 0.5)`` (scipy's rule)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device="cpu")
    k = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    return k / k.sum()


def _filter_matrix(n: int, taps: Tensor, mode: BorderMode, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    # (n, n) matrix of a 1-D correlation with the border folded in: y = M @ x.
    r = (taps.numel() - 1) // 2
    src = _border_index(n, r, r, mode, device).unfold(0, taps.numel(), 1)  # (n, taps)
    m = torch.zeros(n, n, dtype=torch.float64, device=device)
    rows = torch.arange(n, device=device).view(-1, 1).expand_as(src)
    m.index_put_((rows, src), taps.to(device).expand_as(src).clone(), accumulate=True)
    return m.to(dtype)


_BAND_TILE = 32
"""Output rows per block of a banded filter product (see :func:`banded_product`)."""


def _band_blocks(m: Tensor) -> list[tuple[int, int, int, int]] | None:
    """``(o0, o1, i0, i1)`` blocks of a banded (n_out, n_in) matrix: rows ``o0:o1`` are zero
    outside columns ``i0:i1``. ``None`` when the blocks would skip less than a quarter of it."""
    n_out, n_in = m.shape
    nz = m != 0
    first = nz.to(torch.uint8).argmax(1)
    last = n_in - 1 - nz.flip(1).to(torch.uint8).argmax(1)
    blocks = []
    for o0 in range(0, n_out, _BAND_TILE):
        o1 = min(o0 + _BAND_TILE, n_out)
        blocks.append((o0, o1, int(first[o0:o1].min()), int(last[o0:o1].max()) + 1))
    if sum((o1 - o0) * (i1 - i0) for o0, o1, i0, i1 in blocks) > 0.75 * n_out * n_in:
        return None
    return blocks


def banded_product(m: Tensor, x: Tensor, dim: int) -> Tensor:
    """``m`` (n_out, n_in) applied along ``dim`` of ``x``: -2 gives ``m @ x``, -1 ``x @ m.T``.

    Filter and resampling matrices are mostly zeros (a Gaussian at sigma 3 has 25 taps of 224,
    linear interpolation 2), so on CPU the product is done block by block: each block of
    output rows multiplies only its band of input rows, written straight into its slice of the
    output (a strided slice, which BLAS takes as is). At 224 px a Gaussian filter runs ~2.4x
    faster this way (timed by hand); where the band covers most of the matrix (small images)
    the one dense product is kept, and on CUDA always.
    """
    return _apply_banded(*_banded_operator(m), x, dim)


Blocks = list[tuple[int, int, int, int]] | None


def _banded_operator(m: Tensor) -> tuple[Tensor, Blocks]:
    """``m`` with its band blocks (``None``: use the dense product), for :func:`_apply_banded`."""
    return m, (_band_blocks(m) if m.device.type == "cpu" else None)


def _apply_banded(m: Tensor, blocks: Blocks, x: Tensor, dim: int) -> Tensor:
    if dim not in (-1, -2):
        raise ValueError(f"dim must be -1 or -2, got {dim}")
    if blocks is None or x.device.type != "cpu":
        return m @ x if dim == -2 else x @ m.T
    x = x.contiguous()
    shape = list(x.shape)
    shape[dim] = m.shape[0]
    out = x.new_empty(shape)
    if dim == -2:
        x3, out3 = x.view(-1, *x.shape[-2:]), out.view(-1, *shape[-2:])
        for o0, o1, i0, i1 in blocks:
            torch.matmul(m[o0:o1, i0:i1], x3[:, i0:i1, :], out=out3[:, o0:o1, :])
    else:
        mt = m.T
        x2, out2 = x.view(-1, x.shape[-1]), out.view(-1, shape[-1])
        for o0, o1, i0, i1 in blocks:
            torch.mm(x2[:, i0:i1], mt[i0:i1, o0:o1], out=out2[:, o0:o1])
    return out


@lru_cache(maxsize=128)
def _filter_operator(
    n: int, taps: tuple[float, ...], mode: BorderMode, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Blocks]:
    """The filter matrix of ``taps`` and its band blocks, built once per size, taps and border."""
    taps_t = torch.tensor(taps, dtype=torch.float64, device="cpu")
    return _banded_operator(_filter_matrix(n, taps_t, mode, dtype=dtype, device=device))


CPU_GROUP_ELEMENTS = 1 << 18
"""Padded plane elements per FFT call on CPU (one colour image at 224 px), so that the FFT's
buffers (padded planes, half-spectra, inverse) stay in cache: on a 2-core EPYC, motion blur of
8 images at 224 px ran ~2.5x faster in such groups than as one call of 8 (the separable filters
were timed the same way and gained nothing)."""


def _cpu_group(images: Tensor, plane: int) -> int:
    """Images per FFT call: the whole batch on accelerators, a cache-sized group on CPU."""
    n, c = images.shape[:2]
    if images.device.type != "cpu":
        return max(1, n)
    return max(1, min(n, CPU_GROUP_ELEMENTS // (c * plane)))


def _separable(images: Tensor, taps_y: Tensor, taps_x: Tensor, mode: BorderMode) -> Tensor:
    n, c, h, w = images.shape
    if max(h, w) <= 512 or taps_y.numel() > 2 * h or taps_x.numel() > 2 * w:
        # Two matrix products with banded filter matrices (border rule folded in): on CPU
        # they run 8x faster than single-channel conv2d at 224 px, and they need no padded copy
        # for kernels longer than the image (elastic's sigma of 0.7 * side).
        key_y, key_x = tuple(taps_y.double().tolist()), tuple(taps_x.double().tolist())
        ry = _filter_operator(h, key_y, mode, images.dtype, images.device)
        rx = _filter_operator(w, key_x, mode, images.dtype, images.device)
        return _apply_banded(*rx, _apply_banded(*ry, images, -2), -1)
    ry, rx = (taps_y.numel() - 1) // 2, (taps_x.numel() - 1) // 2
    x = pad2d(images.reshape(n * c, 1, h, w), (ry, ry, rx, rx), mode=mode)
    ky = taps_y.to(device=images.device, dtype=images.dtype).view(1, 1, -1, 1)
    kx = taps_x.to(device=images.device, dtype=images.dtype).view(1, 1, 1, -1)
    x = F.conv2d(F.conv2d(x, ky), kx)
    return x.reshape(n, c, h, w)


def gaussian_filter(
    images: Tensor, sigma: float, *, truncate: float = 4.0, mode: BorderMode = "nearest"
) -> Tensor:
    """Gaussian blur of the two spatial dims, equal to ``scipy.ndimage.gaussian_filter``.

    ``skimage.filters.gaussian`` (used by the reference) is this with ``mode="nearest"``,
    ``truncate=4.0`` and no blur across channels.

    Shape:
        (N, C, H, W) -> (N, C, H, W)
    """
    if sigma <= 0:
        return images
    taps = gaussian_kernel1d(sigma, truncate=truncate)
    return _separable(images, taps, taps, mode)


_SHIFTED_SUM_MAX_TAPS = 9


def filter2d(images: Tensor, kernel: Tensor, *, mode: BorderMode = "mirror") -> Tensor:
    """Correlate each channel with ``kernel`` (as ``cv2.filter2D``; its default border is ``"mirror"``).

    ``kernel`` is (kh, kw) shared by the batch or (N, kh, kw) one per image, odd sizes, centred.

    Shape:
        (N, C, H, W) -> (N, C, H, W)
    """
    n, c, h, w = images.shape
    shared = kernel.ndim == 2
    if shared:
        kernel = kernel.expand(n, *kernel.shape)
    if kernel.ndim != 3 or kernel.shape[0] != n or kernel.shape[1] % 2 == 0 or kernel.shape[2] % 2 == 0:
        raise ValueError(f"kernel must be (kh, kw) or (N, kh, kw) with odd sizes, got {tuple(kernel.shape)}")
    kh, kw = kernel.shape[1:]
    x = pad2d(images, (kh // 2, kh // 2, kw // 2, kw // 2), mode=mode)
    if shared and kh * kw <= _SHIFTED_SUM_MAX_TAPS and images.device.type == "cpu":
        # Small shared kernels (Sobel, box, emboss): a sum of shifted views, in place, beats a
        # depthwise convolution on CPU by ~5x and skips zero taps.
        out = torch.zeros_like(images)
        for (i, j), k in zip(itertools.product(range(kh), range(kw)), kernel[0].flatten().tolist()):
            if k != 0.0:
                out.add_(x[..., i : i + h, j : j + w], alpha=k)
        return out
    if shared and kh * kw >= _FFT_MIN_TAPS and images.device.type == "cpu":
        return _fft_correlate(x, kernel[0], h, w)
    weight = kernel.to(device=images.device, dtype=images.dtype)
    weight = weight.repeat_interleave(c, dim=0).unsqueeze(1)  # (N*C, 1, kh, kw), one group per plane
    # Depthwise convolution over the N*C planes; oneDNN runs it ~20% faster channels-last.
    planes = x.reshape(1, n * c, *x.shape[-2:]).contiguous(memory_format=torch.channels_last)
    out = F.conv2d(planes, weight, groups=n * c)
    return out.reshape(n, c, h, w)


# From 15x15 taps (defocus at 224 px, severity >= 3) a CPU correlation is cheaper through the
# FFT in cache-sized groups (measured on a 2-core EPYC: 15x15 1.3x, 21x21 1.8x faster than the
# depthwise convolution; 11x11 still slower). OpenCV's filter2D switches at 11x11 likewise.
_FFT_MIN_TAPS = 15 * 15


def _fft_correlate(padded: Tensor, kernel: Tensor, h: int, w: int) -> Tensor:
    """``out[y, x] = sum_ij kernel[i, j] padded[y + i, x + j]`` for the (h, w) valid outputs.

    Circular convolution with the kernel stored at ``(-i, -j)``: the FFT length covers the padded
    plane, so the valid outputs never read across the wrap (equal to the direct sum up to float
    rounding, ~1e-6 of the values' range).
    """
    kh, kw = kernel.shape
    hp, wp = _fft_size(padded.shape[-2]), _fft_size(padded.shape[-1])
    spread = torch.zeros(hp, wp, dtype=padded.dtype, device=padded.device)
    rows = (-torch.arange(kh, device=padded.device)) % hp
    cols = (-torch.arange(kw, device=padded.device)) % wp
    spread[rows.view(-1, 1), cols.view(1, -1)] = kernel.to(padded.dtype)
    spectrum = torch.fft.rfft2(spread)
    out = torch.empty(*padded.shape[:-2], h, w, dtype=padded.dtype, device=padded.device)
    step = _cpu_group(padded, hp * wp)
    for i in range(0, padded.shape[0], step):
        product = torch.fft.rfft2(padded[i : i + step], s=(hp, wp)).mul_(spectrum)
        out[i : i + step] = torch.fft.irfft2(product, s=(hp, wp))[..., :h, :w]
    return out


def linear_resample_matrix(coords: Tensor, size: int) -> Tensor:
    """(len(coords), size) matrix of linear-interpolation weights at float pixel ``coords``.

    Coordinates are clamped to ``[0, size - 1]`` (edge values), which is all the zooms here need.
    """
    coords = coords.clamp(0, size - 1)
    lo = coords.floor().long().clamp(max=size - 1)
    hi = (lo + 1).clamp(max=size - 1)
    frac = coords - lo.to(coords.dtype)
    m = torch.zeros(coords.numel(), size, dtype=coords.dtype, device=coords.device)
    rows = torch.arange(coords.numel(), device=coords.device)
    m.index_put_((rows, lo), 1 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m


def _zoom_coords(n: int, zoom: float, device: torch.device) -> Tensor:
    # scipy.ndimage.zoom(order=1) of the centre crop, trimmed back to n (the reference's clipped_zoom).
    crop = math.ceil(n / zoom)
    top = (n - crop) // 2
    out = round(crop * zoom)
    trim = (out - n) // 2
    step = (crop - 1) / (out - 1) if out > 1 else 0.0
    o = torch.arange(trim, trim + n, dtype=torch.float64, device=device)
    return top + o * step


ZOOM_MATRIX_MAX_SIDE = 63
"""Largest side zoomed on CPU by interpolation matrices; larger images go through ``F.interpolate``.

Timed round-robin on a 2-core EPYC, about 1.2M values a call, zoom 1.1 (median ms, matrices vs
``F.interpolate``): 16 px 1.4 vs 4.4, 32 px 2.0 vs 5.0, 56 px 3.3 vs 6.4, 64 px 3.4 vs 2.1; at
224 px the banded products used before took ~11 ms, ``F.interpolate`` ~1.8 ms."""


def clipped_zoom(images: Tensor, zoom: float) -> Tensor:
    """Zoom into the centre by ``zoom`` >= 1 keeping the size (reference ``clipped_zoom``, order 1).

    The reference zooms the centre crop of side ``ceil(n / zoom)`` with ``scipy.ndimage.zoom``
    (order 1, ``grid_mode=False``: output ``i`` samples input ``i * (crop - 1) / (out - 1)``), which
    is bilinear interpolation with ``align_corners=True``, then trims the centre ``n``. Small
    images on CPU use the same sampling as two cached interpolation matrices (see
    :data:`ZOOM_MATRIX_MAX_SIDE`). Equal to scipy up to float rounding (~1e-5 in float32).

    Shape:
        (..., H, W) -> (..., H, W)
    """
    h, w = images.shape[-2:]
    if images.device.type == "cpu" and max(h, w) <= ZOOM_MATRIX_MAX_SIDE:
        wy = _zoom_matrix(h, zoom, images.dtype)
        wx = _zoom_matrix(w, zoom, images.dtype)
        return (wy @ images) @ wx.T
    crop_h, crop_w = math.ceil(h / zoom), math.ceil(w / zoom)
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    out_h, out_w = round(crop_h * zoom), round(crop_w * zoom)
    crop = images[..., top : top + crop_h, left : left + crop_w].reshape(-1, 1, crop_h, crop_w)
    zoomed = F.interpolate(crop, size=(out_h, out_w), mode="bilinear", align_corners=True)
    trim_h, trim_w = (out_h - h) // 2, (out_w - w) // 2
    return zoomed[..., trim_h : trim_h + h, trim_w : trim_w + w].reshape(images.shape)


@lru_cache(maxsize=128)
def _zoom_matrix(n: int, zoom: float, dtype: torch.dtype) -> Tensor:
    """(n, n) CPU matrix of :func:`clipped_zoom` along one axis, built once per size and factor."""
    return linear_resample_matrix(_zoom_coords(n, zoom, torch.device("cpu")), n).to(dtype)


# --------------------------------------------------------------------------------------------
# Colour


def rgb_to_gray(images: Tensor) -> Tensor:
    """ITU-R 601-2 luma (0.299, 0.587, 0.114), as OpenCV/PIL/torchvision; C=1 passes through.

    Shape:
        (N, C, H, W) -> (N, 1, H, W)
    """
    if images.shape[-3] == 1:
        return images
    r, g, b = images.unbind(-3)
    # Each product rounded, then summed left to right: the same floats as 0.299 r + 0.587 g + 0.114 b
    # (an ``add_(alpha=)`` would fuse the multiply-add and move values at .5 boundaries).
    gray = r * 0.299
    gray += g * 0.587
    gray += b * 0.114
    return gray.unsqueeze(-3)


def with_rgb(images: Tensor, op: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply an RGB-only ``op``; a grayscale batch goes in as three equal channels, comes out as luma."""
    if images.shape[-3] == 3:
        return op(images)
    return rgb_to_gray(op(images.expand(*images.shape[:-3], 3, *images.shape[-2:])))


def rgb_to_hsv(rgb: Tensor) -> Tensor:
    """RGB in [0, 1] -> HSV with H, S, V in [0, 1] (``skimage.color.rgb2hsv`` conventions).

    Shape:
        (..., 3, H, W) -> (..., 3, H, W)
    """
    r, g, b = rgb.unbind(-3)
    v, _ = rgb.max(dim=-3)
    delta = v - rgb.min(dim=-3).values
    s = torch.where(v > 0, delta / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(
        r == v, (g - b) / safe, torch.where(g == v, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)
    )
    h = torch.where(delta > 0, (h / 6.0).remainder(1.0), torch.zeros_like(h))
    return torch.stack((h, s, v), dim=-3)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """HSV with components in [0, 1] -> RGB (``skimage.color.hsv2rgb`` conventions).

    Shape:
        (..., 3, H, W) -> (..., 3, H, W)
    """
    h, s, v = hsv.unbind(-3)
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.long().remainder(6)
    p = v * (1 - s)
    q = v * (1 - s * f)
    t = v * (1 - s * (1 - f))
    # Sector table of the standard HSV cone: (r, g, b) for i = 0..5.
    r = torch.stack((v, q, p, p, t, v), dim=0)
    g = torch.stack((t, v, v, q, p, p), dim=0)
    b = torch.stack((p, p, t, v, v, q), dim=0)
    idx = i.unsqueeze(0)
    out = [ch.gather(0, idx).squeeze(0) for ch in (r, g, b)]
    return torch.stack(out, dim=-3)


# --------------------------------------------------------------------------------------------
# Motion blur (ImageMagick's MotionBlurImage, used by motion_blur and snow)


def motion_blur_taps(radius: float, sigma: float) -> Tensor:
    """ImageMagick's one-sided motion-blur weights: ``2 * ceil(radius) + 1`` Gaussian taps from 0.

    Tap ``i`` weighs ``exp(-i^2 / (2 sigma^2))`` (normalised to sum 1) and sits ``i`` pixels along
    the blur direction.
    """
    if not radius > 0 or not sigma > 0:
        raise ValueError(f"radius and sigma must be > 0, got radius={radius}, sigma={sigma}")
    width = int(2 * math.ceil(radius) + 1)
    i = torch.arange(width, dtype=torch.float64, device="cpu")
    k = torch.exp(-(i**2) / (2.0 * float(sigma) ** 2))
    return k / k.sum()


def motion_blur_offsets(width: int, angles: Tensor) -> tuple[Tensor, Tensor]:
    """Integer (dx, dy) of taps 0..width-1 for each angle in degrees, ImageMagick's rounding.

    ``dx = ceil(i cos(a) - 1/2)``, ``dy = ceil(i sin(a) - 1/2)`` with x to the right and y down,
    in ImageMagick's own float64 steps: ``a = pi * deg / 180``, ``p = (width sin a, width cos a)``,
    ``dx = ceil(i p_y / hypot(p) - 1/2)``. The steps matter where ``i cos a`` or ``i sin a`` is a
    half-integer (e.g. -30 degrees, where ``sin`` is -1/2): there ``i sin(a)`` in float64 sits one
    ulp off the tie and rounds to the other pixel, while ImageMagick's quotient lands on it (at -30
    degrees and radius 10, 48 % of the output bytes differed). The few scalars per image are
    computed with Python's ``math`` (the C library ImageMagick calls).
    Shape: angles (N,) -> two (N, width) int64 tensors.
    """
    px, py, hyp = [], [], []
    for degrees in angles.double().cpu().tolist():
        radians = math.pi * degrees / 180.0  # ImageMagick's DegreesToRadians
        sx, sy = width * math.sin(radians), width * math.cos(radians)
        px.append(sx)
        py.append(sy)
        hyp.append(math.hypot(sx, sy))

    def column(values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=torch.float64, device=angles.device).view(-1, 1)

    i = torch.arange(width, dtype=torch.float64, device=angles.device)
    dx = torch.ceil(i * column(py) / column(hyp) - 0.5).long()
    dy = torch.ceil(i * column(px) / column(hyp) - 0.5).long()
    return dx, dy


def _fft_size(n: int) -> int:
    """The smallest m >= n whose prime factors are 2, 3 and 5 (fast FFT lengths)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


MOTION_DIRECT_MIN_PIXELS = 64 * 64
"""Above this many pixels an image is motion-blurred on CPU tap by tap (one shifted add per tap)
rather than by FFT. ``python benchmarks/motion_route.py`` times ``motion_blur`` (severity 3) both
ways; on the 2-core EPYC (commit 8a68e7f), FFT time over taps time: B8x3x224^2 1.22x, B8x3x112^2
1.55x, B16x3x64^2 0.71x, B32x3x32^2 0.53x, B64x3x28^2 0.48x (the per-tap call overhead of small
images). The same 8-bit levels either way up to float rounding (a few values in 10^5 one level
apart)."""


def _motion_blur_direct(images: Tensor, taps: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
    """``out(y, x) = sum_i w_i * in(y + dy_i, x + dx_i)`` (edge border) image by image, the taps
    summed in order: the formula itself, where the FFT route equals it up to float rounding."""
    h, w = images.shape[-2:]
    out = empty_output(images.shape, dtype=images.dtype, device=images.device)
    weights = taps.tolist()
    for k, (xs, ys) in enumerate(zip(dx.tolist(), dy.tolist())):
        r = max(max(map(abs, xs)), max(map(abs, ys)))
        padded = pad2d(images[k : k + 1], (r, r, r, r), mode="nearest")[0]
        shifted = [padded[:, r + y : r + y + h, r + x : r + x + w] for x, y in zip(xs, ys)]
        acc = torch.mul(shifted[0], weights[0], out=out[k])
        for view, weight in zip(shifted[1:], weights[1:]):
            acc.add_(view, alpha=weight)
    return out


def apply_motion_blur(images: Tensor, *, radius: float, sigma: float, angles: Tensor) -> Tensor:
    """Motion-blur each image along its own angle (degrees), as ImageMagick's ``-motion-blur``.

    ``out(y, x) = sum_i w_i * in(y + dy_i, x + dx_i)`` with edge pixels repeated beyond the border
    (ImageMagick's default virtual pixels). Every image has its own sparse line kernel, so this is
    one FFT convolution of the edge-padded batch with a per-image kernel image: the padding is as
    wide as the longest offset, so the circular wrap never reaches the cropped result and the
    output equals the direct sum (up to float rounding), at the cost of three FFTs. On CPU,
    images above :data:`MOTION_DIRECT_MIN_PIXELS` take the direct sum, one shifted add per tap.

    Shape:
        images (N, C, H, W), angles (N,) -> (N, C, H, W)
    """
    n, _, h, w = images.shape
    taps = motion_blur_taps(radius, sigma).to(device=images.device, dtype=images.dtype)
    dx, dy = motion_blur_offsets(taps.numel(), angles.to(images.device))
    r = int(torch.maximum(dx.abs().max(), dy.abs().max())) if taps.numel() else 0
    if r == 0:
        return images * taps.sum()
    if images.device.type == "cpu" and h * w > MOTION_DIRECT_MIN_PIXELS:
        return _motion_blur_direct(images, taps, dx, dy)
    # FFT sizes with small prime factors only (h + 2r can be 4 x 71); the extra zeros change
    # nothing in the cropped result, which never reads across the wrap.
    hp, wp = _fft_size(h + 2 * r), _fft_size(w + 2 * r)
    # out[p] = sum_i w_i in[p + d_i] is a circular convolution with weights at -d_i.
    kernel = torch.zeros(n, hp, wp, dtype=images.dtype, device=images.device)
    batch = torch.arange(n, device=images.device).view(n, 1).expand_as(dx)
    kernel.index_put_(
        (batch, (-dy) % hp, (-dx) % wp), taps.view(1, -1).expand(n, -1).contiguous(), accumulate=True
    )
    out = torch.empty_like(images, memory_format=torch.contiguous_format)
    step = _cpu_group(images, hp * wp)
    for i in range(0, n, step):
        padded = pad2d(images[i : i + step], (r, r, r, r), mode="nearest")
        spectrum = torch.fft.rfft2(padded, s=(hp, wp)).mul_(torch.fft.rfft2(kernel[i : i + step]).unsqueeze(1))
        out[i : i + step] = torch.fft.irfft2(spectrum, s=(hp, wp))[..., r : r + h, r : r + w]
    return out


