"""Tests of robustmix.corruptions: each corruption against its definition and reference tables."""

from __future__ import annotations

import colorsys
import io
import itertools
import math
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustmix import _openmp
from robustmix.corruptions import (
    ALL_CORRUPTIONS,
    BENCHMARK_CORRUPTIONS,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    GROUPS,
    SEVERITY_TABLES,
    blur,
    corrupt,
    digital,
    registry,
    resolve_corruptions,
)
from robustmix.corruptions import _common as common

scipy_ndimage = pytest.importorskip("scipy.ndimage")

OWN = (
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "defocus_blur", "glass_blur",
    "motion_blur", "zoom_blur", "gaussian_blur", "brightness", "contrast", "saturate",
    "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "motion_blur", "elastic_transform")
DETERMINISTIC = tuple(n for n in OWN if n not in RANDOM)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def natural(n: int, c: int, side: int, seed: int = 0) -> torch.Tensor:
    """Smooth shapes plus mid-frequency texture in [0.05, 0.95]: a stand-in for photos."""
    g = gen(seed)
    low = F.interpolate(torch.rand(n, c, 4, 4, generator=g), size=(side, side), mode="bicubic", align_corners=False)
    tex = F.interpolate(torch.rand(n, c, side // 2, side // 2, generator=g), size=(side, side), mode="bilinear")
    return (0.5 * low + 0.4 * tex + 0.05).clamp(0, 1)


# --------------------------------------------------------------------------------------------
# Registry and surface


def test_registry_names_and_groups():
    assert len(BENCHMARK_CORRUPTIONS) == 15 and len(EXTRA_CORRUPTIONS) == 4
    assert ALL_CORRUPTIONS == BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS
    assert tuple(CORRUPTIONS) == ALL_CORRUPTIONS
    assert set(GROUPS) == {"noise", "blur", "weather", "digital", "extra"}
    grouped = [n for g in ("noise", "blur", "weather", "digital") for n in GROUPS[g]]
    assert tuple(grouped) == BENCHMARK_CORRUPTIONS  # paper order, group by group
    assert GROUPS["extra"] == ("speckle_noise", "gaussian_blur", "spatter", "saturate")


def test_resolve_corruptions():
    assert resolve_corruptions("all") == ALL_CORRUPTIONS
    assert resolve_corruptions("benchmark") == BENCHMARK_CORRUPTIONS
    assert resolve_corruptions("extra") == EXTRA_CORRUPTIONS
    assert resolve_corruptions("noise, contrast,noise") == (
        "gaussian_noise", "shot_noise", "impulse_noise", "contrast",
    )  # fmt: skip
    assert resolve_corruptions(["pixelate"]) == ("pixelate",)
    with pytest.raises(ValueError, match=r"unknown corruption 'fuzz'.*valid: all, benchmark"):
        resolve_corruptions("noise,fuzz")
    with pytest.raises(ValueError, match="names no corruption"):
        resolve_corruptions([])


def test_public_surface():
    import robustmix.corruptions as pkg

    assert set(pkg.__all__) == {
        "ALL_CORRUPTIONS", "BENCHMARK_CORRUPTIONS", "CORRUPTIONS", "EXTRA_CORRUPTIONS", "GROUPS",
        "SEVERITY_TABLES", "STORAGE_MODES", "corrupt", "resolve_corruptions", "store",
    }  # fmt: skip


# --------------------------------------------------------------------------------------------
# Parameter tables: copied from hendrycks/robustness make_imagenet_c.py / make_cifar_c.py

REFERENCE_IMAGENET = {
    "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],
    "shot_noise": [60, 25, 12, 5, 3],
    "impulse_noise": [0.03, 0.06, 0.09, 0.17, 0.27],
    "speckle_noise": [0.15, 0.2, 0.35, 0.45, 0.6],
    "gaussian_blur": [1, 2, 3, 4, 6],
    "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
    "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
    "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
    "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
    "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],
    "saturate": [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)],
    "jpeg_compression": [25, 18, 15, 10, 7],
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
    "elastic_transform": [
        (244 * 2, 244 * 0.7, 244 * 0.1), (244 * 2, 244 * 0.08, 244 * 0.2),
        (244 * 0.05, 244 * 0.01, 244 * 0.02), (244 * 0.07, 244 * 0.01, 244 * 0.02),
        (244 * 0.12, 244 * 0.01, 244 * 0.02),
    ],
}  # fmt: skip
REFERENCE_CIFAR = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
    "speckle_noise": [0.06, 0.1, 0.12, 0.16, 0.2],
    "gaussian_blur": [0.4, 0.6, 0.7, 0.8, 1],
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
    "saturate": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
    "jpeg_compression": [80, 65, 58, 50, 40],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "elastic_transform": [
        (32 * 0, 32 * 0, 32 * 0.08), (32 * 0.05, 32 * 0.2, 32 * 0.07), (32 * 0.08, 32 * 0.06, 32 * 0.06),
        (32 * 0.1, 32 * 0.04, 32 * 0.05), (32 * 0.1, 32 * 0.03, 32 * 0.03),
    ],
}  # fmt: skip
REFERENCE_ZOOM_IMAGENET = [
    np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
    np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03),
]  # fmt: skip
REFERENCE_ZOOM_CIFAR = [
    np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
    np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01),
]  # fmt: skip


@pytest.mark.parametrize("name", sorted(REFERENCE_IMAGENET))
def test_tables_equal_reference(name):
    table = SEVERITY_TABLES[name]
    assert np.allclose(np.array(table.imagenet, dtype=float), np.array(REFERENCE_IMAGENET[name], dtype=float))
    assert np.allclose(np.array(table.cifar, dtype=float), np.array(REFERENCE_CIFAR[name], dtype=float))


def test_zoom_tables_equal_reference():
    table = SEVERITY_TABLES["zoom_blur"]
    for rows, ref in ((table.imagenet, REFERENCE_ZOOM_IMAGENET), (table.cifar, REFERENCE_ZOOM_CIFAR)):
        for row, expected in zip(rows, ref):
            assert np.allclose(blur.zoom_factors(*row), expected) and len(blur.zoom_factors(*row)) == len(expected)


def test_size_rule():
    assert common.reference_scale(28) == ("cifar", 1.0)
    assert common.reference_scale(32) == ("cifar", 1.0)
    assert common.reference_scale(64) == ("imagenet", 64 / 224)
    assert common.reference_scale(224) == ("imagenet", 1.0)
    table = SEVERITY_TABLES["gaussian_blur"]
    assert table.row(torch.zeros(1, 1, 28, 28), 5) == (1, 1.0)
    assert table.row(torch.zeros(1, 1, 112, 112), 5) == (6, 0.5)


# --------------------------------------------------------------------------------------------
# Noise: statistics against the tabled parameters


@pytest.mark.parametrize(("side", "severity"), [(64, 1), (64, 2), (32, 5)])
def test_gaussian_noise_adds_tabled_std(side, severity):
    x = torch.full((8, 3, side, side), 0.5)
    std = (REFERENCE_IMAGENET if side > 32 else REFERENCE_CIFAR)["gaussian_noise"][severity - 1]
    y = corrupt(x, "gaussian_noise", severity, generator=gen(1))
    noise = y - x
    assert noise.mean().abs() < 4 * std / math.sqrt(noise.numel())
    assert noise.std().item() == pytest.approx(std, rel=0.03)


@pytest.mark.parametrize(("side", "severity"), [(64, 1), (64, 3), (32, 1)])
def test_shot_noise_is_poisson(side, severity):
    c = (REFERENCE_IMAGENET if side > 32 else REFERENCE_CIFAR)["shot_noise"][severity - 1]
    x = torch.full((8, 3, side, side), 0.3)
    y = corrupt(x, "shot_noise", severity, generator=gen(2))
    counts = y * c
    assert torch.allclose(counts, counts.round(), atol=1e-3)  # integer photon counts
    assert counts.mean().item() == pytest.approx(0.3 * c, rel=0.02)
    assert counts.var().item() == pytest.approx(0.3 * c, rel=0.06)  # Poisson: variance == mean


@pytest.mark.parametrize("scale", [3.0, 12.0, 60.0, 500.0])
def test_poisson_alias_tables_give_the_poisson_pmf(scale):
    from scipy import stats

    prob, alias, width = common._poisson_alias_table(scale, "cpu")
    prob, alias = prob.view(256, width), alias.view(256, width).long()
    # outcome k: its own column kept, plus the rejected share of every column aliased to k
    recovered = prob.clone().scatter_add_(1, alias, 1 - prob) / width
    rates = np.arange(256) * scale / 255
    expected = stats.poisson.pmf(np.arange(width)[None], rates[:, None])
    assert np.abs(recovered.numpy() - expected).max() < 1e-13
    assert stats.poisson.sf(width - 1, scale) < 1e-20  # the truncated tail


@pytest.mark.parametrize(("level", "through_corrupt"), [(1, True), (77, True), (200, False), (255, False)])
def test_eight_bit_poisson_draws_match_the_poisson_pmf(level, through_corrupt):
    # through shot noise where its clip at 1 (counts > c) is negligible, else the sampler itself
    from scipy import stats

    c = REFERENCE_IMAGENET["shot_noise"][2]
    x = torch.full((4, 3, 100, 100), level / 255)
    if through_corrupt:
        counts = (corrupt(x, "shot_noise", 3, generator=gen(11)) * c).round().long()
    else:
        counts = common.random_poisson_levels((x * 255).round().long(), c, gen(11)).long()
    lam = level * c / 255
    hi = int(stats.poisson.ppf(1 - 1e-4, lam))
    observed = torch.bincount(counts.flatten().clamp(max=hi + 1), minlength=hi + 2).double().numpy()
    expected = np.append(stats.poisson.pmf(np.arange(hi + 1), lam), stats.poisson.sf(hi, lam)) * counts.numel()
    keep = expected >= 5
    chi2 = float(((observed - expected) ** 2 / expected)[keep].sum())
    other_o, other_e = observed[~keep].sum(), expected[~keep].sum()
    chi2 += (other_o - other_e) ** 2 / other_e if other_e > 0 else 0.0
    dof = int(keep.sum()) + (1 if other_e > 0 else 0) - 1
    assert stats.chi2.sf(chi2, dof) > 1e-3


def test_shot_noise_takes_the_alias_path_only_for_eight_bit_images(monkeypatch):
    from robustmix.corruptions import noise

    calls = []
    real = common.random_poisson_levels
    monkeypatch.setattr(noise, "random_poisson_levels", lambda *a: calls.append(1) or real(*a))
    eight_bit = torch.randint(0, 256, (2, 3, 16, 16), generator=gen(1)).float() / 255
    first = corrupt(eight_bit, "shot_noise", 2, generator=gen(5))
    assert calls == [1] and torch.equal(first, corrupt(eight_bit, "shot_noise", 2, generator=gen(5)))
    between = eight_bit.clamp(max=254 / 255) + 0.3 / 255
    corrupt(between, "shot_noise", 2, generator=gen(5))  # between levels: torch.poisson
    assert len(calls) == 2
    assert not common.eight_bit_images(between).any() and common.eight_bit_images(eight_bit).all()
    # a mixed batch takes each image's own path, in runs, in order: the same as image by image
    mixed = torch.cat([eight_bit[:1], between[:1], eight_bit[1:], between[1:]])
    whole = corrupt(mixed, "shot_noise", 2, generator=gen(6))
    g = gen(6)
    assert torch.equal(whole, torch.cat([corrupt(mixed[i : i + 1], "shot_noise", 2, generator=g) for i in range(4)]))
    assert len(calls) == 2 + 2 + 2


def test_blocked_poisson_draw_is_reproducible_and_independent_of_the_pool_and_the_batch(monkeypatch):
    # Each image draws from its own seeded generator, its row in pieces of POISSON_BLOCK: the
    # same seed gives the same counts with or without the pool, and in one call or two.
    rates = torch.rand(3, 2 * common.POISSON_BLOCK + 123, generator=gen(7)) * 20
    pooled = common.random_poisson(rates, gen(8))
    assert torch.equal(pooled, common.random_poisson(rates, gen(8)))
    g = gen(8)
    assert torch.equal(pooled, torch.cat([common.random_poisson(rates[:1], g), common.random_poisson(rates[1:], g)]))
    monkeypatch.setattr(common, "worker_pool", lambda: None)
    assert torch.equal(pooled, common.random_poisson(rates, gen(8)))
    assert not torch.equal(pooled, common.random_poisson(rates, gen(9)))


@pytest.mark.parametrize(("size", "eight_bit"), [((32, 32), True), ((33, 31), False), ((64, 64), True)])
def test_every_corruption_gives_an_image_the_same_draws_in_any_batch(size, eight_bit, monkeypatch):
    # A dataset corrupted batch by batch (or in corrupt's CPU chunks) must not depend on the
    # batch size: image i's draws follow image i - 1's in the generator's stream, a fixed number
    # of them per image. Deterministic arithmetic on other batch shapes may still round apart
    # (motion blur's FFT, then its 8-bit step: one level on ~1e-5 of pixels).
    x = F.interpolate(torch.rand(6, 3, 8, 8, generator=gen(1)), size=size, mode="bicubic").clamp(0, 1)
    if eight_bit:
        x = (x * 255).round() / 255
    for name in ALL_CORRUPTIONS:
        whole = corrupt(x, name, 3, generator=gen(5))
        g = gen(5)
        parts = torch.cat([corrupt(x[a:b], name, 3, generator=g) for a, b in ((0, 1), (1, 4), (4, 6))])
        monkeypatch.setattr(registry, "CPU_CHUNK_ELEMENTS", 2 * x[0].numel())  # chunks of 2 images
        chunked = corrupt(x, name, 3, generator=gen(5))
        monkeypatch.undo()
        for other in (parts, chunked):
            diff = (other - whole).abs()
            assert float(diff.max()) <= 1.01 / 255 and float((diff > 0).float().mean()) < 1e-3, name


@pytest.mark.parametrize(("p", "short_budget"), [(0.03, False), (0.3, False), (0.3, True)])
def test_bernoulli_rows_are_independent_bernoulli_trials(p, short_budget, monkeypatch):
    # Every index hit with probability p, neighbours independently, the number of successes per
    # row binomial, a uniform per success; with the gap budget cut below the mean, most rows run
    # out of gaps and continue from their own seeded generator.
    from scipy import stats

    if short_budget:
        monkeypatch.setattr(common, "_GAP_SIGMAS", -1.0)
        monkeypatch.setattr(common, "_GAP_SLACK", 0)
    n, reps = 40, 4000 if short_budget else 20000
    flat, u = common.bernoulli_rows(reps, n, p, gen(11))
    assert flat.unique().numel() == flat.numel() and 0 <= int(flat.min()) and int(flat.max()) < reps * n
    assert u.shape == flat.shape and float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3
    hits = torch.zeros(reps * n)
    hits[flat] = 1.0
    hits = hits.view(reps, n)
    freq = hits.mean(0)
    sd = math.sqrt(p * (1 - p) / reps)
    assert float((freq - p).abs().max()) < 4.5 * sd
    joint = (hits[:, :-1] * hits[:, 1:]).mean()  # neighbours: p^2 if independent
    assert abs(float(joint) - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / reps)  # one pair's sd: loose
    counts = torch.bincount(hits.sum(1).long(), minlength=n + 1).double().numpy()
    expected = stats.binom.pmf(np.arange(n + 1), n, p) * reps
    keep = expected >= 5
    chi2 = float(((counts - expected) ** 2 / expected)[keep].sum())
    assert stats.chi2.sf(chi2, int(keep.sum()) - 1) > 1e-3


@pytest.mark.parametrize("short_budget", [False, True])
def test_bernoulli_rows_do_not_depend_on_the_other_rows(short_budget, monkeypatch):
    if short_budget:
        monkeypatch.setattr(common, "_GAP_SIGMAS", -1.0)
        monkeypatch.setattr(common, "_GAP_SLACK", 0)
    whole, u_whole = common.bernoulli_rows(5, 300, 0.2, gen(3))
    g = gen(3)
    first, u_first = common.bernoulli_rows(2, 300, 0.2, g)
    rest, u_rest = common.bernoulli_rows(3, 300, 0.2, g)
    got = torch.cat([first, rest + 2 * 300])
    order, got_order = whole.argsort(), got.argsort()
    assert torch.equal(whole[order], got[got_order])
    assert torch.equal(u_whole[order], torch.cat([u_first, u_rest])[got_order])


def test_bernoulli_rows_edge_cases():
    assert common.bernoulli_rows(0, 5, 0.5, gen(0))[0].numel() == 0
    assert common.bernoulli_rows(3, 10, 0.0, gen(0))[0].numel() == 0
    flat, u = common.bernoulli_rows(2, 5, 1.0, gen(0))
    assert torch.equal(flat, torch.arange(10)) and u.shape == (10,)
    with pytest.raises(ValueError, match="p must lie in"):
        common.bernoulli_rows(2, 5, 1.5, gen(0))


@pytest.fixture
def cores(monkeypatch):
    """``cores(n)``: pretend ``n`` usable cores with torch given as many threads (restored after);
    ``map_groups`` uses at most both."""
    before = torch.get_num_threads()

    def pretend(n: int) -> None:
        monkeypatch.setattr(common, "usable_cores", lambda: n)
        torch.set_num_threads(n)

    yield pretend
    torch.set_num_threads(before)


def test_map_groups_hands_each_core_one_contiguous_group_in_order(monkeypatch, cores):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-groups")
    monkeypatch.setattr(common, "worker_pool", lambda: pool)
    cores(3)
    try:
        got = common.map_groups(lambda g: (list(g), threading.current_thread().name), range(10))
    finally:
        pool.shutdown()
    assert [g for g, _ in got] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert got[0][1] == threading.current_thread().name and got[2][1].startswith("test-groups")
    monkeypatch.setattr(common, "worker_pool", lambda: None)
    assert common.map_groups(list, [4, 5]) == [[4, 5]] and common.map_groups(list, []) == []


@pytest.mark.parametrize(("n", "channels", "side"), [(5, 3, 40), (3, 1, 28), (1, 3, 17)])
def test_jpeg_round_trip_by_groups_equals_one_image_at_a_time(n, channels, side):
    # Each core's group goes to the codec as one list (torchvision >= 0.19): the bytes must be
    # those of encoding and decoding each image on its own.
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    from robustmix.corruptions import digital

    codec_in = torch.randint(0, 256, (n, side, side, channels), dtype=torch.uint8, generator=gen(3))
    codec_in = codec_in.permute(0, 3, 1, 2)  # CHW views of HWC bytes, as jpeg_compression makes them
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        want = torch.stack([decode_jpeg(encode_jpeg(im, quality=40), mode=mode).permute(1, 2, 0) for im in codec_in])
    assert torch.equal(digital._jpeg_roundtrip(codec_in, 40), want)


@pytest.mark.skipif(not _openmp._runtimes(), reason="no OpenMP runtime found in this process (torch without OpenMP?)")
def test_map_groups_runs_each_groups_torch_ops_on_its_own_thread_alone():
    # No group may wake an OpenMP team: the caller's group runs with a team of one (its own
    # count back afterwards), the pool's threads always do.
    before = torch.get_num_threads()
    seen = common.map_groups(lambda g: (torch.get_num_threads(), torch.rand(64, 1024).sum().item() > 0), range(4))
    assert [count for count, _ in seen] == [1] * len(seen)
    assert torch.get_num_threads() == before


def test_map_groups_runs_the_pool_threads_in_the_callers_autograd_modes(monkeypatch, cores):
    # Autograd's modes are per thread: a pool thread outside inference mode could not write a
    # tensor its caller made inside it (JPEG's output under torch.inference_mode, as evaluate runs).
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-modes")
    monkeypatch.setattr(common, "worker_pool", lambda: pool)
    cores(3)
    modes = lambda g: (torch.is_inference_mode_enabled(), torch.is_grad_enabled())
    x = natural(6, 3, 40)
    try:
        assert common.map_groups(modes, range(6)) == [(False, True)] * 3
        with torch.no_grad():
            assert common.map_groups(modes, range(6)) == [(False, False)] * 3
        floats = torch.rand(6, 3, 40, 40, generator=gen(2))  # not 8-bit: Poisson draws in the threads
        want = corrupt(x, "jpeg_compression", 3), corrupt(floats, "shot_noise", 3, generator=gen(5))
        with torch.inference_mode():
            assert common.map_groups(modes, range(6)) == [(True, False)] * 3
            # both raised in the pool threads before the fix (shot noise since its threads came)
            got = corrupt(x, "jpeg_compression", 3), corrupt(floats, "shot_noise", 3, generator=gen(5))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    finally:
        pool.shutdown()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (a forked worker process)")
def test_a_forked_child_hands_groups_to_a_pool_of_its_own(monkeypatch, cores):
    # A child forked after the parent used the worker pool used to find the parent's executor,
    # whose threads it does not have, and hang on the first hand-off (JPEG, shot noise of float
    # images). The groups here run no torch op: libgomp's team does not survive a fork either
    # (DataLoader workers run one torch thread, and then map_groups uses no pool at all).
    import signal
    import threading

    cores(2)
    common.worker_pool.cache_clear()
    names = lambda g: threading.current_thread().name
    assert common.map_groups(names, range(4))[1].startswith("robustmix-worker")  # the pool is up
    pid = os.fork()
    if pid == 0:  # the child: exit 0 if a pool thread of its own ran the second group
        try:
            signal.alarm(30)  # killed if the hand-off hangs
            os._exit(0 if common.map_groups(names, range(4))[1].startswith("robustmix-worker") else 3)
        except BaseException:  # any failure is the child's exit status
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    common.worker_pool.cache_clear()  # the pretended core count's pool goes
    assert os.waitstatus_to_exitcode(status) == 0


def test_map_split_keeps_order_and_runs_the_first_group_in_the_caller(monkeypatch, cores):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-split")
    monkeypatch.setattr(common, "worker_pool", lambda: pool)
    cores(3)
    seen = []

    def fn(i):
        seen.append((i, threading.current_thread().name))
        return 2 * i

    try:
        assert common.map_split(fn, list(range(10))) == [2 * i for i in range(10)]
    finally:
        pool.shutdown()
    names = dict(seen)
    assert {names[i] for i in range(3)} == {threading.current_thread().name}  # items 0-2: the caller
    assert all(names[i].startswith("test-split") for i in range(3, 10))  # groups 3-5 and 6-9: the pool
    monkeypatch.setattr(common, "worker_pool", lambda: None)
    assert common.map_split(fn, [1, 2]) == [2, 4]


def test_poisson_draw_is_torchs_own_stream_per_image():
    # One int64 seed per image from the caller's generator, then torch's sampler on the image.
    rates = torch.rand(4, 3, 16, 16, generator=gen(7)) * 20
    seeds = torch.randint(0, 2**63 - 1, (4,), generator=gen(8)).tolist()
    want = torch.stack([torch.poisson(r, generator=torch.Generator().manual_seed(s)) for r, s in zip(rates, seeds)])
    assert torch.equal(common.random_poisson(rates, gen(8)), want)


@pytest.mark.parametrize("lam", [0.7, 4.0, 12.0, 60.0])
def test_blocked_poisson_draw_matches_the_poisson_pmf(lam):
    # Chi-square goodness of fit against scipy's pmf over 4 blocks; each block must be a fresh
    # stream (identical blocks would pass the fit but fail the distinctness check).
    from scipy import stats

    b = common.POISSON_BLOCK
    blocks = common.random_poisson(torch.full((4, b), lam), gen(10)).long()  # one image each
    counts = blocks.flatten()
    assert all(not torch.equal(blocks[0], blocks[i]) for i in range(1, 4))
    hi = int(stats.poisson.ppf(1 - 1e-4, lam))
    observed = torch.bincount(counts.clamp(max=hi + 1), minlength=hi + 2).double().numpy()
    expected = np.append(stats.poisson.pmf(np.arange(hi + 1), lam), stats.poisson.sf(hi, lam)) * counts.numel()
    keep = expected >= 5
    chi2 = float((((observed - expected) ** 2 / expected)[keep]).sum() + 0.0)
    other_o, other_e = observed[~keep].sum(), expected[~keep].sum()
    if other_e > 0:
        chi2 += (other_o - other_e) ** 2 / other_e
    dof = int(keep.sum()) + (1 if other_e > 0 else 0) - 1
    assert stats.chi2.sf(chi2, dof) > 1e-3


@pytest.mark.parametrize(("side", "severity"), [(64, 5), (32, 3)])
def test_impulse_noise_fraction(side, severity):
    amount = (REFERENCE_IMAGENET if side > 32 else REFERENCE_CIFAR)["impulse_noise"][severity - 1]
    x = torch.full((8, 3, side, side), 0.5)
    y = corrupt(x, "impulse_noise", severity, generator=gen(3))
    changed = y != x
    assert set(torch.unique(y[changed]).tolist()) <= {0.0, 1.0}
    n = changed.numel()
    assert changed.float().mean().item() == pytest.approx(amount, abs=4 * math.sqrt(amount / n))
    assert (y[changed] == 1).float().mean().item() == pytest.approx(0.5, abs=0.05)


def test_speckle_noise_is_multiplicative():
    x = torch.cat([torch.full((4, 3, 64, 64), 0.2), torch.zeros(1, 3, 64, 64)])
    y = corrupt(x, "speckle_noise", 1, generator=gen(4))
    assert torch.equal(y[4], x[4])  # zero stays zero
    rel = (y[:4] - x[:4]) / 0.2
    assert rel.std().item() == pytest.approx(0.15, rel=0.03)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_and_speckle_noise_are_their_formulas_with_the_draws(dtype):
    """clip(x + n) and clip(x + x n) to the bit, n = std * the normals random_normal draws."""
    x = torch.rand(3, 3, 40, 40, generator=gen(8), dtype=torch.float64).to(dtype)
    for name, formula in (("gaussian_noise", lambda n: x + n), ("speckle_noise", lambda n: x + x * n)):
        std = REFERENCE_IMAGENET[name][2]
        n = common.random_normal(x.shape, gen(6), like=x, std=std).to(dtype)
        assert torch.equal(corrupt(x, name, 3, generator=gen(6)), formula(n).clamp(0, 1))


# --------------------------------------------------------------------------------------------
# Colour and intensity


def test_hsv_matches_colorsys():
    rgb = torch.rand(2, 3, 5, 7, generator=gen(5), dtype=torch.float64)
    rgb[0, :, 0, 0] = torch.tensor([0.4, 0.4, 0.4])  # grey: hue 0, saturation 0
    hsv = common.rgb_to_hsv(rgb)
    for idx in [(0, 0, 0), (0, 1, 3), (1, 4, 6), (1, 2, 2)]:
        n, i, j = idx
        expected = colorsys.rgb_to_hsv(*rgb[n, :, i, j].tolist())
        assert hsv[n, :, i, j].tolist() == pytest.approx(expected, abs=1e-12)
    assert torch.allclose(common.hsv_to_rgb(hsv), rgb, atol=1e-12)


def test_brightness_shifts_value_channel():
    # (0.2, 0.4, 0.6): V = 0.6; adding c to V with H and S fixed scales RGB by (V + c) / V.
    x = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1).expand(1, 3, 64, 64).clone()
    for severity, c in enumerate(REFERENCE_IMAGENET["brightness"], start=1):
        y = corrupt(x, "brightness", severity)
        expected = torch.tensor([0.2, 0.4, 0.6]) * min(0.6 + c, 1.0) / 0.6
        assert torch.allclose(y[0, :, 5, 5], expected, atol=1e-6)
    gray = torch.full((1, 1, 28, 28), 0.9)
    assert torch.allclose(corrupt(gray, "brightness", 1), torch.full_like(gray, 0.95), atol=1e-6)
    assert torch.allclose(corrupt(gray, "brightness", 5), torch.ones_like(gray))


def _hsv_test_pixels() -> torch.Tensor:
    # Random colours plus the special cases: black, greys, white, pure and saturated hues in all
    # six sectors, and values that the shift clips.
    x = torch.rand(3, 3, 16, 16, generator=gen(17), dtype=torch.float64)
    special = torch.tensor(
        [[0, 0, 0], [0.4, 0.4, 0.4], [1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1],
         [1, 0, 1], [0.9, 0.2, 0.1], [0.1, 0.95, 0.3], [0.3, 0.2, 0.98], [0.97, 0.96, 0.1]],
        dtype=torch.float64,
    )
    x[0, :, 0, : len(special)] = special.T
    x[1, :, 3, :] = x[1, :1, 3, :]  # a row of greys
    return x


@pytest.mark.parametrize("c", [0.1, 0.3, 0.5, -0.2])
def test_shift_value_equals_the_hsv_round_trip(c):
    x = _hsv_test_pixels()
    h, s, v = common.rgb_to_hsv(x).unbind(-3)
    want = common.hsv_to_rgb(torch.stack((h, s, (v + c).clamp(0, 1)), dim=-3))
    assert torch.allclose(digital.shift_value(x, c), want, atol=1e-12, rtol=0)
    for n, i, j in [(0, 0, 0), (0, 0, 9), (2, 7, 3)]:  # and per pixel against colorsys
        hh, ss, vv = colorsys.rgb_to_hsv(*x[n, :, i, j].tolist())
        expected = colorsys.hsv_to_rgb(hh, ss, min(max(vv + c, 0.0), 1.0))
        assert digital.shift_value(x, c)[n, :, i, j].tolist() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("a", "b"), [(0.3, 0.0), (0.1, 0.0), (2.0, 0.0), (5.0, 0.1), (20.0, 0.1)])
def test_scale_saturation_equals_the_hsv_round_trip(a, b):
    x = _hsv_test_pixels()
    h, s, v = common.rgb_to_hsv(x).unbind(-3)
    want = common.hsv_to_rgb(torch.stack((h, (s * a + b).clamp(0, 1), v), dim=-3))
    assert torch.allclose(digital.scale_saturation(x, a, b), want, atol=1e-12, rtol=0)
    for n, i, j in [(0, 0, 1), (0, 0, 10), (1, 3, 5), (2, 7, 3)]:
        hh, ss, vv = colorsys.rgb_to_hsv(*x[n, :, i, j].tolist())
        expected = colorsys.hsv_to_rgb(hh, min(max(ss * a + b, 0.0), 1.0), vv)
        assert digital.scale_saturation(x, a, b)[n, :, i, j].tolist() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_colour_shifts_equal_their_select_formulas_bit_for_bit(dtype):
    """shift_value / scale_saturation select per pixel by 0/1 weights instead of torch.where
    (slow on CPU); the floats must be those of the where form, black and grey pixels included."""
    x = _hsv_test_pixels().to(dtype)
    x[2, :, 1, :4] = 0.0  # black pixels (v = 0)

    def where_shift(rgb, c):
        v = rgb.amax(dim=-3, keepdim=True)
        v_new = (v + c).clamp(0.0, 1.0)
        return torch.where(v > 0, rgb * (v_new / v), v_new)

    def where_saturation(rgb, a, b):
        v = rgb.amax(dim=-3, keepdim=True)
        delta = v - rgb.amin(dim=-3, keepdim=True)
        s = torch.where(v > 0, delta / torch.where(v > 0, v, 1.0), 0.0)
        s_new = (s * a + b).clamp(0.0, 1.0)
        coloured = v - (v - rgb) * (s_new * v / torch.where(delta > 0, delta, 1.0))
        grey = torch.cat((v, v * (1 - s_new), v * (1 - s_new)), dim=-3)
        return torch.where(delta > 0, coloured, grey)

    for c in (0.1, 0.5, -0.2):
        assert torch.equal(digital.shift_value(x, c), where_shift(x, c))
    for a, b in ((0.3, 0.0), (2.0, 0.0), (5.0, 0.1)):
        assert torch.equal(digital.scale_saturation(x, a, b), where_saturation(x, a, b))


def test_positive_weight_and_nonzero_where():
    v = torch.tensor([-1.0, -0.0, 0.0, 1e-40, 0.25, 3.0])
    w = common.positive_weight(v)
    assert w.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert common.nonzero_where(v, w).tolist() == [1.0, 1.0, 1.0, v[3].item(), 0.25, 3.0]
    a, b = torch.tensor([0.3, -2.0, 7.5, 1e-30, 0.1, 1.0]), torch.full((6,), 0.7)
    assert torch.equal(torch.lerp(b, a, w), torch.where(v > 0, a, b))


def test_contrast_formula():
    x = torch.zeros(1, 2 + 1, 32, 32)
    x[:, :, :16] = 0.8
    x[:, :, 16:] = 0.2
    x[:, 1] = 0.5 * x[:, 1]
    for severity, c in enumerate(REFERENCE_CIFAR["contrast"], start=1):
        y = corrupt(x, "contrast", severity)
        # channel 0: mean 0.5 -> 0.5 + 0.3 c / 0.5 - 0.3 c; channel 1: mean 0.25
        assert y[0, 0, 0, 0].item() == pytest.approx(0.5 + 0.3 * c, abs=1e-6)
        assert y[0, 0, -1, 0].item() == pytest.approx(0.5 - 0.3 * c, abs=1e-6)
        assert y[0, 1, 0, 0].item() == pytest.approx(0.25 + 0.15 * c, abs=1e-6)


def test_saturate_scales_saturation():
    x = torch.tensor([0.3, 0.5, 0.6]).view(1, 3, 1, 1).expand(1, 3, 64, 64).clone()
    h, s, v = colorsys.rgb_to_hsv(0.3, 0.5, 0.6)
    for severity, (a, b) in enumerate(REFERENCE_IMAGENET["saturate"], start=1):
        y = corrupt(x, "saturate", severity)
        expected = colorsys.hsv_to_rgb(h, min(max(s * a + b, 0), 1), v)
        assert y[0, :, 0, 0].tolist() == pytest.approx(expected, abs=1e-6)


# --------------------------------------------------------------------------------------------
# Digital: codecs and resampling against their references


@pytest.mark.parametrize(("side", "channels"), [(32, 3), (28, 1), (64, 3)])
def test_jpeg_equals_torchvision_codec(side, channels):
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    x = natural(2, channels, side)
    quality = (REFERENCE_IMAGENET if side > 32 else REFERENCE_CIFAR)["jpeg_compression"][2]
    y = corrupt(x, "jpeg_compression", 3)
    x8 = (x * 255).round().to(torch.uint8)
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        expected = torch.stack([decode_jpeg(encode_jpeg(img, quality=quality), mode=mode) for img in x8])
    assert torch.allclose(y, expected.float() / 255, atol=1e-6)


def test_jpeg_close_to_pil_reference():
    from PIL import Image

    x = natural(1, 3, 32)
    x8 = (x * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(x8).save(buf, "JPEG", quality=58)
    ref = torch.from_numpy(np.asarray(Image.open(buf)).copy()).permute(2, 0, 1).float() / 255
    y = corrupt(x, "jpeg_compression", 3)[0]
    assert (y - ref).abs().mean().item() < 2 / 255


@pytest.mark.parametrize(("side", "severity"), [(224, 1), (224, 5), (32, 2), (28, 4)])
def test_pixelate_equals_pil_box_resize(side, severity):
    from PIL import Image

    x = natural(1, 1, side, seed=severity).double()
    c = (REFERENCE_IMAGENET if side > 32 else REFERENCE_CIFAR)["pixelate"][severity - 1]
    small = int(side * c)
    img = Image.fromarray(x[0, 0].numpy().astype(np.float32), mode="F")
    ref = np.asarray(img.resize((small, small), Image.BOX).resize((side, side), Image.BOX))
    y = corrupt(x, "pixelate", severity)[0, 0].numpy()
    assert np.abs(y - ref).max() < 1e-5


@pytest.mark.parametrize(("h", "w", "severity"), [(37, 50, 1), (111, 64, 4), (224, 150, 5)])
def test_pixelate_equals_pil_on_odd_rectangles(h, w, severity):
    """Non-square, odd sizes: the row taps, the column product and both upsampling paths."""
    from PIL import Image

    x = torch.rand(1, 1, h, w, generator=gen(severity), dtype=torch.float64)
    c = REFERENCE_IMAGENET["pixelate"][severity - 1]
    img = Image.fromarray(x[0, 0].numpy().astype(np.float32), mode="F")
    ref = np.asarray(img.resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX))
    assert np.abs(corrupt(x, "pixelate", severity)[0, 0].numpy() - ref).max() < 1e-5


@pytest.mark.parametrize(("h", "w", "severity"), [(224, 224, 1), (224, 224, 3), (224, 224, 5), (32, 32, 2), (32, 32, 5), (57, 91, 4)])
def test_pixelate_of_8bit_images_equals_pil_bytes(h, w, severity):
    """8-bit inputs: PIL's own 8-bit resize (two passes, each rounded to uint8), byte for byte."""
    from PIL import Image

    table = REFERENCE_IMAGENET if min(h, w) > 32 else REFERENCE_CIFAR
    c = table["pixelate"][severity - 1]
    x8 = (natural(2, 3, max(h, w), seed=severity)[..., :h, :w] * 255).round().to(torch.uint8)
    out = corrupt(x8.float() / 255, "pixelate", severity)
    for img, got in zip(x8, out):
        pil = Image.fromarray(img.permute(1, 2, 0).numpy())
        ref = np.asarray(pil.resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX))
        assert np.array_equal((got * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), ref)
        assert torch.equal(got, (got * 255).round() / 255)  # 8-bit levels, as float32 k / 255
    gray = corrupt(x8[:1, :1].float() / 255, "pixelate", severity)[0, 0]
    ref = np.asarray(Image.fromarray(x8[0, 0].numpy()).resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX))
    assert np.array_equal((gray * 255).round().to(torch.uint8).numpy(), ref)


def test_pixelate_window_sums_by_index_add_equal_the_banded_product(monkeypatch):
    # Where the BOX windows partition the pixels, the CPU sums them with index_add_; the banded
    # 0/1 product and row gathers (the path kept for other sizes) give the same bytes.
    from robustmix.corruptions import digital

    assert digital._box_windows(13, 6) is None  # a pixel in no window: the general path
    windows = digital._box_windows(224, 89)
    members, _ = digital._pil_box_members(224, 89)
    assert windows.shape == (224,) and torch.equal(members[windows, torch.arange(224)], torch.ones(224))
    x = (natural(3, 3, 64, seed=9) * 255).round() / 255
    fast = [corrupt(x, "pixelate", s) for s in range(1, 6)]
    monkeypatch.setattr(digital, "_box_windows", lambda in_size, out_size: None)
    for s, got in zip(range(1, 6), fast):
        assert torch.equal(got, corrupt(x, "pixelate", s))


def test_pil_fixed_point_mean_is_exact_for_every_sum():
    """Every window size the float32 path takes (1..160 pixels) and a few beyond it (float64)."""
    from robustmix.corruptions import digital

    for count in [*range(1, digital._FLOAT32_EXACT_MAX_COUNT + 1), 161, 167, 253]:
        kk = math.floor(2**22 / count + 0.5)
        sums = torch.arange(255 * count + 1, dtype=torch.float32)
        got = digital._pil_fixed_point_mean(sums.clone(), torch.tensor([kk / 2**22], dtype=torch.float64))
        want = torch.clamp((sums.long() * kk + 2**21) >> 22, 0, 255)  # PIL: (ss + 2**21) >> 22
        assert torch.equal(got.long(), want), count


def test_pixelate_decides_8bit_per_image():
    x8 = (natural(2, 3, 64) * 255).round() / 255
    mixed = torch.cat([x8[:1], (x8[1:] + 0.4 / 255).clamp(max=1)])  # the second image between levels
    out = corrupt(mixed, "pixelate", 3)
    assert torch.equal(out[:1], corrupt(mixed[:1], "pixelate", 3))
    assert torch.equal(out[1:], corrupt(mixed[1:], "pixelate", 3))
    assert not torch.equal(out[:1], out[1:])


def test_pixelate_nearly_8bit_inputs_take_the_8bit_path_and_others_do_not():
    x8 = (natural(1, 3, 64) * 255).round() / 255
    exact = corrupt(x8, "pixelate", 3)
    assert torch.equal(corrupt(x8 + 2e-6, "pixelate", 3), exact)  # within 1e-3 of a level: 8-bit
    smooth = corrupt(x8 + 0.4 / 255, "pixelate", 3)  # between levels: PIL's float resize, unrounded
    assert not torch.equal(smooth, (smooth * 255).round() / 255)


def test_pixelate_integer_ratio_equals_area_then_nearest():
    x = natural(2, 3, 224)
    y = corrupt(x, "pixelate", 2)  # 224 -> 112 -> 224
    small = F.interpolate(x, size=(112, 112), mode="area")
    assert torch.allclose(y, F.interpolate(small, size=(224, 224), mode="nearest-exact"), atol=1e-6)


def _elastic_by_scipy(image: np.ndarray, offsets: np.ndarray, noise_x, noise_y, alpha, sigma) -> np.ndarray:
    """ImageNet-C's elastic transform of an (H, W, C) float image for given draws, computed
    independently in float64 NumPy/SciPy: the affine map that moves three points around the
    centre by ``offsets`` (float32 sums, as the reference forms them), applied at its inverse
    with bilinear sampling and a mirror border (OpenCV's BORDER_REFLECT_101; OpenCV's 1/32-px
    fixed point is left out), then the displacement ``alpha * gaussian(noise, sigma, truncate 3)``
    sampled bilinearly with SciPy's half-sample ``reflect`` border, clipped to [0, 1]."""
    h, w, channels = image.shape
    # The reference's centre is (H // 2, W // 2) used as an (x, y) point: the same on square images.
    centre, step = np.array([h // 2, w // 2], np.float32), np.float32(min(h, w) // 3)
    src = np.stack([centre + step, centre + np.float32([step, -step]), centre - step])
    dst = (src + offsets.astype(np.float32)).astype(np.float64)
    forward = np.linalg.solve(np.c_[src.astype(np.float64), np.ones(3)], dst).T  # dst = A [x, y, 1]
    inverse = np.linalg.inv(np.r_[forward, [[0.0, 0.0, 1.0]]])
    # SciPy indexes (row, col) = (y, x): reverse both axes of the inverse's linear part
    rc_matrix, rc_offset = inverse[:2, :2][::-1, ::-1], inverse[:2, 2][::-1]
    warped = [scipy_ndimage.affine_transform(image[..., k], rc_matrix, offset=rc_offset, order=1, mode="mirror")
              for k in range(channels)]  # fmt: skip
    shift_x = scipy_ndimage.gaussian_filter(noise_x, sigma, mode="reflect", truncate=3) * alpha
    shift_y = scipy_ndimage.gaussian_filter(noise_y, sigma, mode="reflect", truncate=3) * alpha
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    where = [rows + shift_y, cols + shift_x]
    out = np.stack([scipy_ndimage.map_coordinates(plane, where, order=1, mode="reflect") for plane in warped], -1)
    return np.clip(out, 0, 1)


@pytest.mark.parametrize("severity", [1, 2, 3, 5])
def test_elastic_warp_equals_make_imagenet_c_for_the_same_draws(severity):
    from robustmix.corruptions.digital import elastic_warp

    alpha, sigma, jitter = REFERENCE_IMAGENET["elastic_transform"][severity - 1]
    side = 96  # the table's lengths scaled to 96 px (corrupt instead draws the field at 224 px)
    scale = side / 224
    alpha, sigma, jitter = alpha * scale, sigma * scale, jitter * scale
    g = np.random.default_rng(severity)
    x = natural(2, 3, side, seed=severity).double()
    offsets = g.uniform(-jitter, jitter, size=(2, 3, 2)).astype(np.float32).astype(np.float64)  # as the reference draws them
    noise = g.uniform(-1, 1, size=(2, 2, side, side))
    got = elastic_warp(x, torch.from_numpy(offsets), torch.from_numpy(noise), alpha=alpha, sigma=sigma)
    for i in range(2):
        want = _elastic_by_scipy(x[i].permute(1, 2, 0).numpy(), offsets[i], noise[i, 0], noise[i, 1], alpha, sigma)
        np.testing.assert_allclose(got[i].clamp(0, 1).permute(1, 2, 0).numpy(), want, atol=1e-9)


def test_elastic_warp_rejects_draws_of_the_wrong_shape():
    from robustmix.corruptions.digital import elastic_warp

    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"jitter: expected shape \(2, 3, 2\)"):
        elastic_warp(x, torch.zeros(3, 2), torch.zeros(2, 2, 16, 16), alpha=1.0, sigma=1.0)
    with pytest.raises(ValueError, match=r"noise: expected shape \(2, 2, 16, 16\)"):
        elastic_warp(x, torch.zeros(2, 3, 2), torch.zeros(2, 16, 16), alpha=1.0, sigma=1.0)


def test_elastic_warp_close_to_opencv_affine():
    cv2 = pytest.importorskip("cv2", reason="OpenCV is a benchmark extra, not a test dependency")
    from robustmix.corruptions.digital import elastic_warp

    g = np.random.default_rng(7)
    x = natural(1, 3, 64, seed=7).double()
    offsets = g.uniform(-6, 6, size=(1, 3, 2))
    image = x[0].permute(1, 2, 0).numpy().astype(np.float32)
    c, q = 32, 64 // 3
    pts1 = np.float32([[c + q, c + q], [c + q, c - q], [c - q, c - q]])
    m = cv2.getAffineTransform(pts1, pts1 + offsets[0].astype(np.float32))
    want = cv2.warpAffine(image, m, (64, 64), borderMode=cv2.BORDER_REFLECT_101)
    got = elastic_warp(x, torch.from_numpy(offsets), torch.zeros(1, 2, 64, 64, dtype=torch.float64), alpha=0.0, sigma=0.0)
    # OpenCV interpolates at 1/32 px in fixed point: a few 1e-3 on these smooth images
    assert np.abs(got[0].permute(1, 2, 0).numpy() - want).max() < 1e-2


def _coordinate_ramps(n: int, side: int) -> torch.Tensor:
    """Images whose channels 0 and 1 are x / (side - 1) and y / (side - 1): bilinear resampling of
    a linear ramp is exact, so ``out - in`` there is the displacement as a share of the side."""
    t = torch.linspace(0, 1, side)
    planes = (t.view(1, -1).expand(side, side), t.view(-1, 1).expand(side, side), torch.full((side, side), 0.5))
    return torch.stack(planes).expand(n, 3, side, side).contiguous()


@pytest.mark.parametrize("side", [64, 299])
def test_elastic_displacement_scales_with_the_side(side):
    """The size rule scales lengths by side / 224, so the displacement is the same share of the
    image at every side above 32 px. The smoothed-noise field's size in pixels is set by
    alpha / sigma; scaling both kept it at its 224 px size in pixels (at 64 px 1.6-2.1x the share
    of the image it is at 224 px for severities 2-5)."""
    share = {}
    for s_side in (224, side):
        x = _coordinate_ramps(4, s_side)
        m = s_side // 8  # interior: away from the reflected border
        for severity in range(1, 6):
            out = corrupt(x, "elastic_transform", severity, generator=gen(severity))
            share[s_side, severity] = (out - x)[:, :2, m:-m, m:-m].abs().mean().item()
    for severity in range(1, 6):
        assert share[side, severity] / share[224, severity] == pytest.approx(1.0, abs=0.06), severity


def test_elastic_warp_resizes_a_field_drawn_at_another_size():
    """Noise drawn at 2x the image's size: the field is smoothed there and resized, its values
    halved (pixels of the drawn grid -> pixels of the image)."""
    from robustmix.corruptions.digital import elastic_warp

    x = _coordinate_ramps(1, 48).double()
    noise = torch.zeros(1, 2, 96, 96, dtype=torch.float64)
    noise[:, 0] = 1.0  # a constant x displacement of alpha drawn-grid pixels everywhere
    out = elastic_warp(x, torch.zeros(1, 3, 2, dtype=torch.float64), noise, alpha=4.0, sigma=2.0)
    # 4 drawn pixels = 2 image pixels: sampled at x + 2, i.e. the ramp moves by 2 / 47 (the
    # float32 linspace of the ramp is linear to ~1e-7)
    torch.testing.assert_close(out[0, 0, :, 4:-4], x[0, 0, :, 4:-4] + 2 / 47, atol=1e-6, rtol=0)
    torch.testing.assert_close(out[0, 1], x[0, 1], atol=1e-6, rtol=0)


def test_elastic_keeps_constant_images():
    x = torch.full((2, 3, 32, 32), 0.37)
    for severity in (1, 5):
        assert torch.allclose(corrupt(x, "elastic_transform", severity, generator=gen(0)), x, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Blur kernels against their definitions


def test_gaussian_filter_equals_scipy():
    x = torch.rand(2, 3, 20, 24, generator=gen(6), dtype=torch.float64)
    for mode in ("nearest", "reflect", "mirror"):
        for sigma, truncate in ((0.7, 4.0), (3.0, 4.0), (40.0, 3.0)):
            y = common.gaussian_filter(x, sigma, truncate=truncate, mode=mode)
            ref = scipy_ndimage.gaussian_filter(x.numpy(), (0, 0, sigma, sigma), truncate=truncate, mode=mode)
            assert np.abs(y.numpy() - ref).max() < 1e-12


@pytest.mark.parametrize(("shape", "sigma"), [((2, 3, 224, 200), 3.0), ((1, 1, 97, 161), 1.0), ((1, 2, 130, 170), 6.0)])
def test_gaussian_filter_banded_blocks_equal_scipy(shape, sigma):
    # At these sizes the filter matrices are applied block by block (only each block's band of
    # input rows); every border mode folds its taps inside the band.
    x = torch.rand(*shape, generator=gen(16), dtype=torch.float64)
    taps = common.gaussian_kernel1d(sigma, truncate=4.0)
    for mode in ("nearest", "reflect", "mirror"):
        for n in shape[-2:]:
            assert common._band_blocks(common._filter_matrix(n, taps, mode, dtype=x.dtype, device=x.device)) is not None
        y = common.gaussian_filter(x, sigma, mode=mode)
        ref = scipy_ndimage.gaussian_filter(x.numpy(), (0, 0, sigma, sigma), truncate=4.0, mode=mode)
        assert np.abs(y.numpy() - ref).max() < 1e-12


def test_band_blocks_fall_back_to_the_dense_product_when_the_band_is_wide():
    taps = common.gaussian_kernel1d(3.0, truncate=4.0)  # 25 taps: most of a 32-px matrix
    assert common._band_blocks(common._filter_matrix(32, taps, "nearest", dtype=torch.float64, device="cpu")) is None


def test_gaussian_blur_impulse_response_and_spectrum():
    x = torch.zeros(1, 1, 224, 224, dtype=torch.float64)
    x[0, 0, 112, 112] = 1.0
    sigma = REFERENCE_IMAGENET["gaussian_blur"][1]  # 2 px at 224
    y = blur.gaussian_blur(x, 2)[0, 0]
    t = torch.arange(-8, 9, dtype=torch.float64)  # radius int(4 * 2 + 0.5) = 8
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    assert torch.allclose(y[104:121, 104:121], g.view(-1, 1) * g.view(1, -1), atol=1e-12)
    assert y.sum().item() == pytest.approx(1.0)
    # Spectrum of a sampled Gaussian: exp(-2 pi^2 sigma^2 f^2) per axis (aliasing negligible here).
    f = torch.fft.fftfreq(224, dtype=torch.float64)
    spectrum = torch.fft.fft2(y).abs()
    analytic = torch.exp(-2 * math.pi**2 * sigma**2 * (f.view(-1, 1) ** 2 + f.view(1, -1) ** 2))
    assert torch.allclose(spectrum, analytic, atol=2e-3)


def test_disk_kernel_matches_reference_construction():
    for radius, alias in REFERENCE_IMAGENET["defocus_blur"] + REFERENCE_CIFAR["defocus_blur"]:
        half = 8 if radius <= 8 else radius
        ks = 3 if radius <= 8 else 5
        grid = np.arange(-half, half + 1)
        xx, yy = np.meshgrid(grid, grid)
        disk = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
        disk /= disk.sum()
        t = np.arange(ks) - ks // 2
        g = np.exp(-(t**2) / (2 * alias**2))
        g /= g.sum()
        ref = scipy_ndimage.correlate(disk, np.outer(g, g), mode="mirror")  # cv2 BORDER_REFLECT_101
        k = blur.disk_kernel(radius, alias).numpy()
        r = k.shape[0] // 2
        assert np.abs(ref[half - r : half + r + 1, half - r : half + r + 1] - k).max() < 1e-12
        assert ref.sum() == pytest.approx(k.sum(), abs=1e-12)  # cropping dropped only zeros


def test_defocus_impulse_response_is_the_disk():
    x = torch.zeros(1, 1, 224, 224, dtype=torch.float64)
    x[0, 0, 100, 120] = 1.0
    y = blur.defocus_blur(x, 5)[0, 0]
    k = blur.disk_kernel(10, 0.5)
    r = k.shape[0] // 2
    assert torch.allclose(y[100 - r : 100 + r + 1, 120 - r : 120 + r + 1], k, atol=1e-12)
    inside = k[r - 5 : r + 6, r - 5 : r + 6]
    count = sum(1 for i in range(-10, 11) for j in range(-10, 11) if i * i + j * j <= 100)
    assert torch.allclose(inside, torch.full_like(inside, 1 / count))  # flat top of area 1/pi r^2


@pytest.mark.parametrize("kshape", [(5, 3), (3, 3), (1, 3), (3, 1)])  # 3x3 and smaller: shifted sums
@pytest.mark.parametrize("mode", ["mirror", "nearest", "reflect"])
def test_filter2d_equals_scipy_correlate(kshape, mode):
    x = torch.rand(2, 3, 16, 13, generator=gen(7), dtype=torch.float64)
    k = torch.rand(*kshape, generator=gen(8), dtype=torch.float64)
    k[0, 0] = 0.0  # a zero tap (Sobel and emboss have them)
    y = common.filter2d(x, k, mode=mode).numpy()
    ref = scipy_ndimage.correlate(x.numpy(), k.numpy()[None, None], mode=mode)
    assert np.abs(y - ref).max() < 1e-12


@pytest.mark.parametrize("kshape", [(15, 17), (21, 21)])  # >= 15x15 taps on CPU: the FFT path
@pytest.mark.parametrize("mode", ["mirror", "nearest", "reflect"])
def test_large_kernel_filter2d_equals_scipy_correlate(kshape, mode, monkeypatch):
    x = torch.rand(3, 2, 40, 37, generator=gen(7), dtype=torch.float64)
    k = torch.rand(*kshape, generator=gen(8), dtype=torch.float64)
    ref = scipy_ndimage.correlate(x.numpy(), k.numpy()[None, None], mode=mode)
    for group in (1, 1 << 30):  # an FFT call per image and one for the batch
        monkeypatch.setattr(common, "CPU_GROUP_ELEMENTS", group)
        assert np.abs(common.filter2d(x, k, mode=mode).numpy() - ref).max() < 1e-12
    monkeypatch.setattr(common, "_FFT_MIN_TAPS", 10**9)  # the depthwise convolution agrees too
    assert np.abs(common.filter2d(x, k, mode=mode).numpy() - ref).max() < 1e-12


def test_dilate3x3_equals_max_pool():
    from robustmix.corruptions import weather

    mask = torch.rand(3, 1, 17, 12, generator=gen(9)) < 0.08
    expected = F.max_pool2d(mask.float(), 3, stride=1, padding=1) > 0
    assert torch.equal(weather._dilate3x3(mask), expected)


def test_imagemagick_8bit_is_q16_quantum_then_integer_division():
    # q = round(65535 x) = round(257 * level); the 8-bit PNG keeps q // 257 (hand-computed)
    levels = torch.tensor([0.0, 0.4, 0.6, 10.5, 10.99, 10.997, 10.999, 254.999, 255.0, 300.0, -3.0],
                          dtype=torch.float64)
    want = [0, 0, 0, 10, 10, 10, 11, 255, 255, 255, 0]  # 10.997 -> q = 2826 = 257*10 + 256
    assert (common.imagemagick_8bit(levels / 255) * 255).round().long().tolist() == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_imagemagick_8bit_in_place_chain_equals_the_formula_and_leaves_its_input(dtype):
    x = torch.rand(9, 3, 224, 224, generator=gen(3), dtype=dtype) * 1.2 - 0.1  # a pooled-size batch
    before = x.clone()
    formula = torch.floor(torch.floor(x.clamp(0.0, 1.0) * 65535 + 0.5) / 257) / 255
    got = common.imagemagick_8bit(x)
    assert torch.equal(x, before)
    assert torch.equal(got * 255, (formula * 255).round()) and torch.equal(got, (formula * 255).round() / 255)


def test_motion_blur_returns_imagemagick_8bit_levels():
    """The reference reads ImageMagick's 8-bit PNG back: ``round(257 * level) // 257`` of the blur."""
    x = natural(2, 3, 48)
    angles = common.random_uniform((2,), gen(3), like=x, low=-45.0, high=45.0)  # the draw motion_blur makes
    out = corrupt(x, "motion_blur", 2, generator=gen(3))
    assert torch.equal(out, (out * 255).round() / 255)
    radius, sigma = REFERENCE_IMAGENET["motion_blur"][1]
    exact = common.apply_motion_blur(x, radius=radius * 48 / 224, sigma=sigma * 48 / 224, angles=angles)
    below = exact.clamp(0, 1) - out  # 0 to just under one level: ImageMagick's writer does not round
    assert below.min() >= -1 / 514 / 255 - 1e-6 and below.max() < 1 / 255 + 1e-6
    assert below.mean() > 0.3 / 255  # ~half a level on average, where rounding would give ~0


def _magick_motion_blur(image: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """make_imagenet_c.py's motion blur path: PNG blob -> Wand motion_blur -> PNG blob -> decode."""
    from io import BytesIO

    from PIL import Image
    from wand.image import Image as WandImage

    buf = BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    with WandImage(blob=buf.getvalue()) as im:
        im.motion_blur(radius=radius, sigma=sigma, angle=angle)
        blob = im.make_blob("png")
    return np.asarray(Image.open(BytesIO(blob)).convert("RGB"))


def test_motion_blur_equals_imagemagick_where_installed():
    try:
        import wand.image  # noqa: F401  (needs the ImageMagick library too, not only the wheel)
    except ImportError as err:
        pytest.skip(f"Wand/ImageMagick is a cross-check extra, not a test dependency ({err})")
    x = natural(3, 3, 40)
    x = list(x) + list(F.interpolate(x, size=72, mode="bilinear").clamp(0, 1))  # 72 px: the direct sum
    # -30 degrees at radius 10: taps on half-integer ties, decided by ImageMagick's float steps.
    cases = ((-31.5, 6.0), (0.0, 6.0), (40.25, 6.0), (-30.0, 10.0), (30.0, 10.0), (-30.0, 10.0), (12.0, 15.0))
    for i, (angle, radius) in enumerate(cases):
        image = (x[i % 3 + 3 * (i >= 5)] * 255).round().byte().permute(1, 2, 0).numpy()
        want = _magick_motion_blur(image, radius, 2.5, angle)
        levels = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).double() / 255
        blurred = common.apply_motion_blur(levels, radius=radius, sigma=2.5,
                                           angles=torch.tensor([angle], dtype=torch.float64))
        got = (common.imagemagick_8bit(blurred)[0] * 255).round().byte().permute(1, 2, 0).numpy()
        assert np.array_equal(got, want), np.abs(got.astype(int) - want).max()


def test_motion_blur_large_images_take_the_direct_sum(monkeypatch):
    """Above MOTION_DIRECT_MIN_PIXELS the CPU sums the taps directly: the formula, checked
    against NumPy (edge-padded shifts), and the FFT route to float rounding."""
    side = 72
    assert side * side > common.MOTION_DIRECT_MIN_PIXELS
    x = torch.rand(3, 2, side, side, generator=gen(12), dtype=torch.float64)
    angles = torch.tensor([-45.0, -30.0, 17.5], dtype=torch.float64)
    got = common.apply_motion_blur(x, radius=6, sigma=2.5, angles=angles)
    taps = common.motion_blur_taps(6, 2.5).tolist()
    dx, dy = common.motion_blur_offsets(len(taps), angles)
    for k in range(3):
        padded = np.pad(x[k].numpy(), ((0, 0), (13, 13), (13, 13)), mode="edge")
        want = sum(w * padded[:, 13 + j : 13 + j + side, 13 + i : 13 + i + side]
                   for w, i, j in zip(taps, dx[k].tolist(), dy[k].tolist()))
        np.testing.assert_allclose(got[k].numpy(), want, rtol=0, atol=1e-13)
    monkeypatch.setattr(common, "MOTION_DIRECT_MIN_PIXELS", 10**9)
    by_fft = common.apply_motion_blur(x.float(), radius=6, sigma=2.5, angles=angles)
    torch.testing.assert_close(by_fft.double(), got, rtol=0, atol=2e-6)


def test_motion_blur_kernel_is_imagemagick_line():
    taps = common.motion_blur_taps(10, 3)
    assert taps.numel() == 21  # 2 * ceil(radius) + 1
    expected = torch.exp(-torch.arange(21.0, dtype=torch.float64) ** 2 / 18)
    assert torch.allclose(taps, expected / expected.sum())
    dx, dy = common.motion_blur_offsets(21, torch.tensor([0.0, 90.0, 45.0]))
    assert dx[0].tolist() == list(range(21)) and dy[0].abs().sum() == 0
    assert dy[1].tolist() == list(range(21)) and dx[1].abs().sum() == 0
    assert torch.equal(dx[2], dy[2]) and dx[2, 20] == 14  # ceil(20 cos 45 - 0.5)
    # Impulse response at angle 0: out(y, x) = sum_i w_i in(y, x + i) -> a line to the left.
    img = torch.zeros(1, 1, 32, 64, dtype=torch.float64)
    img[0, 0, 10, 40] = 1.0
    out = common.apply_motion_blur(img, radius=10, sigma=3, angles=torch.tensor([0.0]))[0, 0]
    assert torch.allclose(out[10, 20:41], taps.flip(0))
    assert out.sum().item() == pytest.approx(1.0) and out[[0, 9, 11]].abs().max() < 1e-12  # FFT rounding only


def test_motion_blur_offsets_at_half_integer_ties_follow_imagemagick():
    """At -30 degrees ``i sin(a)`` is a half-integer for odd i; which pixel a tap takes there is
    decided by float64 rounding. ImageMagick 6.9.11 (through Wand, as make_imagenet_c.py calls it)
    computes ``i * (w sin a) / hypot(w sin a, w cos a)`` and takes dy = 0 for tap 1 at -30 degrees
    (its rows of offsets below were read off its output); ``i * sin(deg2rad(a))`` took -1 and moved
    every odd tap by a pixel (48 % of the bytes of a 224 px image differed at radius 10)."""
    dx, dy = common.motion_blur_offsets(21, torch.tensor([-30.0, 30.0, -60.0, -120.0]))
    assert dy[0, :8].tolist() == [0, 0, -1, -1, -2, -2, -3, -3]  # -ceil(i / 2) + (i odd): i // 2 down
    assert dy[1, :8].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert dx[2, :8].tolist() == [0, 1, 1, 2, 2, 3, 3, 4]  # snow's range: cos(-60) = 1/2
    assert dx[3, :8].tolist() == [0, 0, -1, -1, -2, -2, -3, -3]


def _reference_clipped_zoom(img: np.ndarray, z: float) -> np.ndarray:
    """make_imagenet_c.py's clipped_zoom (square images) generalised per axis, on (C, H, W)."""
    h, w = img.shape[-2:]
    ch, cw = int(np.ceil(h / z)), int(np.ceil(w / z))
    top, left = (h - ch) // 2, (w - cw) // 2
    zoomed = scipy_ndimage.zoom(img[:, top : top + ch, left : left + cw], (1, z, z), order=1)
    trim_h, trim_w = (zoomed.shape[1] - h) // 2, (zoomed.shape[2] - w) // 2
    return zoomed[:, trim_h : trim_h + h, trim_w : trim_w + w]


# 32 px and 40x56 take the interpolation matrices on CPU, the larger ones F.interpolate
@pytest.mark.parametrize("shape", [(32, 32), (40, 56), (80, 80), (72, 100), (64, 30)])
def test_clipped_zoom_equals_reference_scipy_zoom(shape):
    x = torch.rand(1, 2, *shape, generator=gen(9), dtype=torch.float64)
    for z in (1.0, 1.06, 1.13, 1.3, 3.0):
        ref = _reference_clipped_zoom(x[0].numpy(), z)
        assert np.abs(common.clipped_zoom(x, z)[0].numpy() - ref).max() < 1e-9
        # float32 and a 3-D stack of planes (snow's layer) give the same values
        planes = common.clipped_zoom(x[0].float(), z).double().numpy()
        assert np.abs(planes - ref).max() < 1e-5


def _reference_glass_loop(dy: np.ndarray, dx: np.ndarray, h: int, w: int) -> np.ndarray:
    """The reference's glass-blur shuffle as a plain scan-order loop on an (H, W, 3) image of pixel
    ids: its tuple assignment of two pixels' RGB views copies instead of swapping (the view of the
    first pixel is overwritten before it is written to the second), kept here as such."""
    passes, n, rows, _ = dy.shape
    d = (h - rows) // 2
    out = []
    for k in range(n):
        x = np.arange(h * w).reshape(h, w, 1).repeat(3, axis=2)
        for t in range(passes):
            for hh in range(h - d, d, -1):
                for ww in range(w - d, d, -1):
                    h_prime, w_prime = hh + int(dy[t, k, hh - d - 1, ww - d - 1]), ww + int(dx[t, k, hh - d - 1, ww - d - 1])
                    x[hh, ww], x[h_prime, w_prime] = x[h_prime, w_prime], x[hh, ww]
        assert (x == x[..., :1]).all()
        out.append(x[..., 0].reshape(-1))
    return np.stack(out)


@pytest.mark.parametrize(("h", "w", "d", "passes"), [(12, 12, 1, 2), (20, 17, 2, 3), (15, 30, 3, 2), (26, 26, 4, 2)])
def test_glass_sources_equal_the_reference_loop(h, w, d, passes):
    # The reference's tuple "swap" of RGB views is a copy, applied in scan order (chains included).
    g = gen(h + d)
    dy = torch.randint(-d, d, (passes, 3, h - 2 * d, w - 2 * d), generator=g)
    dx = torch.randint(-d, d, (passes, 3, h - 2 * d, w - 2 * d), generator=g)
    got = blur.glass_sources(dy, dx, h, w)
    assert got.dtype == torch.int64 and got.shape == (3, h * w)
    np.testing.assert_array_equal(got.numpy(), _reference_glass_loop(dy.numpy(), dx.numpy(), h, w))


def test_small_divmod_is_exact_over_its_whole_range():
    values = torch.arange(1 << 16)
    for divisor in range(1, 257):
        q, r = blur.small_divmod(values, divisor)
        assert torch.equal(q, values // divisor) and torch.equal(r, values % divisor), divisor
    with pytest.raises(ValueError, match="divisor"):
        blur.small_divmod(values, 257)


def test_glass_sources_copies_rather_than_swaps():
    # One pass, d = 2 (interior rows/cols 3..6), every offset (+1, +1): each pixel copies its
    # lower-right neighbour, which was scanned (and overwritten) first, so every chain runs down
    # the diagonal to the first pixel outside the interior. A swap would instead have moved
    # pixel (3, 3)'s value to (4, 4).
    h = w = 8
    ones = torch.ones(1, 1, h - 4, w - 4, dtype=torch.long)
    src = blur.glass_sources(ones, ones, h, w).view(h, w)
    for r in range(3, 7):
        for c in range(3, 7):
            k = min(7 - r, 7 - c)
            assert src[r, c] == (r + k) * w + (c + k), (r, c)
    assert src[3, 3] == 7 * w + 7 and src[3, 5] == 5 * w + 7
    assert int((src.view(-1) == torch.arange(h * w)).sum()) == h * w - 16  # only interior pixels changed


def test_glass_sources_rejects_mismatched_offsets():
    with pytest.raises(ValueError, match="dy and dx"):
        blur.glass_sources(torch.zeros(1, 1, 4, 4, dtype=torch.long), torch.zeros(1, 1, 4, 3, dtype=torch.long), 6, 6)
    with pytest.raises(ValueError, match="interior"):
        blur.glass_sources(torch.zeros(1, 1, 4, 4, dtype=torch.long), torch.zeros(1, 1, 4, 4, dtype=torch.long), 7, 6)


def test_glass_blur_moves_pixels_only_locally():
    # With sigma tiny (CIFAR severity 1, sigma 0.05) a single bright pixel can only travel 1 px.
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 16, 16] = 1.0
    y = corrupt(x, "glass_blur", 1, generator=gen(10))[0, 0]
    far = y.clone()
    far[14:18, 14:18] = 0
    assert far.abs().max() < 1e-6


def _skimage_blur(planes: np.ndarray, sigma: float) -> np.ndarray:
    """skimage.filters.gaussian of (N, C, H, W) float64 planes: SciPy's filter over H and W only."""
    return scipy_ndimage.gaussian_filter(planes, sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)


@pytest.mark.parametrize("sigma", [0.05, 0.25, 0.4, 0.7, 1.5])
def test_reference_gaussian_float64_is_scipys_to_the_bit(sigma):
    # 8-bit images held in float32 go in as the float64 levels uint8 / 255. the reference blurs.
    levels = torch.randint(0, 256, (3, 3, 32, 29), generator=gen(31), dtype=torch.float64)
    got = blur.reference_gaussian_float64((levels / 255).float(), sigma)
    assert got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), _skimage_blur(levels.numpy() / 255.0, sigma))


def test_reference_gaussian_float64_takes_levels_image_by_image():
    """In a mixed batch only the 8-bit images become exact levels k / 255. (float64 inputs are
    not written to); each image's result is the one it gets alone."""
    levels = torch.randint(0, 256, (4, 3, 16, 16), generator=gen(32), dtype=torch.float64)
    x = levels / 255
    x[1] += 0.3 / 255  # not 8-bit
    before = x.clone()
    mixed = blur.reference_gaussian_float64(x, 0.7)
    assert torch.equal(x, before)
    for i in range(4):
        assert torch.equal(mixed[i], blur.reference_gaussian_float64(x[i : i + 1], 0.7)[0])
    np.testing.assert_array_equal(mixed[[0, 2, 3]].numpy(), _skimage_blur(levels[[0, 2, 3]].numpy() / 255.0, 0.7))
    np.testing.assert_array_equal(mixed[1].numpy(), _skimage_blur(x[1:2].numpy(), 0.7)[0])


@pytest.mark.parametrize(
    ("side", "severity"), [(32, 2), (32, 3), (32, 4), (32, 5), (224, 1), (224, 2), (224, 4), (224, 5)]
)
def test_glass_blur_truncates_flat_images_as_the_reference(side, severity):
    # Glass blur stores its first blur as uint8 (truncation) before shuffling. On a flat image
    # every blurred value is a whole level in exact arithmetic, so the float64 rounding of the
    # reference's blur decides it (CIFAR-10-C: kept for every level at sigma 0.25, lost for some
    # at 0.4); a float32 blur dropped 119 of the 256 levels at sigma 0.25, and at 224 px moved
    # 31-118 levels (255 included) at the ImageNet-C sigmas. Flat images make the shuffle a
    # no-op, so the result is known from SciPy alone.
    table = REFERENCE_CIFAR if side <= 32 else REFERENCE_IMAGENET
    sigma = table["glass_blur"][severity - 1][0]
    k = np.arange(256, dtype=np.float64)
    flat = np.broadcast_to((k / 255.0).reshape(256, 1, 1, 1), (256, 1, side, side)).copy()
    first = np.floor(_skimage_blur(flat, sigma) * 255) / 255
    expected = np.floor(_skimage_blur(first, sigma).astype(np.float32) * np.float32(255))
    y = corrupt(torch.from_numpy(flat).float(), "glass_blur", severity, generator=gen(5))
    got = torch.floor(y * 255).numpy()
    np.testing.assert_array_equal(got, expected)


# --------------------------------------------------------------------------------------------
# Contract: shapes, dtypes, ranges, determinism, monotonicity, errors


@pytest.mark.parametrize("name", OWN)
def test_contract_rgb_and_gray(name):
    for channels, side in ((3, 32), (1, 28)):
        x = natural(3, channels, side)
        before = x.clone()
        y = corrupt(x, name, 3, generator=gen(11))
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert torch.equal(x, before)  # input untouched
        assert y.min() >= 0 and y.max() <= 1 and torch.isfinite(y).all()


@pytest.mark.parametrize("name", OWN)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtype_preserved(name, dtype):
    x = natural(2, 3, 32).to(dtype)
    y = corrupt(x, name, 2, generator=gen(12))
    assert y.dtype == dtype and y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("name", OWN)
def test_smoke_224(name):
    x = natural(1, 3, 224)
    y = corrupt(x, name, 3, generator=gen(13))
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    assert (y - x).abs().mean() > 1e-3


@pytest.mark.parametrize("name", RANDOM)
def test_seed_determinism(name):
    x = natural(2, 3, 32)
    a = corrupt(x, name, 4, generator=gen(1))
    b = corrupt(x, name, 4, generator=gen(1))
    c = corrupt(x, name, 4, generator=gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_ones_ignore_the_seed(name):
    x = natural(2, 3, 32)
    assert torch.equal(corrupt(x, name, 4, generator=gen(1)), corrupt(x, name, 4, generator=gen(2)))


def test_batched_equals_per_image():
    x = natural(3, 3, 32)
    for name in ("contrast", "pixelate", "defocus_blur", "zoom_blur", "jpeg_compression", "brightness"):
        whole = corrupt(x, name, 3)
        single = torch.cat([corrupt(x[i : i + 1], name, 3) for i in range(3)])
        assert torch.allclose(whole, single, atol=1e-6), name


# Where the reference table itself is not ordered by pixel distance (documented exceptions).
NOT_MONOTONE = {
    "glass_blur": "CIFAR-10-C sev 1-3 differ only in sigma <= 0.4 and sev 5 smooths its own jitter",
    "elastic_transform": "CIFAR-10-C's affine jitter shrinks with severity (2.56 -> 0.96 px)",
    "saturate": "x0.1 saturation (sev 2) changes pixels more than x1.5 (sev 3)",
}


@pytest.mark.parametrize("name", OWN)
@pytest.mark.parametrize("side", [28, 64])
def test_severity_monotonicity(name, side):
    x = natural(4, 3, side)
    dist = [
        np.mean([(corrupt(x, name, s, generator=gen(k)) - x).abs().mean().item() for k in range(2)])
        for s in range(1, 6)
    ]
    assert dist[0] > 0
    if name in NOT_MONOTONE:
        assert dist[4] > 0 or dist[3] > dist[0], NOT_MONOTONE[name]
        return
    if side == 64 and name == "pixelate":
        # 0.6 * side is a non-integer ratio whose misalignment outweighs the 0.5 level (PIL BOX).
        dist.pop(0)
    for a, b in itertools.pairwise(dist):
        assert b >= a - 1e-4, dist


def test_corrupt_validates_inputs():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"unknown corruption name 'blurry'; valid names: gaussian_noise"):
        corrupt(x, "blurry", 1)
    for bad in (0, 6, -1):
        with pytest.raises(ValueError, match=r"severity must be an int in 1\.\.5, got"):
            corrupt(x, "contrast", bad)
    for bad in (2.0, True, "3"):
        with pytest.raises(TypeError, match=r"severity must be an int in 1\.\.5"):
            corrupt(x, "contrast", bad)
    with pytest.raises(TypeError, match=r"images must be a torch\.Tensor"):
        corrupt(x.numpy(), "contrast", 1)
    with pytest.raises(TypeError, match="floating tensor"):
        corrupt((x * 255).to(torch.uint8), "contrast", 1)
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\)"):
        corrupt(x[0], "contrast", 1)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        corrupt(torch.rand(1, 2, 8, 8), "contrast", 1)
    with pytest.raises(ValueError, match=r"values must lie in \[0, 1\]"):
        corrupt(x * 2, "contrast", 1)
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator"):
        corrupt(x, "contrast", 1, generator=0)
    corrupt(x + 1e-6, "contrast", 1)  # tiny overshoot from upstream float maths is tolerated


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_channels_last_input_gives_the_same_values_in_its_own_layout(name):
    x = natural(2, 3, 40)
    want = corrupt(x, name, 3, generator=gen(3))
    got = corrupt(x.contiguous(memory_format=torch.channels_last), name, 3, generator=gen(3))
    assert torch.equal(got, want)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    # A view in neither layout (every other column) gives the values of its contiguous copy.
    strided = natural(2, 3, 80)[..., ::2]
    torch.testing.assert_close(
        corrupt(strided, name, 3, generator=gen(3)), corrupt(strided.contiguous(), name, 3, generator=gen(3)),
        atol=0, rtol=0)


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_large_cpu_batches_run_in_chunks_with_one_generator(name, monkeypatch):
    from robustmix.corruptions import registry

    x = natural(5, 3, 24)
    monkeypatch.setattr(registry, "CPU_CHUNK_ELEMENTS", 2 * x[0].numel())  # chunks of 2, 2, 1
    got = corrupt(x, name, 3, generator=gen(4))
    g = gen(4)
    want = torch.cat([CORRUPTIONS[name](x[i : i + 2], 3, g) for i in (0, 2, 4)])
    assert torch.equal(got, want)
    if name in DETERMINISTIC:  # chunks change nothing but the order of the draws
        torch.testing.assert_close(got, CORRUPTIONS[name](x, 3, gen(0)), atol=1e-6, rtol=0)


def test_accelerator_batches_run_whole():
    """Chunks and FFT groups are a CPU cache measure; other devices get the batch in one call
    (checked on the meta device, which runs nothing)."""
    from robustmix.corruptions import registry

    meta = torch.empty(100, 3, 224, 224, device="meta")
    assert registry._chunk_images(meta) == 100
    assert common._cpu_group(meta, 256 * 256) == 100
    cpu = torch.empty(100, 3, 224, 224)
    assert registry._chunk_images(cpu) == registry.CPU_CHUNK_ELEMENTS // (3 * 224 * 224) == 8
    assert registry._chunk_images(cpu, "contrast") == 8
    assert common._cpu_group(cpu, 256 * 256) == 1


def test_jpeg_from_pooled_buffers_equals_jpeg_from_fresh_ones(monkeypatch):
    # Large batches take the bytes, the codec output and the levels from the buffer pool (and
    # the codec threads write into a pooled array through NumPy): forced here for a small batch.
    from robustmix import _memory
    from robustmix.corruptions import store

    x = natural(3, 3, 48)
    fresh, stored = corrupt(x, "jpeg_compression", 2), store(x, "release")
    monkeypatch.setattr(_memory, "MIN_BYTES", 1)
    for _ in range(2):  # the second call gets buffers back from the first
        assert torch.equal(corrupt(x, "jpeg_compression", 2), fresh) and torch.equal(store(x, "release"), stored)


def test_jpeg_takes_a_large_cpu_batch_in_one_call(monkeypatch):
    # The codec threads get more images per hand-off; the bytes are the chunked call's.
    from robustmix.corruptions import digital, registry

    assert registry._chunk_images(torch.empty(100, 3, 224, 224), "jpeg_compression") == 100
    x = natural(5, 3, 24)
    chunked = corrupt(x, "jpeg_compression", 3)
    calls = []
    real = digital._jpeg_cpu
    monkeypatch.setattr(digital, "_jpeg_cpu", lambda batch, q: calls.append(len(batch)) or real(batch, q))
    monkeypatch.setattr(registry, "CPU_CHUNK_ELEMENTS", 2 * x[0].numel())
    assert torch.equal(corrupt(x, "jpeg_compression", 3), chunked) and calls == [5]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("n", "channels", "side"), [(5, 3, 40), (3, 1, 28), (1, 3, 17), (9, 3, 32)])
def test_jpeg_cpu_path_equals_bytes_codec_and_levels_as_three_steps(dtype, n, channels, side, cores):
    # The CPU path converts inside the codec's groups (two here, one in a pool thread); the GPU
    # path converts around them (bytes on the device, codec on the host, levels back): the same
    # values to the bit.
    from robustmix.corruptions import digital

    cores(2)

    x = torch.rand(n, channels, side, side, generator=gen(8), dtype=torch.float64).to(dtype)
    x[0, 0, 0, :4] = torch.tensor([0.0, 1.0, 0.5 / 255, 2.5 / 255], dtype=dtype)  # ties round to even
    for quality in (7, 40):
        decoded = digital._jpeg_roundtrip(digital._bytes_hwc(x).permute(0, 3, 1, 2), quality)
        want = digital._levels_from_bytes(decoded, x)
        got = digital._jpeg_cpu(x, quality)
        assert got.dtype == dtype and got.is_contiguous() and torch.equal(got, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", OWN)
def test_cuda_matches_cpu_generator(name):
    x = natural(2, 3, 32)
    cpu = corrupt(x, name, 3, generator=gen(3))
    cuda = corrupt(x.cuda(), name, 3, generator=gen(3))
    assert cuda.device.type == "cuda"
    assert torch.allclose(cuda.cpu(), cpu, atol=2e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("size", [32, 64])
def test_cuda_release_storage_matches_cpu(size):
    from robustmix.corruptions import store

    x = natural(2, 3, size)
    got = store(x.cuda(), "release")
    assert got.device.type == "cuda" and got.is_contiguous() and torch.equal(got.cpu(), store(x, "release"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_images_with_a_cpu_generator_get_blocked_poisson_counts_on_cuda():
    rates = torch.rand(3, common.POISSON_BLOCK + 5, generator=gen(7)) * 20  # blocked on the CPU
    counts = common.random_poisson(rates.cuda(), gen(8))
    assert counts.device.type == "cuda" and torch.equal(counts.cpu(), common.random_poisson(rates, gen(8)))


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_writes_cifar_c_layout(tmp_path):
    from robustmix.cli.corrupt import write_corrupted_set

    images = (natural(3, 1, 28).permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    labels = np.array([4, 1, 7])
    write_corrupted_set(images, labels, tmp_path, ("contrast", "gaussian_noise"), seed=0, batch_size=2, progress=False)
    assert np.array_equal(np.load(tmp_path / "labels.npy"), np.tile(labels, 5))
    arr = np.load(tmp_path / "contrast.npy")
    assert arr.shape == (15, 28, 28, 1) and arr.dtype == np.uint8
    for s in range(1, 6):  # severity-major blocks
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        # stored as CIFAR-10-C: np.uint8(clip(x, 0, 1) * 255) truncates
        expected = (corrupt(x, "contrast", s) * 255).floor().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        assert np.array_equal(arr[(s - 1) * 3 : s * 3], expected)
    again = tmp_path / "again"
    write_corrupted_set(images, labels, again, ("gaussian_noise",), seed=0, batch_size=2, progress=False)
    assert np.array_equal(np.load(again / "gaussian_noise.npy"), np.load(tmp_path / "gaussian_noise.npy"))


def test_cli_set_holds_the_images_on_the_fly_evaluation_uses(tmp_path):
    # Same seeding and storage as `robustmix evaluate` on the fly, and any batch size: the
    # written bytes are the images the model would see there (whole batch, one call).
    from robustmix.cli.corrupt import corrupt_uint8
    from robustmix.corruptions import store
    from robustmix.evaluate import pair_seed

    images = (natural(5, 3, 32).permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    for name in ("fog", "impulse_noise", "elastic_transform", "gaussian_noise"):
        got = corrupt_uint8(images, name, 4, seed=3, batch_size=2)
        seen = store(corrupt(x, name, 4, generator=torch.Generator().manual_seed(pair_seed(3, name, 4))), "release")
        want = (seen * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        assert np.array_equal(got, want), name


def test_store_modes_at_cifar_size():
    from robustmix.corruptions import store

    # values a third and two thirds between levels: truncation and rounding part ways
    k = torch.arange(0, 255, dtype=torch.float64).view(1, 1, 15, 17)
    x = torch.cat([(k + 0.3) / 255, (k + 0.7) / 255, torch.full_like(k, 1.2), torch.full_like(k, -0.1)], 1)
    release = store(x, "release")
    want = np.uint8(np.clip(x.numpy(), 0, 1) * 255) / 255  # make_cifar_c.py: np.uint8(corruption(x))
    np.testing.assert_array_equal(release.numpy(), want)
    assert torch.equal(store(x, "round"), (x.clamp(0, 1) * 255).round() / 255)
    assert store(x, "float") is x
    assert store(x.bfloat16(), "release").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="store: expected one of"):
        store(x, "jpeg")


@pytest.mark.parametrize("channels", [3, 1])
def test_store_release_is_imagenet_c_jpeg_above_32px(channels):
    from PIL import Image

    from robustmix.corruptions import store

    x = natural(2, channels, 64, seed=channels)
    got = (store(x, "release") * 255).round().to(torch.uint8)
    for img, out in zip(x, got):
        arr = np.uint8(np.clip(img.permute(1, 2, 0).double().numpy(), 0, 1) * 255)
        buf = io.BytesIO()  # make_imagenet_c.py: Image.fromarray(np.uint8(img)).save(path, quality=85, optimize=True)
        Image.fromarray(arr[..., 0] if channels == 1 else arr).save(buf, "JPEG", quality=85, optimize=True)
        ref = np.asarray(Image.open(buf)).reshape(arr.shape)
        assert np.array_equal(out.permute(1, 2, 0).numpy(), ref)
    assert store(x, "release").is_contiguous()  # NCHW, as given (the decoded bytes are HWC)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        store(torch.rand(1, 4, 40, 40), "release")


def test_cli_store_round_keeps_the_nearest_level(tmp_path):
    from robustmix.cli.corrupt import corrupt_uint8

    images = (natural(2, 1, 28).permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    got = corrupt_uint8(images, "contrast", 2, store="round")
    want = (corrupt(x, "contrast", 2) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(got, want)
    with pytest.raises(ValueError, match="store: expected 'release' or 'round'"):
        corrupt_uint8(images, "contrast", 2, store="float")


def test_cli_main_end_to_end(tmp_path, capsys):
    from robustmix.cli import main

    rc = main(["corrupt", "--dataset", "synthetic", "--limit", "4", "--corruptions", "pixelate",
               "--out", str(tmp_path), "--no-progress"])  # fmt: skip
    assert rc == 0
    assert np.load(tmp_path / "pixelate.npy").shape[0] == 20
    assert main(["corrupt", "--dataset", "synthetic", "--corruptions", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown corruption 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("group_elements", [1, 1 << 30])  # an FFT call per image, one for all
def test_motion_blur_fft_equals_direct_sum_with_edge_pixels(group_elements, monkeypatch):
    """The FFT path equals sum_i w_i in(clamp(y + dy_i), clamp(x + dx_i)), computed directly."""
    monkeypatch.setattr(common, "CPU_GROUP_ELEMENTS", group_elements)
    x = torch.rand(3, 2, 17, 23, generator=gen(4), dtype=torch.float64)
    angles = torch.tensor([-37.0, 12.5, 44.0])
    got = common.apply_motion_blur(x, radius=6, sigma=2.5, angles=angles)
    taps = common.motion_blur_taps(6, 2.5)
    dx, dy = common.motion_blur_offsets(taps.numel(), angles)
    rows, cols = torch.arange(17), torch.arange(23)
    for n in range(3):
        ref = torch.zeros(2, 17, 23, dtype=torch.float64)
        for i in range(taps.numel()):
            r = (rows + dy[n, i]).clamp(0, 16)
            c = (cols + dx[n, i]).clamp(0, 22)
            ref += taps[i] * x[n][:, r][:, :, c]
        torch.testing.assert_close(got[n], ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_input_is_never_written(name, dtype):
    """Temporaries are clipped in place; the caller's batch (and its views) must stay untouched."""
    x = natural(2, 3, 40, seed=5).to(dtype)
    x[0, 0, :4, :4] = 1.0  # saturated corner: clipping has work to do
    before = x.clone()
    out = corrupt(x, name, 5, generator=gen(1))
    assert torch.equal(x, before)
    assert out.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    # No cached state (textures, bases, kernels) was clipped in place either: a second call matches.
    assert torch.equal(corrupt(x, name, 5, generator=gen(1)), out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_jpeg_bytes_are_rounded_and_clipped_like_torch_round(dtype, device):
    # The codec's input bytes come from a bit trick (float32 + 2**23): same as round-half-even,
    # cast where the images live, then moved to the CPU (the codec's side).
    from robustmix.corruptions.digital import _bytes_hwc

    x = torch.rand(2, 3, 9, 7, generator=gen(4), dtype=dtype)
    x[0, 0, 0, :6] = torch.tensor([-1e-4, 1 + 1e-4, 0.5 / 255, 2.5 / 255, 1.0, 0.0], dtype=dtype)
    want = (x.float() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    got = _bytes_hwc(x.to(device))
    assert got.device.type == "cpu" and got.dtype == torch.uint8 and got.is_contiguous() and torch.equal(got, want)
    assert got[0, 0, :6, 0].tolist() == [0, 255, 0, 2, 255, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_levels_are_divided_exactly_on_every_device(dtype, device):
    # k / 255 correctly rounded wherever the tensor lives, as NumPy's uint8 / 255. gives it: CUDA
    # divides by a Python number as a product with its reciprocal, one ulp off for many k.
    from robustmix._device import divide_exactly_

    k = torch.arange(256, dtype=dtype, device=device)
    want = torch.from_numpy(np.arange(256, dtype=np.uint8) / np.array(255, dtype=np.float64)).to(dtype)
    assert torch.equal(divide_exactly_(k.clone(), 255).cpu(), want)
    assert not torch.equal(k.cpu() * (1 / torch.tensor(255, dtype=dtype)), want)  # the reciprocal's product
    x = torch.rand(64, dtype=dtype, generator=gen(6)).to(device)  # any value: the CPU's own division
    assert torch.equal(divide_exactly_(x.clone(), 7).cpu(), x.cpu() / 7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decoded_bytes_come_back_as_contiguous_levels_where_the_images_live(dtype, device):
    from robustmix.corruptions.digital import _levels_from_bytes

    decoded = torch.randint(0, 256, (2, 5, 4, 3), generator=gen(5), dtype=torch.uint8)  # (N, H, W, C)
    like = torch.zeros(1, dtype=dtype, device=device)
    got = _levels_from_bytes(decoded, like)
    assert got.shape == (2, 3, 5, 4) and got.dtype == dtype and got.device == like.device and got.is_contiguous()
    want = decoded.permute(0, 3, 1, 2).double() / 255  # levels k / 255, in the caller's dtype
    assert torch.equal(got.cpu(), want.to(dtype))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through Linux's /proc")
@pytest.mark.parametrize("name", ["jpeg_compression", "shot_noise"])
def test_worker_pool_threads_start_no_openmp_team(name, cores):
    # A pool thread that ran a parallel torch op would start its own OpenMP team (extra threads
    # that keep spinning). The pool's threads run their torch ops on themselves alone, so the
    # process gains exactly the pool's threads.
    from robustmix.corruptions import _common

    cores(2)  # two groups, whatever this host and the xdist worker's one torch thread
    torch.rand(64, 3, 64, 64).mul(2).sum()  # the main thread's own team exists from here on
    old = _common.worker_pool()
    if old is not None:  # join an earlier test's pool threads so they do not exit mid-count
        old.shutdown(wait=True)
    _common.worker_pool.cache_clear()  # a fresh pool, whose threads start inside this test
    pool = _common.worker_pool()
    if pool is None:
        pytest.skip("one usable core: no worker pool")
    try:
        before = set(os.listdir("/proc/self/task"))
        x = torch.rand(16, 3, 160, 160, generator=gen(6))  # > 32k elements per image: parallel-sized
        for _ in range(3):
            corrupt(x, name, 3)
        new = set(os.listdir("/proc/self/task")) - before  # threads that exit meanwhile do not count
        pool_ids = {str(t.native_id) for t in pool._threads}
        assert pool_ids and new == pool_ids
    finally:
        _common.worker_pool.cache_clear()
        pool.shutdown()


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))],
)
def test_every_corruption_and_mixer_runs_under_deterministic_algorithms(device, monkeypatch):
    # Users who turn on torch's deterministic mode for reproducible numbers: no op of ours may
    # raise there (an op without a deterministic kernel would), and a seed gives the same output.
    from robustmix import CutMix, MixUp, RobustMix

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        x = natural(3, 3, 40).to(device)
        for name in ALL_CORRUPTIONS:
            first = corrupt(x, name, 3, generator=gen(1))
            assert torch.equal(corrupt(x, name, 3, generator=gen(1)), first), name
        y = torch.arange(3, device=device)
        for make in (lambda: RobustMix(num_classes=3, seed=2), lambda: RobustMix(num_classes=3, per_sample=True, seed=2),
                     lambda: MixUp(alpha=1.0, num_classes=3, seed=2), lambda: CutMix(alpha=1.0, num_classes=3, seed=2)):
            first, again = make()(x, y), make()(x, y)
            assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    finally:
        torch.use_deterministic_algorithms(was)


def test_corrupt_reads_an_input_that_requires_grad_detached():
    # A data transform (the reference's works on NumPy arrays): the same values as for the
    # detached input and no gradient out; several corruptions write into buffers (out=), which
    # autograd refuses, so before this some raised and some returned a graph.
    x = natural(2, 3, 40).requires_grad_()
    for name in ALL_CORRUPTIONS:
        got = corrupt(x, name, 3, generator=gen(1))
        assert not got.requires_grad and torch.equal(got, corrupt(x.detach(), name, 3, generator=gen(1))), name
