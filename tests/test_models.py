"""robustmix.models: shapes, normalisation math, registry behaviour."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

import robustmix.models as rmodels
from robustmix.models import (
    ImageClassifier,
    Normalize,
    available_models,
    build_model,
    compact_cnn,
    resnet18_cifar,
)

HAVE_TIMM = importlib.util.find_spec("timm") is not None
SMALL = ("compact_cnn", "resnet18_cifar")


@pytest.fixture(autouse=True)
def _one_thread():
    # These nets are tiny; on a shared 2-core machine OpenMP's spinning threads make 2 threads
    # ~10x slower than 1. Restored afterwards so other test files are unaffected.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_public_names() -> None:
    expected = {
        "ImageClassifier", "Normalize", "available_models", "build_model", "compact_cnn",
        "resnet18_cifar",
    }  # fmt: skip
    assert set(rmodels.__all__) == expected
    assert all(hasattr(rmodels, n) for n in expected)


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("channels", [1, 3])
def test_small_models_output_shape(name: str, channels: int) -> None:
    model = build_model(name, num_classes=7, in_channels=channels, image_size=32)
    assert isinstance(model, ImageClassifier)
    for size in (28, 32):
        x = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))
        out = model(x)
        assert out.shape == (2, 7) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", SMALL)
def test_channels_last_matches_contiguous(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=3, image_size=32).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_resnet18_cifar_is_the_standard_cifar_variant() -> None:
    net = resnet18_cifar(num_classes=10, in_channels=3)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)
    # The widely reported size of the CIFAR ResNet-18 (e.g. kuangliu/pytorch-cifar): 11,173,962.
    assert _n_params(net) == 11_173_962
    # 32 px keeps a 4x4 map before global pooling (stride 1 stem, 3 stride-2 stages).
    shapes: list[torch.Size] = []
    net.layer4.register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    net.eval()(torch.zeros(1, 3, 32, 32))
    assert shapes == [(1, 512, 4, 4)]


def test_compact_cnn_is_small() -> None:
    net = compact_cnn(num_classes=10, in_channels=1)
    # conv 1->32, 32->64, 64->128 (3x3, no bias) + 3 BatchNorms + linear 128->10.
    expected = 9 * (1 * 32 + 32 * 64 + 64 * 128) + 2 * (32 + 64 + 128) + 128 * 10 + 10
    assert _n_params(net) == expected < 500_000


def test_compact_cnn_fits_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = build_model("compact_cnn", num_classes=4, in_channels=1, image_size=12)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 12, 12, generator=gen)
    y = torch.arange(8) % 4
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(12):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_normalize_matches_hand_computation() -> None:
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.25, 0.5)
    norm = Normalize(mean, std, channels=3)
    x = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    expected = torch.empty_like(x)
    for c in range(3):
        expected[:, c] = (x[:, c] - mean[c]) / std[c]
    torch.testing.assert_close(norm(x), expected)
    # A single value broadcasts to every channel.
    torch.testing.assert_close(Normalize(0.5, 0.25, channels=3)(x), (x - 0.5) / 0.25)
    assert list(norm.parameters()) == [] and norm.state_dict() == {}


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_normalize_keeps_dtype(dtype: torch.dtype) -> None:
    norm = Normalize((0.2860,), (0.3530,), channels=1)
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64).to(dtype)
    out = norm(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), (x.double() - 0.2860) / 0.3530, rtol=2e-2, atol=2e-2)


def test_classifier_forward_is_net_of_normalized_input() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 4))
    model = ImageClassifier(net, mean=(0.3, 0.6), std=(0.1, 0.2), in_channels=2)
    x = torch.rand(5, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    manual = torch.stack([(x[:, 0] - 0.3) / 0.1, (x[:, 1] - 0.6) / 0.2], dim=1)
    torch.testing.assert_close(model(x), net(manual))
    assert set(dict(model.named_children())) == {"normalize", "net"}


def test_state_dict_is_clean_and_rebuild_restores_everything() -> None:
    kwargs = dict(num_classes=10, in_channels=1, image_size=28, mean=(0.2860,), std=(0.3530,))
    torch.manual_seed(0)
    model = build_model("compact_cnn", **kwargs).eval()
    state = model.state_dict()
    assert state and all(k.startswith("net.") for k in state)
    torch.manual_seed(1)
    rebuilt = build_model("compact_cnn", **kwargs).eval()
    rebuilt.load_state_dict(state)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(rebuilt(x), model(x))
    torch.testing.assert_close(rebuilt.normalize.mean.flatten(), torch.tensor([0.2860]))
    torch.testing.assert_close(rebuilt.normalize.std.flatten(), torch.tensor([0.3530]))


def test_normalize_errors() -> None:
    with pytest.raises(ValueError, match=r"mean must have 1 or 3 \(in_channels\) values, got 2"):
        Normalize((0.1, 0.2), (0.3,), channels=3)
    with pytest.raises(ValueError, match=r"std must be positive, got \(0\.2, 0\.0, 0\.2\)"):
        Normalize(0.5, (0.2, 0.0, 0.2), channels=3)
    with pytest.raises(
        ValueError, match=r"expected input of shape \(N, 3, H, W\), got \(2, 1, 4, 4\)"
    ):
        Normalize(0.5, 0.2, channels=3)(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"mean must have 1 or 1 \(in_channels\) values, got 3"):
        build_model("compact_cnn", num_classes=10, in_channels=1, mean=(0.1, 0.2, 0.3), std=0.2)


def test_registry_lists_and_rejects() -> None:
    names = available_models()
    for name in ("compact_cnn", "resnet18_cifar", "resnet18", "resnet50", "efficientnet_b0"):
        assert name in names
    with pytest.raises(
        ValueError,
        match=r"unknown model 'resnet19'; available: compact_cnn, resnet18_cifar, .*resnet18",
    ):
        build_model("resnet19", num_classes=10)
    with pytest.raises(TypeError, match=r"model name must be a str, got NoneType"):
        build_model(None, num_classes=10)  # type: ignore[arg-type]
    for kwargs, arg in (
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 10, "in_channels": 0}, "in_channels"),
        ({"num_classes": 10, "image_size": 2.5}, "image_size"),
        ({"num_classes": True}, "num_classes"),
    ):
        with pytest.raises(ValueError, match=rf"{arg} must be a positive int, got"):
            build_model("compact_cnn", **kwargs)


def test_timm_missing_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulate an environment without timm (it is optional), whether or not it is installed.
    from robustmix.models import registry

    monkeypatch.setattr(registry, "_timm_available", lambda: False)
    with pytest.raises(ValueError, match=r"'timm:resnet18' needs timm, which is not installed"):
        build_model("timm:resnet18", num_classes=10)
    assert not any(n.startswith("timm:") for n in available_models())


@pytest.mark.skipif(not HAVE_TIMM, reason="timm not installed (optional)")
def test_timm_model_builds() -> None:
    model = build_model("timm:resnet18", num_classes=5, in_channels=1, image_size=32)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 5)
    assert "timm:<name>" in available_models()
    with pytest.raises(ValueError, match=r"timm has no model 'no_such_net'"):
        build_model("timm:no_such_net", num_classes=5)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])
def test_torchvision_model_with_one_channel(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1, image_size=32, mean=0.5, std=0.25)
    first = next(m for m in model.net.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_torchvision_rgb_keeps_stock_first_conv() -> None:
    model = build_model("resnet18", num_classes=3, in_channels=3, image_size=64)
    assert model.net.conv1.in_channels == 3 and model.net.conv1.kernel_size == (7, 7)
    assert model.net.fc.out_features == 3
