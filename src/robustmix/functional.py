"""Pure mixing functions: Mixup, CutMix and Robustmix. No randomness inside.

Every function takes a batch, integer or soft targets and explicit mixing parameters, and returns
``(mixed_images, soft_targets)``. The partner of sample ``i`` is ``index[i]`` (default: the batch
rolled by one, ``torch.roll(arange(N), 1)``). Parameters are sampled in :mod:`robustmix.params`.

Robustmix (Ngnawé et al., arXiv 2304.02847) with ``x1 = images``, ``x2 = images[index]``:

    out   = Low(lam_low*x1 + (1-lam_low)*x2, c) + High(lam_high*x1 + (1-lam_high)*x2, c)
    lam   = lam_c*lam_low + (1-lam_c)*lam_high,    lam_c = energy share of the low band
    soft  = lam*y1 + (1-lam)*y2
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor

from robustmix import _graphs, freq
from robustmix._device import to_device
from robustmix._memory import MIN_BYTES, Scratch, empty_output, give_back_scratch, lend_scratch

__all__ = ["cutmix", "energy_modes", "mixup", "one_hot", "robustmix"]

Scalar = float | Tensor
ENERGY_MODES = ("batch", "sample", "uniform")


def energy_modes() -> tuple[str, ...]:
    """Names accepted by ``robustmix(..., energy=...)`` (a float in [0, 1] is also accepted)."""
    return ENERGY_MODES


# --------------------------------------------------------------------------------------------
# Validation
#
# Checks of tensor values (NaN, ranges, permutations) need the answer on the host. On the CPU
# that is free; on an accelerator each one is a host sync that stalls the launch queue (a call
# made six). Inside a ``_checked()`` block the accelerator's checks are queued as bool tensors
# and answered together by one sync at the end of the block, before anything is returned; until then the computation runs on
# clamped indices, so invalid input cannot trip a device-side assert before its error is raised.

_IMMEDIATE_DEVICES = frozenset({"cpu"})  # where a check's answer is free (tests may empty it)
_PENDING: ContextVar[list[tuple[Tensor, list[Callable[[], Exception]]]] | None] = ContextVar(
    "robustmix_pending_checks", default=None
)
_CHECK_VALUES: ContextVar[bool] = ContextVar("robustmix_check_values", default=True)
# The partner permutation a mixer drew itself (torch.randperm): that very tensor needs no check.
_DRAWN_INDEX: ContextVar[Tensor | None] = ContextVar("robustmix_drawn_index", default=None)


@contextmanager
def _values_unchecked() -> Iterator[None]:
    """Skip the checks of tensor values inside the block (a mixer's ``check_values=False``):
    no host sync for them on an accelerator. Checks of types and shapes still run; indices
    and class ids are still clamped before use on an accelerator (so a bad value cannot trip a
    device-side assert), and invalid values give unspecified results instead of an error."""
    token = _CHECK_VALUES.set(False)
    try:
        yield
    finally:
        _CHECK_VALUES.reset(token)


@contextmanager
def _drawn_index(index: Tensor) -> Iterator[None]:
    """Inside the block, ``index`` (this tensor object, as a mixer drew it by ``torch.randperm``)
    is a permutation by construction: the op skips its value check (a sort and a compare)."""
    token = _DRAWN_INDEX.set(index)
    try:
        yield
    finally:
        _DRAWN_INDEX.reset(token)


@contextmanager
def _checked() -> Iterator[None]:
    """Resolve the accelerator checks queued inside the block with one host sync (nests)."""
    if _PENDING.get() is not None:
        yield
        return
    pending: list[tuple[Tensor, list[Callable[[], Exception]]]] = []
    token = _PENDING.set(pending)
    try:
        yield
    finally:
        _PENDING.reset(token)
    if pending:
        device = pending[0][0].device
        flags = pending[0][0] if len(pending) == 1 else torch.cat([f.to(device) for f, _ in pending])
        for ok, error in zip(flags.tolist(), [e for _, errors in pending for e in errors]):
            if not ok:
                raise error()


def _resolves_checks(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` inside :func:`_checked` (its accelerator checks cost one sync in all) and
    outside autocast: the op sets its own precision (fp32 energies for half inputs), which an
    enclosing ``torch.autocast`` would otherwise override in its matrix products."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _checked():
            # Entering the two autocast contexts costs ~30 us a call, as much as a small batch's
            # products: only where autocast is on.
            if torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"):
                with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
                    return fn(*args, **kwargs)
            return fn(*args, **kwargs)

    return wrapper


def _deferring(device: torch.device) -> bool:
    """Whether a check of tensors on ``device`` is not answered before their values are used:
    queued (inside ``_checked()``, off the CPU) or skipped (``_values_unchecked()``). Indices
    and class ids are then clamped first, so a bad value cannot trip an out-of-range access."""
    if not _CHECK_VALUES.get():
        return True
    return device.type not in _IMMEDIATE_DEVICES and _PENDING.get() is not None


def _require(check: Callable[[], Tensor], error: Callable[[], Exception]) -> None:
    """Raise ``error()`` unless the 0-d bool tensor ``check()`` is true: now, or queued (see
    above). ``check`` is not even called inside ``_values_unchecked()``."""
    if _CHECK_VALUES.get():
        _require_each(check().reshape(1), [error])


def _require_each(flags: Tensor, errors: list[Callable[[], Exception]]) -> None:
    """:func:`_require` for a 1-d bool tensor of checks, ``errors[i]`` raised for the first false."""
    if not _CHECK_VALUES.get():
        return
    pending = _PENDING.get()
    if pending is not None and flags.device.type not in _IMMEDIATE_DEVICES:
        pending.append((flags, errors))
        return
    for ok, error in zip(flags.tolist(), errors):
        if not ok:
            raise error()


def _answered_now(t: Tensor) -> bool:
    """Whether a value check of ``t`` runs now and reads its answer on the host (value checks on,
    ``t`` on the CPU): the checks below then take one reduction and plain Python comparisons
    instead of their device forms (``torch.isfinite`` alone is four elementwise ops in torch;
    each op is a few microseconds, which adds up at small batch sizes)."""
    return _CHECK_VALUES.get() and t.device.type in _IMMEDIATE_DEVICES


def _check_images(images: Tensor, min_dims: int) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor, got dtype {images.dtype}")
    if images.ndim < min_dims:
        raise ValueError(
            f"images must have at least {min_dims} dims (batch first, then the signal dims), "
            f"got shape {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise ValueError(f"images must have a non-empty batch, got shape {tuple(images.shape)}")


def _nonfinite_samples_error(per_sample: Tensor) -> Callable[[], Exception]:
    """The NaN/inf error naming the first samples (rows of ``per_sample``) that hold one."""

    def error() -> Exception:
        finite = torch.isfinite(per_sample.reshape(per_sample.shape[0], -1)).all(dim=1)
        bad = torch.nonzero(~finite).flatten()[:5].tolist()
        return ValueError(f"images contain NaN or inf values (samples {bad})")

    return error


def _check_finite_norms(sq_norms: Tensor) -> float | None:
    """Raise if a sample's squared norm is NaN or inf. Returns the norms' float64 sum where it
    was read on the host (the batch energy the label weight divides by), else None."""
    # The per-sample squared norms are computed anyway (energy weighting); a NaN or inf pixel
    # makes its sample's norm non-finite, so this checks the images at no extra pass.
    if _answered_now(sq_norms) and sq_norms.dtype != torch.float64:
        # A float64 sum of float32 squares cannot overflow: it is finite iff every norm is.
        total = float(sq_norms.detach().sum(dtype=torch.float64))
        if not math.isfinite(total):
            raise _nonfinite_samples_error(sq_norms)()
        return total
    _require(lambda: torch.isfinite(sq_norms).all(), _nonfinite_samples_error(sq_norms))
    return None


def _check_finite_images(images: Tensor) -> None:
    # A sum is non-finite iff some value is (fp32/fp64 accumulation cannot overflow on
    # finite image data), and it reads the batch once without a full-size boolean temporary.
    acc = torch.float64 if images.dtype == torch.float64 else torch.float32
    error = lambda: ValueError("images contain NaN or inf values")
    if _answered_now(images):
        if not math.isfinite(float(images.detach().sum(dtype=acc))):
            raise error()
        return
    _require(lambda: torch.isfinite(images.sum(dtype=acc)), error)


def _index_structure(index: Tensor | None, n: int) -> Tensor | None:
    """``index`` as int64 after the checks that need no values; ``None`` stays ``None``."""
    if index is None:
        return None
    if not isinstance(index, Tensor):
        raise TypeError(f"index must be a 1-D integer tensor, got {type(index).__name__}")
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise TypeError(f"index must be an integer tensor, got dtype {index.dtype}")
    if index.shape != (n,):
        raise ValueError(f"index must be a permutation of length {n}, got shape {tuple(index.shape)}")
    return index.long()


def _require_index_values(index: Tensor, n: int) -> None:
    if index is _DRAWN_INDEX.get():
        return
    if _answered_now(index):
        if not torch.equal(torch.sort(index).values, torch.arange(n, device=index.device)):
            raise _index_error(index, n)()
        return
    _require(lambda: (torch.sort(index).values == torch.arange(n, device=index.device)).all(), _index_error(index, n))


def _require_soft_values(targets: Tensor) -> None:
    if _answered_now(targets):
        if targets.numel():
            low, high = (float(v) for v in torch.aminmax(targets.detach()))  # NaN propagates to both
            if not (math.isfinite(low) and math.isfinite(high)):
                raise _soft_nan_error()
            if low < 0 or high > 1:
                raise _soft_range_error(targets)()
        return
    _require(lambda: torch.isfinite(targets).all(), _soft_nan_error)
    if targets.numel():
        _require(lambda: ((targets >= 0) & (targets <= 1)).all(), _soft_range_error(targets))


def _index_error(index: Tensor, n: int) -> Callable[[], Exception]:
    return lambda: ValueError(f"index must be a permutation of 0..{n - 1}, got {index.tolist()[:10]}")


def _check_index(index: Tensor | None, n: int, device: torch.device) -> Tensor:
    index = _index_structure(index, n)
    if index is None:
        return torch.roll(torch.arange(n, device=device), 1)
    # Checked where it lives (a CPU index, as the mixers draw it, costs no accelerator sync),
    # then moved; an accelerator index is checked in the _checked() batch and clamped meanwhile.
    _require_index_values(index, n)
    if _deferring(index.device):
        index = index.clamp(0, n - 1)
    return to_device(index, device)


def one_hot(
    targets: Tensor,
    num_classes: int,
    *,
    label_smoothing: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Integer class ids ``(N,)`` to (smoothed) one-hot rows ``(N, num_classes)``.

    Smoothing follows ``torch.nn.CrossEntropyLoss``: ``(1 - eps) * onehot + eps / K``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if (
        isinstance(label_smoothing, bool)
        or not isinstance(label_smoothing, numbers.Real)
        or not 0.0 <= label_smoothing <= 1.0
    ):
        raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing!r}")
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    _check_class_ids(targets, num_classes)
    ids = targets.long()
    with _checked():
        if ids.numel():
            if _answered_now(ids):
                low, high = (int(v) for v in torch.aminmax(ids))
                if low < 0 or high >= num_classes:
                    raise _ids_range_error(ids, num_classes)()
            else:
                _require(lambda: ((ids >= 0) & (ids < num_classes)).all(), _ids_range_error(ids, num_classes))
            if _deferring(ids.device):  # scatter_ must not see an out-of-range id before the check
                ids = ids.clamp(0, num_classes - 1)
        off = label_smoothing / num_classes
        out = torch.full((targets.shape[0], num_classes), off, dtype=dtype, device=targets.device)
        out.scatter_(1, ids.unsqueeze(1), 1.0 - label_smoothing + off)
    return out


def _targets_kind(targets: Tensor, n: int, num_classes: int | None) -> str:
    """``"soft"`` or ``"ids"``, after the checks of ``targets`` that need no values."""
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.shape[:1] != (n,):
        raise ValueError(
            f"targets must have the batch size {n} of images as first dim, got shape {tuple(targets.shape)}"
        )
    if targets.is_floating_point():
        if targets.ndim != 2:
            raise ValueError(f"soft targets must have shape (N, K), got {tuple(targets.shape)}")
        if num_classes is not None and targets.shape[1] != num_classes:
            raise ValueError(
                f"soft targets have {targets.shape[1]} classes but num_classes={num_classes}"
            )
        return "soft"
    if num_classes is None:
        raise ValueError("num_classes is required when targets are integer class ids")
    _check_class_ids(targets, num_classes)
    return "ids"


def _check_class_ids(targets: Tensor, num_classes: int) -> None:
    """The checks of integer class ids that need no values (shared by one_hot and the op)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be integer class ids, got dtype {targets.dtype}")
    if targets.ndim != 1:
        raise ValueError(f"integer targets must have shape (N,), got {tuple(targets.shape)}")


def _soft_nan_error() -> Exception:
    return ValueError("targets contain NaN or inf values")


def _soft_range_error(targets: Tensor) -> Callable[[], Exception]:
    def error() -> Exception:
        low, high = (float(v) for v in torch.aminmax(targets))
        return ValueError(f"soft targets must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]")

    return error


def _ids_range_error(ids: Tensor, num_classes: int) -> Callable[[], Exception]:
    return lambda: ValueError(
        f"targets must lie in [0, {num_classes - 1}] for num_classes={num_classes}, "
        f"got values in [{int(ids.min())}, {int(ids.max())}]"
    )


def _one_hot_dtype(images_dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if images_dtype == torch.float64 else torch.float32


def _soft_targets(
    targets: Tensor, n: int, num_classes: int | None, images_dtype: torch.dtype, device: torch.device | None = None
) -> Tensor:
    """(N, K) float targets on ``device`` (the images'), from class ids or given soft targets."""
    if _targets_kind(targets, n, num_classes) == "soft":
        _require_soft_values(targets)
        return targets.to(device) if device is not None else targets
    dtype = _one_hot_dtype(images_dtype)
    soft = one_hot(targets, num_classes, dtype=dtype)
    return to_device(soft, torch.device(device)) if device is not None else soft


def _as_column(value: float | Tensor, ndim: int, dtype: torch.dtype, device: torch.device) -> float | Tensor:
    """Per-sample weights as a (N, 1, ..., 1) tensor broadcastable against ndim-dim tensors."""
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=dtype).view([-1] + [1] * (ndim - 1))
    return value


def _mix_targets(y1: Tensor, index: Tensor, lam: float | Tensor) -> Tensor:
    """``lam * y1 + (1 - lam) * y2`` as ``y2 + lam * (y1 - y2)``, in ``y1``'s dtype.

    Half soft targets are mixed in float32 and rounded once: torch rounds a tensor weight to a
    half operand's dtype but keeps a Python float, so without this the same call gave other
    targets when ``lam`` is a device value (CUDA graphs, energies left on the GPU) than a float.
    """
    half = y1.dtype in (torch.float16, torch.bfloat16)
    y = y1.float() if half else y1
    y2 = y.index_select(0, index)
    lam = _as_column(lam, 2, y.dtype, y.device)
    mixed = y2 + lam * (y - y2)
    return mixed.to(y1.dtype) if half else mixed


_CHUNK_BYTES = 4 << 20
_SCRATCH_MIN_BYTES = 1 << 20
"""Band products from this size up (and every chunked call's) go in one
:class:`~robustmix._memory.Scratch`. Below it the allocator's free lists gave the same pages
back (B256x1x28^2, 0.4 MB products: no page faults in any of six fresh processes,
``python benchmarks/op_faults.py --base fae4c16 --runs 6``), and there a scratch only adds its
views and ``out=`` calls."""


def _contiguous_as(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x.to(dtype).contiguous()``, a new buffer only where needed (then from :func:`empty_output`)."""
    if x.dtype == dtype and x.is_contiguous():
        return x
    return empty_output(x.shape, dtype=dtype, device=x.device).copy_(x)


def _batch_chunks(x: Tensor) -> list[tuple[int, int]]:
    """Batch slices of about 4 MiB of input each.

    Working chunk by chunk keeps every temporary (band products, gathers) small enough to stay
    in cache and to be reused by the allocator instead of being mapped and page-faulted afresh
    on every call, which on a CPU costs as much as the matrix products themselves at 224 px.
    """
    n = x.shape[0]
    per_sample = max(1, math.prod(x.shape[1:]) * x.element_size())
    step = max(1, _CHUNK_BYTES // per_sample) if x.device.type == "cpu" else n
    return [(s, min(s + step, n)) for s in range(0, n, step)]


def _sq_norms(x: Tensor, acc: torch.dtype) -> Tensor:
    """Per-sample sum of squares ``(N,)`` in ``acc``, chunk by chunk.

    ``vector_norm(..., dtype=acc)`` on a half input is ~10x slower on CPU than converting a
    cache-sized chunk and reducing it, so half inputs are converted here a chunk at a time.
    """
    chunks = _batch_chunks(x)
    if len(chunks) == 1:
        flat = x.flatten(1)
        return torch.linalg.vector_norm(flat if flat.dtype == acc else flat.to(acc), dim=1).square_()
    out = torch.empty(x.shape[0], dtype=acc, device=x.device)
    for s, e in chunks:
        flat = x[s:e].flatten(1)
        out[s:e] = torch.linalg.vector_norm(flat if flat.dtype == acc else flat.to(acc), dim=1).square()
    return out


def _band_scratch(
    x1: Tensor, coef_shape: tuple[int, ...], chunks: list[tuple[int, int]], dims: tuple[int, ...],
    block: tuple[int, ...], compute: torch.dtype, *, per_sample: bool,
) -> Scratch | None:
    """The CPU op's temporaries in one pooled buffer (None elsewhere: accelerators have caching
    allocators): the coefficient block, kept for the call, and one chunk's worth of pass 1 (the
    chunk in ``compute`` dtype, the products, the last of them apart where the chunk's rows of
    the block are not aligned) or of pass 2 (the coefficient difference, the inverse products; with
    per-sample cutoffs also the gathered coefficients and images of :func:`_mix_per_sample_bands`)."""
    rows = max(e - s for s, e in chunks)
    if x1.device.type != "cpu" or (len(chunks) == 1 and x1.numel() * compute.itemsize < _SCRATCH_MIN_BYTES):
        return None  # (the products are no larger than the batch)
    products = freq.band_product_numel((rows, *x1.shape[1:]), dims, block)
    converted = 0 if x1.dtype == compute else rows * math.prod(x1.shape[1:])
    difference = rows * math.prod(coef_shape[1:])
    if len(chunks) == 1 and products * compute.itemsize < _SCRATCH_MIN_BYTES:
        return None  # smaller temporaries are reused from the allocator's free lists in practice
    # per-sample cutoffs in chunks: both rows' and partners' coefficients and images besides
    gathers = 2 * difference + 2 * rows * math.prod(x1.shape[1:]) if per_sample and len(chunks) > 1 else 0
    return lend_scratch(math.prod(coef_shape) + difference + products + max(converted, gathers), compute)


def _chunk_rows(t: Tensor | float, *, start: int, stop: int) -> Tensor | float:
    """Rows ``start:stop`` of a batch tensor; a float weight, or a chunk that is the whole
    batch, as it is (each view op costs a few microseconds, which small batches notice)."""
    if not isinstance(t, Tensor) or (start == 0 and stop == t.shape[0]):
        return t
    return t[start:stop]


def _pooled(images: Tensor) -> bool:
    """Whether a new tensor like ``images`` should come from the CPU buffer pool: a large
    contiguous CPU batch (a fresh one page-faults on every call; smaller ones are cheaper as is)."""
    return (
        images.device.type == "cpu"
        and images.is_contiguous()
        and images.numel() * images.element_size() >= MIN_BYTES
        and not (images.requires_grad and torch.is_grad_enabled())  # out= is not differentiable
    )


def _gathered(images: Tensor, index: Tensor) -> Tensor:
    """``images[index]`` in a new tensor, pooled where :func:`_pooled`."""
    if not _pooled(images):
        return images.index_select(0, index)
    return torch.index_select(images, 0, index, out=empty_output(images.shape, dtype=images.dtype, device=images.device))


def _copied(images: Tensor) -> Tensor:
    """``images.clone()``, pooled where :func:`_pooled`."""
    if not _pooled(images):
        return images.clone()
    return empty_output(images.shape, dtype=images.dtype, device=images.device).copy_(images)


def _restore_format(out: Tensor, like: Tensor) -> Tensor:
    if like.ndim == 4 and like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        return out.contiguous(memory_format=torch.channels_last)
    if like.ndim == 5 and like.is_contiguous(memory_format=torch.channels_last_3d) and not like.is_contiguous():
        return out.contiguous(memory_format=torch.channels_last_3d)
    return out.contiguous()


# --------------------------------------------------------------------------------------------
# Mixup and CutMix


@_resolves_checks
def mixup(
    images: Tensor,
    targets: Tensor,
    *,
    lam: Scalar,
    index: Tensor | None = None,
    num_classes: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Mixup (Zhang et al. 2018): ``lam * x1 + (1 - lam) * x2`` and the same for the targets.

    Args:
        images: floating batch ``(N, ...)``.
        targets: int class ids ``(N,)`` (needs ``num_classes``) or soft targets ``(N, K)``.
        lam: weight of ``x1``: a float in [0, 1] or a ``(N,)`` tensor (one per sample).
        index: partner permutation, ``x2 = images[index]``; default ``roll(arange(N), 1)``.
        num_classes: number of classes for integer targets.

    Returns:
        ``(mixed_images, soft_targets)``; images keep dtype, device and memory format.

    Example:
        >>> x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
        >>> out, soft = mixup(x, y, lam=0.7, num_classes=4)
        >>> soft[0].tolist()
        [0.699999988079071, 0.0, 0.0, 0.30000001192092896]
    """
    _check_images(images, 2)
    n = images.shape[0]
    lam = freq.check_unit_weight(lam, "lam", n, images.device)
    index = _check_index(index, n, images.device)
    y1 = _soft_targets(targets, n, num_classes, images.dtype, images.device)
    _check_finite_images(images)
    out = _gathered(images, index).lerp_(images, _as_column_weight(lam, images))  # x2 + lam (x1 - x2)
    return _restore_format(out, images), _mix_targets(y1, index, lam)


def _as_column_weight(lam: float | Tensor, images: Tensor) -> float | Tensor:
    # torch.lerp wants the weight in the images' dtype when it is a tensor.
    return _as_column(lam, images.ndim, images.dtype, images.device)


@_resolves_checks
def cutmix(
    images: Tensor,
    targets: Tensor,
    *,
    box: tuple[int, int, int, int],
    index: Tensor | None = None,
    num_classes: int | None = None,
) -> tuple[Tensor, Tensor]:
    """CutMix (Yun et al. 2019): paste ``box`` of the partner into every image.

    Args:
        images: floating batch ``(N, ..., H, W)``.
        targets: int class ids ``(N,)`` or soft targets ``(N, K)``.
        box: ``(top, left, height, width)`` in pixels, inside the image (the sampler clips it).
        index: partner permutation; default ``roll(arange(N), 1)``.
        num_classes: number of classes for integer targets.

    The target weight of ``x1`` is ``1 - height * width / (H * W)``.
    """
    _check_images(images, 3)
    n = images.shape[0]
    height_img, width_img = images.shape[-2], images.shape[-1]
    try:
        top, left, h, w = (int(v) for v in box)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"box must be 4 ints (top, left, height, width), got {box!r}") from exc
    if min(top, left, h, w) < 0 or top + h > height_img or left + w > width_img:
        raise ValueError(
            f"box (top, left, height, width)={box!r} must lie inside the {height_img}x{width_img} image"
        )
    index = _check_index(index, n, images.device)
    y1 = _soft_targets(targets, n, num_classes, images.dtype, images.device)
    _check_finite_images(images)
    out = _copied(images)
    # Gather only the partners' boxes (index_select of the box view), not whole partner images,
    # and straight into the output's box: a box-sized temporary was new memory, page-faulted in
    # on every call at 224 px (`python benchmarks/mixers.py`: CutMix 0.57x -> 0.35x timm's time
    # there at 8b574f5 -> a549ceb). out= is not differentiable, so images that require grad
    # take the temporary.
    box_view = (..., slice(top, top + h), slice(left, left + w))
    if images.requires_grad and torch.is_grad_enabled():
        out[box_view] = images[box_view].index_select(0, index)
    else:
        torch.index_select(images[box_view], 0, index, out=out[box_view])
    area = height_img * width_img
    lam = 1.0 - (h * w) / float(area) if area else 1.0  # an empty image has nothing pasted
    return _restore_format(out, images), _mix_targets(y1, index, lam)


# --------------------------------------------------------------------------------------------
# Robustmix


def _check_energy(energy: str | float) -> str | float:
    if isinstance(energy, str):
        if energy not in ENERGY_MODES:
            raise ValueError(f"energy must be one of {ENERGY_MODES} or a float in [0, 1], got {energy!r}")
        return energy
    if isinstance(energy, bool) or not isinstance(energy, numbers.Real) or not 0.0 <= float(energy) <= 1.0:
        raise ValueError(f"energy must be one of {ENERGY_MODES} or a float in [0, 1], got {energy!r}")
    return float(energy)


def _sum_over(x: Tensor, keep_batch: bool) -> Tensor:
    return x.flatten(1).sum(1) if keep_batch else x.sum()


def _safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    # 0/0 counts as 1: an all-zero image has all of its (zero) energy in the low band.
    positive = den > 0
    return torch.where(positive, num / torch.where(positive, den, 1.0), 1.0)


def _uniform_share(cutoff: float | Tensor, sizes: Sequence[int]) -> float | Tensor:
    if isinstance(cutoff, Tensor):
        share = torch.ones_like(cutoff)
        for n in sizes:
            share = share * torch.floor(cutoff * n + 0.5).clamp(0, n) / n
        return share
    return math.prod(k / n for k, n in zip(freq.band_sizes(cutoff, sizes), sizes))


@_resolves_checks
def robustmix(
    images: Tensor,
    targets: Tensor,
    *,
    lam_low: Scalar,
    lam_high: Scalar,
    cutoff: Scalar,
    index: Tensor | None = None,
    num_classes: int | None = None,
    energy: str | float = "batch",
    dims: Sequence[int] = (-2, -1),
    transform: str = "dct",
) -> tuple[Tensor, Tensor]:
    """Robustmix: Mixup with separate weights for the low and high DCT bands.

    Args:
        images: floating batch ``(N, ...)``, e.g. ``(N, C, H, W)``.
        targets: int class ids ``(N,)`` (needs ``num_classes``) or soft targets ``(N, K)``.
        lam_low: weight of ``x1`` in the low band: float in [0, 1] or ``(N,)`` tensor.
        lam_high: weight of ``x1`` in the high band: float in [0, 1] or ``(N,)`` tensor.
        cutoff: low band = DCT indices ``< floor(cutoff * n + 0.5)`` along every dim in ``dims``;
            float in [0, 1] or ``(N,)`` tensor.
        index: partner permutation, ``x2 = images[index]``; default ``roll(arange(N), 1)``.
        num_classes: number of classes for integer targets.
        energy: how ``lam_c`` (the label weight of the low band) is measured:
            ``"batch"`` energy share of the low band in the unmixed batch (one scalar per cutoff),
            ``"sample"`` share in each mixed image, ``"uniform"`` share of kept coefficients,
            or a fixed float in [0, 1].
        dims: the signal dims: ``(-2, -1)`` images, ``(-1,)`` audio, ``(-3, -2, -1)`` volumes.
        transform: ``"dct"`` (the paper) or ``"fft"``: the same box in |frequency| of a real
            FFT (see :func:`robustmix.freq.lowpass`), an ablation.

    Returns:
        ``(mixed_images, soft_targets)``; images keep shape, dtype, device and memory format,
        soft targets are ``(N, K)``.

    Gradients flow to images that require grad (an out-of-place path with the same values up
    to rounding); the label weight ``lam_c`` is measured without gradient.

    Shape:
        images ``(N, *)``, targets ``(N,)`` or ``(N, K)``.

    Example:
        >>> x, y = torch.rand(8, 3, 32, 32), torch.arange(8)
        >>> out, soft = robustmix(x, y, lam_low=0.7, lam_high=0.2, cutoff=0.4, num_classes=8)
        >>> out.shape, soft.shape
        (torch.Size([8, 3, 32, 32]), torch.Size([8, 8]))
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    ndims = len(dims) if isinstance(dims, Sequence) else 1
    _check_images(images, ndims + 1)
    dims_t = freq.normalize_dims(dims, images.ndim, batched=True)
    n = images.shape[0]
    device = images.device
    lam_low = freq.check_unit_weight(lam_low, "lam_low", n, device)
    lam_high = freq.check_unit_weight(lam_high, "lam_high", n, device)
    # Per-sample cutoffs drawn on the CPU (the mixers') size the band there: no host sync.
    host_cutoff = cutoff if isinstance(cutoff, Tensor) and cutoff.device.type == "cpu" else None
    cutoff = freq.check_unit_weight(cutoff, "cutoff", n, device)
    energy = _check_energy(energy)
    freq.check_transform(transform)
    if (
        _graphs.ENABLED
        and _graphable(images, lam_low, lam_high, cutoff, transform)
        and not (isinstance(targets, Tensor) and targets.requires_grad)
    ):
        graphed = _robustmix_graphed(images, targets, index, num_classes, lam_low, lam_high, cutoff, energy, dims_t)
        if graphed is not None:
            return graphed
    index = _check_index(index, n, device)
    y1 = _soft_targets(targets, n, num_classes, images.dtype, images.device)

    sizes = {d: images.shape[d] for d in dims_t}
    if transform == "fft" or (images.requires_grad and torch.is_grad_enabled()):
        mix = _robustmix_fft if transform == "fft" else _robustmix_differentiable
        out, lam_c = mix(images, lam_low, lam_high, cutoff, index, energy, dims_t)
        # The label weight is a statistic of the batch: no gradient flows through it (as through
        # mixup's lam), whatever the cutoff's kind.
        lam_c = lam_c.detach() if isinstance(lam_c, Tensor) else lam_c
        lam = lam_c * lam_low + (1 - lam_c) * lam_high
        return _restore_format(out, images), _mix_targets(y1, index, lam)
    # Contiguous, in the dtype of the inverse product (the input's own half dtype where the
    # hardware multiplies it natively, see freq.matmul_dtype; else fp32+): the output is built in it.
    x1 = _contiguous_as(images, freq.matmul_dtype(images.dtype, device))
    # The forward transform always runs in fp32+: the coefficients decide the label weights,
    # which bf16 products would bias by up to ~0.5 % (the constant DC basis row alone rounds
    # by 1e-3 in bf16). Half chunks are converted on the fly, a cache-sized piece at a time.
    compute = freq._compute_dtype(images.dtype)
    block, mask = freq.low_band_block(x1, cutoff, dims_t, compute, host_cutoff=host_cutoff)
    chunks = _batch_chunks(x1)

    # Pass 1: Low(x1) once, as coefficients of the kept block only (Low(x2) is a permutation of
    # them), and per-sample energies of the image and of its low band (Parseval).
    coef_shape = (n, *(block[dims_t.index(d)] if d in dims_t else x1.shape[d] for d in range(1, x1.ndim)))
    scratch = _band_scratch(x1, coef_shape, chunks, dims_t, block, compute, per_sample=mask is not None)
    if len(chunks) == 1:  # one cache-sized piece (small batches, accelerators)
        part = x1 if x1.dtype == compute else x1.to(compute)
        coef = freq.block_coefficients(
            part, dims_t, block, out=None if scratch is None else scratch.keep(coef_shape), scratch=scratch
        )
        sq_norms = _sq_norms(part, compute)
    else:  # chunks only on the CPU, where there is a scratch
        assert scratch is not None
        coef = scratch.keep(coef_shape)
        sq_norms = torch.empty(n, dtype=compute, device=device)
        for s, e in chunks:
            scratch.reset()
            part = x1[s:e] if x1.dtype == compute else scratch.take(x1[s:e].shape).copy_(x1[s:e])
            freq.block_coefficients(part, dims_t, block, out=coef[s:e], scratch=scratch)
            sq_norms[s:e] = torch.linalg.vector_norm(part.flatten(1), dim=1).square()
    low_sq = _sq_norms(coef, compute)
    total_host = _check_finite_norms(sq_norms)

    # Pass 2: out = Low(mixL) + mixH - Low(mixH) = mixH + (lam_low - lam_high) * Low(x1 - x2):
    # one band-limited inverse transform of a coefficient difference instead of two full ones,
    # accumulated straight into mixH. With per-sample cutoffs, output i uses its own band for
    # both x1_i and its partner.
    delta = _as_column(lam_low - lam_high, coef.ndim, coef.dtype, device)
    w_high = _as_column_weight(lam_high, x1)
    out = empty_output(x1.shape, dtype=x1.dtype, device=device)
    if mask is not None and len(chunks) > 1:
        assert scratch is not None
        _mix_per_sample_bands(out, x1, coef, mask, cutoff, index, delta, w_high, dims_t, sizes, chunks, scratch)
    for s, e in chunks if mask is None or len(chunks) == 1 else ():
        rows = functools.partial(_chunk_rows, start=s, stop=e)
        partners = rows(index)
        # index_select, not coef[partners]: advanced indexing costs ~3x more per call at small sizes
        if scratch is None:
            delta_coef = torch.sub(rows(coef), coef.index_select(0, partners))
        else:
            scratch.reset()
            delta_coef = torch.index_select(coef, 0, partners, out=scratch.take((e - s, *coef_shape[1:]), from_end=True))
            torch.sub(rows(coef), delta_coef, out=delta_coef)
        delta_coef.mul_(rows(delta))
        if mask is not None:
            delta_coef.mul_(rows(mask))
        delta_coef = delta_coef if delta_coef.dtype == x1.dtype else delta_coef.to(x1.dtype)
        part = rows(out)
        torch.index_select(x1, 0, partners, out=part)
        part.lerp_(rows(x1), rows(w_high))  # x2 + lam_h (x1 - x2)
        freq.coefficients_to_signal(delta_coef, sizes, add_to=part, scratch=scratch)
    out = _contiguous_as(out, images.dtype)

    lam_c = _low_band_share(energy, coef, mask, sq_norms, low_sq, cutoff, index, lam_low, out, dims_t, total_host)
    if scratch is not None:  # nothing returned is a view of it
        give_back_scratch(scratch)
    lam = lam_c * lam_low + (1 - lam_c) * lam_high
    return _restore_format(out, images), _mix_targets(y1, index, lam)


def _graphable(images: Tensor, lam_low: Scalar, lam_high: Scalar, cutoff: Scalar, transform: str) -> bool:
    """Whether a call can replay a CUDA graph (:mod:`robustmix._graphs`): a CUDA batch without
    autograd, batch-wide weights and cutoff, the DCT band, and no capture already under way."""
    return (
        images.device.type == "cuda"
        and transform == "dct"
        and not images.requires_grad
        and not any(isinstance(v, Tensor) for v in (lam_low, lam_high, cutoff))
        and not torch.cuda.is_current_stream_capturing()
    )


def _robustmix_graphed(
    images: Tensor,
    targets: Tensor,
    index: Tensor | None,
    num_classes: int | None,
    lam_low: float,
    lam_high: float,
    cutoff: float,
    energy: str | float,
    dims: tuple[int, ...],
) -> tuple[Tensor, Tensor] | None:
    """:func:`robustmix` through a CUDA graph, or ``None`` where none can be captured.

    The checks that need no values run here as in the eager op; the value checks (permutation,
    target ranges, finite images) run inside the graph and come back as one bool vector, queued
    in the enclosing ``_checked()`` block with the eager op's errors, in its order.
    """
    n = images.shape[0]
    # The eager op's order: index (structure, then values where they are free to read), targets.
    index = _index_structure(index, n)
    if index is None:
        index = torch.roll(torch.arange(n, device="cpu"), 1)
    elif index.device.type in _IMMEDIATE_DEVICES:
        _require_index_values(index, n)
    kind = _targets_kind(targets, n, num_classes)
    if kind == "soft" and targets.device.type in _IMMEDIATE_DEVICES:
        _require_soft_values(targets)
    if kind == "ids":
        targets, classes = targets.long(), num_classes
        errors = [_index_error(index, n), _ids_range_error(targets, int(num_classes))]
    else:
        classes = None
        errors = [_index_error(index, n), _soft_nan_error, _soft_range_error(targets)]
    sizes = [images.shape[d] for d in dims]
    ks = freq.band_sizes(cutoff, sizes)
    block = tuple(_graphs.bucket(k, n_d) for k, n_d in zip(ks, sizes))
    soft_dtype = _one_hot_dtype(images.dtype)
    core = functools.partial(
        _graphs.graph_core, block=block, dims=dims, energy=energy, out_dtype=images.dtype,
        soft_dtype=soft_dtype, num_classes=classes, share_of=_low_band_share, mix_targets=_mix_targets,
        sq_norms_of=_sq_norms,
    )
    x_dtype = freq.matmul_dtype(images.dtype, images.device)
    result = _graphs.replay(
        images, targets, index, (lam_low, lam_high), ks, x_dtype=x_dtype,
        graph_key=(block, dims, energy, classes, soft_dtype, _graphs.matmul_settings()), core=core,
    )
    if result is None:
        return None
    out, soft, checks = result

    _require_each(checks, [*errors, _nonfinite_samples_error(images)])
    return _restore_format(out, images), soft


def _mix_per_sample_bands(
    out: Tensor,
    x1: Tensor,
    coef: Tensor,
    mask: Tensor,
    cutoff: Tensor,
    index: Tensor,
    delta: Tensor | float,
    w_high: Tensor | float,
    dims: tuple[int, ...],
    sizes: dict[int, int],
    chunks: list[tuple[int, int]],
    scratch: Scratch,
) -> None:
    """Pass 2 of :func:`robustmix` for per-sample cutoffs, written into ``out``.

    The same sum as the batch-cutoff loop, but the samples go in order of cutoff, so that each
    chunk's inverse transform multiplies only up to the largest band in that chunk instead of
    the batch's largest: with cutoffs ~ U[0, 1] about half the inverse work. The chunk is built
    in a buffer and copied to its rows of ``out``.
    """
    order = torch.argsort(cutoff, stable=True)
    # Band sizes grow with the cutoff, so a chunk's largest band is its last sample's.
    ks_sorted = [freq._band_sizes_tensor(cutoff[order], x1.shape[d]).tolist() for d in dims]
    for s, e in chunks:
        scratch.reset()
        rows = order[s:e]
        partners = index[rows]
        crop = [slice(None)] * coef.ndim
        for d, ks in zip(dims, ks_sorted):
            crop[d] = slice(0, ks[e - 1])
        crop_t = tuple(crop)
        chunk_coef = (e - s, *coef.shape[1:])
        own = torch.index_select(coef, 0, rows, out=scratch.take(chunk_coef, from_end=True))[crop_t]
        other = torch.index_select(coef, 0, partners, out=scratch.take(chunk_coef, from_end=True))[crop_t]
        delta_coef = torch.sub(own, other, out=scratch.take(own.shape, from_end=True))
        delta_coef *= mask[rows][crop_t]
        if isinstance(delta, Tensor):
            delta_coef *= delta[rows]
        else:
            delta_coef *= delta
        chunk = (e - s, *x1.shape[1:])
        part = torch.index_select(x1, 0, partners, out=scratch.take(chunk, x1.dtype, from_end=True))
        own_x = torch.index_select(x1, 0, rows, out=scratch.take(chunk, x1.dtype, from_end=True))
        part.lerp_(own_x, w_high[rows] if isinstance(w_high, Tensor) else w_high)
        freq.coefficients_to_signal(delta_coef.to(x1.dtype), sizes, add_to=part, scratch=scratch)
        out.index_copy_(0, rows, part)


def _low_band_share(
    energy: str | float,
    coef: Tensor,
    mask: Tensor | None,
    sq_norms: Tensor,
    low_sq: Tensor,
    cutoff: float | Tensor,
    index: Tensor,
    lam_low: float | Tensor,
    out: Tensor,
    dims: tuple[int, ...],
    total_host: float | None = None,
) -> float | Tensor:
    """lam_c, the label weight of the low band: a float or a (N,) float64 tensor.

    ``total_host``: the float64 sum of ``sq_norms`` where the finite check already read it.
    """
    if isinstance(energy, float):
        return energy
    if energy == "uniform":
        return _uniform_share(cutoff, [out.shape[d] for d in dims])
    if energy == "sample":
        # Low(out) = Low(mixL): its coefficients are a lerp of the batch's own coefficients.
        c = coef.to(freq._compute_dtype(coef.dtype))
        weight = _as_column(lam_low, c.ndim, c.dtype, c.device)
        num = torch.empty(c.shape[0], dtype=c.dtype, device=c.device)
        for s, e in _batch_chunks(c):  # cache-sized pieces: no full-size temporaries
            low_out = torch.lerp(c.index_select(0, index[s:e]), c[s:e], weight[s:e] if isinstance(weight, Tensor) else weight)
            if mask is not None:
                low_out *= mask[s:e]
            num[s:e] = _sum_over(low_out.square_(), keep_batch=True)
        den = _sq_norms(out, c.dtype)
        return _safe_ratio(num.double(), den.double())
    if not isinstance(cutoff, Tensor):
        low = low_sq.sum(dtype=torch.float64)
        if low.device.type == "cpu":  # the same float64 division as _safe_ratio, without its tensor ops
            den = float(sq_norms.sum(dtype=torch.float64)) if total_host is None else total_host
            return float(low) / den if den > 0 else 1.0
        return _safe_ratio(low, sq_norms.sum(dtype=torch.float64))  # no host sync on accelerators
    # the float64 sum, without a float64 copy first
    total = sq_norms.sum(dtype=torch.float64)
    return _batch_share_per_cutoff(coef, cutoff, dims, [out.shape[d] for d in dims], total)


def _batch_share_per_cutoff(
    coef: Tensor, cutoff: Tensor, dims: tuple[int, ...], sizes: list[int], total: Tensor
) -> Tensor:
    """lam_c_i = sum_j |Low(x1_j, c_i)|^2 / sum_j |x1_j|^2 for per-sample cutoffs c_i.

    Each sample's band is a box inside the largest one, whose unmasked coefficients ``coef``
    hold for the whole batch: an N-d prefix sum of their energy answers every cutoff at once.
    """
    other = [d for d in range(coef.ndim) if d not in dims]
    # (k_1, ..., k_D), the largest band, summed in float64 a cache-sized chunk at a time (one
    # float64 copy of the whole block would be twice its size, ~150 MB at B128x3x224^2)
    energy = None
    for s, e in _batch_chunks(coef):
        # the float64 copy from the pool: at ~8 MB a fresh one was faulted in on most calls
        wide = empty_output(coef[s:e].shape, dtype=torch.float64, device=coef.device).copy_(coef[s:e])
        part = wide.square_().sum(dim=other)
        energy = part if energy is None else energy.add_(part)
    prefix = torch.nn.functional.pad(energy, [1, 0] * energy.ndim)  # prefix[k] = sum over < k
    for axis in range(prefix.ndim):
        prefix = prefix.cumsum(axis)
    ks = [freq._band_sizes_tensor(cutoff, n).clamp(max=prefix.shape[i] - 1) for i, n in enumerate(sizes)]
    return _safe_ratio(prefix[tuple(ks)], total.expand(cutoff.shape[0]))


def _robustmix_differentiable(
    images: Tensor,
    lam_low: float | Tensor,
    lam_high: float | Tensor,
    cutoff: float | Tensor,
    index: Tensor,
    energy: str | float,
    dims: tuple[int, ...],
) -> tuple[Tensor, float | Tensor]:
    """The DCT path out of place, for images that require grad (e.g. feature maps, or inputs of
    an attack): autograd follows the products and the lerp, while the fast path writes into
    pooled buffers in place. The same sums as the fast path, in the forward transform's dtype
    (fp32 for half inputs), so the values agree with it up to rounding. The label weight is
    measured on detached tensors."""
    compute = freq._compute_dtype(images.dtype)
    device = images.device
    x1 = images.to(compute)
    block, mask = freq.low_band_block(x1, cutoff, dims, compute)
    coef = freq.block_coefficients(x1, dims, block)
    delta_coef = (coef - coef.index_select(0, index)) * _as_column(lam_low - lam_high, coef.ndim, compute, device)
    if mask is not None:
        delta_coef = delta_coef * mask
    x2 = x1.index_select(0, index)
    mixed_high = torch.lerp(x2, x1, _as_column(lam_high, x1.ndim, compute, device))
    out = (mixed_high + freq.coefficients_to_signal(delta_coef, {d: x1.shape[d] for d in dims})).to(images.dtype)
    with torch.no_grad():
        sq_norms = _sq_norms(x1, compute)
        total_host = _check_finite_norms(sq_norms)
        low_sq = _sq_norms(coef, compute)
        lam_c = _low_band_share(energy, coef, mask, sq_norms, low_sq, cutoff, index, lam_low, out, dims, total_host)
    return out, lam_c


def _robustmix_fft(
    images: Tensor,
    lam_low: float | Tensor,
    lam_high: float | Tensor,
    cutoff: float | Tensor,
    index: Tensor,
    energy: str | float,
    dims: tuple[int, ...],
) -> tuple[Tensor, float | Tensor]:
    """The FFT-box ablation: same algebra as the DCT path, on the half spectrum of a real FFT."""
    compute = freq._compute_dtype(images.dtype)
    device = images.device
    sizes = [images.shape[d] for d in dims]
    x1 = images.to(compute)
    sq_norms = torch.linalg.vector_norm(x1.flatten(1), dim=1).square()
    _check_finite_norms(sq_norms)
    spec = torch.fft.rfftn(x1, dim=dims, norm="ortho")
    keep = freq.fft_low_mask(cutoff, sizes, dims, x1.ndim, device).to(compute)
    weights = freq.rfft_bin_weights(sizes[-1], dims[-1], x1.ndim, device, compute)
    delta = _as_column(lam_low - lam_high, x1.ndim, compute, device)
    low_diff = torch.fft.irfftn((spec - spec[index]) * keep * delta, s=sizes, dim=dims, norm="ortho")
    out = (torch.lerp(x1[index], x1, _as_column(lam_high, x1.ndim, compute, device)) + low_diff).to(images.dtype)
    # The label weight below is measured without gradient (see robustmix).
    spec, sq_norms, mixed = spec.detach(), sq_norms.detach(), out.detach()

    def band_energy(s: Tensor) -> Tensor:  # per sample, Parseval on the half spectrum
        return (s.abs().square() * weights * keep).flatten(1).sum(1).double()

    if isinstance(energy, float):
        return out, energy
    if energy == "uniform":
        per = (keep * weights).flatten(1).sum(1).double() / math.prod(sizes)
        return out, per if isinstance(cutoff, Tensor) else float(per[0])
    if energy == "sample":
        partner = spec[index]
        low_out = partner + _as_column(lam_low, x1.ndim, compute, device) * (spec - partner)
        den = torch.linalg.vector_norm(mixed.to(compute).flatten(1), dim=1).square().double()
        return out, _safe_ratio(band_energy(low_out), den)
    total = sq_norms.double().sum()
    other = [d for d in range(spec.ndim) if d not in dims]
    spectrum_energy = (spec.abs().square() * weights).sum(dim=other, keepdim=True)  # batch summed
    num = (spectrum_energy * keep).flatten(1).sum(1).double()
    lam_c = _safe_ratio(num, total.expand_as(num))
    return out, lam_c if isinstance(cutoff, Tensor) else float(lam_c[0])
