"""Procedural random fields for the weather corruptions: plasma fractal, line smears, frost.

Everything is batched over a leading N dimension and draws only from an explicit
``torch.Generator`` (through :mod:`._common`), so a seed fixes the output on every device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import apply_motion_blur, per_image_draws, random_uniform, scaled_draws

__all__ = ["frost_texture", "line_smear", "motion_blur_magick", "plasma_fractal"]


def plasma_fractal(
    n: int,
    *,
    mapsize: int = 256,
    wibbledecay: float = 3.0,
    generator: torch.Generator,
    like: Tensor,
) -> Tensor:
    """Diamond-square height maps in [0, 1], the fog layer of the reference code.

    Same recursion as ``plasma_fractal`` in ``make_imagenet_c.py`` (toroidal neighbours, start
    wibble 100, noise ``wibble * U(-wibble, wibble)``, wibble divided by ``wibbledecay`` per
    octave, min-max normalised), run for ``n`` maps at once. A larger ``wibbledecay`` damps the
    fine octaves faster, so the map is smoother.

    Args:
        n: number of maps.
        mapsize: side length, a power of two.
        wibbledecay: per-octave damping of the random displacement (> 0).
        generator: source of randomness.
        like: the result gets this tensor's device (float32 always).

    Shape:
        -> (n, mapsize, mapsize)
    """
    if mapsize < 2 or mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two >= 2, got {mapsize}")
    if not wibbledecay > 0:
        raise ValueError(f"wibbledecay must be > 0, got {wibbledecay}")
    heights = torch.zeros(n, mapsize, mapsize, dtype=torch.float32, device=like.device)
    # Every uniform of a map in one draw per map (per_image_draws), handed out in the order the
    # recursion uses them: per octave the squares' centres, then the two diamond sets.
    sides = [1 << i for i in range(mapsize.bit_length() - 1)]  # cells per side, per octave
    draws = iter(per_image_draws(n, [(side, side) for side in sides for _ in range(3)], generator, like=like))
    step, wibble = mapsize, 100.0

    def wibbled_mean(total: Tensor) -> Tensor:
        noise = scaled_draws(next(draws), -wibble, 2 * wibble)  # uniform in [-wibble, wibble)
        # total / 4 + wibble * noise in place: total * 0.25 is exact, so the same floats
        return noise.mul_(wibble).add_(total, alpha=0.25)

    while step >= 2:
        half = step // 2
        # squares: centre of each square = mean of its 4 corners + noise
        corners = heights[:, 0::step, 0::step]
        total = corners + corners.roll(-1, dims=1)
        total = total + total.roll(-1, dims=2)
        heights[:, half::step, half::step] = wibbled_mean(total)
        # diamonds: edge midpoints = mean of the 2 adjacent centres and 2 adjacent corners + noise
        centres = heights[:, half::step, half::step]
        corners = heights[:, 0::step, 0::step]
        total = centres + centres.roll(1, dims=1) + corners + corners.roll(-1, dims=2)
        heights[:, 0::step, half::step] = wibbled_mean(total)
        total = centres + centres.roll(1, dims=2) + corners + corners.roll(-1, dims=1)
        heights[:, half::step, 0::step] = wibbled_mean(total)
        step //= 2
        wibble /= wibbledecay
    flat = heights.view(n, -1)
    flat.sub_(flat.amin(dim=1, keepdim=True))
    flat.div_(flat.amax(dim=1, keepdim=True).clamp_min(torch.finfo(flat.dtype).tiny))
    return heights


def line_smear(layer: Tensor, offsets_y: Tensor, offsets_x: Tensor, weights: Tensor) -> Tensor:
    """``out[b, y, x] = sum_i weights[i] * layer[b, y + oy[b, i], x + ox[b, i]]``, edge-clamped.

    A per-image sparse line kernel: one gather per tap instead of a dense (2r+1)^2 convolution,
    so long streaks at a different angle per image cost O(taps) per pixel.

    Shape:
        layer (N, H, W), offsets (N, T) int64, weights (T,) -> (N, H, W)
    """
    n, h, w = layer.shape
    taps = weights.numel()
    ys = torch.arange(h, device=layer.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=layer.device).view(1, 1, 1, w)
    flat = layer.reshape(n, h * w)
    weights = weights.to(device=layer.device, dtype=layer.dtype)
    # Gather several taps per op (few, large ops run far better than many small ones) while
    # keeping the (N, taps, H, W) index tensor to ~2^22 elements.
    chunk = max(1, min(taps, 2**22 // max(1, n * h * w)))
    out = torch.zeros_like(layer)
    for start in range(0, taps, chunk):
        stop = min(taps, start + chunk)
        iy = (ys + offsets_y[:, start:stop].view(n, -1, 1, 1)).clamp(0, h - 1)
        ix = (xs + offsets_x[:, start:stop].view(n, -1, 1, 1)).clamp(0, w - 1)
        picked = flat.gather(1, (iy * w + ix).reshape(n, -1)).view(n, stop - start, h, w)
        out = out + (picked * weights[start:stop].view(1, -1, 1, 1)).sum(dim=1)
    return out


def motion_blur_magick(layer: Tensor, *, radius: float, sigma: float, angle_deg: Tensor) -> Tensor:
    """ImageMagick ``MotionBlurImage`` (as called by the reference through Wand), batched.

    ImageMagick uses ``width = 2 * ceil(radius) + 1`` one-sided taps ``exp(-i^2 / (2 sigma^2))``
    (normalised) at integer offsets ``i * (cos a, sin a)`` rounded half up, and an edge virtual
    pixel; the blurred pixel averages the image along a ray behind it, so bright points leave a
    trail in direction ``a + 180`` degrees.

    Shape:
        layer (N, H, W), angle_deg (N,) -> (N, H, W)
    """
    if not (radius > 0 and sigma > 0):
        return layer
    # The same kernel, offsets and arithmetic as the motion-blur corruption (apply_motion_blur:
    # an FFT convolution of the edge-padded layer, or the direct sum of the taps for large
    # layers on CPU), instead of a gather per tap.
    return apply_motion_blur(layer.unsqueeze(1), radius=radius, sigma=sigma, angles=angle_deg)[:, 0]


def _value_noise(n: int, height: int, width: int, cells: int, generator: torch.Generator, like: Tensor) -> Tensor:
    grid = random_uniform((n, 1, cells, cells), generator, like=like)
    return F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)[:, 0]


def _line_taps(length: float, like: Tensor) -> tuple[Tensor, Tensor]:
    radius = max(1, round(length))
    i = torch.arange(-radius, radius + 1, dtype=torch.float64, device=like.device)
    taps = torch.exp(-(i**2) / (2.0 * (length / 2.0) ** 2)).to(torch.float32)
    return i, taps


def _smear_along(layer: Tensor, angle: Tensor, length: float) -> Tensor:
    i, taps = _line_taps(length, layer)
    offsets_x = torch.round(i * torch.cos(angle)).long()
    offsets_y = torch.round(i * torch.sin(angle)).long()
    return line_smear(layer, offsets_y, offsets_x, taps)


def _crystals(
    n: int, height: int, width: int, *, density: float, length: float, generator: torch.Generator, like: Tensor
) -> Tensor:
    # Sparse seeds grow into needles along three directions 60 degrees apart (the hexagonal
    # symmetry of ice), each needle sprouting short side branches at 60 degrees: feathery frost.
    base_angle = random_uniform((n, 1), generator, like=like, high=math.pi).double()
    out = torch.zeros(n, height, width, dtype=torch.float32, device=like.device)
    for k in range(3):
        hits = random_uniform((n, height, width), generator, like=like) < density / 3
        seeds = hits * random_uniform((n, height, width), generator, like=like, low=0.3, high=1.0)
        angle = base_angle + k * math.pi / 3
        needles = _smear_along(seeds, angle, length)
        branches = _smear_along(needles, angle + math.pi / 3, length / 4)
        out = torch.maximum(out, needles + 0.5 * branches)
    return out


FROST_TINT = (0.84, 0.93, 1.0)
"""RGB gain of the synthetic frost: the reference photos are desaturated, slightly blue ice."""


def frost_texture(n: int, height: int, width: int, *, generator: torch.Generator, like: Tensor) -> Tensor:
    """Synthetic frost photographs, RGB in [0, 1], in the reference photos' pixel units.

    Stand-in for the frost photos of the reference (not redistributable here): a cloudy
    multi-octave value-noise base (uneven ice film) plus two scales of 60-degree-branching
    crystal needles, tinted pale blue. Feature sizes are in photo pixels (the reference crops
    224 px windows of the photos for ImageNet-C), so callers render at that scale and resize.
    Rough statistics: mean ~0.45, std ~0.15, brightest needles near 1 (see the tests).

    Shape:
        -> (n, 3, height, width)
    """
    base = torch.zeros(n, height, width, dtype=torch.float32, device=like.device)
    amplitude, total = 1.0, 0.0
    for cells in (3, 6, 12, 24, 48):
        base = base + amplitude * _value_noise(n, height, width, cells, generator, like)
        total += amplitude
        amplitude *= 0.55
    base = base / total
    lo = base.amin(dim=(1, 2), keepdim=True)
    hi = base.amax(dim=(1, 2), keepdim=True)
    base = (base - lo) / (hi - lo).clamp_min(1e-6)
    coarse = _crystals(n, height, width, density=0.006, length=14.0, generator=generator, like=like)
    fine = _crystals(n, height, width, density=0.03, length=4.0, generator=generator, like=like)
    needles = (coarse + 0.6 * fine).clamp(0.0, 1.0)
    # needles grow where the ice film is thick: modulate them by the base
    value = (0.15 + 0.4 * base + 0.8 * needles * (0.4 + 0.6 * base)).clamp(0.0, 1.0)
    tint = torch.tensor(FROST_TINT, dtype=torch.float32, device=like.device).view(1, 3, 1, 1)
    return (value.unsqueeze(1) * tint).clamp(0.0, 1.0)
