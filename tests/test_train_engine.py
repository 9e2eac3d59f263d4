"""Engine, losses and LR schedule: hand-checked values and one real step with each mixer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustmix.train.distributed import DistContext
from robustmix.train.engine import autocast_context, evaluate, train_one_epoch
from robustmix.train.losses import classification_loss, soft_target_cross_entropy

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _model(num_classes: int = 4, channels: int = 1) -> nn.Module:
    from robustmix.models import build_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_model("compact_cnn", num_classes=num_classes, in_channels=channels,
                           image_size=16, mean=(0.5,), std=(0.25,))


def _batches(n_batches: int = 2, batch: int = 8, num_classes: int = 4) -> list:
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(batch, 1, 16, 16, generator=g),
             torch.randint(0, num_classes, (batch,), generator=g)) for _ in range(n_batches)]


def test_soft_target_ce_matches_torch_probability_targets() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=g)
    targets = torch.softmax(torch.randn(5, 7, generator=g), dim=1)
    expected = F.cross_entropy(logits, targets)  # torch's own soft-label CE
    torch.testing.assert_close(soft_target_cross_entropy(logits, targets), expected)
    # Hand computation for one row: -sum t * log softmax(z).
    z, t = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.5, 0.5]])
    hand = -(0.5 * math.log(1 / 4) + 0.5 * math.log(3 / 4))
    assert soft_target_cross_entropy(z, t).item() == pytest.approx(hand, rel=1e-6)


def test_soft_ce_of_one_hot_equals_hard_ce_and_label_smoothing() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g)
    labels = torch.randint(0, 5, (6,), generator=g)
    one_hot = F.one_hot(labels, 5).float()
    torch.testing.assert_close(classification_loss(logits, one_hot), F.cross_entropy(logits, labels))
    eps = 0.1
    smoothed = one_hot * (1 - eps) + eps / 5
    torch.testing.assert_close(
        classification_loss(logits, labels, label_smoothing=eps), soft_target_cross_entropy(logits, smoothed)
    )


def test_loss_input_errors() -> None:
    with pytest.raises(ValueError, match=r"same shape, got \(2, 3\) and \(2, 4\)"):
        soft_target_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="targets must be int class ids"):
        classification_loss(torch.zeros(2, 3), torch.zeros(2))


def test_lr_factor_hand_values() -> None:
    from robustmix.train.run import lr_factor

    kw = {"total_steps": 10, "warmup_steps": 2, "schedule": "cosine"}
    assert [lr_factor(s, **kw) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, **kw) == 1.0  # decay starts at the peak
    assert lr_factor(6, **kw) == pytest.approx(0.5)  # halfway through the 8 decay steps
    assert lr_factor(10, **kw) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(7, total_steps=10, warmup_steps=0, schedule="constant") == 1.0
    with pytest.raises(ValueError, match="schedule must be 'cosine' or 'constant', got 'step'"):
        lr_factor(5, total_steps=10, warmup_steps=0, schedule="step")


def test_scheduler_follows_lr_factor() -> None:
    from robustmix.train.config import TrainConfig
    from robustmix.train.run import build_optimizer, build_scheduler

    cfg = TrainConfig(epochs=2, lr=0.4, warmup_epochs=0.5)
    param = nn.Parameter(torch.zeros(1))
    opt = build_optimizer([param], cfg)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"] is True
    sched = build_scheduler(opt, cfg, steps_per_epoch=4)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # warm-up 2 steps (0.2, 0.4), then cosine over the 6 remaining steps.
    expected = [0.2, 0.4] + [0.2 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert lrs == pytest.approx(expected)
    adamw = build_optimizer([param], cfg.replace(optimizer="adamw"))
    assert isinstance(adamw, torch.optim.AdamW)


def test_derive_seed_is_deterministic_and_separates_streams() -> None:
    from robustmix.train.run import derive_seed

    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    seeds = {derive_seed(s, k, e) for s in range(3) for k in range(3) for e in range(3)}
    assert len(seeds) == 27
    assert all(0 <= s < 2**63 for s in seeds)


@pytest.mark.parametrize("mixer_name", ["none", "mixup", "cutmix", "robustmix"])
def test_each_mixer_trains_a_step(mixer_name: str) -> None:
    from robustmix.transforms import build_mixer

    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mixer = build_mixer(mixer_name, 4, alpha=1.0, generator=torch.Generator().manual_seed(0)) \
        if mixer_name != "none" else None
    stats = train_one_epoch(model, _batches(), opt, mixer=mixer, ctx=CPU, label_smoothing=0.1)
    assert math.isfinite(stats["loss"]) and stats["loss"] > 0
    assert stats["n"] == 16 and 0.0 <= stats["acc"] <= 1.0
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "net.0.weight" in changed


def test_train_one_epoch_uses_the_given_net_on_normalised_images() -> None:
    model = _model()
    seen: list[torch.Tensor] = []

    class Spy(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.detach().clone())
            return self.net(x)

    batches = _batches(n_batches=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    train_one_epoch(model, batches, opt, net=Spy(model.net), ctx=CPU)
    torch.testing.assert_close(seen[0], (batches[0][0] - 0.5) / 0.25)


def test_evaluate_matches_hand_count() -> None:
    class Fixed(nn.Module):
        """Logits that put class ``round(mean pixel * 3)`` on top."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            m = x.mean(dim=(1, 2, 3))
            return torch.stack([-(m - k / 3).abs() * 10 for k in range(4)], dim=1)

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = Fixed()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    batches = _batches(n_batches=3, batch=5)
    stats = evaluate(Wrap(), batches, ctx=CPU)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    logits = Fixed()(x)
    assert stats["n"] == 15
    assert stats["error"] == pytest.approx((logits.argmax(1) != y).float().mean().item())
    assert stats["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


def test_bf16_autocast_on_cpu_trains_finite() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    stats = train_one_epoch(model, _batches(), opt, ctx=CPU, amp="bf16")
    assert math.isfinite(stats["loss"])


def test_autocast_errors() -> None:
    with pytest.raises(ValueError, match="amp='fp16' needs a CUDA device, got cpu"):
        autocast_context("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="amp must be 'none', 'bf16' or 'fp16', got 'int8'"):
        autocast_context("int8", torch.device("cpu"))


def test_diverged_loss_raises() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bad = [(torch.full((4, 1, 16, 16), float("nan")), torch.zeros(4, dtype=torch.int64))]
    with pytest.raises(FloatingPointError, match="the run diverged; lower lr"):
        train_one_epoch(model, bad, opt, ctx=CPU)


def test_progress_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    stats = train_one_epoch(model, _batches(), opt, ctx=CPU, progress=True, desc="bar-test")
    assert stats["n"] == 16
    assert "bar-test" in capsys.readouterr().err
