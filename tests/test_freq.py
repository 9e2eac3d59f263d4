"""robustmix.freq against scipy.fft (the independent reference) and its invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft as sfft
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustmix import freq


def scipy_lowpass(x: np.ndarray, cutoff: float, axes: tuple[int, ...]) -> np.ndarray:
    """The contract, written out with scipy: keep index < floor(c*n + 0.5) along every axis."""
    coef = sfft.dctn(x, type=2, norm="ortho", axes=axes)
    keep = np.ones(coef.shape, dtype=bool)
    for ax in axes:
        n = x.shape[ax]
        k = math.floor(cutoff * n + 0.5)
        shape = [1] * x.ndim
        shape[ax] = n
        keep = keep & (np.arange(n) < k).reshape(shape)
    return sfft.idctn(np.where(keep, coef, 0.0), type=2, norm="ortho", axes=axes)


SHAPES_DIMS = [
    ((4, 3, 8, 8), (-2, -1)),
    ((2, 1, 7, 5), (-2, -1)),
    ((3, 2, 1, 1), (-2, -1)),
    ((5, 11), (-1,)),
    ((2, 3, 4, 5, 6), (-3, -2, -1)),
    ((3, 6, 4, 9), (1, 3)),
    ((2, 9, 3, 4), (1,)),
    # larger sides, odd and even
    ((2, 3, 33, 64), (-2, -1)),
    ((3, 97), (-1,)),
    ((2, 40, 3, 35), (1, 3)),
]


@pytest.mark.parametrize("shape,dims", SHAPES_DIMS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_dct_idct_match_scipy(shape, dims, dtype, tol):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    xt = torch.from_numpy(x).to(dtype)
    axes = tuple(d % len(shape) for d in dims)
    np.testing.assert_allclose(freq.dct(xt, dims).double().numpy(), sfft.dctn(x, type=2, norm="ortho", axes=axes), atol=tol)
    np.testing.assert_allclose(freq.idct(xt, dims).double().numpy(), sfft.idctn(x, type=2, norm="ortho", axes=axes), atol=tol)


@pytest.mark.parametrize("shape,dims", SHAPES_DIMS)
@pytest.mark.parametrize("cutoff", [0.0, 0.07, 0.25, 0.5, 0.61, 1.0])
def test_lowpass_matches_scipy(shape, dims, cutoff):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    axes = tuple(d % len(shape) for d in dims)
    got = freq.lowpass(torch.from_numpy(x), cutoff, dims).numpy()
    np.testing.assert_allclose(got, scipy_lowpass(x, cutoff, axes), atol=1e-12)
    np.testing.assert_allclose(
        freq.highpass(torch.from_numpy(x), cutoff, dims).numpy(), x - scipy_lowpass(x, cutoff, axes), atol=1e-12
    )


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_per_sample_cutoffs_match_scipy(dtype, tol):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 2, 9, 6))
    cutoffs = torch.tensor([0.0, 0.05, 0.3, 0.5, 0.83, 1.0])
    got = freq.lowpass(torch.from_numpy(x).to(dtype), cutoffs).double().numpy()
    for i, c in enumerate(cutoffs.tolist()):
        np.testing.assert_allclose(got[i], scipy_lowpass(x[i], c, (-2, -1)), atol=tol)


def test_band_size_rounds_halves_up():
    # floor(c*n + 0.5): 0.5*7 = 3.5 -> 4, 0.25*6 = 1.5 -> 2, 0.2*7 = 1.4 -> 1
    assert freq.band_sizes(0.5, [7, 6, 5]) == (4, 3, 3)
    assert freq.band_sizes(0.25, [6]) == (2,)
    assert freq.band_sizes(0.2, [7]) == (1,)
    assert freq.band_sizes(1.0, [1, 3]) == (1, 3)
    assert freq.band_sizes(0.0, [8]) == (0,)


def test_basis_is_orthonormal_and_cached():
    b = freq.dct_basis(13, dtype=torch.float64)
    torch.testing.assert_close(b @ b.T, torch.eye(13, dtype=torch.float64))
    assert freq.dct_basis(13, dtype=torch.float64) is b
    np.testing.assert_allclose(b.numpy(), sfft.dct(np.eye(13), type=2, norm="ortho", axis=0), atol=1e-14)


def test_dtype_device_and_no_mutation():
    x = torch.randn(2, 3, 8, 8).bfloat16()
    before = x.clone()
    for fn in (freq.dct, freq.idct):
        assert fn(x).dtype == torch.bfloat16
    out = freq.lowpass(x, 0.5)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert torch.equal(x, before)
    ref = freq.lowpass(x.float(), 0.5)
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.02)


def test_meta_device_shapes():
    # Shape logic works without data, on the meta device.
    x = torch.empty(4, 3, 16, 12, device="meta")
    assert freq.dct(x).shape == x.shape
    assert freq.lowpass(x, 0.3).device.type == "meta"


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        ({"x": torch.arange(8).view(2, 4), "cutoff": 0.5}, TypeError, "floating-point"),
        ({"x": torch.randn(2, 4), "cutoff": 1.5}, ValueError, r"cutoff must lie in \[0, 1\]"),
        ({"x": torch.randn(2, 4), "cutoff": float("nan")}, ValueError, "cutoff must lie"),
        ({"x": torch.randn(2, 4, 4), "cutoff": torch.tensor([0.1, 0.2, 0.3])}, ValueError, "length 2"),
        ({"x": torch.randn(2, 4, 4), "cutoff": torch.tensor([0.1, -0.2])}, ValueError, "cutoff must lie"),
        ({"x": torch.randn(2, 4), "cutoff": "0.5"}, TypeError, "cutoff must be a float"),
        ({"x": torch.randn(2, 4), "cutoff": 0.5, "dims": (5,)}, ValueError, "out of range"),
        ({"x": torch.randn(2, 4), "cutoff": 0.5, "dims": (1, -1)}, ValueError, "repeated"),
        ({"x": torch.randn(2, 4), "cutoff": torch.tensor([0.1, 0.2]), "dims": (0, 1)}, ValueError, "batch dim"),
    ],
)
def test_bad_input(kwargs, err, match):
    with pytest.raises(err, match=match):
        freq.lowpass(**kwargs)


arrays = st.tuples(
    st.integers(1, 4), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**31 - 1)
)


@settings(max_examples=40, deadline=None)
@given(arrays, st.floats(0, 1), st.floats(0, 1))
def test_properties(spec, c1, c2):
    n, ch, h, w, seed = spec
    x = torch.randn(n, ch, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    low = freq.lowpass(x, c1)
    # idempotent, complementary, and a contraction with Parseval's identity
    torch.testing.assert_close(freq.lowpass(low, c1), low)
    torch.testing.assert_close(low + freq.highpass(x, c1), x)
    torch.testing.assert_close(
        low.square().sum() + freq.highpass(x, c1).square().sum(), x.square().sum()
    )
    torch.testing.assert_close(freq.dct(x).square().sum(), x.square().sum())
    # nested boxes: the smaller band of the larger band is the smaller band
    lo, hi = sorted((c1, c2))
    torch.testing.assert_close(freq.lowpass(freq.lowpass(x, hi), lo), freq.lowpass(x, lo))


def test_low_band_block_is_sized_from_the_host_cutoffs_when_given():
    # The mixers draw per-sample cutoffs on the CPU; the op sizes the block from that copy, so
    # a GPU batch's block needs no read of a device tensor. Same block, same mask.
    x = torch.rand(5, 3, 20, 12)
    cutoff = torch.tensor([0.1, 0.8, 0.33, 0.5, 0.05], dtype=torch.float64)
    plain = freq.low_band_block(x, cutoff, (2, 3), torch.float32)
    hosted = freq.low_band_block(x, cutoff, (2, 3), torch.float32, host_cutoff=cutoff.float())
    assert plain[0] == hosted[0] == (16, 10) and torch.equal(plain[1], hosted[1])
    # the block follows the host copy (it is the only one read for the size)
    assert freq.low_band_block(x, cutoff, (2, 3), torch.float32, host_cutoff=cutoff * 0.5)[0] == (8, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("shape", "dims", "block"), [
    ((6, 3, 32, 24), (2, 3), (16, 5)),
    ((4, 2, 5, 6, 7), (2, 3, 4), (3, 2, 4)),  # a volume: the first dim's product is the moved-dim path
    ((5, 2, 40), (2,), (9,)),
])
def test_band_products_into_given_buffers_equal_the_allocating_ones_bit_for_bit(dtype, shape, dims, block):
    from robustmix._memory import Scratch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=dtype)
    want = freq.block_coefficients(x, dims, block)
    scratch = Scratch(freq.band_product_numel(shape, dims, block), dtype)
    out = scratch.keep(want.shape)
    got = freq.block_coefficients(x, dims, block, out=out, scratch=scratch)
    assert got.data_ptr() == out.data_ptr() and torch.equal(got, want)
    sizes = {d: shape[d] for d in dims}
    base = torch.randn(shape, generator=g, dtype=dtype)
    want_signal = freq.coefficients_to_signal(want, sizes, add_to=base.clone())
    scratch.reset()
    assert torch.equal(freq.coefficients_to_signal(want, sizes, add_to=base.clone(), scratch=scratch), want_signal)


def test_band_product_numel_hand_values():
    # forward: the last dim first, every product but the last; inverse: the first dim first
    assert freq.band_product_numel((5, 3, 32, 32), (2, 3), (16, 8)) == 5 * 3 * 32 * 8
    assert freq.band_product_numel((2, 4, 6, 8), (1, 2, 3), (2, 3, 4)) == 2 * 4 * 6 * 4 + 2 * 4 * 3 * 4
    assert freq.band_product_numel((2, 9, 40), (2,), (7,)) == 0  # one product: nothing in between
    assert freq.band_product_numel((1, 1, 10, 100), (2, 3), (10, 1)) == 10  # both ways the (10, 1) block


def test_band_products_into_an_unaligned_output_equal_the_allocating_ones_bit_for_bit():
    # float64 BLAS output 8 bytes off a 64-byte line rounds differently; block_coefficients
    # writes such an out through an aligned product and a copy
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 224, 224, generator=g, dtype=torch.float64)
    want = freq.block_coefficients(x, (2, 3), (101, 101))
    flat = torch.empty(want.numel() + 8, dtype=torch.float64)
    start = next(i for i in range(8) if (flat.data_ptr() + 8 * i) % 64 == 8)
    out = flat[start : start + want.numel()].view(want.shape)
    assert torch.equal(freq.block_coefficients(x, (2, 3), (101, 101), out=out), want)
