"""A default device set elsewhere (``torch.set_default_device``) changes nothing we compute.

Users who set it (e.g. to "cuda") still pass CPU batches, and our host-side tables, kernels,
draws and bases must not land on that device. ``"meta"`` stands in for it here: a factory call
that relied on the default would make a meta tensor, which fails as soon as data is read or
copied from it (on a GPU host the test also runs with "cuda").
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustmix import CutMix, MixUp, RobustMix, diagnostics
from robustmix.corruptions import ALL_CORRUPTIONS, corrupt, store
from robustmix.freq import lowpass

DEFAULTS = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])


def _everything() -> dict[str, object]:
    cpu = torch.device("cpu")  # the caller's tensors are on the CPU, whatever the default
    g = torch.Generator(device=cpu).manual_seed(0)
    x = torch.rand(4, 3, 40, 40, generator=g, device=cpu)
    big = torch.rand(64, 3, 64, 64, generator=g, device=cpu)  # the op's pooled scratch and chunks
    y = torch.arange(4, device=cpu)
    out: dict[str, object] = {}
    for name in ALL_CORRUPTIONS:
        out[name] = corrupt(x, name, 3, generator=torch.Generator(device=cpu).manual_seed(1))
    out["store"] = store(torch.rand(2, 3, 48, 48, generator=g, device=cpu))
    mixers = {
        "robustmix": RobustMix(num_classes=4, seed=2), "robustmix per-sample": RobustMix(num_classes=4, per_sample=True, seed=2),
        "mixup": MixUp(alpha=1.0, num_classes=4, seed=2), "cutmix": CutMix(alpha=1.0, num_classes=4, seed=2),
    }
    for name, mixer in mixers.items():
        out[name] = mixer(x, y)
    out["robustmix large"] = RobustMix(num_classes=4, seed=3)(big, torch.arange(64, device=cpu) % 4)
    out["lowpass"] = lowpass(x, 0.4)
    out["spectrum"] = diagnostics.energy_spectrum(x)
    out["basis"] = diagnostics.fourier_basis(8, 8, torch.tensor([[1, 2], [0, 3]], device=cpu))
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 40 * 40, 4, device=cpu))
    torch.nn.init.constant_(model[1].weight, 0.01)  # the same model in both calls
    out["cue"] = diagnostics.cue_conflict(model, x, torch.tensor([0, 1, 2, 3], device=cpu), cutoff=0.3, seed=4)
    return out


def _equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.device == b.device and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_equal(u, v) for u, v in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("default", DEFAULTS)
def test_a_default_device_set_elsewhere_changes_nothing(default):
    torch.manual_seed(0)
    want = _everything()
    torch.set_default_device(default)
    try:
        torch.manual_seed(0)
        got = _everything()
    finally:
        torch.set_default_device(None)
    assert [k for k in want if not _equal(got[k], want[k])] == []
