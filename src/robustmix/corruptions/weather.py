"""Weather corruptions: snow, frost, fog (ImageNet-C benchmark) and spatter (extra set).

Definitions and severity tables follow Hendrycks & Dietterich (ICLR 2019) and their reference
code (``make_imagenet_c.py`` for 224 px, ``make_cifar_c.py`` for 32 px), batched in torch.

Size rule (:func:`._common.reference_scale`): images with ``min(H, W) <= 32`` use the CIFAR-10-C
table, larger ones the ImageNet-C table. Each random layer (snow, fog plasma, frost texture,
liquid) is rendered exactly as the reference does at the reference size (224 or 32 px, aspect
kept) and resized to the image with antialiased bilinear interpolation; this is the linear
scaling of every spatial parameter by ``side / 224`` (or ``side / 32``) while keeping the
per-pixel noise statistics the thresholds in the tables were tuned for (scaling a blur sigma
of white noise instead would change the noise variance and so the covered area). At 224 and
32 px the layers are the reference's. Blends are done at the image's own resolution.

Grayscale (C=1): the RGB corruption is applied to (x, x, x) and converted back with ITU-R 601
luma weights (:func:`._common.with_rgb`); for snow and fog this equals applying them per channel.

Deviations from the reference, and why:

* Frost: the frost photographs of the reference cannot be shipped, so the frost layer is a
  procedural texture (:func:`._textures.frost_texture`: cloudy ice film plus 60-degree crystal
  needles). As the reference draws one of five photos and crops a random window, a bank of
  five 320 px textures is rendered once (fixed seed), each given the per-channel mean and std of
  one reference photo (:data:`FROST_PHOTO_STATS`), and each image gets a random window of a
  random one. The blend ``clip(a * x + b * frost)`` and its table are exact. For CIFAR-10-C the reference
  shrinks the photos by 0.2 before cropping 32 px; the bank is shrunk the same way.
* Snow: ImageMagick's motion blur (called through Wand) is rebuilt in torch with ImageMagick's
  own kernel (one-sided Gaussian taps, rounded integer offsets, edge pixels); the 8-bit
  quantisation around it (PNG round trip) is kept, ImageMagick's on the way out
  (:func:`._common.imagemagick_8bit`).
* Spatter (water, severities 1-3): OpenCV's Canny is rebuilt with Sobel magnitudes, non-maximum
  suppression and hysteresis by iterated dilation; ``distanceTransform`` (DIST_L2, 5x5 mask) is
  the same chamfer distance (steps 1, 1.4, 2.1969), summed exactly in 16-bit fixed point where
  OpenCV (3.4 to 5.0) adds float32 weights along its scan: distances agree within 1e-4 px, and
  a 3x3 mean that lands on an integer can truncate one level apart (35 of 50k mask pixels in one
  of 15 test layers at 224 px). Box blurs, histogram equalisation, the emboss kernel and the
  uint8 roundings and wrap-around follow OpenCV and NumPy; given the same liquid layer, the mask
  is otherwise the reference's to the bit.
* Randomness comes from ``torch`` generators, so samples differ from the released datasets while
  their distribution is the reference's.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import (
    CIFAR_SIDE,
    IMAGENET_SIDE,
    SeverityTable,
    clipped_zoom,
    filter2d,
    finish,
    gaussian_filter,
    imagemagick_8bit,
    pad2d,
    per_image_draws,
    random_normal,
    reference_size,
    resize_layer,
    resolve_generator,
    rgb_to_gray,
    scaled_draws,
    to_work,
    truncate_to_8bit,
    with_rgb,
    zero_below,
)
from ._textures import frost_texture, motion_blur_magick, plasma_fractal

__all__ = ["TABLES", "fog", "frost", "snow", "spatter"]

TABLES: dict[str, SeverityTable] = {
    # (snow mean, snow std, zoom, threshold, blur radius, blur sigma, image weight)
    "snow": SeverityTable(
        imagenet=(
            (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
            (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
            (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
            (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
            (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
        ),
        cifar=(
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ),
    ),
    # (image weight, frost weight)
    "frost": SeverityTable(
        imagenet=((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
        cifar=((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    ),
    # (fog strength, plasma wibbledecay)
    "fog": SeverityTable(
        imagenet=((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
        cifar=((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    ),
    # (liquid mean, liquid std, blur sigma, threshold, water intensity | mud sigma, mud?)
    "spatter": SeverityTable(
        imagenet=(
            (0.65, 0.3, 4, 0.69, 0.6, 0),
            (0.65, 0.3, 3, 0.68, 0.6, 0),
            (0.65, 0.3, 2, 0.68, 0.5, 0),
            (0.65, 0.3, 1, 0.65, 1.5, 1),
            (0.67, 0.4, 1, 0.65, 1.5, 1),
        ),
        cifar=(
            (0.62, 0.1, 0.7, 0.7, 0.5, 0),
            (0.65, 0.1, 0.8, 0.7, 0.5, 0),
            (0.65, 0.3, 1, 0.69, 0.5, 0),
            (0.65, 0.1, 0.7, 0.69, 0.6, 1),
            (0.65, 0.1, 0.5, 0.68, 0.6, 1),
        ),
    ),
}

FOG_MAPSIZE = {"imagenet": 256, "cifar": 32}
"""Plasma map side of the reference (cropped to the image: ``[:224, :224]`` or ``[:32, :32]``)."""
FROST_PHOTO_ZOOM = {"imagenet": 1.0, "cifar": 0.2}
"""Scale of the frost photos before cropping (``make_cifar_c.py`` shrinks them by 0.2)."""
WATER_RGB = (175 / 255, 238 / 255, 238 / 255)  # pale turquoise
MUD_RGB = (63 / 255, 42 / 255, 20 / 255)  # mud brown


# --------------------------------------------------------------------------------------------
# Size rule: render at the reference size, resize to the image


def _reference_shape(images: Tensor) -> tuple[str, int, int]:
    """Table name and the (h, w) the reference would use for this batch (aspect ratio kept)."""
    h, w = images.shape[-2:]
    which, ref = ("cifar", CIFAR_SIDE) if min(h, w) <= CIFAR_SIDE else ("imagenet", IMAGENET_SIDE)
    return (which, *reference_size(h, w, ref))


# --------------------------------------------------------------------------------------------
# Snow


SNOW_ANGLE_RANGE = (-135.0, -45.0)
"""Degrees of the snowfall's motion blur, drawn uniformly per image as the reference does."""


def snow(images: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Snowfall: motion-blurred flakes over a whitened, grayish copy of the image.

    Reference steps: a Gaussian snow layer is zoomed, thresholded, motion blurred at a random
    angle in [-135, -45] degrees (falling flakes) and added twice (the second copy rotated by
    180 degrees) to ``w * x + (1 - w) * max(x, 1.5 * gray(x) + 0.5)``.

    Shape:
        (N, C, H, W) -> (N, C, H, W)
    """
    (loc, scale, zoom, threshold, radius, sigma, weight), _ = TABLES["snow"].row(images, severity)
    generator = resolve_generator(generator)
    x = to_work(images)
    n = x.shape[0]
    _, rh, rw = _reference_shape(x)
    # One draw per image holds its layer and its angle (per_image_draws): the angle is uniform
    # through the normal CDF of one more normal draw.
    layer, angle_z = per_image_draws(n, [(rh, rw), (1,)], generator, like=x, kind="normal")
    layer = scaled_draws(layer, loc, scale)
    layer = clipped_zoom(layer, zoom)
    layer = zero_below(layer, threshold)
    layer = truncate_to_8bit(layer)  # uint8 PNG handed to ImageMagick
    low, high = SNOW_ANGLE_RANGE
    angle = (torch.special.ndtr(angle_z.flatten().double()) * (high - low) + low).float()
    layer = motion_blur_magick(layer, radius=radius, sigma=sigma, angle_deg=angle)
    layer = imagemagick_8bit(layer)  # 8-bit result of ImageMagick
    layer = layer + layer.flip(-2, -1)  # + np.rot90(layer, k=2)
    layer = resize_layer(layer.unsqueeze(1), tuple(x.shape[-2:])).to(x.dtype)
    # weight * x + (1 - weight) * max(x, 1.5 * gray + 0.5) + layer in two full-size buffers, each
    # product rounded before the sums as written (no fused multiply-add: same floats).
    out = torch.maximum(x, rgb_to_gray(x) * 1.5 + 0.5).mul_(1 - weight)
    return finish(out.add_(x * weight).add_(layer), images)


# --------------------------------------------------------------------------------------------
# Frost


FROST_PHOTO_STATS: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = (
    ((0.305, 0.585, 0.650), (0.106, 0.065, 0.060)),  # frost1.png
    ((0.787, 0.805, 0.841), (0.084, 0.087, 0.089)),  # frost2.png
    ((0.787, 0.805, 0.841), (0.084, 0.087, 0.089)),  # frost3.png (the same picture as frost2.png)
    ((0.540, 0.599, 0.648), (0.112, 0.112, 0.117)),  # frost4.jpg
    ((0.441, 0.484, 0.528), (0.174, 0.170, 0.163)),  # frost5.jpg
)
"""Per-channel RGB (mean, std) of the reference's frost photos, each over the whole photo.

Measured from the files ImageNet-C ships (as packaged in ``imagecorruptions`` 1.1.2). The
reference draws ``np.random.randint(5)``, so only the first five of its six photos are ever used,
each with probability 1/5 (and frost2/frost3 are one picture). Each synthetic 'photo' of the bank
is matched to one of these: the frost layer's brightness and colour decide most of what the
corruption does to an image (``b * frost`` is up to 0.75 of the result).
"""
FROST_BANK_SIZE = len(FROST_PHOTO_STATS)
"""Number of frost 'photos' (the reference draws among five), rendered once per process."""
FROST_PHOTO_SIDE = 320
"""Side of each synthetic photo in photo pixels (larger than the 224 px crops, as the photos are)."""
FROST_BANK_SEED = 20190401


@functools.lru_cache(maxsize=4)
def _frost_bank(device: torch.device) -> Tensor:
    """The synthetic frost 'photographs', (5, 3, S, S), rendered once from a fixed seed.

    Rendering a texture costs far more than corrupting an image, so, as the reference does with
    its photos, every call crops random windows of this fixed bank instead of rendering.
    """
    g = torch.Generator().manual_seed(FROST_BANK_SEED)
    like = torch.zeros(1, device=device)
    bank = frost_texture(FROST_BANK_SIZE, FROST_PHOTO_SIDE, FROST_PHOTO_SIDE, generator=g, like=like)
    # Give each texture its photo's per-channel mean and std (an affine map per channel; the
    # structure stays procedural), then keep it a valid image.
    target = torch.tensor(FROST_PHOTO_STATS, dtype=bank.dtype, device=device)  # (5, 2, 3)
    mean, std = bank.mean(dim=(2, 3), keepdim=True), bank.std(dim=(2, 3), keepdim=True)
    unit = (bank - mean) / std.clamp_min(1e-6)
    return (unit * target[:, 1, :, None, None] + target[:, 0, :, None, None]).clamp_(0.0, 1.0)


@functools.lru_cache(maxsize=8)
def _frost_bank_shrunk(device: torch.device, side: int) -> Tensor:
    """The bank at the CIFAR-10-C scale, shrunk once per (device, side) rather than per call."""
    return _shrink_like_cv2(_frost_bank(device), side)


def _shrink_like_cv2(layer: Tensor, side: int) -> Tensor:
    """``cv2.resize(..., INTER_LINEAR)`` down to ``side``: bilinear at half-pixel centres, no prefilter.

    make_cifar_c.py shrinks its frost photos this way (fx=0.2). Without a prefilter the needles'
    fine detail survives as aliasing, which keeps the 32 px windows' contrast; an antialiased
    shrink would leave them ~30 % flatter than the reference's.
    """
    return F.interpolate(layer, size=(side, side), mode="bilinear", align_corners=False, antialias=False)


def _frost_crops(n: int, which: str, rh: int, rw: int, generator: torch.Generator, like: Tensor) -> Tensor:
    """Random (photo, window) crops of the bank at the reference scale, as ``make_*_c.py`` does."""
    zoom = FROST_PHOTO_ZOOM[which]
    if zoom != 1.0:  # make_cifar_c.py shrinks the photos before cropping
        bank = _frost_bank_shrunk(like.device, max(rh, rw, round(FROST_PHOTO_SIDE * zoom)))
    else:
        bank = _frost_bank(like.device)
    if bank.shape[-2] < rh or bank.shape[-1] < rw:  # images larger than the photos: upscale
        scale = max(rh / bank.shape[-2], rw / bank.shape[-1])
        size = (math.ceil(bank.shape[-2] * scale), math.ceil(bank.shape[-1] * scale))
        bank = F.interpolate(bank, size=size, mode="bilinear", align_corners=False)
    # np.random.randint(0, photo side - crop side) as in the reference: its last window is never
    # drawn (exclusive bound); one window when the photo is exactly the crop's size. The three
    # integers of an image come from one float64 uniform each, floor(u * k) (uniform on 0..k-1
    # up to k / 2**53), in one draw per image (per_image_draws).
    (u,) = per_image_draws(n, [(3,)], generator, like=like, dtype=torch.float64)
    bounds = torch.tensor([bank.shape[0], max(bank.shape[-2] - rh, 1), max(bank.shape[-1] - rw, 1)],
                          dtype=torch.float64, device=like.device)
    which_photo, top, left = u.mul_(bounds).floor_().long().unbind(1)
    if bank.device.type == "cpu":
        # One slice copy per image: the same values as the gather below, which on CPU is an
        # element-by-element index computation (17-23x slower for 8 windows of 224 px,
        # benchmarks/cpu_ops.py). On an accelerator the gather stays: it needs no host copy of
        # the draws (no sync).
        out = bank.new_empty(n, 3, rh, rw)
        for i, (p, t, lft) in enumerate(zip(which_photo.tolist(), top.tolist(), left.tolist())):
            out[i] = bank[p, :, t : t + rh, lft : lft + rw]
        return out
    rows = (top.view(n, 1) + torch.arange(rh, device=like.device)).view(n, 1, rh, 1)
    cols = (left.view(n, 1) + torch.arange(rw, device=like.device)).view(n, 1, 1, rw)
    channels = torch.arange(3, device=like.device).view(1, 3, 1, 1)
    return bank[which_photo.view(n, 1, 1, 1), channels, rows, cols]


def frost(images: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Frost on a window: ``clip(a * x + b * frost)`` with a window of a synthetic frost photo.

    As the reference picks one of its frost photos and crops a random window, this picks one of
    a fixed bank of synthetic photos (see the module deviations) and crops a random window at
    the reference scale, then resizes it to the image.

    Shape:
        (N, C, H, W) -> (N, C, H, W)
    """
    (a, b), _ = TABLES["frost"].row(images, severity)
    generator = resolve_generator(generator)
    x = to_work(images)
    which, rh, rw = _reference_shape(x)
    texture = _frost_crops(x.shape[0], which, rh, rw, generator, x)
    texture = resize_layer(texture, tuple(x.shape[-2:])).clamp(0.0, 1.0).to(x.dtype)
    return finish(with_rgb(x, lambda rgb: a * rgb + b * texture), images)


# --------------------------------------------------------------------------------------------
# Fog


def fog(images: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Fog: add a plasma-fractal haze, then rescale so the image's maximum is kept.

    ``clip((x + s * plasma) * m / (m + s))`` with ``m`` the maximum of each image.

    Shape:
        (N, C, H, W) -> (N, C, H, W)
    """
    (strength, decay), _ = TABLES["fog"].row(images, severity)
    generator = resolve_generator(generator)
    x = to_work(images)
    which, rh, rw = _reference_shape(x)
    mapsize = max(FOG_MAPSIZE[which], 1 << (max(rh, rw) - 1).bit_length())
    haze = plasma_fractal(x.shape[0], mapsize=mapsize, wibbledecay=decay, generator=generator, like=x)
    haze = resize_layer(haze[:, None, :rh, :rw], tuple(x.shape[-2:])).to(x.dtype)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    out = x + strength * haze  # then in place: the same floats as (x + s h) * peak / (peak + s)
    return finish(out.mul_(peak).div_(peak + strength), images)


# --------------------------------------------------------------------------------------------
# Spatter: OpenCV pieces of the water branch


_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device="cpu")
_EMBOSS = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]], device="cpu")
_ONES3 = torch.ones(3, 3, device="cpu")
_TAN_22_5 = math.tan(math.radians(22.5))
_TAN_67_5 = math.tan(math.radians(67.5))


def _canny(gray: Tensor, *, low: float, high: float) -> Tensor:
    """Canny edges of (N, 1, H, W) uint8-valued images like ``cv2.Canny(img, low, high)``.

    Sobel 3x3 (replicated border), L1 magnitude, OpenCV's 4-direction non-maximum suppression
    (strict on the previous neighbour, non-strict on the next), hysteresis by dilating strong
    edges through weak ones until nothing changes.
    """
    gx, gy = _sobel(gray)
    ax, ay = gx.abs(), gy.abs()
    mag = ax + ay
    padded = F.pad(mag, (1, 1, 1, 1))  # OpenCV's magnitude buffer has zero borders
    h, w = mag.shape[-2:]

    def at(dy: int, dx: int) -> Tensor:
        return padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    horizontal = ay < ax * _TAN_22_5
    vertical = ay > ax * _TAN_67_5
    same_sign = (gx * gy) >= 0  # OpenCV: s = +1 unless the signs differ
    keep_h = (mag > at(0, -1)) & (mag >= at(0, 1))
    keep_v = (mag > at(-1, 0)) & (mag >= at(1, 0))
    # Selections of bools as bool logic: torch.where runs element by element on CPU.
    keep_d = (same_sign & (mag > at(-1, -1)) & (mag > at(1, 1))) | (
        ~same_sign & (mag > at(-1, 1)) & (mag > at(1, -1))
    )
    local_max = (horizontal & keep_h) | (~horizontal & ((vertical & keep_v) | (~vertical & keep_d)))
    weak = local_max & (mag > low)
    edges = weak & (mag > high)
    for _ in range(h * w):
        grown = weak & _dilate3x3(edges)
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges


def _sobel(gray: Tensor) -> tuple[Tensor, Tensor]:
    """3x3 Sobel x and y derivatives (replicated border) as separable sums, (N, 1, H, W) each.

    Equals ``filter2d`` with ``_SOBEL_X`` and its transpose exactly: the inputs are small
    integers, so every partial sum is exact in float32 whatever the order.
    """
    p = pad2d(gray, (1, 1, 1, 1), mode="nearest")
    h = gray.shape[-2]
    diff = p[..., 2:] - p[..., :-2]  # [-1, 0, 1] along x
    gx = diff[..., :h, :] + diff[..., 2:, :]
    gx += diff[..., 1 : h + 1, :] * 2  # then [1, 2, 1] along y
    smooth = p[..., :-2] + p[..., 2:]
    smooth += p[..., 1:-1] * 2  # [1, 2, 1] along x
    gy = smooth[..., 2:, :] - smooth[..., :h, :]  # then [-1, 0, 1] along y
    return gx, gy


def _dilate3x3(mask: Tensor) -> Tensor:
    """3x3 binary dilation of a bool (..., H, W) mask: two separable ORs of shifted views.

    (A bool OR of three views per axis is ~10x faster on CPU than ``max_pool2d`` on floats.)
    """
    rows = mask.clone()
    rows[..., 1:, :] |= mask[..., :-1, :]
    rows[..., :-1, :] |= mask[..., 1:, :]
    out = rows.clone()
    out[..., :, 1:] |= rows[..., :, :-1]
    out[..., :, :-1] |= rows[..., :, 1:]
    return out


# OpenCV's 5x5 chamfer weights for DIST_L2 (a step along an axis, a diagonal, a knight's move),
# 1, 1.4f and 2.1969f, in 16-bit fixed point: cvRound(w * 2**16), as OpenCV 2.x summed them.
CHAMFER_SHIFT = 16
CHAMFER_STEPS = (
    ((0, 1), 65536), ((1, 0), 65536),
    ((1, 1), 91750), ((1, -1), 91750),
    ((1, 2), 143976), ((1, -2), 143976), ((2, 1), 143976), ((2, -1), 143976),
)


def _chamfer_distance(edges: Tensor, *, cap: float) -> Tensor:
    """``cv2.distanceTransform(~edges, DIST_L2, 5)`` truncated at ``cap``, in units of ``2**-16`` px.

    OpenCV runs two raster scans of the 5x5 chamfer mask; the result is the cheapest path from an
    edge pixel in steps of the mask (2.x summed them in 16-bit fixed point, 3.4 to 5.0 add the
    float32 weights along the scan, within 1e-4 px of the exact sums). The mask's norm is the
    infimal convolution of its 8 step directions (two adjacent steps of the mask span a
    unimodular cone, so every offset splits into whole steps of two of them, and both partial
    sums stay between the end points, inside the image), so the same integers come from one
    1-D distance transform per direction, each a few shifted minima with doubling steps
    (1, 2, 4, ... steps; offsets beyond ``cap`` are not needed). Every value ever written is
    the cost of a real path, so updating in place (reading partly updated values) stays exact.
    Integers below 2**24: exact in float32.
    """
    limit = round(cap * (1 << CHAMFER_SHIFT))
    # 0 on edges, limit + 1 elsewhere (beyond the cap is as good as unreachable); a bool -> float
    # cast is slow on CPU, a uint8 -> float one is not
    dist = (~edges).view(torch.uint8).to(torch.float32).mul_(float(limit + 1))
    h, w = dist.shape[-2:]
    for (dy, dx), weight in CHAMFER_STEPS:
        steps = 1
        while steps * weight <= limit:
            sy, sx = steps * dy, steps * dx
            if sy < h and abs(sx) < w:
                cols_to, cols_from = (slice(sx, w), slice(0, w - sx)) if sx >= 0 else (slice(0, w + sx), slice(-sx, w))
                here, back = dist[..., sy:h, cols_to], dist[..., 0 : h - sy, cols_from]  # p and p - steps * (dy, dx)
                torch.minimum(here, back + steps * weight, out=here)
                torch.minimum(back, here + steps * weight, out=back)
            steps *= 2
    return dist.clamp_(max=limit)


def _box3_sum(values: Tensor) -> Tensor:
    """3x3 sums with OpenCV's default border (reflect-101), exact for integers below 2**24 / 9."""
    return filter2d(values, _ONES3.to(values.device), mode="mirror")


def _blur_distance_to_uint8(fixed: Tensor) -> Tensor:
    """``cv2.blur(distances, (3, 3)).astype(np.uint8)`` for distances in units of ``2**-16`` px.

    OpenCV box-filters float32 images with float64 sums (exact for these values), scales by 1/9
    in float64 and stores float32, which the cast truncates: the same operations here give the
    same bytes. (One float32 pass of 1/9 weights would give e.g. 2.9999998 for a patch of 3s.)
    """
    mean = _box3_sum(fixed).double().mul_(1.0 / (1 << CHAMFER_SHIFT)).mul_(1.0 / 9.0)
    return torch.floor(mean.float())


def _blur_uint8(values: Tensor) -> Tensor:
    """``cv2.blur(uint8_image, (3, 3))`` on integer values 0..255: the 3x3 mean rounded to the
    nearest integer (OpenCV's fixed-point division; a sum over 9 is never a half)."""
    return torch.floor(_box3_sum(values).add_(4.5).div_(9.0))


def _equalize_hist(values: Tensor) -> Tensor:
    """``cv2.equalizeHist`` of (N, 1, H, W) integer-valued images in 0..255, per image."""
    n = values.shape[0]
    flat = values.reshape(n, -1).long()
    hist = torch.zeros(n, 256, dtype=torch.float32, device=values.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    cdf = hist.cumsum(1)
    first = hist.gt(0).float().argmax(1, keepdim=True)
    cdf_first = cdf.gather(1, first)
    total = cdf[:, -1:]
    scale = 255.0 / (total - cdf_first).clamp_min(1.0)
    lut = torch.round((cdf - cdf_first) * scale).clamp(0, 255)
    # a constant image stays as it is (OpenCV's special case)
    constant = (total == cdf_first).expand_as(lut)
    lut = torch.where(constant, torch.arange(256, device=values.device, dtype=lut.dtype), lut)
    return lut.gather(1, flat).reshape(values.shape)


def _water_mask(liquid: Tensor, intensity: float) -> Tensor:
    """The reference's water-drop layer: edges -> distance -> equalise -> emboss -> blend weight."""
    # The reference casts liquid * 255 to uint8 unclipped: the rare values above 1 (blurred noise
    # at CIFAR's small sigmas) wrap around modulo 256 on x86, and so they do here.
    liquid_u8 = torch.floor(liquid.clamp_min(0.0) * 255).remainder_(256)
    edges = _canny(liquid_u8, low=50, high=150)
    dist = _blur_distance_to_uint8(_chamfer_distance(edges, cap=20.0)).to(liquid.dtype)
    dist = _equalize_hist(dist)
    dist = torch.round(filter2d(dist, _EMBOSS.to(dist.device), mode="mirror")).clamp(0, 255)
    m = liquid_u8 * _blur_uint8(dist)
    peak = m.amax(dim=(1, 2, 3), keepdim=True)
    # m >= 0, so a zero peak means an all-zero layer, which stays zero
    return m.div_(peak.clamp_min(1e-12)).mul_(intensity)


def spatter(images: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Spatter: water drops (severities 1-3) or mud splashes (4-5) on the lens.

    A Gaussian liquid layer is blurred and thresholded. Water: the drops' rims (edges, distance,
    equalised and embossed) lighten the image towards pale turquoise, ``x + m * color``. Mud:
    the drops, softened, replace the image by brown, ``x * (1 - m) + m * color``.

    Shape:
        (N, C, H, W) -> (N, C, H, W)
    """
    (loc, scale, sigma, threshold, extra, mud), _ = TABLES["spatter"].row(images, severity)
    generator = resolve_generator(generator)
    x = to_work(images)
    _, rh, rw = _reference_shape(x)
    liquid = random_normal((x.shape[0], 1, rh, rw), generator, like=x, mean=loc, std=scale)
    liquid = gaussian_filter(liquid, sigma)
    zero_below(liquid, threshold, inplace=True)
    size = tuple(x.shape[-2:])
    if mud:
        m = gaussian_filter((liquid > threshold).float(), extra)
        m = zero_below(m, 0.8)
        m = resize_layer(m, size).to(x.dtype)
        color = torch.tensor(MUD_RGB, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return finish(with_rgb(x, lambda rgb: rgb * (1 - m) + color * m), images)
    m = resize_layer(_water_mask(liquid, extra), size).to(x.dtype)
    color = torch.tensor(WATER_RGB, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return finish(with_rgb(x, lambda rgb: (m * color).add_(rgb)), images)
