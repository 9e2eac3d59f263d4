"""Large CPU output buffers: huge-page advice on the aligned span only, never a change of values."""

from __future__ import annotations

import pytest
import torch

import robustmix._memory as M
from robustmix.functional import robustmix

MIB = 1 << 20


@pytest.mark.parametrize(
    ("start", "nbytes", "want"),
    [
        (0, 4 * MIB, (0, 4 * MIB)),  # aligned both ends
        (64, 4 * MIB, (2 * MIB, 2 * MIB)),  # starts just past a boundary: first whole page at 2 MiB
        (2 * MIB - 16, 2 * MIB + 32, (2 * MIB, 2 * MIB)),
        (64, 2 * MIB, None),  # no whole aligned page inside
        (3 * MIB, MIB, None),
    ],
)
def test_huge_page_range_stays_inside_the_buffer(start, nbytes, want):
    assert M.huge_page_range(start, nbytes) == want
    if want is not None:
        first, length = want
        assert start <= first and first + length <= start + nbytes
        assert first % (2 * MIB) == 0 and length % (2 * MIB) == 0


@pytest.fixture
def calls(monkeypatch):
    seen: list[tuple[int, int, int]] = []
    monkeypatch.setattr(M, "_madvise", lambda: lambda a, n, advice: seen.append((a, n, advice)) or 0)
    monkeypatch.setattr(M, "ENABLED", True)
    return seen


def test_large_cpu_buffer_is_advised_on_its_aligned_span(calls):
    out = M.empty_output((3, MIB), dtype=torch.float32, device=torch.device("cpu"))  # 12 MiB
    assert out.shape == (3, MIB) and out.dtype == torch.float32 and out.is_contiguous()
    start, nbytes = out.data_ptr(), out.numel() * 4
    assert calls == [(*M.huge_page_range(start, nbytes), 14)]


def test_small_meta_or_disabled_buffers_are_not_advised(calls, monkeypatch):
    M.empty_output((M.MIN_BYTES // 4 - 1,), dtype=torch.float32, device=torch.device("cpu"))
    meta = M.empty_output((4, MIB), dtype=torch.float32, device=torch.device("meta"))
    assert meta.device.type == "meta" and meta.shape == (4, MIB)
    monkeypatch.setattr(M, "ENABLED", False)
    M.empty_output((4, MIB), dtype=torch.float32, device=torch.device("cpu"))
    assert calls == []


def test_real_advice_is_accepted_or_harmless():
    """With the real libc call (Linux) the buffer is an ordinary tensor afterwards."""
    out = M.empty_output((4, MIB), dtype=torch.float32, device=torch.device("cpu"))
    out.fill_(1.5)
    assert float(out.sum()) == 1.5 * 4 * MIB


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_robustmix_values_do_not_depend_on_the_advice(monkeypatch, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 3, 224, 224, generator=g).to(dtype)  # 12 MB in float32: advised
    y = torch.arange(20) % 7
    kw = {"lam_low": 0.7, "lam_high": 0.2, "cutoff": 0.4, "num_classes": 7, "index": torch.randperm(20, generator=g)}
    monkeypatch.setattr(M, "ENABLED", True)
    with_advice = robustmix(x, y, **kw)
    monkeypatch.setattr(M, "ENABLED", False)
    without = robustmix(x, y, **kw)
    assert torch.equal(with_advice[0], without[0]) and torch.equal(with_advice[1], without[1])
