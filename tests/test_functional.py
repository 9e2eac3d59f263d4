"""robustmix.functional against an independent NumPy/SciPy implementation of the contract."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import scipy.fft as sfft
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import robustmix.functional as F

# ----------------------------------------------------------------------------------------------
# The reference: the formulas of the contract, sample by sample, with scipy's DCT. It does not
# call the library.


def ref_low(x: np.ndarray, c: float, axes: tuple[int, ...]) -> np.ndarray:
    coef = sfft.dctn(x, type=2, norm="ortho", axes=axes)
    keep = np.ones(coef.shape, dtype=bool)
    for ax in axes:
        n = x.shape[ax]
        shape = [1] * x.ndim
        shape[ax] = n
        keep &= (np.arange(n) < math.floor(c * n + 0.5)).reshape(shape)
    return sfft.idctn(np.where(keep, coef, 0.0), type=2, norm="ortho", axes=axes)


def ref_robustmix(x, y1, lam_low, lam_high, cutoff, index, energy="batch", axes=(-2, -1)):
    """x: (N, ...) float64; y1: (N, K) soft targets; lam/cutoff: scalars or (N,) arrays."""
    n = x.shape[0]
    lam_low, lam_high, cutoff = (np.broadcast_to(np.asarray(v, float), (n,)) for v in (lam_low, lam_high, cutoff))
    sample_axes = tuple(a - 1 if a > 0 else a for a in axes)  # axes of one sample (no batch dim)
    out = np.empty_like(x)
    lam_c = np.empty(n)
    for i in range(n):
        j = index[i]
        mix_l = lam_low[i] * x[i] + (1 - lam_low[i]) * x[j]
        mix_h = lam_high[i] * x[i] + (1 - lam_high[i]) * x[j]
        out[i] = ref_low(mix_l, cutoff[i], sample_axes) + (mix_h - ref_low(mix_h, cutoff[i], sample_axes))
    for i in range(n):
        if energy == "batch":
            num = sum(np.sum(ref_low(x[k], cutoff[i], sample_axes) ** 2) for k in range(n))
            den = np.sum(x**2)
        elif energy == "sample":
            num = np.sum(ref_low(out[i], cutoff[i], sample_axes) ** 2)
            den = np.sum(out[i] ** 2)
        elif energy == "uniform":
            num = np.prod([math.floor(cutoff[i] * x.shape[a] + 0.5) for a in axes])
            den = np.prod([x.shape[a] for a in axes])
        else:
            num, den = energy, 1.0
        lam_c[i] = 1.0 if den == 0 else num / den
    lam = lam_c * lam_low + (1 - lam_c) * lam_high
    soft = lam[:, None] * y1 + (1 - lam[:, None]) * y1[index]
    return out, soft


def rand(shape, seed=0, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


INDEX5 = torch.tensor([3, 0, 4, 1, 2])


def assert_matches_reference(x, y, lam_low, lam_high, cutoff, energy):
    """The op with partner index INDEX5 and 4 classes equals the NumPy/SciPy reference to 1e-12."""
    out, soft = F.robustmix(x, y, lam_low=lam_low, lam_high=lam_high, cutoff=cutoff, index=INDEX5,
                            num_classes=4, energy=energy)
    as_np = (lambda v: v.numpy()) if isinstance(lam_low, torch.Tensor) else (lambda v: v)
    ref_out, ref_soft = ref_robustmix(x.numpy(), np.eye(4)[y.numpy()], as_np(lam_low), as_np(lam_high),
                                      as_np(cutoff), INDEX5.numpy(), energy)
    np.testing.assert_allclose(out.numpy(), ref_out, atol=1e-12)
    np.testing.assert_allclose(soft.numpy(), ref_soft, atol=1e-12)


@pytest.mark.parametrize("energy", ["batch", "sample", "uniform", 0.3])
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("soft_targets", [False, True])
def test_robustmix_matches_reference(energy, per_sample, soft_targets):
    x = rand((5, 3, 9, 7))
    if per_sample:
        lam_low = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0], dtype=torch.float64)
        lam_high = torch.tensor([1.0, 0.6, 0.1, 0.3, 0.0], dtype=torch.float64)
        cutoff = torch.tensor([0.0, 0.2, 0.5, 0.77, 1.0], dtype=torch.float64)
    else:
        lam_low, lam_high, cutoff = 0.8, 0.15, 0.42
    if soft_targets:
        y = torch.softmax(rand((5, 4), seed=3), dim=1)
        y1 = y.numpy()
        kwargs = {}
    else:
        y = torch.tensor([0, 3, 1, 1, 2])
        y1 = np.eye(4)[y.numpy()]
        kwargs = {"num_classes": 4}
    out, soft = F.robustmix(
        x, y, lam_low=lam_low, lam_high=lam_high, cutoff=cutoff, index=INDEX5, energy=energy, **kwargs
    )
    as_np = (lambda v: v.numpy()) if per_sample else (lambda v: v)
    ref_out, ref_soft = ref_robustmix(x.numpy(), y1, as_np(lam_low), as_np(lam_high), as_np(cutoff), INDEX5.numpy(), energy)
    np.testing.assert_allclose(out.numpy(), ref_out, atol=1e-12)
    np.testing.assert_allclose(soft.numpy(), ref_soft, atol=1e-12)


@pytest.mark.parametrize("shape", [(5, 3, 37, 48), (5, 1, 64, 33)])
@pytest.mark.parametrize("energy", ["batch", "sample"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_robustmix_matches_reference_at_larger_sizes(shape, energy, per_sample):
    # Odd and even sides of 33-64 samples, cutoffs from almost nothing to everything.
    x = rand(shape, seed=21)
    if per_sample:
        lam_low = torch.tensor([0.1, 0.9, 0.5, 0.0, 1.0], dtype=torch.float64)
        lam_high = torch.tensor([0.7, 0.2, 0.5, 1.0, 0.3], dtype=torch.float64)
        cutoff = torch.tensor([0.03, 0.5, 0.61, 0.97, 1.0], dtype=torch.float64)
    else:
        lam_low, lam_high, cutoff = 0.75, 0.2, 0.51
    assert_matches_reference(x, torch.tensor([0, 3, 1, 1, 2]), lam_low, lam_high, cutoff, energy)


@pytest.mark.parametrize(
    "shape,dims", [((4, 2, 33), (-1,)), ((3, 2, 4, 5, 6), (-3, -2, -1)), ((3, 5, 6, 2), (1, 2))]
)
@pytest.mark.parametrize("energy", ["batch", "sample"])
def test_robustmix_other_signal_dims(shape, dims, energy):
    x = rand(shape, seed=4)
    n = shape[0]
    index = torch.roll(torch.arange(n), 1)
    y = torch.arange(n) % 3
    out, soft = F.robustmix(x, y, lam_low=0.35, lam_high=0.9, cutoff=0.3, num_classes=3, dims=dims, energy=energy)
    axes = tuple(d % len(shape) for d in dims)
    ref_out, ref_soft = ref_robustmix(x.numpy(), np.eye(3)[y.numpy()], 0.35, 0.9, 0.3, index.numpy(), energy, axes)
    np.testing.assert_allclose(out.numpy(), ref_out, atol=1e-12)
    np.testing.assert_allclose(soft.numpy(), ref_soft, atol=1e-12)


def test_default_index_is_roll_by_one():
    x = rand((4, 1, 6, 6))
    y = torch.tensor([0, 1, 2, 3])
    a = F.robustmix(x, y, lam_low=0.3, lam_high=0.6, cutoff=0.5, num_classes=4)
    b = F.robustmix(x, y, lam_low=0.3, lam_high=0.6, cutoff=0.5, num_classes=4, index=torch.tensor([3, 0, 1, 2]))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_energy_zero_over_zero_counts_as_one():
    x = torch.zeros(3, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    for energy in ("batch", "sample"):
        _, soft = F.robustmix(x, y, lam_low=0.9, lam_high=0.2, cutoff=0.5, num_classes=3, energy=energy)
        # lam_c = 1 -> lam = lam_low
        torch.testing.assert_close(soft[0], torch.tensor([0.9, 0.0, 0.1], dtype=torch.float64))


def test_mixup_hand_computed():
    x = torch.tensor([[1.0, 2.0], [3.0, 5.0], [0.0, -1.0]])
    y = torch.tensor([0, 1, 1])
    out, soft = F.mixup(x, y, lam=0.25, num_classes=2, index=torch.tensor([1, 2, 0]))
    torch.testing.assert_close(out, torch.tensor([[2.5, 4.25], [0.75, 0.5], [0.75, 1.25]]))
    torch.testing.assert_close(soft, torch.tensor([[0.25, 0.75], [0.0, 1.0], [0.75, 0.25]]))


def test_mixup_per_sample_lambda():
    x = rand((3, 2, 2))
    lam = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    out, _ = F.mixup(x, torch.tensor([0, 1, 2]), lam=lam, num_classes=3)
    torch.testing.assert_close(out[0], x[2])
    torch.testing.assert_close(out[1], 0.5 * x[1] + 0.5 * x[0])
    torch.testing.assert_close(out[2], x[2])


def test_cutmix_hand_computed():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    y = torch.tensor([0, 1])
    out, soft = F.cutmix(x, y, box=(1, 2, 2, 2), num_classes=2)
    expected = x.clone()
    expected[0, :, 1:3, 2:4] = x[1, :, 1:3, 2:4]
    expected[1, :, 1:3, 2:4] = x[0, :, 1:3, 2:4]
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(soft, torch.tensor([[0.75, 0.25], [0.25, 0.75]]))


@pytest.mark.parametrize("box", [(0, 0, 0, 0), (2, 3, 0, 5), (0, 0, 9, 11), (1, 2, 4, 5), (8, 10, 1, 1)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "bfloat16", "3-d"])
def test_cutmix_pastes_the_partners_box_for_any_box_and_layout(box, layout):
    """The box is gathered straight into the output's strided box view: every pixel inside it is
    the partner's, every pixel outside the sample's own, in any layout and dtype."""
    x = torch.rand(6, 3, 9, 11, generator=torch.Generator().manual_seed(5))
    x = {"contiguous": x, "channels_last": x.contiguous(memory_format=torch.channels_last),
         "bfloat16": x.bfloat16(), "3-d": x[:, 0]}[layout]
    idx = torch.tensor([3, 0, 5, 1, 2, 4])
    top, left, h, w = box
    want = x.clone()
    want[..., top : top + h, left : left + w] = x[idx][..., top : top + h, left : left + w]
    out, soft = F.cutmix(x, torch.arange(6), box=box, index=idx, num_classes=6)
    assert torch.equal(out, want) and out.dtype == x.dtype
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    torch.testing.assert_close(soft.diagonal(), torch.full((6,), 1 - h * w / 99.0))


def test_mixup_and_cutmix_of_large_batches_equal_their_formulas():
    """Batches above the buffer pool's threshold get pooled outputs: the same values, new storage,
    and a second call (which may reuse the first output's buffer once it is dropped) agrees."""
    from robustmix._memory import MIN_BYTES

    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 3, 300, 300, generator=g)
    assert x.numel() * x.element_size() >= MIN_BYTES
    y, idx = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), torch.randperm(8, generator=g)
    want_mix = x[idx] + 0.3 * (x - x[idx])
    want_cut = x.clone()
    want_cut[..., 10:110, 20:70] = x[idx][..., 10:110, 20:70]
    for _ in range(2):
        mixed, _ = F.mixup(x, y, lam=0.3, index=idx, num_classes=4)
        torch.testing.assert_close(mixed, want_mix, rtol=0, atol=1e-6)
        assert torch.equal(mixed, torch.lerp(x[idx], x, 0.3))
        cut, _ = F.cutmix(x, y, box=(10, 20, 100, 50), index=idx, num_classes=4)
        assert torch.equal(cut, want_cut)
        assert cut.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
        del mixed, cut


@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (8, 3, 300, 300)])  # below / above the pool's threshold
def test_mixup_and_cutmix_pass_gradients(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2), requires_grad=True)
    y = torch.arange(shape[0]) % 4
    idx = torch.roll(torch.arange(shape[0]), 1)
    mixed, _ = F.mixup(x, y, lam=0.3, index=idx, num_classes=4)
    mixed.sum().backward()
    # d/dx of sum(x[idx] + 0.3 (x - x[idx])): every element appears once as x (0.3) and once as
    # a partner (0.7)
    torch.testing.assert_close(x.grad, torch.ones_like(x))
    x.grad = None
    cut, _ = F.cutmix(x, y, box=(1, 2, 3, 4), index=idx, num_classes=4)
    cut.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("transform", ["dct", "fft"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_robustmix_gradient_matches_finite_differences(transform, per_sample):
    """The mixed images are a linear map of the images: autograd's Jacobian equals the numerical one."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2])
    if per_sample:
        kw = dict(lam_low=torch.tensor([0.9, 0.2, 0.5], dtype=torch.float64),
                  lam_high=torch.tensor([0.1, 0.7, 0.3], dtype=torch.float64),
                  cutoff=torch.tensor([0.3, 0.8, 0.5], dtype=torch.float64))
    else:
        kw = dict(lam_low=0.8, lam_high=0.25, cutoff=0.45)
    fn = lambda images: F.robustmix(images, y, num_classes=3, index=torch.tensor([2, 0, 1]), transform=transform, **kw)[0]
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("energy", ["batch", "sample", "uniform", 0.4])
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_robustmix_with_grad_equals_no_grad_call(energy, per_sample, dtype):
    """Images that require grad take the out-of-place path: the same images and targets as the
    fast path (up to rounding), and a gradient that is the transposed map applied to the upstream one."""
    g = torch.Generator().manual_seed(6)
    x = torch.rand(6, 3, 12, 10, generator=g).to(dtype)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    idx = torch.tensor([3, 0, 5, 1, 2, 4])
    if per_sample:
        kw = dict(lam_low=torch.rand(6, generator=g, dtype=torch.float64),
                  lam_high=torch.rand(6, generator=g, dtype=torch.float64),
                  cutoff=torch.rand(6, generator=g, dtype=torch.float64))
    else:
        kw = dict(lam_low=0.7, lam_high=0.1, cutoff=0.6)
    want, want_soft = F.robustmix(x, y, num_classes=4, index=idx, energy=energy, **kw)
    leaf = x.clone().requires_grad_()
    got, soft = F.robustmix(leaf, y, num_classes=4, index=idx, energy=energy, **kw)
    assert got.dtype == dtype and got.requires_grad and not soft.requires_grad
    tol = dict(rtol=0, atol=1e-2) if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(got.detach(), want, **tol)
    # "sample" measures the output's energy: on CPUs with native bf16 GEMMs (AVX512-BF16, AMX)
    # the fast path builds a bf16 output with bf16 products, the grad path in fp32 and rounds
    # once, so their outputs differ by bf16 rounding (2^-8 relative) and so do the label weights.
    soft_atol = 2**-8 if dtype == torch.bfloat16 and energy == "sample" else 1e-6
    torch.testing.assert_close(soft, want_soft, rtol=0, atol=soft_atol)
    # <out(x), u> = <x, out^T(u)>: check the backward against the forward of a float64 copy.
    u = torch.randn(got.shape, generator=g, dtype=torch.float64)
    (got.double() * u).sum().backward()
    x64 = x.double()
    lhs = (F.robustmix(x64, y, num_classes=4, index=idx, energy=energy, **kw)[0] * u).sum()
    rhs = (x64 * leaf.grad.double()).sum()
    torch.testing.assert_close(rhs, lhs, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-6)


def test_robustmix_grad_path_keeps_channels_last_and_no_grad_path_unchanged():
    x = torch.rand(4, 3, 9, 9, generator=torch.Generator().manual_seed(7)).contiguous(memory_format=torch.channels_last)
    y = torch.arange(4)
    kw = dict(lam_low=0.3, lam_high=0.6, cutoff=0.5, num_classes=4)
    out, _ = F.robustmix(x.clone().requires_grad_(), y, **kw)
    assert out.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        plain, _ = F.robustmix(x.clone().requires_grad_(), y, **kw)
    assert not plain.requires_grad and torch.equal(plain, F.robustmix(x, y, **kw)[0])


# ----------------------------------------------------------------------------------------------
# Identities and invariants (hypothesis)

batches = st.tuples(st.integers(1, 5), st.integers(1, 3), st.integers(1, 8), st.integers(1, 8), st.integers(0, 10_000))
unit = st.floats(0, 1)


@settings(max_examples=30, deadline=None)
@given(batches, unit, unit, unit, st.sampled_from(["batch", "sample", "uniform"]), st.booleans())
def test_differentiable_path_equals_fast_path(spec, lam_low, lam_high, cutoff, energy, per_sample):
    """Any shape, weights and band: images that require grad give the fast path's images and
    targets (float64: to rounding), and a gradient of the images' own shape."""
    n, c, h, w, seed = spec
    x = rand((n, c, h, w), seed)
    y = torch.arange(n) % 4
    index = torch.roll(torch.arange(n), 1)
    if per_sample:
        shifts = torch.linspace(0, 0.5, n, dtype=torch.float64)
        lam_low, lam_high, cutoff = ((v + shifts) % 1.0 for v in (torch.tensor(lam_low), torch.tensor(lam_high), torch.tensor(cutoff)))
    kw = {"lam_low": lam_low, "lam_high": lam_high, "cutoff": cutoff, "index": index, "num_classes": 4, "energy": energy}
    want, want_soft = F.robustmix(x, y, **kw)
    leaf = x.clone().requires_grad_()
    got, soft = F.robustmix(leaf, y, **kw)
    torch.testing.assert_close(got.detach(), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(soft, want_soft, rtol=1e-12, atol=1e-12)
    got.square().sum().backward()
    assert leaf.grad.shape == x.shape and torch.isfinite(leaf.grad).all()


@settings(max_examples=40, deadline=None)
@given(batches, unit, unit, unit, st.sampled_from(["batch", "sample"]))
def test_identities(spec, lam_low, lam_high, cutoff, energy):
    n, c, h, w, seed = spec
    x = rand((n, c, h, w), seed)
    y = torch.arange(n) % 4
    kw = {"num_classes": 4, "energy": energy}
    mix = lambda lam: F.mixup(x, y, lam=lam, num_classes=4)
    # cutoff=1 -> mixup with lam_low; cutoff=0 -> mixup with lam_high; equal lambdas -> mixup
    torch.testing.assert_close(F.robustmix(x, y, lam_low=lam_low, lam_high=lam_high, cutoff=1.0, **kw), mix(lam_low))
    torch.testing.assert_close(F.robustmix(x, y, lam_low=lam_low, lam_high=lam_high, cutoff=0.0, **kw), mix(lam_high))
    torch.testing.assert_close(F.robustmix(x, y, lam_low=lam_low, lam_high=lam_low, cutoff=cutoff, **kw), mix(lam_low))
    _, soft = F.robustmix(x, y, lam_low=lam_low, lam_high=lam_high, cutoff=cutoff, **kw)
    torch.testing.assert_close(soft.sum(1), torch.ones(n, dtype=soft.dtype))
    assert bool(((soft >= -1e-12) & (soft <= 1 + 1e-12)).all())
    # lam = 1 in both bands returns the input
    torch.testing.assert_close(F.robustmix(x, y, lam_low=1.0, lam_high=1.0, cutoff=cutoff, **kw)[0], x)


@settings(max_examples=25, deadline=None)
@given(batches, st.sampled_from(["batch", "sample", "uniform"]))
def test_batched_equals_per_sample_mode(spec, energy):
    """Per-sample tensors filled with one value equal the scalar call."""
    n, c, h, w, seed = spec
    x = rand((n, c, h, w), seed)
    y = torch.arange(n) % 3
    scalar = F.robustmix(x, y, lam_low=0.3, lam_high=0.7, cutoff=0.45, num_classes=3, energy=energy)
    full = lambda v: torch.full((n,), v, dtype=torch.float64)
    vector = F.robustmix(
        x, y, lam_low=full(0.3), lam_high=full(0.7), cutoff=full(0.45), num_classes=3, energy=energy
    )
    torch.testing.assert_close(scalar, vector)


# ----------------------------------------------------------------------------------------------
# dtype / device / layout / no mutation


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dtype_layout_preserved_and_input_untouched(dtype, channels_last):
    x = torch.rand(6, 3, 10, 12).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    before = x.clone()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    for out, _ in (
        F.robustmix(x, y, lam_low=0.2, lam_high=0.7, cutoff=0.3, num_classes=3),
        F.mixup(x, y, lam=0.3, num_classes=3),
        F.cutmix(x, y, box=(0, 0, 5, 5), num_classes=3),
    ):
        assert out.dtype == dtype and out.shape == x.shape and out.device == x.device
        assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert torch.equal(x, before)
    ref, _ = F.robustmix(x.double(), y, lam_low=0.2, lam_high=0.7, cutoff=0.3, num_classes=3)
    got, _ = F.robustmix(x, y, lam_low=0.2, lam_high=0.7, cutoff=0.3, num_classes=3)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(got.double(), ref, atol=tol, rtol=tol)


def test_batch_of_one_and_1x1_images():
    x = rand((1, 3, 1, 1))
    out, soft = F.robustmix(x, torch.tensor([2]), lam_low=0.3, lam_high=0.9, cutoff=0.5, num_classes=3)
    torch.testing.assert_close(out, x)  # the only partner is itself
    torch.testing.assert_close(soft, torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64))


def test_functions_pickle():
    assert pickle.loads(pickle.dumps(F.robustmix)) is F.robustmix


# ----------------------------------------------------------------------------------------------
# Bad input: every case names the argument

X = torch.rand(4, 3, 8, 8)
Y = torch.tensor([0, 1, 2, 3])
OK = {"lam_low": 0.5, "lam_high": 0.5, "cutoff": 0.5, "num_classes": 4}


@pytest.fixture(params=["immediate", "deferred", "graph"])
def checks_mode(request, monkeypatch):
    """Run a test with value checks answered at once (the CPU's way), queued until the end of the
    call (an accelerator's, see functional._checked), and through the CUDA-graph wiring with the
    graph's core run directly on the CPU: bad input must raise the same errors in all three."""
    if request.param in ("deferred", "graph"):
        monkeypatch.setattr(F, "_IMMEDIATE_DEVICES", frozenset())
    if request.param == "graph":
        _emulate_graphs(monkeypatch)
    return request.param


def _emulate_graphs(monkeypatch):
    """Send graphable calls through functional._robustmix_graphed, replaying by calling the core."""
    from robustmix import _graphs

    def replay(images, targets, index, lams, ks, *, x_dtype, graph_key, core):
        params = torch.tensor([*lams, *ks], dtype=torch.float64)
        return core(images.to(x_dtype).contiguous(), targets, index, params)

    def graphable(images, lam_low, lam_high, cutoff, transform):  # the real test minus "on CUDA"
        return transform == "dct" and not any(isinstance(v, torch.Tensor) for v in (lam_low, lam_high, cutoff))

    monkeypatch.setattr(_graphs, "ENABLED", True)
    monkeypatch.setattr(_graphs, "replay", replay)
    monkeypatch.setattr(F, "_graphable", graphable)


def _with(**changes):
    kw = {"images": X, "targets": Y, **OK}
    kw.update(changes)
    return kw


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        (_with(images=torch.ones(4, 3, 8, 8, dtype=torch.long)), TypeError, "images must be a floating-point"),
        (_with(images=np.ones((4, 3, 8, 8))), TypeError, "images must be a torch.Tensor"),
        (_with(images=torch.rand(8, 8)), ValueError, "images must have at least 3 dims"),
        (_with(images=torch.rand(0, 3, 8, 8), targets=torch.zeros(0, dtype=torch.long)), ValueError, "non-empty batch"),
        (_with(images=X.clone().index_fill_(0, torch.tensor([1]), float("nan"))), ValueError, "NaN or inf"),
        (_with(images=X.clone().index_fill_(0, torch.tensor([2]), float("inf"))), ValueError, "NaN or inf"),
        (_with(targets=torch.tensor([0, 1, 2])), ValueError, "targets must have the batch size 4"),
        (_with(targets=torch.tensor([0, 1, 2, 4])), ValueError, r"targets must lie in \[0, 3\]"),
        (_with(targets=torch.tensor([0, -1, 2, 3])), ValueError, "targets must lie in"),
        (_with(targets=torch.zeros(4, 3)), ValueError, "soft targets have 3 classes but num_classes=4"),
        (_with(targets=torch.zeros(4, 2, 2)), ValueError, r"soft targets must have shape \(N, K\)"),
        (_with(targets=torch.full((4, 4), float("nan"))), ValueError, "targets contain NaN"),
        (_with(targets=torch.tensor([[1.5, -0.5, 0.0, 0.0]] * 4)), ValueError, r"soft targets must lie in \[0, 1\]"),
        (_with(num_classes=None), ValueError, "num_classes is required"),
        (_with(lam_low=1.5), ValueError, r"lam_low must lie in \[0, 1\]"),
        (_with(lam_high=-0.1), ValueError, r"lam_high must lie in \[0, 1\]"),
        (_with(lam_low=float("nan")), ValueError, "lam_low must lie"),
        (_with(lam_low=torch.rand(3)), ValueError, "lam_low must be a float or a 1-D tensor of length 4"),
        (_with(cutoff=2.0), ValueError, r"cutoff must lie in \[0, 1\]"),
        (_with(cutoff=torch.tensor([0.1, 0.2, 0.3, 1.2])), ValueError, "cutoff must lie"),
        (_with(cutoff="high"), TypeError, "cutoff must be a float"),
        (_with(energy="pixel"), ValueError, "energy must be one of"),
        (_with(energy=1.5), ValueError, "energy must be one of"),
        (_with(index=torch.tensor([0, 1, 2])), ValueError, "index must be a permutation of length 4"),
        (_with(index=torch.tensor([0, 1, 1, 2])), ValueError, "index must be a permutation of 0..3"),
        (_with(index=torch.tensor([0, 1, 2, 7])), ValueError, "index must be a permutation of 0..3"),
        (_with(index=torch.tensor([0.0, 1.0, 2.0, 3.0])), TypeError, "index must be an integer tensor"),
        (_with(dims=(-2, 5)), ValueError, "dims entry 5 is out of range"),
        (_with(dims=(0, 1)), ValueError, "batch dim"),
    ],
)
def test_robustmix_bad_input(kwargs, err, match, checks_mode):
    with pytest.raises(err, match=match):
        F.robustmix(**kwargs)


@pytest.mark.parametrize(
    "call,err,match",
    [
        (lambda: F.mixup(X, Y, lam=1.2, num_classes=4), ValueError, "lam must lie"),
        (lambda: F.mixup(X, Y, lam=0.5), ValueError, "num_classes is required"),
        (lambda: F.cutmix(X, Y, box=(0, 0, 9, 2), num_classes=4), ValueError, "must lie inside the 8x8 image"),
        (lambda: F.cutmix(X, Y, box=(0, 0, 2), num_classes=4), TypeError, "box must be 4 ints"),
        (lambda: F.one_hot(Y, 0), ValueError, "num_classes must be a positive int"),
        (lambda: F.one_hot(Y.float(), 4), TypeError, "integer class ids"),
        (lambda: F.one_hot(Y, 4, label_smoothing=2.0), ValueError, "label_smoothing must lie"),
    ],
)
def test_other_bad_input(call, err, match, checks_mode):
    with pytest.raises(err, match=match):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: F.mixup(X, torch.tensor([0, 1, 2, 9]), lam=0.5, num_classes=4),
        lambda: F.cutmix(X, torch.tensor([-1, 1, 2, 3]), box=(0, 0, 2, 2), num_classes=4),
        lambda: F.one_hot(torch.tensor([0, 4]), 4),
    ],
)
def test_out_of_range_class_ids_raise_in_both_check_modes(call, checks_mode):
    # Deferred, the scatter runs on clamped ids first; it must not fail with its own error.
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\] for num_classes=4"):
        call()


def test_graph_wiring_gives_the_eager_results(monkeypatch):
    x = rand((4, 3, 40, 36), seed=3)
    soft = torch.softmax(rand((4, 4), seed=4), dim=1)
    calls = [
        lambda: F.robustmix(x, Y, lam_low=0.7, lam_high=0.2, cutoff=0.45, num_classes=4, index=torch.tensor([2, 0, 3, 1])),
        lambda: F.robustmix(x, soft, lam_low=0.3, lam_high=0.9, cutoff=0.1, energy="sample"),
        lambda: F.robustmix(x, Y, lam_low=0.5, lam_high=0.1, cutoff=0.8, num_classes=4, energy="uniform", dims=(-1,)),
    ]
    eager = [call() for call in calls]
    _emulate_graphs(monkeypatch)
    for (a, ya), (b, yb) in zip(eager, [call() for call in calls]):
        torch.testing.assert_close(b, a, atol=2e-6, rtol=2e-6)
        torch.testing.assert_close(yb, ya, atol=1e-6, rtol=0)


def test_deferred_checks_give_the_same_results(monkeypatch):
    soft = torch.softmax(torch.randn(4, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    calls = [
        lambda: F.robustmix(X, Y, lam_low=0.7, lam_high=0.2, cutoff=0.4, num_classes=4, index=torch.tensor([2, 0, 3, 1])),
        lambda: F.robustmix(X, soft, lam_low=torch.rand(4), lam_high=0.2, cutoff=torch.rand(4), energy="sample"),
        lambda: F.mixup(X, Y, lam=0.3, num_classes=4),
        lambda: F.cutmix(X, soft, box=(1, 2, 3, 4)),
    ]
    torch.manual_seed(0)
    now = [call() for call in calls]
    monkeypatch.setattr(F, "_IMMEDIATE_DEVICES", frozenset())
    torch.manual_seed(0)
    for (a, ya), (b, yb) in zip(now, [call() for call in calls]):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_one_hot_smoothing_matches_cross_entropy_definition():
    y = torch.tensor([1, 0])
    soft = F.one_hot(y, 4, label_smoothing=0.2)
    torch.testing.assert_close(soft, torch.tensor([[0.05, 0.85, 0.05, 0.05], [0.85, 0.05, 0.05, 0.05]]))
    logits = torch.randn(2, 4)
    ce = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.2)
    torch.testing.assert_close(-(soft * logits.log_softmax(1)).sum(1).mean(), ce)


@pytest.mark.parametrize("shape", [(8, 3, 16, 16), (64, 1, 28, 28), (4, 3, 224, 224)])
def test_half_precision_band_products_tolerance(monkeypatch, shape):
    """Where bf16 GEMMs are native (CUDA, AMX/AVX512-BF16 CPUs) the inverse product runs in bf16.

    Forced on here. The image is then within two bf16 ulps of a float64 run on the same
    (bf16-valued) input; the label weights stay float32-exact, because the forward transform
    that measures the energies always runs in fp32 (bf16 products would bias them by ~0.5 %:
    the constant DC basis row alone rounds by 1e-3 in bf16).
    """
    from robustmix import freq

    monkeypatch.setattr(freq, "_cpu_has_native_bf16", lambda: True)
    assert freq.matmul_dtype(torch.bfloat16, torch.device("cpu")) == torch.bfloat16
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0)).bfloat16()
    y = torch.arange(shape[0]) % 4
    got, soft = F.robustmix(x, y, lam_low=0.9, lam_high=0.1, cutoff=0.3, num_classes=4)
    ref, ref_soft = F.robustmix(x.double(), y, lam_low=0.9, lam_high=0.1, cutoff=0.3, num_classes=4)
    assert got.dtype == torch.bfloat16 and soft.dtype == torch.float32
    ulp = 2.0 ** -7  # bf16 spacing for values in [1, 2): images here lie in [0, 1.1]
    assert float((got.double() - ref).abs().max()) <= 2 * ulp
    torch.testing.assert_close(soft.double(), ref_soft, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("flags", "native"),
    [(frozenset({"avx2", "avx512f", "avx512_bf16"}), True), (frozenset({"amx_bf16", "amx_tile"}), True),
     (frozenset({"avx2", "fma", "avx512f"}), False), (None, False)],
)
def test_native_bf16_detection_reads_cpu_flags(monkeypatch, flags, native):
    from robustmix import freq

    monkeypatch.setattr(freq, "_cpu_flags", lambda: flags)
    freq._cpu_has_native_bf16.cache_clear()
    try:
        assert freq._cpu_has_native_bf16() is native
        expected = torch.bfloat16 if native else torch.float32
        assert freq.matmul_dtype(torch.bfloat16, torch.device("cpu")) == expected
    finally:
        freq._cpu_has_native_bf16.cache_clear()


def test_matmul_dtype_policy():
    from robustmix import freq

    assert freq.matmul_dtype(torch.float16, torch.device("cpu")) == torch.float32
    assert freq.matmul_dtype(torch.float16, torch.device("cuda")) == torch.float16
    assert freq.matmul_dtype(torch.bfloat16, torch.device("cuda")) == torch.bfloat16
    assert freq.matmul_dtype(torch.float64, torch.device("cuda")) == torch.float64


def ref_fft_low(x: np.ndarray, c: float, axes=(-2, -1)) -> np.ndarray:
    """The FFT box with numpy's full complex FFT: keep |f| = min(m, n - m) < floor(c (n//2 + 1) + 1/2)."""
    spec = np.fft.fftn(x, axes=axes, norm="ortho")
    keep = np.ones(spec.shape, dtype=bool)
    for ax in axes:
        n = x.shape[ax]
        m = np.arange(n)
        shape = [1] * x.ndim
        shape[ax] = n
        keep &= (np.minimum(m, n - m) < math.floor(c * (n // 2 + 1) + 0.5)).reshape(shape)
    return np.fft.ifftn(spec * keep, axes=axes, norm="ortho").real


@pytest.mark.parametrize("energy", ["batch", "sample"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_fft_band_ablation_matches_numpy(energy, per_sample):
    x = rand((5, 2, 9, 8), seed=8)
    y = torch.tensor([0, 1, 2, 0, 1])
    if per_sample:
        lam_low = torch.tensor([0.1, 0.5, 0.9, 0.3, 1.0], dtype=torch.float64)
        lam_high = torch.tensor([0.7, 0.2, 0.0, 0.6, 0.4], dtype=torch.float64)
        cutoff = torch.tensor([0.0, 0.25, 0.5, 0.8, 1.0], dtype=torch.float64)
    else:
        lam_low, lam_high, cutoff = 0.25, 0.75, 0.4
    out, soft = F.robustmix(x, y, lam_low=lam_low, lam_high=lam_high, cutoff=cutoff, num_classes=3,
                            energy=energy, transform="fft", index=INDEX5)
    xs, n = x.numpy(), 5
    ll, lh, cc = (np.broadcast_to(np.asarray(v, float), (n,)) for v in (lam_low, lam_high, cutoff))
    ref = np.empty_like(xs)
    for i, j in enumerate(INDEX5.tolist()):
        mix_l, mix_h = ll[i] * xs[i] + (1 - ll[i]) * xs[j], lh[i] * xs[i] + (1 - lh[i]) * xs[j]
        ref[i] = ref_fft_low(mix_l, cc[i]) + mix_h - ref_fft_low(mix_h, cc[i])
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)
    if energy == "batch":
        lam_c = np.array([sum((ref_fft_low(xs[k], cc[i]) ** 2).sum() for k in range(n)) / (xs**2).sum() for i in range(n)])
    else:
        lam_c = np.array([(ref_fft_low(ref[i], cc[i]) ** 2).sum() / (ref[i] ** 2).sum() for i in range(n)])
    lam = lam_c * ll + (1 - lam_c) * lh
    y1 = np.eye(3)[y.numpy()]
    np.testing.assert_allclose(soft.numpy(), lam[:, None] * y1 + (1 - lam[:, None]) * y1[INDEX5.numpy()], atol=1e-12)


def test_transform_must_be_known():
    with pytest.raises(ValueError, match="transform must be one of"):
        F.robustmix(X, Y, lam_low=0.5, lam_high=0.5, cutoff=0.5, num_classes=4, transform="wavelet")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_on_each_device(device, dtype):
    x = torch.rand(6, 3, 16, 12, generator=torch.Generator().manual_seed(0)).to(dtype)
    y = torch.arange(6) % 3
    ref, ref_soft = F.robustmix(x.double(), y, lam_low=0.6, lam_high=0.1, cutoff=0.35, num_classes=3)
    got, soft = F.robustmix(x.to(device, dtype), y.to(device), lam_low=0.6, lam_high=0.1, cutoff=0.35, num_classes=3)
    assert got.device.type == device.type and got.dtype == dtype
    tol = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}[dtype]
    torch.testing.assert_close(got.cpu().double(), ref, atol=tol, rtol=tol)
    # Soft targets are fp32 for half inputs, and exact to fp32 on the (half-valued) input: the
    # energies come from an fp32 forward transform whatever the inverse product's dtype.
    soft_tol = 1e-6
    assert soft.dtype == torch.float32
    torch.testing.assert_close(soft.cpu().double(), ref_soft, atol=soft_tol, rtol=0)


@pytest.mark.parametrize("energy", ["batch", "sample"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_chunked_batch_equals_reference(monkeypatch, energy, per_sample):
    """Large batches are processed in chunks of rows; a tiny chunk size must not change a value."""
    monkeypatch.setattr(F, "_CHUNK_BYTES", 3 * 9 * 7 * 8 * 2)  # two samples per chunk, odd tail
    x = rand((5, 3, 9, 7), seed=12)
    y = torch.tensor([1, 0, 3, 2, 1])
    if per_sample:
        lam_low = torch.tensor([0.2, 0.9, 0.5, 0.0, 1.0], dtype=torch.float64)
        lam_high = torch.tensor([0.6, 0.1, 0.5, 1.0, 0.3], dtype=torch.float64)
        cutoff = torch.tensor([0.1, 0.9, 0.5, 0.33, 0.0], dtype=torch.float64)
    else:
        lam_low, lam_high, cutoff = 0.6, 0.1, 0.55
    assert len(F._batch_chunks(x)) == 3
    assert_matches_reference(x, y, lam_low, lam_high, cutoff, energy)


# ----------------------------------------------------------------------------------------------
# CUDA graphs (robustmix._graphs): the captured core computes what the eager op computes


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("energy", ["batch", "sample", "uniform", 0.3])
@pytest.mark.parametrize("shape,cutoff", [((5, 3, 40, 36), 0.45), ((4, 1, 28, 28), 0.0), ((3, 2, 70, 9), 0.9)])
def test_graph_core_equals_eager_op(dtype, energy, shape, cutoff):
    # Called eagerly on the CPU: the same arithmetic the CUDA graph replays, with the band
    # rounded up to the graph's block and the extra rows masked.
    from robustmix import _graphs, freq

    x = rand(shape, seed=31).to(dtype)
    soft = torch.softmax(rand((shape[0], 5), seed=32), dim=1).to(torch.float64 if dtype == torch.float64 else torch.float32)
    index = torch.roll(torch.arange(shape[0]), 2)
    want, want_soft = F.robustmix(x, soft, lam_low=0.8, lam_high=0.15, cutoff=cutoff, index=index, energy=energy)
    dims = (2, 3)
    ks = freq.band_sizes(cutoff, [shape[2], shape[3]])
    block = tuple(_graphs.bucket(k, n) for k, n in zip(ks, (shape[2], shape[3])))
    assert all(b >= k for b, k in zip(block, ks)) and (cutoff == 0.0 or block != tuple(ks) or shape[2] <= 32)
    x_build = x.to(freq.matmul_dtype(dtype, x.device))
    ids = torch.arange(shape[0]) % 5
    want_ids = F.robustmix(x, ids, lam_low=0.8, lam_high=0.15, cutoff=cutoff, index=index, energy=energy,
                           num_classes=5)
    soft_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    for targets, classes, (want_out, want_y) in ((soft, None, (want, want_soft)), (ids, 5, want_ids)):
        out, got_soft, checks = _graphs.graph_core(
            x_build, targets, index, torch.tensor([0.8, 0.15, *ks], dtype=torch.float64),
            block=block, dims=dims, energy=energy, out_dtype=dtype, soft_dtype=soft_dtype, num_classes=classes,
            share_of=F._low_band_share, mix_targets=F._mix_targets, sq_norms_of=F._sq_norms,
        )
        assert checks.tolist() == [True] * (3 if classes is None else 2) + [True]
        tol = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 1e-2}[dtype]
        assert out.dtype == dtype
        torch.testing.assert_close(out, want_out, atol=tol, rtol=tol)
        torch.testing.assert_close(got_soft, want_y, atol=1e-6 if dtype != torch.float64 else 1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_graph_core_half_build_with_equal_weights_is_mixup_exactly(dtype, monkeypatch):
    # The graph path of a GPU with native half GEMMs builds the output in the half dtype (a fp32
    # lerp rounded once, then the band's inverse added); on this CPU that path is forced. With
    # lam_low == lam_high the band adds exact zeros, so the output is Mixup's to the bit.
    from robustmix import _graphs, freq

    monkeypatch.setattr(freq, "matmul_dtype", lambda images_dtype, device: images_dtype)
    x = rand((4, 3, 24, 20), seed=41).to(dtype)
    ids, index = torch.tensor([0, 3, 1, 2]), torch.tensor([2, 0, 3, 1])
    ks = freq.band_sizes(0.5, [24, 20])
    out, soft, checks = _graphs.graph_core(
        x, ids, index, torch.tensor([0.35, 0.35, *ks], dtype=torch.float64),
        block=tuple(_graphs.bucket(k, n) for k, n in zip(ks, (24, 20))), dims=(2, 3), energy="batch",
        out_dtype=dtype, soft_dtype=torch.float32, num_classes=4,
        share_of=F._low_band_share, mix_targets=F._mix_targets, sq_norms_of=F._sq_norms,
    )
    want, want_soft = F.mixup(x, ids, lam=0.35, index=index, num_classes=4)
    assert out.dtype == dtype and torch.equal(out, want) and checks.all()
    torch.testing.assert_close(soft, want_soft, atol=1e-7, rtol=0)


def test_graph_core_checks_flag_bad_values_in_the_eager_order():
    from robustmix import _graphs

    x = rand((4, 1, 8, 8), seed=5)
    x[2, 0, 1, 1] = float("nan")
    kw = {"block": (8, 8), "dims": (2, 3), "energy": "batch", "out_dtype": torch.float32,
          "soft_dtype": torch.float32, "share_of": F._low_band_share, "mix_targets": F._mix_targets,
          "sq_norms_of": F._sq_norms}
    params = torch.tensor([0.7, 0.2, 4, 4], dtype=torch.float64)
    _, _, checks = _graphs.graph_core(x, torch.tensor([0, 1, 7, 2]), torch.tensor([0, 0, 1, 2]), params,
                                      num_classes=5, **kw)
    assert checks.tolist() == [False, False, False]  # index, ids in range, finite images
    soft = torch.tensor([[0.5, 0.5]] * 3 + [[1.5, -0.5]])
    _, _, checks = _graphs.graph_core(x.nan_to_num(), soft, torch.tensor([1, 2, 3, 0]), params,
                                      num_classes=None, **kw)
    assert checks.tolist() == [True, True, False, True]  # index, soft finite, soft in [0, 1], finite


@pytest.mark.parametrize("energy", [0.3, "uniform", "batch"])
def test_half_soft_targets_rounded_once_the_same_on_graph_and_eager_paths(energy):
    # A device-held weight (the graph's) and a Python float (eager, CPU) must mix half targets alike.
    from robustmix import _graphs, freq

    x = rand((6, 3, 16, 16), seed=43, dtype=torch.float32)
    soft = torch.softmax(rand((6, 7), seed=44) * 4, 1).to(torch.bfloat16)
    index = torch.tensor([3, 0, 5, 1, 2, 4])
    _, want = F.robustmix(x, soft, lam_low=0.83, lam_high=0.11, cutoff=0.5, index=index, energy=energy)
    ks = freq.band_sizes(0.5, [16, 16])
    _, got, _ = _graphs.graph_core(
        x, soft, index, torch.tensor([0.83, 0.11, *ks], dtype=torch.float64), block=(16, 16), dims=(2, 3),
        energy=energy, out_dtype=torch.float32, soft_dtype=torch.float32, num_classes=None,
        share_of=F._low_band_share, mix_targets=F._mix_targets, sq_norms_of=F._sq_norms,
    )
    assert want.dtype == got.dtype == torch.bfloat16
    assert torch.equal(got, want)
    # rounded once from the exact mix: within half a bf16 ulp of float64
    lam_c = {0.3: 0.3, "uniform": 0.25}.get(energy)
    if lam_c is None:
        x64 = x.double()
        lam_c = float(freq.lowpass(x64, 0.5).square().sum() / x64.square().sum())  # rel. error ~1e-7
    lam = lam_c * 0.83 + (1 - lam_c) * 0.11
    y1 = soft.double()
    exact = lam * y1 + (1 - lam) * y1[index]
    assert torch.equal(want, exact.to(torch.bfloat16))


def test_graph_buckets():
    from robustmix import _graphs

    assert [_graphs.bucket(k, 224) for k in (0, 1, 32, 33, 200, 224)] == [32, 32, 32, 64, 224, 224]
    assert {_graphs.bucket(k, 28) for k in range(29)} == {28}  # one graph for every cutoff


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available on this machine (CPU-only CI)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_path_equals_eager_path(monkeypatch, dtype):
    from robustmix import _graphs

    _graphs.clear()
    y = torch.arange(8, device="cuda") % 5
    for seed, cutoff, energy, channels_last in ((1, 0.5, "batch", False), (2, 0.52, "batch", True),
                                                (3, 0.2, "sample", False), (4, 0.9, 0.25, False),
                                                (5, 0.3, "uniform", False)):
        x = torch.rand(8, 3, 64, 48, generator=torch.Generator().manual_seed(seed)).to("cuda", dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        kw = {"lam_low": 0.7, "lam_high": 0.2 + seed / 100, "cutoff": cutoff, "num_classes": 5, "energy": energy,
              "index": torch.randperm(8, generator=torch.Generator().manual_seed(seed))}
        monkeypatch.setattr(_graphs, "ENABLED", True)
        got, got_soft = F.robustmix(x, y, **kw)
        assert _graphs._SHAPES and all(g is not None for s in _graphs._SHAPES.values() for g in s.graphs.values()), \
            "a capture failed (the call ran eagerly)"
        monkeypatch.setattr(_graphs, "ENABLED", False)
        want, want_soft = F.robustmix(x, y, **kw)
        assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
        tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
        # bf16 pixels may differ by an ulp (the graph's band products have other shapes), which
        # moves energies measured on the mixed image ("sample") by ~1e-5
        torch.testing.assert_close(got_soft, want_soft, atol=1e-6 if dtype == torch.float32 else 1e-4, rtol=0)
    bad = x.clone()
    bad[3, 0, 1, 1] = float("nan")
    monkeypatch.setattr(_graphs, "ENABLED", True)
    with pytest.raises(ValueError, match=r"images contain NaN or inf values \(samples \[3\]\)"):
        F.robustmix(bad, y, lam_low=0.7, lam_high=0.2, cutoff=0.5, num_classes=5)


def test_op_ignores_an_enclosing_autocast():
    # The op's energies are fp32 by contract; an enclosing autocast must not turn its products bf16.
    x = rand((4, 3, 16, 16), seed=41)
    want = F.robustmix(x, Y, lam_low=0.7, lam_high=0.2, cutoff=0.4, num_classes=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = F.robustmix(x, Y, lam_low=0.7, lam_high=0.2, cutoff=0.4, num_classes=4)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available on this machine (CPU-only CI)")
def test_cuda_graph_path_under_inference_mode_then_outside():
    from robustmix import _graphs

    _graphs.clear()
    x = torch.rand(4, 3, 40, 40, device="cuda")
    y = torch.arange(4, device="cuda")
    with torch.inference_mode():
        first = F.robustmix(x, y, lam_low=0.7, lam_high=0.2, cutoff=0.5, num_classes=4)
    second = F.robustmix(x, y, lam_low=0.7, lam_high=0.2, cutoff=0.5, num_classes=4)
    assert not second[0].is_inference()
    torch.testing.assert_close(first[0], second[0], rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available on this machine (CPU-only CI)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("per_sample", [False, True])
def test_cuda_images_requiring_grad_match_the_no_grad_call(dtype, per_sample):
    """On CUDA a batch that requires grad leaves the graph path for the out-of-place one: the same
    images and targets (to the half type's rounding) and a finite gradient."""
    x = torch.rand(6, 3, 40, 40, generator=torch.Generator().manual_seed(8)).to("cuda", dtype)
    y = torch.arange(6, device="cuda") % 4
    kw = {"num_classes": 4, "index": torch.tensor([1, 2, 3, 4, 5, 0])}
    if per_sample:
        kw.update(lam_low=torch.linspace(0, 1, 6, dtype=torch.float64), lam_high=torch.linspace(1, 0, 6, dtype=torch.float64),
                  cutoff=torch.linspace(0.1, 0.9, 6, dtype=torch.float64))
    else:
        kw.update(lam_low=0.7, lam_high=0.2, cutoff=0.5)
    want, want_soft = F.robustmix(x, y, **kw)
    leaf = x.clone().requires_grad_()
    got, soft = F.robustmix(leaf, y, **kw)
    assert got.device.type == "cuda" and got.dtype == dtype and got.requires_grad
    tol = {"rtol": 0, "atol": 1e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(got.detach(), want, **tol)
    torch.testing.assert_close(soft, want_soft, rtol=0, atol=1e-6)
    got.float().square().sum().backward()
    assert leaf.grad.shape == x.shape and torch.isfinite(leaf.grad).all()


def test_graph_key_follows_the_matmul_precision():
    # A graph bakes in the cuBLAS kernels chosen at capture: a precision set later needs its own.
    from robustmix import _graphs

    before = _graphs.matmul_settings()
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high" if old == "highest" else "highest")
        assert _graphs.matmul_settings() != before
    finally:
        torch.set_float32_matmul_precision(old)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available on this machine (CPU-only CI)")
def test_cuda_graph_recaptured_when_the_matmul_precision_changes(monkeypatch):
    from robustmix import _graphs

    monkeypatch.setattr(_graphs, "ENABLED", True)
    _graphs.clear()
    x = torch.rand(4, 3, 40, 40, generator=torch.Generator().manual_seed(3)).cuda()
    y = torch.arange(4, device="cuda")
    kw = {"lam_low": 0.7, "lam_high": 0.2, "cutoff": 0.5, "num_classes": 4}
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        want = F.robustmix(x, y, **kw)
        torch.set_float32_matmul_precision("high")
        high = F.robustmix(x, y, **kw)
        torch.set_float32_matmul_precision("highest")
        again = F.robustmix(x, y, **kw)  # the first graph, replayed
    finally:
        torch.set_float32_matmul_precision(old)
    (statics,) = _graphs._SHAPES.values()
    assert len(statics.graphs) == 2  # one graph per setting
    torch.testing.assert_close(high[0], want[0], rtol=0, atol=1e-2)  # TF32 products: ~1e-3
    assert torch.equal(again[0], want[0]) and torch.equal(again[1], want[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available on this machine (CPU-only CI)")
def test_cuda_graph_path_raises_the_eager_errors(monkeypatch):
    from robustmix import _graphs

    monkeypatch.setattr(_graphs, "ENABLED", True)
    x = torch.rand(4, 3, 40, 40, device="cuda")
    y = torch.arange(4, device="cuda")
    kw = {"lam_low": 0.7, "lam_high": 0.2, "cutoff": 0.5}
    F.robustmix(x, y, num_classes=4, **kw)  # captured
    cases = [
        ({"targets": y, "num_classes": 4, "index": torch.tensor([0, 0, 1, 2])}, "index must be a permutation of 0..3"),
        ({"targets": torch.tensor([0, 1, 2, 9], device="cuda"), "num_classes": 4}, r"targets must lie in \[0, 3\]"),
        ({"targets": torch.full((4, 4), float("nan"), device="cuda")}, "targets contain NaN"),
        ({"targets": torch.full((4, 4), 2.0, device="cuda")}, r"soft targets must lie in \[0, 1\]"),
    ]
    for extra, match in cases:
        with pytest.raises(ValueError, match=match):
            F.robustmix(x, **extra, **kw)
    assert all(g is not None for s in _graphs._SHAPES.values() for g in s.graphs.values())
    out, soft = F.robustmix(x, y, num_classes=4, **kw)  # still fine after the failures
    assert torch.isfinite(out).all() and torch.allclose(soft.sum(1), torch.ones(4, device="cuda"))
