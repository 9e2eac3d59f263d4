"""Blur corruptions: defocus, glass, motion, zoom and gaussian blur, batched in torch.

Definitions and tables follow Hendrycks & Dietterich (ICLR 2019), ``make_imagenet_c.py`` (224 px)
and ``make_cifar_c.py`` (32 px). Size rule (one for the package, see
:func:`robustmix.corruptions._common.reference_scale`): side <= 32 px uses the CIFAR-10-C table
as is, larger images the ImageNet-C table with lengths scaled by ``side / 224``.
Scaled lengths: defocus disk radius, glass-blur sigma and max shift (rounded, at least 1), motion
radius and sigma, gaussian sigma. Zoom factors are ratios and stay as tabled.

Deviations from the reference, and why:

* glass_blur: none in the result. The reference's per-pixel "swap" on an RGB array is in fact a
  copy ``x[r, c] = x[r + dy, c + dx]`` run in scan order, so copied pixels can be copied on;
  :func:`glass_sources` resolves those chains exactly (vectorised pointer jumping instead of a
  sequential Python loop). Only the draws differ (torch generator instead of NumPy's global RNG).
  The reference truncates its first blur to uint8, so both blurs run in its float64 arithmetic
  (:func:`reference_gaussian_float64`): whole levels (flat regions, saturated highlights)
  truncate as there, where a float32 blur moved 13-46 % of the 256 levels by one (sigma 0.25-1.5),
  255 included.
* motion_blur: ImageMagick's ``MotionBlurImage`` rebuilt in torch (same one-sided Gaussian taps,
  same integer offsets and edge border), applied in float, then brought to the 8-bit levels of
  the PNG ImageMagick writes and the reference reads back (:func:`._common.imagemagick_8bit`:
  a 16-bit quantum, then ``q // 257``; equal to ImageMagick 6.9.11 Q16 pixel for pixel).
* defocus_blur: for radii > 8 the reference's disk grid is ``arange(-r, r + 1)``, which is only
  centred for integer ``r``; scaled radii may be fractional, so the grid is ``-ceil(r)..ceil(r)``
  (identical for the tabled integer radii). Scaled radii are at least 1 px (a smaller binary disk
  is a single pixel: no blur). The anti-alias sigma is not scaled (a sub-pixel edge smoothing).
* zoom_blur: the reference's ``scipy.ndimage.zoom(order=1)`` of the centre crop is reproduced with
  linear-interpolation matrices (equal up to float rounding); non-square images zoom each axis
  with the same factor.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from robustmix._device import divide_exactly_
from robustmix._memory import empty_output

from ._common import (
    SeverityTable,
    apply_motion_blur,
    clipped_zoom,
    eight_bit_images,
    filter2d,
    finish,
    gaussian_filter,
    imagemagick_8bit,
    pad2d,
    random_integers,
    random_uniform,
    resolve_generator,
    to_work,
    truncate_to_8bit,
)

__all__ = [
    "TABLES",
    "defocus_blur",
    "disk_kernel",
    "gaussian_blur",
    "glass_blur",
    "glass_sources",
    "motion_blur",
    "reference_gaussian_float64",
    "zoom_blur",
    "zoom_factors",
]

TABLES: dict[str, SeverityTable] = {
    # (disk radius, anti-alias sigma)
    "defocus_blur": SeverityTable(
        imagenet=((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
        cifar=((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    ),
    # (sigma, max_delta, iterations)
    "glass_blur": SeverityTable(
        imagenet=((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
        cifar=((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    ),
    # (radius, sigma) of ImageMagick's motion blur
    "motion_blur": SeverityTable(
        imagenet=((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        cifar=((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    ),
    # zoom factors np.arange(start, stop, step)
    "zoom_blur": SeverityTable(
        imagenet=((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)),
        cifar=((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),
    ),
    # sigma of skimage.filters.gaussian
    "gaussian_blur": SeverityTable(imagenet=(1, 2, 3, 4, 6), cifar=(0.4, 0.6, 0.7, 0.8, 1)),
}

_MOTION_ANGLE_RANGE = (-45.0, 45.0)


def disk_kernel(radius: float, alias_blur: float) -> Tensor:
    """The reference's anti-aliased defocus disk, cropped to its non-zero support (float64).

    A normalised binary disk ``x^2 + y^2 <= r^2`` on a grid of half-width ``max(8, ceil(r))``,
    smoothed by ``cv2.GaussianBlur`` with a 3x3 (r <= 8) or 5x5 kernel of sigma ``alias_blur``
    (OpenCV's default mirror border).
    """
    half = 8 if radius <= 8 else math.ceil(radius)
    k = 3 if radius <= 8 else 5
    grid = torch.arange(-half, half + 1, dtype=torch.float64, device="cpu")
    disk = ((grid.view(-1, 1) ** 2 + grid.view(1, -1) ** 2) <= radius**2).double()
    disk = disk / disk.sum()
    t = torch.arange(k, dtype=torch.float64, device="cpu") - k // 2
    g = torch.exp(-(t**2) / (2.0 * alias_blur**2))
    g = g / g.sum()
    smooth = filter2d(disk.view(1, 1, *disk.shape), g.view(-1, 1) * g.view(1, -1), mode="mirror")[0, 0]
    keep = smooth.abs().sum(dim=0) > 0
    first, last = int(keep.nonzero().min()), int(keep.nonzero().max())
    r = max(half - first, last - half)  # symmetric crop keeps the kernel centred
    return smooth[half - r : half + r + 1, half - r : half + r + 1]


def zoom_factors(start: float, stop: float, step: float) -> tuple[float, ...]:
    """The reference's ``np.arange(start, stop, step)`` zoom factors (same float edge cases)."""
    return tuple(float(z) for z in np.arange(start, stop, step))


def defocus_blur(images: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Convolve with an anti-aliased disk (an out-of-focus lens) of the tabled radius.

    Deterministic; ``generator`` is accepted for the common signature.

    Shape:
        (N, C, H, W) -> (N, C, H, W)
    """
    (radius, alias), scale = TABLES["defocus_blur"].row(images, severity)
    x = to_work(images)
    # A binary disk of radius < 1 is one pixel (no blur): keep shrunken radii at 1 at least.
    kernel = disk_kernel(radius if scale == 1 else max(radius * scale, 1.0), alias)
    return finish(filter2d(x, kernel, mode="mirror"), images)


def small_divmod(values: Tensor, divisor: int) -> tuple[Tensor, Tensor]:
    """``(values // divisor, values % divisor)`` for int64 ``values`` in ``[0, 2**16)`` and
    ``divisor`` in ``[1, 2**8]``, by multiply and shift (``q = v * ceil(2**24 / d) >> 24``).

    CPU integer division has no vector instruction: on 1.2M glass-blur draws the two ops took
    ~4 ms, the multiply-shift ~0.4 ms. Exact in that range: the multiplier overshoots ``2**24 / d``
    by less than 1, so ``v * M / 2**24`` exceeds ``v / d`` by less than ``2**-8 <= 1 / d``, which
    cannot carry it past the next integer (tested over the whole range).
    """
    if not 1 <= divisor <= 1 << 8:
        raise ValueError(f"divisor must be in [1, 256], got {divisor}")
    multiplier = -(-(1 << 24) // divisor)
    quotient = (values * multiplier) >> 24
    return quotient, values - quotient * divisor


def glass_sources(dy: Tensor, dx: Tensor, height: int, width: int) -> Tensor:
    """Where each pixel comes from after the reference's glass-blur passes, as a flat index.

    ``dy``, ``dx``: integer offsets of shape (passes, N, height - 2d, width - 2d), entry
    ``[t, n, i, j]`` for interior pixel (d + 1 + i, d + 1 + j) in pass t; the maximum shift d is
    ``(height - dy.shape[-2]) // 2``. Returns (N, height * width) int64 on ``dy``'s device: the
    corrupted image is ``flat_image[..., index]``.

    The reference's loop is ``for r in range(height - d, d, -1): for c in range(width - d, d, -1):
    x[r, c], x[r + dy, c + dx] = x[r + dy, c + dx], x[r, c]`` on an (H, W, 3) array. ``x[r, c]``
    is a view, so this tuple "swap" is a copy, ``x[r, c] = x[r + dy, c + dx]``: pixels are
    duplicated, never exchanged. Because the copies run in scan order (bottom-right first), a pixel
    whose source was already overwritten in this pass takes that source's new value, and so on:
    ``src(p) = src(q)`` when ``q = p + offset`` is an interior pixel scanned before ``p``
    (``q > p`` in row-major order), else ``q``. These chains run to larger indices only, so
    pointer jumping resolves them in O(log length) vectorised gathers, exactly.
    """
    if dy.shape != dx.shape or dy.dim() != 4:
        raise ValueError(
            f"dy and dx must share a shape (passes, N, rows, cols), got {tuple(dy.shape)} and {tuple(dx.shape)}"
        )
    passes, n, rows, cols = dy.shape
    delta = (height - rows) // 2
    if delta < 1 or rows < 1 or rows != height - 2 * delta or cols != width - 2 * delta:
        raise ValueError(
            f"dy, dx: {rows}x{cols} offsets do not fit a {height}x{width} image as its interior"
            " for one shift d >= 1"
        )
    device = dy.device
    hw = height * width
    r = torch.arange(delta + 1, height - delta + 1, device=device).view(rows, 1)
    c = torch.arange(delta + 1, width - delta + 1, device=device).view(1, cols)
    interior = (r * width + c).reshape(-1)
    interior_r, interior_c = r.expand(rows, cols).reshape(-1), c.expand(rows, cols).reshape(-1)
    identity = torch.arange(hw, device=device).expand(n, hw)
    source = identity
    for t in range(passes):
        src_r = interior_r + dy[t].reshape(n, -1).long()
        src_c = interior_c + dx[t].reshape(n, -1).long()
        q = src_r * width + src_c
        scanned_before = (
            (src_r > delta) & (src_r <= height - delta) & (src_c > delta) & (src_c <= width - delta)
            & (q > interior)
        )
        # Interior pixels are a rectangle of the (height, width) grid: written as a strided slice,
        # not by index (an index_put costs ~5x a slice copy).
        box = (slice(None), slice(delta + 1, height - delta + 1), slice(delta + 1, width - delta + 1))
        value = identity.clone()  # what a chain that ends here resolves to
        value.view(n, height, width)[box] = q.view(n, rows, cols)
        link = identity.clone()  # next pixel along the chain; a root links to itself
        link.view(n, height, width)[box] = torch.where(scanned_before, q, interior).view(n, rows, cols)
        while True:
            jumped = link.gather(1, link)
            if torch.equal(jumped, link):
                break
            link = jumped
        source = source.gather(1, value.gather(1, link))
    return source.contiguous()


def _scipy_gaussian_taps(sigma: float, truncate: float) -> list[float]:
    """SciPy's Gaussian taps, computed as SciPy computes them (NumPy float64, same expression):
    :func:`._common.gaussian_kernel1d` writes the exponent another way, which can move the last
    bit of a tap, and here the bits decide how flat regions truncate."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    return (phi / phi.sum()).tolist()


def _scipy_correlate_symmetric(x: Tensor, taps: list[float], dim: int) -> Tensor:
    """SciPy's ``correlate1d`` of a symmetric kernel along ``dim`` (-2 or -1), ``nearest`` border,
    in SciPy's order of operations: the centre tap, then ``+= (x[-j] + x[+j]) * w_j`` for the
    pairs from the outermost inwards."""
    r = (len(taps) - 1) // 2
    n = x.shape[dim]
    padded = pad2d(x, (r, r, 0, 0) if dim == -2 else (0, 0, r, r), mode="nearest")
    # The sum and one pair buffer for every tap from the pool: a float64 batch-sized temporary
    # per tap was a fresh mapping, faulted in anew, on most calls (glass blur at B8x3x224^2,
    # ``python benchmarks/op_faults.py --corruptions glass_blur --base fae4c16`` at 8a81b18:
    # 13,531-16,833 minor faults a call before, 1,750-2,984 after).
    out = torch.mul(padded.narrow(dim, r, n), taps[r], out=empty_output(x.shape, dtype=x.dtype, device=x.device))
    pair = empty_output(x.shape, dtype=x.dtype, device=x.device)
    for j in range(r, 0, -1):
        torch.add(padded.narrow(dim, r - j, n), padded.narrow(dim, r + j, n), out=pair)
        out += pair.mul_(taps[r - j])
    return out


def reference_gaussian_float64(images: Tensor, sigma: float, *, truncate: float = 4.0) -> Tensor:
    """``skimage.filters.gaussian`` of the spatial dims as the reference computes it: float64, bit for bit.

    8-bit images (every value a level ``k / 255``) enter as the float64 levels the reference
    gets from ``uint8 / 255.``; SciPy's taps, its order of operations (rows, then columns; see
    :func:`_scipy_correlate_symmetric`) and its edge border are kept. This matters where the
    result is truncated to 8 bits: a value that is a whole level in exact arithmetic, as in any
    flat region, truncates by the sign of its rounding error. At sigma 0.25, for example, the
    float32 :func:`gaussian_filter` of a flat image truncated one level low for 119 of the 256
    levels, the reference for none.

    Shape:
        (N, C, H, W) -> (N, C, H, W), float64
    """
    x = images.double()
    eight_bit = eight_bit_images(images)
    if x.device.type != "cpu":  # no host sync
        x = torch.where(eight_bit.view(-1, 1, 1, 1), divide_exactly_(x.mul(255).round_(), 255), x)
    elif bool(eight_bit.all()):  # whole images, without torch.where (element by element on CPU)
        x = divide_exactly_(x.mul(255).round_(), 255)
    elif bool(eight_bit.any()):
        x = x.clone() if x is images else x
        x[eight_bit] = divide_exactly_(x[eight_bit].mul_(255).round_(), 255)
    if sigma <= 0:
        return x
    taps = _scipy_gaussian_taps(sigma, truncate)
    return _scipy_correlate_symmetric(_scipy_correlate_symmetric(x, taps, -2), taps, -1)


def glass_blur(images: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Blur, scramble pixels locally (frosted glass), blur again.

    Shape:
        (N, C, H, W) -> (N, C, H, W)
    """
    (sigma, max_delta, iterations), scale = TABLES["glass_blur"].row(images, severity)
    sigma, delta = sigma * scale, max(1, round(max_delta * scale))
    gen = resolve_generator(generator)
    x = to_work(images)
    n, c, h, w = x.shape
    # The reference stores the first blur as uint8 (truncating) before shuffling.
    # In the reference's float64 arithmetic (reference_gaussian_float64): the truncation of a
    # flat region's whole level goes by the sign of its rounding error, as there. ~2x the time of
    # a float32 blur, still a few hundred times faster than the reference's loop.
    x = truncate_to_8bit(reference_gaussian_float64(x, sigma)).to(x.dtype)
    if h > 2 * delta and w > 2 * delta:  # else no interior pixel: nothing moves
        # One draw per pixel and pass picks (dy, dx) uniformly from [-delta, delta)^2.
        # Image-major (each image's passes in one run of the stream), then pass-major for use.
        pick = random_integers(0, 4 * delta * delta, (n, iterations, h - 2 * delta, w - 2 * delta), gen, like=x)
        pick = pick.transpose(0, 1)
        row, col = small_divmod(pick, 2 * delta)
        source = glass_sources(row.sub_(delta), col.sub_(delta), h, w)
        x = x.reshape(n, c, h * w).gather(2, source.view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)
    return finish(reference_gaussian_float64(x, sigma).to(x.dtype), images)


def motion_blur(images: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Blur along a random direction (angle uniform in [-45, 45] degrees, one per image).

    Shape:
        (N, C, H, W) -> (N, C, H, W)
    """
    (radius, sigma), scale = TABLES["motion_blur"].row(images, severity)
    x = to_work(images)
    low, high = _MOTION_ANGLE_RANGE
    angles = random_uniform((x.shape[0],), resolve_generator(generator), like=x, low=low, high=high)
    out = apply_motion_blur(x, radius=radius * scale, sigma=sigma * scale, angles=angles)
    # The reference's result is ImageMagick's 8-bit PNG, not a float: take its levels here, or
    # stored copies would differ (rounding instead made them half a level brighter on average).
    return finish(imagemagick_8bit(out), images)


def zoom_blur(images: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Average the image with centre zooms by the tabled factors (a camera zooming while exposed).

    Deterministic; ``generator`` is accepted for the common signature.

    Shape:
        (N, C, H, W) -> (N, C, H, W)
    """
    spec, _ = TABLES["zoom_blur"].row(images, severity)
    factors = zoom_factors(*spec)
    x = to_work(images)
    total = x.clone()
    for z in factors:
        total += clipped_zoom(x, z)
    return finish(total.div_(len(factors) + 1), images)


def gaussian_blur(images: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian blur of the tabled sigma (``skimage.filters.gaussian``: truncate 4, edge border).

    Deterministic; ``generator`` is accepted for the common signature.

    Shape:
        (N, C, H, W) -> (N, C, H, W)
    """
    sigma, scale = TABLES["gaussian_blur"].row(images, severity)
    x = to_work(images)
    return finish(gaussian_filter(x, sigma * scale, mode="nearest"), images)
