"""Frequency-bias probes on hand-built models whose answers are known, and SciPy references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.fft
import torch
from torch import nn

from robustmix import diagnostics as D

# --------------------------------------------------------------------------------------------
# Toy models with known frequency behaviour


class MeanModel(nn.Module):
    """Class 1 when the image mean (the DC term) exceeds ``threshold``: a pure low-band model."""

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        m = x.mean(dim=(1, 2, 3)) - self.threshold
        return torch.stack([-m, m], dim=1)


class ProjectionModel(nn.Module):
    """Class 1 when ``|<x - 0.5, pattern>| > margin`` (or the signed projection when ``signed``)."""

    def __init__(self, pattern: np.ndarray, margin: float, *, signed: bool = False) -> None:
        super().__init__()
        self.register_buffer("pattern", torch.as_tensor(pattern, dtype=torch.float32))
        self.margin = margin
        self.signed = signed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = ((x - 0.5) * self.pattern).sum(dim=(1, 2, 3))
        s = proj if self.signed else proj.abs()
        return torch.stack([self.margin - s, s - self.margin], dim=1)


def dct_basis_image(n: int, ku: int, kv: int) -> np.ndarray:
    """The (ku, kv) orthonormal DCT-II basis image, from SciPy (an independent reference)."""
    coef = np.zeros((n, n))
    coef[ku, kv] = 1.0
    return scipy.fft.idctn(coef, type=2, norm="ortho")


def scipy_lowpass(x: np.ndarray, cutoff: float) -> np.ndarray:
    h, w = x.shape[-2:]
    kh, kw = math.floor(cutoff * h + 0.5), math.floor(cutoff * w + 0.5)
    coef = scipy.fft.dctn(x, type=2, norm="ortho", axes=(-2, -1))
    mask = np.zeros((h, w))
    mask[:kh, :kw] = 1
    return scipy.fft.idctn(coef * mask, type=2, norm="ortho", axes=(-2, -1))


def two_level_images(levels: list[float], n: int = 8, *, amplitude: float = 0.2) -> torch.Tensor:
    """Constant images at ``levels`` plus the highest DCT basis pattern (zero mean)."""
    pattern = dct_basis_image(n, n - 1, n - 1)
    pattern = amplitude * pattern / np.abs(pattern).max()
    x = np.stack([lv + pattern for lv in levels])[:, None]
    return torch.tensor(x, dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# filtered_accuracy


def test_filtered_accuracy_low_band_model_known_answers():
    levels = [0.2, 0.2, 0.2, 0.8]  # class share: 3/4 class 0
    images = two_level_images(levels)
    labels = torch.tensor([0, 0, 0, 1])
    out = D.filtered_accuracy(MeanModel(), images, labels, cutoffs=[0.0, 1 / 8, 0.5, 1.0], batch_size=3)
    assert out["cutoffs"] == [0.0, 0.125, 0.5, 1.0]
    # lowpass(x, 0) = 0 -> all class 0; any band with the DC keeps the mean -> all correct.
    assert out["lowpass_accuracy"] == [0.75, 1.0, 1.0, 1.0]
    # cutoff 0 removes nothing (x itself); otherwise the mean becomes the data's grey 0.35 -> class 0.
    assert out["highpass_accuracy"] == [1.0, 0.75, 0.75, 0.75]


def test_filtered_accuracy_feeds_scipy_bands_with_grey_added():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(5, 2, 6, 7, generator=gen)
    labels = torch.zeros(5, dtype=torch.long)
    model = MeanModel()
    D.filtered_accuracy(model, images, labels, cutoffs=[0.4], batch_size=16)
    low_seen, high_seen = model.seen
    x = images.double().numpy()
    low_ref = scipy_lowpass(x, 0.4)
    grey = x.mean(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(low_seen.numpy(), low_ref, atol=1e-5)
    np.testing.assert_allclose(high_seen.numpy(), x - low_ref + grey, atol=1e-5)
    assert high_seen.min() < 0  # not clipped: clipping would re-inject low frequencies


def test_probes_restore_every_module_mode():
    # A model in training with a frozen BatchNorm inside must come back exactly so.
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 16, 2))
    model.train()
    model[1].eval()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    for probe in (
        lambda: D.filtered_accuracy(model, x, y, cutoffs=[0.5]),
        lambda: D.fourier_heatmap(model, x, y, eps=1.0, seed=0),
        lambda: D.cue_conflict(model, x, y, cutoff=0.5, seed=0),
    ):
        probe()
        assert [m.training for m in model] == [True, False, True, True]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available on this machine (CPU-only CI)")
def test_probes_take_labels_on_the_model_device():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).cuda()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    on_cpu = (D.filtered_accuracy(model, x, y, cutoffs=[0.5]), D.cue_conflict(model, x, y, cutoff=0.5, seed=0),
              D.fourier_heatmap(model, x, y, eps=1.0, seed=0))
    on_gpu = (D.filtered_accuracy(model, x.cuda(), y.cuda(), cutoffs=[0.5]),
              D.cue_conflict(model, x.cuda(), y.cuda(), cutoff=0.5, seed=0),
              D.fourier_heatmap(model, x.cuda(), y.cuda(), eps=1.0, seed=0))
    assert on_cpu[:2] == on_gpu[:2]
    torch.testing.assert_close(on_cpu[2], on_gpu[2], equal_nan=True)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"cutoffs": [1.5]}, ValueError, "cutoffs must lie in"),
        ({"cutoffs": []}, ValueError, "cutoffs must contain"),
        ({"cutoffs": [0.5], "batch_size": 0}, ValueError, "batch_size must be a positive int"),
    ],
)
def test_filtered_accuracy_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        D.filtered_accuracy(MeanModel(), two_level_images([0.2]), torch.tensor([0]), **kwargs)


def test_bad_images_and_labels():
    with pytest.raises(TypeError, match="images must be a floating-point"):
        D.filtered_accuracy(MeanModel(), torch.zeros(1, 1, 4, 4, dtype=torch.uint8), torch.tensor([0]), cutoffs=[0.5])
    with pytest.raises(ValueError, match=r"images must have shape \(N, C, H, W\)"):
        D.filtered_accuracy(MeanModel(), torch.zeros(1, 4, 4), torch.tensor([0]), cutoffs=[0.5])
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        D.filtered_accuracy(MeanModel(), torch.zeros(2, 1, 4, 4), torch.tensor([0]), cutoffs=[0.5])
    with pytest.raises(TypeError, match="labels must be an integer"):
        D.filtered_accuracy(MeanModel(), torch.zeros(1, 1, 4, 4), torch.tensor([0.0]), cutoffs=[0.5])


# --------------------------------------------------------------------------------------------
# Fourier heat map


@pytest.mark.parametrize(("h", "w"), [(8, 8), (7, 6)])
def test_fourier_basis_matches_numpy_ifft(h, w):
    freqs = torch.tensor([[0, 0], [1, 2], [-3, 1], [h // 2, w // 2], [2, -1]])
    got = D.fourier_basis(h, w, freqs, dtype=torch.float64).numpy()
    for (u, v), img in zip(freqs.tolist(), got):
        spec = np.zeros((h, w), dtype=complex)
        spec[u % h, v % w] += 1
        spec[(-u) % h, (-v) % w] += 1
        ref = np.fft.ifft2(spec).real
        ref /= np.linalg.norm(ref)
        np.testing.assert_allclose(img, ref, atol=1e-12)
        assert np.linalg.norm(img) == pytest.approx(1.0)


def _mirror(heat: np.ndarray) -> np.ndarray:
    h, w = heat.shape
    i = (-(np.arange(h) - h // 2) + h // 2) % h
    j = (-(np.arange(w) - w // 2) + w // 2) % w
    return heat[np.ix_(i, j)]


@pytest.mark.parametrize(("h", "w", "u0", "v0"), [(8, 8, 2, -3), (7, 6, 1, 2), (8, 8, 4, 0)])
def test_fourier_heatmap_single_sensitive_frequency(h, w, u0, v0):
    y, x = np.mgrid[0:h, 0:w]
    pattern = np.cos(2 * np.pi * (u0 * y / h + v0 * x / w))
    pattern /= np.linalg.norm(pattern)
    eps = 0.5
    model = ProjectionModel(pattern[None], margin=eps / 2)
    images = torch.full((3, 1, h, w), 0.5)
    heat = D.fourier_heatmap(model, images, torch.zeros(3, dtype=torch.long), eps=eps, batch_size=10).numpy()
    expected = np.zeros((h, w))
    expected[(u0 + h // 2) % h, (v0 + w // 2) % w] = 1.0
    expected[(-u0 + h // 2) % h, (-v0 + w // 2) % w] = 1.0
    np.testing.assert_array_equal(heat, expected)


def test_fourier_heatmap_symmetric_seeded_and_shaped():
    gen = torch.Generator().manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    images = torch.rand(6, 2, 6, 6, generator=gen)
    labels = torch.randint(0, 3, (6,), generator=gen)
    a = D.fourier_heatmap(net, images, labels, eps=2.0, batch_size=7, seed=3)
    b = D.fourier_heatmap(net, images, labels, eps=2.0, batch_size=64, seed=3)
    assert a.shape == (6, 6) and a.dtype == torch.float64
    assert not torch.isnan(a).any()
    np.testing.assert_array_equal(a.numpy(), _mirror(a.numpy()))
    assert ((a >= 0) & (a <= 1)).all()
    # each entry is an error over 6 images
    np.testing.assert_allclose((a * 6).numpy(), np.round((a * 6).numpy()), atol=1e-12)
    assert torch.equal(a, D.fourier_heatmap(net, images, labels, eps=2.0, batch_size=7, seed=3))
    assert b.shape == a.shape


def test_fourier_heatmap_random_sign_and_subsampling():
    h = w = 8
    y, x = np.mgrid[0:h, 0:w]
    pattern = np.cos(2 * np.pi * (1 * y / h + 1 * x / w))
    pattern /= np.linalg.norm(pattern)
    # Wrong only when the sign of the added basis is +: the error is the share of + signs.
    model = ProjectionModel(pattern[None], margin=0.1, signed=True)
    images = torch.full((400, 1, h, w), 0.5)
    heat = D.fourier_heatmap(model, images, torch.zeros(400, dtype=torch.long), eps=0.5, max_freq=1, seed=0)
    assert abs(float(heat[h // 2 + 1, w // 2 + 1]) - 0.5) < 0.1
    assert float(heat[h // 2, w // 2]) == 0.0
    assert torch.isnan(heat[0, 0])  # |u| > max_freq: not evaluated
    assert not torch.isnan(heat[h // 2 - 1 : h // 2 + 2, w // 2 - 1 : w // 2 + 2]).any()
    strided = D.fourier_heatmap(model, images[:4], torch.zeros(4, dtype=torch.long), eps=0.5, stride=2)
    assert torch.isnan(strided[h // 2 + 1, w // 2]).item() and not torch.isnan(strided[h // 2 + 2, w // 2]).item()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"eps": 0.0}, "eps must be a positive"), ({"eps": 1.0, "stride": 0}, "stride must be a positive int"),
     ({"eps": 1.0, "max_freq": -1}, "max_freq must be None or a non-negative int")],
)
def test_fourier_heatmap_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        D.fourier_heatmap(MeanModel(), torch.rand(1, 1, 4, 4), torch.tensor([0]), **kwargs)


# --------------------------------------------------------------------------------------------
# Cue conflict


def test_cue_conflict_low_and_high_band_models():
    n = 8
    levels = [0.3 if i % 2 == 0 else 0.7 for i in range(n)]
    labels = torch.tensor([i % 2 for i in range(n)])
    # class 0: dark + pattern, class 1: bright - pattern (pattern is all high band at cutoff 0.5)
    pattern = dct_basis_image(8, 7, 7)
    pattern = 0.15 * pattern / np.abs(pattern).max()
    x = np.stack([lv + (pattern if i % 2 == 0 else -pattern) for i, lv in enumerate(levels)])[:, None]
    images = torch.tensor(x, dtype=torch.float32)
    low = D.cue_conflict(MeanModel(), images, labels, cutoff=0.5, seed=0)
    assert low["low_band_fraction"] == 1.0 and low["high_band_fraction"] == 0.0
    assert low["n"] == low["n_pairs"] > 0
    high_model = ProjectionModel(-pattern[None], margin=0.0, signed=True)  # class 1 iff -pattern present
    high = D.cue_conflict(high_model, images, labels, cutoff=0.5, generator=torch.Generator().manual_seed(0))
    assert high["high_band_fraction"] == 1.0 and high["low_band_fraction"] == 0.0
    assert high["n_pairs"] == low["n_pairs"]  # same seed, same pairing
    # pairs are exactly the images whose random partner has another label
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    assert low["n_pairs"] == int((labels != labels[perm]).sum())


def test_cue_conflict_bad_cutoff():
    with pytest.raises(ValueError, match=r"cutoff must be a float in \(0, 1\)"):
        D.cue_conflict(MeanModel(), torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), cutoff=1.0)


def _write_png(path, value: float) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6), int(value * 255), dtype=np.uint8), mode="L").save(path)


def test_cue_conflict_folder_shape_fraction(tmp_path):
    _write_png(tmp_path / "cat" / "cat1-dog1.png", 0.9)  # bright -> "cat": follows shape
    _write_png(tmp_path / "dog" / "dog1-cat2.png", 0.9)  # bright -> "cat": follows texture
    _write_png(tmp_path / "dog" / "dog2-cat1.png", 0.1)  # dark -> "dog": follows shape
    _write_png(tmp_path / "cat" / "cat3-cat4.png", 0.9)  # shape == texture: skipped

    class Bright(nn.Module):  # class 0 = "cat" when bright
        def forward(self, x):
            m = x.mean(dim=(1, 2, 3)) - 0.5
            return torch.stack([m, -m, torch.zeros_like(m)], dim=1) * 10

    out = D.cue_conflict_folder(Bright(), tmp_path, class_names=["cat", "dog"], in_channels=1, image_size=4)
    assert out == {"shape_fraction": 2 / 3, "texture_fraction": 1 / 3, "n": 3, "n_images": 3}
    # category mapping (several model classes per category), RGB loading
    out2 = D.cue_conflict_folder(Bright(), tmp_path, categories={"cat": [0], "dog": [1, 2]})
    assert out2["n"] == 3 and out2["shape_fraction"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="give exactly one of class_names"):
        D.cue_conflict_folder(Bright(), tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        D.cue_conflict_folder(Bright(), tmp_path / "nope", class_names=["cat"])


# --------------------------------------------------------------------------------------------
# Energy spectrum and lam_c


def test_energy_spectrum_matches_scipy():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 6, 9, generator=gen)
    got = D.energy_spectrum(images, batch_size=2).numpy()
    ref = (scipy.fft.dctn(images.double().numpy(), type=2, norm="ortho", axes=(-2, -1)) ** 2).mean(axis=(0, 1))
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    # Parseval: the spectrum sums to the mean energy per image channel
    assert got.sum() == pytest.approx(float((images.double() ** 2).sum() / 15))


def test_lambda_c_curve_against_hand_computed_share():
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(4, 2, 8, 6, generator=gen)
    cutoffs = [0.0, 0.1, 0.25, 0.5, 0.75, 1.0]
    lam = D.lambda_c_curve(images, cutoffs)
    x = images.double().numpy()
    ref = [float((scipy_lowpass(x, c) ** 2).sum() / (x**2).sum()) for c in cutoffs]
    np.testing.assert_allclose(lam, ref, atol=1e-10)
    assert lam[0] == 0.0 and lam[-1] == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(lam))
    assert D.lambda_c_curve(cutoffs=cutoffs, spectrum=D.energy_spectrum(images)) == pytest.approx(lam)
    with pytest.raises(ValueError, match="give exactly one of images or spectrum"):
        D.lambda_c_curve(cutoffs=cutoffs)
