"""Orthonormal DCT-II over chosen dims, box low/high-pass bands and their energy.

Everything here is a matrix product with a cached DCT basis. `torch.fft` has no DCT, and the
mixing op only ever needs the first ``k`` rows of the basis (the kept low band), so a truncated
basis product costs ``k/n`` of a full transform; that is why this module exists instead of a
call into a library.

Conventions (identical to ``scipy.fft.dctn(x, type=2, norm="ortho", axes=dims)``):

    X[k] = s_k * sum_n x[n] * cos(pi * (2n + 1) * k / (2N)),  s_0 = sqrt(1/N), s_k = sqrt(2/N)

The low band of ``cutoff`` keeps the coefficients whose index is ``< k_d`` along every dim ``d``,
with ``k_d = floor(cutoff * n_d + 0.5)`` (nearest integer, halves up).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor

from robustmix._device import to_device
from robustmix._memory import Scratch, aligned

__all__ = [
    "band_product_numel",
    "band_sizes",
    "block_coefficients",
    "dct",
    "dct_basis",
    "fft_band_sizes",
    "highpass",
    "idct",
    "low_band_block",
    "low_band_coefficients",
    "lowpass",
    "normalize_dims",
]

Dims = Sequence[int]
Cutoff = float | Tensor


# --------------------------------------------------------------------------------------------
# Validation helpers (shared with functional.py)


def dims_spec(dims: Dims, *, name: str = "dims") -> tuple[int, ...]:
    """``dims`` as a non-empty tuple of ints (an int, a sequence of ints), before any tensor is
    known; raises naming ``name`` for anything else (floats, strings, bools, None)."""
    items = (dims,) if isinstance(dims, numbers.Integral) and not isinstance(dims, bool) else dims
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in items
    ):
        raise TypeError(f"{name} must be an int or a sequence of ints, got {dims!r}")
    if len(items) == 0:
        raise ValueError(f"{name} must name at least one dim, got {dims!r}")
    return tuple(int(d) for d in items)


def normalize_dims(dims: Dims, ndim: int, *, name: str = "dims", batched: bool = False) -> tuple[int, ...]:
    """Return ``dims`` as sorted non-negative ints, or raise naming what was wrong.

    With ``batched=True`` dim 0 is the batch and may not be a signal dim.
    """
    dims = dims_spec(dims, name=name)
    lowest = 1 if batched else 0
    out = []
    for d in dims:
        if not -ndim <= d < ndim:
            raise ValueError(f"{name} entry {d} is out of range for a tensor with {ndim} dims")
        d = d % ndim
        if d < lowest:
            raise ValueError(f"{name} may not include the batch dim 0, got {dims!r}")
        out.append(d)
    if len(set(out)) != len(out):
        raise ValueError(f"{name} has repeated entries: {dims!r}")
    return tuple(sorted(out))


def _check_float(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half types lose too much in sums of squares and long dot products: accumulate in fp32.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The x86 feature flags of this CPU from ``/proc/cpuinfo`` (None off Linux)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return None


@lru_cache(maxsize=1)
def _cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16).

    torch has no public query for this (its private probes change between releases), so the
    kernel's own flags are read where they exist; elsewhere (macOS, Windows) the answer is "no",
    which only costs speed: the products then run in fp32.
    """
    flags = _cpu_flags()
    return flags is not None and bool({"avx512_bf16", "amx_bf16"} & flags)


def matmul_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype Robustmix builds its output in: that of the inverse band product.

    Half inputs multiply in their own dtype where the hardware has native half GEMMs (CUDA;
    CPUs with AVX512-BF16 or AMX for bfloat16), accumulating in fp32 as those kernels do: the
    output is half anyway, and this product adds about one half ulp. Elsewhere (e.g. AVX2
    CPUs, where a bf16 GEMM is emulated and slower than fp32) in fp32. The forward transform,
    which measures the energies behind the label weights, always runs in fp32+
    (``_compute_dtype``).
    """
    if dtype == torch.float16 and device.type == "cuda":
        return dtype
    if dtype == torch.bfloat16 and (device.type == "cuda" or (device.type == "cpu" and _cpu_has_native_bf16())):
        return dtype
    return _compute_dtype(dtype)


# --------------------------------------------------------------------------------------------
# Basis


@lru_cache(maxsize=64)
def _cached_basis(n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    k = torch.arange(n, dtype=torch.float64, device="cpu").unsqueeze(1)  # built on the host, then moved
    i = torch.arange(n, dtype=torch.float64, device="cpu").unsqueeze(0)
    basis = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return basis.to(device=device, dtype=dtype)


def dct_basis(n: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """The orthonormal DCT-II matrix ``B`` of size ``(n, n)``: ``dct(x) = B @ x``, ``idct(X) = B.T @ X``.

    Row ``k`` is the ``k``-th cosine. Cached per ``(n, device, dtype)``; do not modify the result.
    """
    if n < 1:
        raise ValueError(f"n must be a positive size, got {n}")
    return _cached_basis(int(n), torch.device(device or "cpu"), dtype)


@lru_cache(maxsize=256)
def _band_basis(n: int, k: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The first ``k`` rows of the size-``n`` basis and their transpose, as cached views: the op
    takes three of them a call, and at small sizes each slice or transpose made afresh costs as
    much as a product."""
    rows = _cached_basis(n, device, dtype)[:k]
    return rows, rows.T


def band_sizes(cutoff: float, sizes: Sequence[int]) -> tuple[int, ...]:
    """Number of kept low-band indices per dim: ``floor(cutoff * n + 0.5)`` for each size ``n``."""
    return tuple(min(n, math.floor(cutoff * n + 0.5)) for n in sizes)


def _band_sizes_tensor(cutoff: Tensor, n: int) -> Tensor:
    # float64 so that e.g. cutoff=0.5, n=7 rounds exactly as the float formula does.
    return torch.floor(cutoff.to(torch.float64) * n + 0.5).clamp_(0, n).long()


# --------------------------------------------------------------------------------------------
# Mode products: multiply one dim of x by a matrix, without Python loops over samples.


def _apply_along(
    x: Tensor, matrix: Tensor, dim: int, matrix_t: Tensor | None = None, *, out: Tensor | None = None
) -> Tensor:
    """``y[..., j, ...] = sum_i matrix[j, i] * x[..., i, ...]`` along ``dim`` (``matrix_t``:
    ``matrix.T`` if the caller has it), written into ``out`` (contiguous) if given.

    Into ``out`` a product on one of the last two dims of a contiguous ``x`` is the very
    ``mm`` / ``bmm`` that ``@`` runs there, with ``out=``, where ``out`` starts 64-byte aligned as
    ``torch.empty``'s memory does (BLAS rounds by where its output starts: a float64 ``bmm`` 8
    bytes off differs in the last bit); others are computed as without ``out`` and copied.
    """
    matrix_t = matrix.T if matrix_t is None else matrix_t
    if out is not None and aligned(out) and x.is_contiguous() and dim >= x.ndim - 2 and x.ndim >= 2:
        if dim == x.ndim - 1:
            torch.mm(x.view(-1, x.shape[-1]), matrix_t, out=out.view(-1, matrix_t.shape[1]))
        else:  # what `matrix @ x` runs: the matrix expanded over the planes, one bmm
            planes = x.view(-1, *x.shape[-2:])
            torch.bmm(matrix.expand(planes.shape[0], *matrix.shape), planes, out=out.view(planes.shape[0], matrix.shape[0], -1))
        return out
    if dim == x.ndim - 2:
        y = matrix @ x
    elif dim == x.ndim - 1:
        y = x @ matrix_t
    else:
        y = torch.movedim(torch.movedim(x, dim, -1) @ matrix_t, -1, dim)
    return y if out is None else out.copy_(y)


def dct(x: Tensor, dims: Dims = (-2, -1)) -> Tensor:
    """Orthonormal DCT-II over ``dims`` (``scipy.fft.dctn(x, type=2, norm="ortho", axes=dims)``).

    Shape: any; the output has the shape, dtype and device of ``x``.

    Example:
        >>> x = torch.randn(2, 3, 8, 8)
        >>> torch.allclose(idct(dct(x)), x, atol=1e-5)
        True
    """
    _check_float(x, "x")
    dims_t = normalize_dims(dims, x.ndim)
    # The full transform is the low-band block that keeps every index.
    full = tuple(x.shape[d] for d in dims_t)
    return block_coefficients(x.to(_compute_dtype(x.dtype)), dims_t, full).to(x.dtype)


def idct(x: Tensor, dims: Dims = (-2, -1)) -> Tensor:
    """Inverse of :func:`dct` (``scipy.fft.idctn(x, type=2, norm="ortho", axes=dims)``)."""
    _check_float(x, "x")
    dims_t = normalize_dims(dims, x.ndim)
    sizes = {d: x.shape[d] for d in dims_t}
    return coefficients_to_signal(x.to(_compute_dtype(x.dtype)), sizes).to(x.dtype)


# --------------------------------------------------------------------------------------------
# Low band


def check_unit_weight(value: float | Tensor, name: str, batch: int, device: torch.device) -> float | Tensor:
    """A float in [0, 1], or a 1-D tensor of length ``batch`` with values in [0, 1].

    Returns a float or a float64 ``(batch,)`` tensor on ``device``; raises naming ``name``.
    Used for cutoffs here and for the mixing weights in :mod:`robustmix.functional`.
    """
    if isinstance(value, Tensor):
        if value.ndim == 0:
            value = float(value)
        else:
            if value.ndim != 1 or value.shape[0] != batch:
                raise ValueError(
                    f"{name} must be a float or a 1-D tensor of length {batch} (one per sample), "
                    f"got shape {tuple(value.shape)}"
                )
            if value.is_complex() or value.dtype == torch.bool:
                raise TypeError(f"{name} must be a real tensor, got dtype {value.dtype}")
            # Checked where it lives (the mixers draw on the CPU: no accelerator sync), then moved.
            v = value.detach().to(dtype=torch.float64)
            if not bool(((v >= 0) & (v <= 1)).all()):
                raise ValueError(f"{name} must lie in [0, 1], got values in [{v.min():.4g}, {v.max():.4g}]")
            return to_device(v, torch.device(device))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1] or a 1-D tensor, got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


def low_band_block(
    x: Tensor, cutoff: float | Tensor, dims: tuple[int, ...], dtype: torch.dtype, *,
    host_cutoff: Tensor | None = None,
) -> tuple[tuple[int, ...], Tensor | None]:
    """Size of the kept coefficient block per dim, and for per-sample cutoffs a 0/1 mask.

    For per-sample cutoffs the block is that of the largest band, and the mask (broadcastable
    against the block) keeps sample ``i``'s own band. ``host_cutoff``, the same cutoffs on the
    CPU (as the mixers draw them), sizes the block without reading a device tensor (a host
    sync per dim on an accelerator).
    """
    sizes = [x.shape[d] for d in dims]
    if isinstance(cutoff, Tensor):
        ks_per_dim = [_band_sizes_tensor(cutoff, n) for n in sizes]
        sized_by = ks_per_dim if host_cutoff is None else [_band_sizes_tensor(host_cutoff, n) for n in sizes]
        block = tuple(int(k.max()) for k in sized_by)
        return block, _per_sample_mask(ks_per_dim, dims, block, x.ndim, dtype)
    return band_sizes(cutoff, sizes), None


def block_coefficients(
    x: Tensor, dims: tuple[int, ...], block: tuple[int, ...], *, kept: Tensor | None = None,
    out: Tensor | None = None, scratch: Scratch | None = None,
) -> Tensor:
    """DCT coefficients of ``x`` with index ``< block[d]`` along each of ``dims``, in x's dtype.

    Only the first ``k`` rows of each basis are multiplied: ``k/n`` of a full transform's work.
    ``kept``: per dim of ``dims``, how many of the block's rows to keep (a device value, as in a
    CUDA graph whose block is fixed and whose band is drawn): the basis rows beyond are zeroed,
    so those coefficients are exact zeros and the kept ones the same products as without.
    ``out``: where to write them (contiguous); ``scratch``: where the products between go (and
    the last one, then copied, where ``out`` is not aligned for :func:`_apply_along`).
    """
    if 0 in block:
        shape = list(x.shape)
        for d, k in zip(dims, block):
            shape[d] = k
        return x.new_zeros(shape) if out is None else out.zero_()
    y = x
    # Last dim first: a matmul on the contiguous dim needs no transposed copy.
    order = sorted(enumerate(dims), key=lambda item: -item[1])
    step_shape = list(x.shape)
    for step, (i, d) in enumerate(order):
        basis, basis_t = _band_basis(x.shape[d], block[i], x.device, x.dtype)
        if kept is not None:
            basis = basis * (torch.arange(block[i], device=basis.device) < kept[i]).to(x.dtype).unsqueeze(1)
            basis_t = basis.T
        step_shape[d] = block[i]
        direct = step == len(order) - 1 and out is not None and aligned(out)
        target = out if direct else (scratch.take(step_shape, x.dtype) if scratch is not None else None)
        y = _apply_along(y, basis, d, basis_t, out=target)
    return y if out is None or y is out else out.copy_(y)


def band_product_numel(shape: Sequence[int], dims: tuple[int, ...], block: tuple[int, ...]) -> int:
    """Elements of the products that :func:`block_coefficients` of an ``x`` of ``shape``, or
    :func:`coefficients_to_signal` of its block into a contiguous ``add_to``, make before their
    last one (the larger of the two): what a :class:`~robustmix._memory.Scratch` must hold for them."""
    full = list(shape)
    forward, step = 0, list(shape)
    for d, k in sorted(zip(dims, block), key=lambda item: -item[0])[:-1]:
        step[d] = k
        forward += math.prod(step)
    inverse, step = 0, list(shape)
    for d, k in zip(dims, block):
        step[d] = k
    for d in sorted(dims)[:-1]:
        step[d] = full[d]
        inverse += math.prod(step)
    return max(forward, inverse)


def low_band_coefficients(
    x: Tensor, cutoff: float | Tensor, dims: tuple[int, ...], *, dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor | None]:
    """DCT coefficients of the kept low-band block, in ``dtype`` (default: fp32 for half types).

    For a float cutoff returns the ``k_d``-sized block and ``None``. For per-sample cutoffs
    returns the block of the largest ``k_d`` (unmasked: every sample's coefficients up to the
    largest band) and a 0/1 mask, broadcastable against it, that keeps sample ``i``'s own band.
    ``dims`` must already be normalised and ``cutoff`` checked (see :func:`lowpass`).
    """
    compute = dtype or _compute_dtype(x.dtype)
    block, mask = low_band_block(x, cutoff, dims, compute)
    return block_coefficients(x.to(compute), dims, block), mask


def _per_sample_mask(
    ks_per_dim: list[Tensor], dims: tuple[int, ...], block: tuple[int, ...], ndim: int, dtype: torch.dtype
) -> Tensor:
    """(N, ...) 0/1 mask that keeps index < k_d[i] along every dim d for sample i."""
    mask = None
    for k, d, size in zip(ks_per_dim, dims, block):
        idx_shape = [1] * ndim
        idx_shape[d] = size
        m = torch.arange(size, device=k.device).view(idx_shape) < k.view([-1] + [1] * (ndim - 1))
        mask = m if mask is None else mask & m
    return mask.to(dtype)


def coefficients_to_signal(
    coef: Tensor, sizes: dict[int, int], *, add_to: Tensor | None = None, scratch: Scratch | None = None
) -> Tensor:
    """Inverse of :func:`low_band_coefficients`: the signal of a low-band coefficient block.

    ``sizes`` maps each signal dim to its full size. With ``add_to`` the signal is added into
    that tensor in place (fused into the last matrix product when the last dim is a signal dim
    and ``add_to`` is contiguous) and ``add_to`` is returned. ``scratch``: where the products
    before the fused one go.
    """
    dims = sorted(sizes)
    if any(coef.shape[d] == 0 for d in dims):
        if add_to is not None:
            return add_to
        shape = list(coef.shape)
        for d in dims:
            shape[d] = sizes[d]
        return coef.new_zeros(shape)
    y = coef
    last = dims[-1]
    fuse = add_to is not None and last == coef.ndim - 1 and add_to.is_contiguous() and add_to.dtype == coef.dtype
    # The last dim last: its product is one large 2-D GEMM that can accumulate into add_to.
    step_shape = list(coef.shape)
    for d in dims[:-1] if fuse else dims:
        basis, basis_t = _band_basis(sizes[d], coef.shape[d], coef.device, coef.dtype)
        step_shape[d] = sizes[d]
        # In coef's dtype: a half block (native half products) gets its own memory, not the
        # fp32 scratch of the forward pass.
        y = _apply_along(y, basis_t, d, basis, out=scratch.take(step_shape, coef.dtype) if scratch is not None else None)
    if not fuse:
        return y if add_to is None else add_to.add_(y)
    basis, _ = _band_basis(sizes[last], coef.shape[last], coef.device, coef.dtype)
    add_to.view(-1, sizes[last]).addmm_(y.reshape(-1, basis.shape[0]), basis)
    return add_to


# --------------------------------------------------------------------------------------------
# FFT box (an ablation of the op): the same box, in |frequency| of a real FFT.


def fft_band_sizes(cutoff: float, sizes: Sequence[int]) -> tuple[int, ...]:
    """Kept |frequency| indices per dim for the FFT box: ``floor(cutoff * (n // 2 + 1) + 0.5)``.

    |frequency| of FFT bin ``m`` is ``min(m, n - m)``, at most ``n // 2``, so cutoff 1 keeps all.
    """
    return tuple(min(n // 2 + 1, math.floor(cutoff * (n // 2 + 1) + 0.5)) for n in sizes)


def fft_low_mask(cutoff: float | Tensor, sizes: Sequence[int], dims: tuple[int, ...], ndim: int, device: torch.device) -> Tensor:
    """0/1 mask over ``torch.fft.rfftn(x, dim=dims)`` keeping |frequency| < k along every dim.

    Shape ``(N or 1, ...)`` broadcastable against the spectrum; the last of ``dims`` is the
    half-spectrum axis of the real FFT.
    """
    per_sample = isinstance(cutoff, Tensor)
    mask = None
    for i, (d, n) in enumerate(zip(dims, sizes)):
        m = torch.arange(n // 2 + 1 if i == len(dims) - 1 else n, device=device)
        freq_abs = torch.minimum(m, n - m)
        shape = [1] * ndim
        shape[d] = m.shape[0]
        if per_sample:
            k = torch.floor(cutoff.to(device=device, dtype=torch.float64) * (n // 2 + 1) + 0.5).long()
            keep = freq_abs.view(shape) < k.view([-1] + [1] * (ndim - 1))
        else:
            keep = freq_abs.view(shape) < fft_band_sizes(cutoff, [n])[0]
        mask = keep if mask is None else mask & keep
    return mask


def rfft_bin_weights(n_last: int, dim: int, ndim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Multiplicity of each half-spectrum bin in the full spectrum (Parseval for ``rfftn``)."""
    w = torch.full((n_last // 2 + 1,), 2.0, device=device, dtype=dtype)
    w[0] = 1.0
    if n_last % 2 == 0:
        w[-1] = 1.0
    shape = [1] * ndim
    shape[dim] = w.shape[0]
    return w.view(shape)


def _fft_lowpass(x: Tensor, cutoff: float | Tensor, dims: tuple[int, ...]) -> Tensor:
    sizes = [x.shape[d] for d in dims]
    spec = torch.fft.rfftn(x.to(_compute_dtype(x.dtype)), dim=dims, norm="ortho")
    spec = spec * fft_low_mask(cutoff, sizes, dims, x.ndim, x.device)
    return torch.fft.irfftn(spec, s=sizes, dim=dims, norm="ortho")


TRANSFORMS = ("dct", "fft")


def check_transform(transform: str) -> str:
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    return transform


def lowpass(x: Tensor, cutoff: Cutoff, dims: Dims = (-2, -1), *, transform: str = "dct") -> Tensor:
    """Keep the DCT coefficients with index ``< floor(cutoff * n_d + 0.5)`` along every dim.

    Args:
        x: floating tensor. With a per-sample ``cutoff`` its dim 0 is the batch.
        cutoff: float in [0, 1], or a 1-D tensor of length ``x.shape[0]`` (one per sample).
        dims: the signal dims to filter over.
        transform: ``"dct"`` (the contract) or ``"fft"``: the same box in |frequency| of a real
            FFT, keeping ``|f| < floor(cutoff * (n // 2 + 1) + 0.5)`` (an ablation).

    Shape: output has the shape, dtype and device of ``x``.

    Example:
        >>> x = torch.randn(4, 3, 16, 16)
        >>> torch.allclose(lowpass(x, 1.0), x, atol=1e-5)
        True
    """
    _check_float(x, "x")
    per_sample = isinstance(cutoff, Tensor) and cutoff.ndim == 1
    dims_t = normalize_dims(dims, x.ndim, batched=per_sample)
    if per_sample and x.shape[0] == 0:
        raise ValueError("x must have a non-empty batch dim when cutoff is per sample")
    c = check_unit_weight(cutoff, "cutoff", x.shape[0] if x.ndim else 1, x.device)
    if check_transform(transform) == "fft":
        return _fft_lowpass(x, c, dims_t).to(x.dtype)
    coef, mask = low_band_coefficients(x, c, dims_t)
    if mask is not None:
        coef = coef * mask
    out = coefficients_to_signal(coef, {d: x.shape[d] for d in dims_t})
    return out.to(x.dtype)


def highpass(x: Tensor, cutoff: Cutoff, dims: Dims = (-2, -1), *, transform: str = "dct") -> Tensor:
    """``x - lowpass(x, cutoff, dims)``: everything outside the low box."""
    return x - lowpass(x, cutoff, dims, transform=transform)
