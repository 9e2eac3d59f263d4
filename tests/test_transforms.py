"""Mixer classes: same as the functional for the same parameters, seeded, picklable, strict."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import robustmix
import robustmix.functional as F
from robustmix import params as P
from robustmix.transforms import CutMix, MixCollate, MixUp, RobustMix, build_mixer, mixer_names

X = torch.rand(6, 3, 12, 10, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 3, 4, 0])


def test_robustmix_class_equals_functional():
    mixer = RobustMix(5, alpha=0.7, tau=0.2, seed=11, energy="sample")
    twin = copy.deepcopy(mixer)
    out, soft = mixer(X, Y)
    params = twin.make_params(X)
    ref = F.robustmix(
        X, Y, lam_low=params.lam_low, lam_high=params.lam_high, cutoff=params.cutoff, index=params.index,
        num_classes=5, energy="sample",
    )
    torch.testing.assert_close((out, soft), ref, rtol=0, atol=0)
    assert 0.2 <= params.cutoff <= 1.0


def test_per_sample_parameters_are_vectors():
    params = RobustMix(5, per_sample=True, seed=0).make_params(X)
    for v in (params.lam_low, params.lam_high, params.cutoff):
        assert isinstance(v, torch.Tensor) and v.shape == (6,)
        assert bool(((v >= 0) & (v <= 1)).all())
    assert sorted(params.index.tolist()) == list(range(6))


def test_mixup_and_cutmix_class_equal_functional():
    for cls, fn in ((MixUp, "mixup"), (CutMix, "cutmix")):
        mixer = cls(5, seed=3)
        params = copy.deepcopy(mixer).make_params(X)
        out = mixer(X, Y)
        if fn == "mixup":
            ref = F.mixup(X, Y, lam=params.lam, index=params.index, num_classes=5)
        else:
            ref = F.cutmix(X, Y, box=params.box, index=params.index, num_classes=5)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("cls", [RobustMix, MixUp, CutMix])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixers_hand_class_ids_to_the_op_only_without_smoothing(cls, smoothing, monkeypatch):
    # Without smoothing the op gets the ids and builds the one-hot rows itself (it does not check
    # the mixer's own rows again as soft targets); the values are those of the soft-target call.
    seen = []
    op = {RobustMix: "robustmix", MixUp: "mixup", CutMix: "cutmix"}[cls]
    real = getattr(F, op)
    monkeypatch.setattr(F, op, lambda images, targets, **kw: seen.append(targets.dtype) or real(images, targets, **kw))
    options = {"per_sample": True} if cls is not CutMix else {}
    mixer, twin = cls(5, seed=7, label_smoothing=smoothing, **options), cls(5, seed=7, label_smoothing=smoothing, **options)
    got = [mixer(X, Y) for _ in range(3)]
    monkeypatch.setattr(twin, "_op_targets", twin._soft_targets)  # the soft-target path
    want = [twin(X, Y) for _ in range(3)]
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert seen[:3] == [torch.int64 if smoothing == 0 else torch.float32] * 3
    assert seen[3:] == [torch.float32] * 3


@pytest.mark.parametrize("cls", [RobustMix, MixUp, CutMix])
def test_seeded_reproducible_and_pickle_round_trip(cls):
    a, b = cls(5, seed=42), cls(5, seed=42)
    first = [a(X, Y) for _ in range(3)]
    second = [b(X, Y) for _ in range(3)]
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    restored = pickle.loads(pickle.dumps(a))
    torch.testing.assert_close(a(X, Y), restored(X, Y), rtol=0, atol=0)
    assert cls(5, seed=1)(X, Y)[1].tolist() != cls(5, seed=2)(X, Y)[1].tolist()


def test_no_global_rng_touched():
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002 (checking it is untouched)
    for cls in (RobustMix, MixUp, CutMix):
        cls(5)(X, Y)  # unseeded too
        cls(5, seed=0, p=0.5)(X, Y)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002


def test_p_zero_returns_batch_unmixed_with_smoothed_targets():
    out, soft = RobustMix(5, p=0.0, label_smoothing=0.1, seed=0)(X, Y)
    assert out is X
    torch.testing.assert_close(soft, F.one_hot(Y, 5, label_smoothing=0.1))


@pytest.mark.parametrize("cls", [RobustMix, MixUp, CutMix])
def test_unmixed_batch_is_checked_for_nan_too(cls):
    # With p = 0 the batch is never mixed; bad input must still fail, not depend on the draw.
    bad = X.clone()
    bad[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        cls(5, p=0.0, seed=0)(bad, Y)


@pytest.mark.parametrize("cls", [RobustMix, MixUp, CutMix])
@pytest.mark.parametrize("p", [1.0, 0.5])
def test_a_failed_call_draws_nothing(cls, p):
    # NaN images are found on the mixing path, after the parameters were drawn; the failed call
    # must put the generator back, so the run continues as if it had not happened.
    bad = X.clone()
    bad[1, 0, 2, 2] = float("nan")
    mixer, fresh = cls(5, p=p, seed=3), cls(5, p=p, seed=3)
    for _ in range(3):
        with pytest.raises(ValueError, match="NaN or inf"):
            mixer(bad, Y)
        with pytest.raises(ValueError, match="targets"):
            mixer(X, Y[:-1])
        torch.testing.assert_close(mixer(X, Y), fresh(X, Y), rtol=0, atol=0)


def test_numpy_scalars_are_accepted_as_floats():
    # np.float64 subclasses float, np.float32 does not: both are real numbers and must work alike
    # (values exact in float32, so the two mixers are the same).
    a = RobustMix(5, alpha=np.float32(0.5), tau=np.float32(0.25), p=np.float32(1.0), seed=0)
    b = RobustMix(5, alpha=0.5, tau=0.25, p=1.0, seed=0)
    assert (a.alpha, a.tau, a.p) == (b.alpha, b.tau, b.p)
    assert all(type(v) is float for v in (a.alpha, a.tau, a.p))
    torch.testing.assert_close(a(X, Y), b(X, Y), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"tau must lie in \[0, 1\]"):
        RobustMix(5, tau=np.float32(1.5))


def test_p_is_the_mixing_probability():
    mixer = MixUp(5, p=0.3, seed=0)
    applied = sum(mixer.make_params(X).apply for _ in range(2000))
    # Binomial(2000, 0.3): mean 600, std ~20.5; 5 sigma
    assert abs(applied - 600) < 103


def test_label_smoothing_applied_before_mixing():
    mixer = RobustMix(5, label_smoothing=0.2, seed=5)
    params = copy.deepcopy(mixer).make_params(X)
    _, soft = mixer(X, Y)
    smooth = F.one_hot(Y, 5, label_smoothing=0.2)
    _, ref = F.robustmix(X, smooth, lam_low=params.lam_low, lam_high=params.lam_high, cutoff=params.cutoff,
                         index=params.index)
    torch.testing.assert_close(soft, ref)
    assert float(soft.min()) >= 0.2 / 5 - 1e-7


def test_generator_argument_is_used():
    g = torch.Generator().manual_seed(9)
    a = RobustMix(5, generator=g)(X, Y)
    b = RobustMix(5, seed=9)(X, Y)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_beta_sampler_moments():
    g = torch.Generator().manual_seed(0)
    draws = P.sample_beta(0.5, 20000, g)
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)) = 0.125 for a = 0.5
    assert abs(float(draws.mean()) - 0.5) < 0.01
    assert abs(float(draws.var()) - 0.125) < 0.005


def test_cutmix_box_follows_paper_sampler():
    g = torch.Generator().manual_seed(1)
    areas = []
    for _ in range(500):
        params = P.sample_cutmix_params(2, 32, 32, alpha=1.0, p=1.0, generator=g)
        top, left, h, w = params.box
        assert 0 <= top and top + h <= 32 and 0 <= left and left + w <= 32
        areas.append(h * w / 1024)
    # lam ~ U(0, 1) -> unclipped area fraction 1 - lam has mean 1/2; clipping only shrinks it
    assert 0.25 < float(np.mean(areas)) < 0.5


def test_mix_collate_in_dataloader_workers_is_reproducible():
    data = TensorDataset(torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(32) % 4)

    def run():
        loader = DataLoader(
            data, batch_size=8, num_workers=2, collate_fn=MixCollate(RobustMix(4, seed=0)),
            generator=torch.Generator().manual_seed(7),
        )
        return [b for b in loader]

    first, second = run(), run()
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    for images, soft in first:
        assert images.shape == (8, 1, 8, 8) and soft.shape == (8, 4)
        torch.testing.assert_close(soft.sum(1), torch.ones(8))


def test_out_of_range_dims_raise_on_every_call_mixed_or_not():
    mixer = RobustMix(4, dims=(5,), p=0.0, seed=0)  # never mixes: the check must not hang on the coin
    for _ in range(3):
        with pytest.raises(ValueError, match="dims entry 5 is out of range"):
            mixer(X, Y % 4)
    out, _ = RobustMix(4, dims=-1, seed=0)(X, Y % 4)  # an int is one dim, as in the functional op
    want, _ = F.robustmix(X, Y % 4, num_classes=4, dims=(-1,), **_drawn(RobustMix(4, dims=-1, seed=0), X))
    torch.testing.assert_close(out, want, rtol=0, atol=0)


def _drawn(mixer, images):
    params = mixer.make_params(images)
    return {"lam_low": params.lam_low, "lam_high": params.lam_high, "cutoff": params.cutoff, "index": params.index}


def test_integer_like_numpy_arguments_are_accepted():
    mixer = RobustMix(np.int64(4), seed=np.uint64(3))
    assert mixer.num_classes == 4 and type(mixer.num_classes) is int
    same = RobustMix(4, seed=3)
    torch.testing.assert_close(mixer(X, Y % 4), same(X, Y % 4), rtol=0, atol=0)
    assert MixUp(4, per_sample=np.bool_(True)).per_sample is True


def test_cutmix_of_empty_images_pastes_nothing():
    x = torch.rand(3, 1, 0, 5)
    out, soft = F.cutmix(x, torch.arange(3), box=(0, 0, 0, 0), num_classes=3)
    assert out.shape == x.shape
    torch.testing.assert_close(soft, torch.eye(3))


def test_mix_collate_worker_stream_is_not_the_workers_global_stream():
    # torch seeds a worker's global RNG with get_worker_info().seed; the mixer must draw otherwise.
    from robustmix.transforms import _worker_mixer_seed

    seed = 123456789
    derived = _worker_mixer_seed(seed)
    assert derived != seed and 0 <= derived < 2**64 and derived == _worker_mixer_seed(seed)
    ours = torch.rand(16, generator=torch.Generator().manual_seed(derived))
    global_stream = torch.rand(16, generator=torch.Generator().manual_seed(seed))
    assert not torch.equal(ours, global_stream)


class _GlobalRngDataset(torch.utils.data.Dataset):
    """Augmentation on the worker's global RNG, as most datasets do."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.rand(3, 4, 4), 0


class _DrawingMixer:
    """A mixer that returns its first draw next to the batch's first image."""

    def __init__(self):
        self.generator = torch.Generator().manual_seed(0)

    def __call__(self, images, targets):
        return torch.rand(images.shape[1:], generator=self.generator), images[0]


def test_mix_collate_in_a_worker_does_not_replay_the_augmentation_draws():
    loader = DataLoader(_GlobalRngDataset(), batch_size=2, num_workers=1, collate_fn=MixCollate(_DrawingMixer()))
    for mixer_draw, augmentation in loader:  # with the worker's own seed the two were equal
        assert mixer_draw.shape == augmentation.shape and not torch.equal(mixer_draw, augmentation)


def test_build_mixer():
    assert build_mixer("none", 10) is None
    assert isinstance(build_mixer("robustmix", 10, tau=0.3, energy="sample", alpha=0.5), RobustMix)
    # options of other mixers are ignored
    m = build_mixer("mixup", 10, tau=0.3, alpha=0.4)
    assert isinstance(m, MixUp) and m.alpha == 0.4
    assert mixer_names() == ("none", "mixup", "cutmix", "robustmix")
    with pytest.raises(ValueError, match="mixer must be one of"):
        build_mixer("fmix", 10)
    # an option no mixer takes is a typo, whichever mixer is named
    for name in ("robustmix", "none"):
        with pytest.raises(TypeError, match=r"unknown option\(s\) \['alpah', 'tua'\]"):
            build_mixer(name, 10, alpah=0.2, tua=0.5)


@pytest.mark.parametrize(
    "call,err,match",
    [
        (lambda: RobustMix(0), ValueError, "num_classes must be a positive int"),
        (lambda: RobustMix(5, alpha=0.0), ValueError, "alpha must be a positive"),
        (lambda: RobustMix(5, alpha=float("inf")), ValueError, "alpha must be a positive"),
        (lambda: RobustMix(5, tau=1.5), ValueError, r"tau must lie in \[0, 1\]"),
        (lambda: RobustMix(5, p=-0.1), ValueError, r"p must lie in \[0, 1\]"),
        (lambda: RobustMix(5, label_smoothing=1.0), ValueError, r"label_smoothing must lie in \[0, 1\)"),
        (lambda: RobustMix(5, energy="pixels"), ValueError, "energy must be one of"),
        (lambda: RobustMix(5, seed=1, generator=torch.Generator()), ValueError, "either seed or generator"),
        (lambda: RobustMix(5, seed="1"), TypeError, "seed must be an int"),
        (lambda: RobustMix(5)(X.long(), Y), TypeError, "floating-point"),
        (lambda: RobustMix(5)(X, Y[:3]), ValueError, r"targets must have shape \(6,\)"),
        (lambda: RobustMix(5)(X, Y + 5), ValueError, "targets must lie in"),
        (lambda: RobustMix(5)(X[:0], Y[:0]), ValueError, "non-empty batch"),
        (lambda: MixUp(5, alpha=-1.0), ValueError, "alpha must be a positive"),
        (lambda: CutMix(5)(torch.rand(6, 8), Y), ValueError, "at least 3 dims"),
        (lambda: RobustMix(5, dims=None), TypeError, "dims must be an int or a sequence of ints"),
        (lambda: RobustMix(5, dims=(1.5,)), TypeError, "dims must be an int or a sequence of ints"),
        (lambda: RobustMix(5, dims="ab"), TypeError, "dims must be an int or a sequence of ints"),
        (lambda: RobustMix(5, dims=()), ValueError, "dims must name at least one dim"),
        (lambda: RobustMix(5, per_sample="no"), TypeError, "per_sample must be True or False"),
        (lambda: MixUp(5, per_sample=1), TypeError, "per_sample must be True or False"),
        (lambda: RobustMix(5, seed=-1), ValueError, r"seed must lie in \[0, 2\*\*64\)"),
        (lambda: RobustMix(5, seed=2**64), ValueError, r"seed must lie in \[0, 2\*\*64\)"),
        (lambda: MixCollate(5), TypeError, "mixer must be callable"),
        (lambda: MixCollate(MixUp(5), collate="default"), TypeError, "collate must be callable"),
    ],
)
def test_bad_arguments(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_repr_names_options():
    assert repr(RobustMix(3, tau=0.5)).startswith("RobustMix(num_classes=3, alpha=1.0, tau=0.5")


def test_public_api_surface():
    expected = {"CutMix", "MixCollate", "MixUp", "RobustMix", "build_mixer", "cutmix", "mixup", "one_hot",
                "robustmix", "freq", "functional", "params", "__version__"}
    assert expected <= set(robustmix.__all__)
    for name in robustmix.__all__:
        assert hasattr(robustmix, name), name
    assert {"dct", "idct", "lowpass", "highpass", "dct_basis"} <= set(robustmix.freq.__all__)
    assert {"mixup", "cutmix", "robustmix", "one_hot"} <= set(F.__all__)


def test_import_robustmix_stays_light():
    """`import robustmix` adds torch and numpy only: no torchvision, matplotlib, scipy or PIL."""
    import subprocess
    import sys

    code = (
        "import sys, torch; before = set(sys.modules); import robustmix; "
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before}))"
    )
    added = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for heavy in ("torchvision", "matplotlib", "scipy", "PIL", "tqdm"):
        assert f"'{heavy}'" not in added, added


@pytest.mark.parametrize("cls", [RobustMix, MixUp, CutMix])
@pytest.mark.parametrize("deferred", [False, True])
def test_check_values_false_skips_value_checks_and_changes_no_value(cls, deferred, monkeypatch):
    if deferred:  # the CPU answering checks as an accelerator does: queued, resolved by one sync
        monkeypatch.setattr(F, "_IMMEDIATE_DEVICES", frozenset())
    options = {"per_sample": True} if cls is RobustMix else {}
    for kw in ({}, {"label_smoothing": 0.1}, {"p": 0.0}):
        checked, unchecked = cls(5, seed=3, **options, **kw), cls(5, seed=3, check_values=False, **options, **kw)
        for _ in range(2):
            torch.testing.assert_close(checked(X, Y), unchecked(X, Y), rtol=0, atol=0)
    bad_images = X.clone()
    bad_images[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        cls(5, seed=3)(bad_images, Y)
    out, soft = cls(5, seed=3, check_values=False)(bad_images, Y)  # no error: unspecified values
    assert out.shape == X.shape and soft.shape == (6, 5)
    with pytest.raises(ValueError, match="targets must lie in"):
        cls(5, seed=3)(X, Y + 7)
    out, soft = cls(5, seed=3, check_values=False)(X, Y + 7)  # ids clamped before use: no index error
    assert soft.shape == (6, 5) and bool(torch.isfinite(soft).all())
    # types and shapes are still checked
    with pytest.raises(ValueError, match=r"targets must have shape \(6,\)"):
        cls(5, check_values=False)(X, Y[:3])
    with pytest.raises(TypeError, match="check_values must be True or False"):
        cls(5, check_values="no")


def test_check_values_round_trips_and_old_pickles_default_to_checking():
    mixer = RobustMix(5, seed=1, check_values=False)
    assert pickle.loads(pickle.dumps(mixer)).check_values is False
    assert "check_values=False" in repr(mixer) and "check_values" not in repr(RobustMix(5))
    assert build_mixer("mixup", 5, check_values=False).check_values is False
    state = RobustMix(5, seed=1).__getstate__()
    del state["check_values"]  # as pickled before the option existed
    old = RobustMix.__new__(RobustMix)
    old.__setstate__(state)
    assert old.check_values is True


@pytest.mark.parametrize("cls", [RobustMix, MixUp, CutMix])
def test_check_values_false_does_not_even_compute_the_checks(cls):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    seen = {}
    for check in (True, False):
        mixer = cls(5, seed=3, check_values=check)
        with Ops() as ops:
            mixer(X, Y)
        seen[check] = ops.names
    # the checks' own ops on the CPU: the class ids' aminmax and the finite sums' reads; the
    # mixer's own permutation (torch.randperm) is not checked either way
    assert "aminmax" in seen[True] and "aminmax" not in seen[False]
    assert "sort" not in seen[True] + seen[False]
    assert not {"ne", "le", "lt", "bitwise_and"} & set(seen[False])
    assert len(seen[False]) < len(seen[True])


def test_only_the_drawn_permutation_object_skips_the_index_check():
    from robustmix import functional as F

    drawn = torch.tensor([1, 0, 3, 2, 5, 4])
    with F._drawn_index(drawn):
        out, _ = F.mixup(X, Y, lam=0.3, index=drawn, num_classes=5)  # trusted: no sort
        with pytest.raises(ValueError, match="index must be a permutation"):
            F.mixup(X, Y, lam=0.3, index=torch.tensor([0, 0, 1, 2, 3, 4]), num_classes=5)  # any other tensor is checked
    torch.testing.assert_close(out, torch.lerp(X[drawn], X, 0.3))
    with pytest.raises(ValueError, match="index must be a permutation"):
        F.mixup(X, Y, lam=0.3, index=torch.tensor([0, 0, 1, 2, 3, 4]), num_classes=5)


def test_readme_integration_forms_give_the_soft_target_loss():
    # README: the mixer as timm's mixup_fn with timm's SoftTargetCrossEntropy, and in a
    # Lightning-style training_step with cross_entropy on probabilities; both are the loss
    # -sum(soft * log_softmax) of the README's plain loop.
    logits_net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 10, 5))
    images, soft = RobustMix(num_classes=5, label_smoothing=0.1, seed=0)(X, Y)
    logits = logits_net(images)
    plain = torch.sum(-soft * logits.log_softmax(-1), dim=-1).mean()
    torch.testing.assert_close(torch.nn.functional.cross_entropy(logits, soft), plain)
    timm_loss = pytest.importorskip("timm.loss", reason="timm not installed (optional)")
    torch.testing.assert_close(timm_loss.SoftTargetCrossEntropy()(logits, soft), plain)


@pytest.mark.parametrize(("low", "high"), [(0.0, 1.0), (0.3, 1.0), (0.123456789, 0.987654321)])
def test_scalar_uniform_draw_is_the_float64_tensor_formula(low, high):
    # The batch-wide cutoff is computed in Python floats (host time a call); it must be the value
    # the float64 tensor formula gives for the same draw, so seeded runs keep their cutoffs.
    g, twin = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    got = [P._sample_uniform(low, high, None, g) for _ in range(2000)]
    u = torch.rand(2000, generator=twin, dtype=torch.float64)  # one draw per call, in order
    want = (low + (high - low) * u).tolist()
    assert got == want
    assert P._sample_uniform(low, high, 3, g).dtype == torch.float64
