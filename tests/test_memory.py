"""Large CPU output buffers: pooled by size class, lent once at a time, advised huge pages; values never change."""

from __future__ import annotations

import itertools
import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

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
    monkeypatch.setattr(M, "POOL", M.BufferPool(64 * MIB))
    return seen


def test_new_large_cpu_buffer_is_advised_on_its_aligned_span(calls):
    out = M.empty_output((3, MIB), dtype=torch.float32, device=torch.device("cpu"))  # 12 MiB
    assert out.shape == (3, MIB) and out.dtype == torch.float32 and out.is_contiguous()
    assert out.data_ptr() % 64 == 0
    assert calls == [(*M.huge_page_range(out.data_ptr(), 12 * MIB), 14)]


def test_small_meta_or_disabled_buffers_are_not_advised(calls, monkeypatch):
    M.empty_output((M.MIN_BYTES // 4 - 1,), dtype=torch.float32, device=torch.device("cpu"))
    meta = M.empty_output((4, MIB), dtype=torch.float32, device=torch.device("meta"))
    assert meta.device.type == "meta" and meta.shape == (4, MIB)
    monkeypatch.setattr(M, "ENABLED", False)
    M.empty_output((4, MIB), dtype=torch.float32, device=torch.device("cpu"))
    assert calls == [] and M.POOL.owned_bytes == 16 * MIB  # pooled all the same


def test_real_advice_is_accepted_or_harmless():
    """With the real libc call (Linux) the buffer is an ordinary tensor afterwards."""
    out = M.empty_output((4, MIB), dtype=torch.float32, device=torch.device("cpu"))
    out.fill_(1.5)
    assert float(out.sum()) == 1.5 * 4 * MIB


def _cpu(shape, dtype=torch.float32):
    return M.empty_output(shape, dtype=dtype, device=torch.device("cpu"))


def test_a_buffer_is_lent_again_only_after_every_tensor_on_it_is_gone(calls):
    a = _cpu((4, MIB))
    ptr = a.data_ptr()
    view = a[1:3].view(-1)  # a view keeps the buffer lent
    del a
    b = _cpu((4, MIB))
    assert b.data_ptr() != ptr
    b.fill_(2.0)
    del view
    c = _cpu((4, MIB))
    assert c.data_ptr() == ptr  # given back and lent again
    assert float(b.sum()) == 2.0 * 4 * MIB  # the other loan untouched
    assert M.POOL.owned_bytes == 32 * MIB and len(calls) == 2  # two buffers made, each advised once


def test_autograd_keeps_a_saved_buffer_lent(monkeypatch):
    monkeypatch.setattr(M, "POOL", M.BufferPool(64 * MIB))
    x = _cpu((MIB, 4)).fill_(1.0).requires_grad_()
    ptr = x.data_ptr()
    w = torch.ones(4, 1, requires_grad=True)
    loss = (x @ w).sum()  # here x is saved to compute w's gradient
    del x
    assert _cpu((MIB, 4)).data_ptr() != ptr
    loss.backward()
    assert torch.equal(w.grad, torch.full((4, 1), float(MIB)))
    del loss
    assert _cpu((MIB, 4)).data_ptr() == ptr


def test_pool_cap_falls_back_to_plain_tensors_and_drops_idle_sizes(monkeypatch):
    monkeypatch.setattr(M, "POOL", M.BufferPool(20 * MIB))
    a = _cpu((3, MIB))  # 12 MiB pooled
    b = _cpu((3, MIB))  # would make 24 MiB: a plain tensor
    assert M.POOL.owned_bytes == 12 * MIB
    b.fill_(1.0)
    assert float(b.sum()) == 3 * MIB
    del a
    c = _cpu((4, MIB))  # 16 MiB: the idle 12 MiB buffer is dropped to make room
    assert M.POOL.owned_bytes == 16 * MIB and c.shape == (4, MIB)
    M.POOL.clear()
    assert M.POOL.owned_bytes == 16 * MIB  # c is still lent
    del c
    M.POOL.clear()
    assert M.POOL.owned_bytes == 0


def test_pool_off_and_bfloat16(monkeypatch):
    monkeypatch.setattr(M, "POOL", M.BufferPool(0))
    a = _cpu((4, MIB), torch.bfloat16)
    assert a.dtype == torch.bfloat16 and a.shape == (4, MIB) and M.POOL.owned_bytes == 0
    monkeypatch.setattr(M, "POOL", M.BufferPool(64 * MIB))
    b = _cpu((4, MIB), torch.bfloat16).fill_(0.5)
    assert b.dtype == torch.bfloat16 and float(b.float().sum()) == 0.5 * 4 * MIB


def test_forked_child_starts_with_an_empty_pool(monkeypatch):
    pool = M.BufferPool(64 * MIB)
    monkeypatch.setattr(M, "POOL", pool)
    keep = _cpu((4, MIB))
    idle = _cpu((2, MIB))
    del idle
    M.give_back_scratch(M.lend_scratch(MIB, torch.float32))  # the forking thread's kept scratch
    M._reset_pool_in_child()
    assert M._THREAD.scratch is None
    assert M.POOL is not pool and M.POOL.owned_bytes == 0 and M.POOL.max_bytes == 64 * MIB
    assert pool._free == {}  # the parent's idle buffers are let go
    del keep  # a loan made before the fork comes back to the retired pool, which drops it
    assert pool._free == {} and M.POOL._free == {}


def _with_bf16_products(dtypes):
    """``(dtype, native_bf16)`` cases: bfloat16 twice, with the fp32 products of AVX2 CPUs and with
    the bf16 products of CPUs that have native bf16 GEMMs, whichever this host has."""
    cases = [pytest.param(d, None, id=str(d).removeprefix("torch.")) for d in dtypes if d != torch.bfloat16]
    if torch.bfloat16 in dtypes:
        cases += [pytest.param(torch.bfloat16, False, id="bfloat16-fp32-products"),
                  pytest.param(torch.bfloat16, True, id="bfloat16-bf16-products")]
    return cases


def _set_native_bf16(monkeypatch, native_bf16):
    if native_bf16 is not None:
        import robustmix.freq as freq

        monkeypatch.setattr(freq, "_cpu_has_native_bf16", lambda: native_bf16)


@pytest.mark.parametrize(("dtype", "native_bf16"), _with_bf16_products([torch.float32, torch.bfloat16]))
@pytest.mark.parametrize(("cutoff", "energy"), [(0.4, "batch"), ("per-sample", "batch"), (0.4, "sample")])
def test_robustmix_values_do_not_depend_on_the_pool_or_the_advice(monkeypatch, dtype, native_bf16, cutoff, energy):
    _set_native_bf16(monkeypatch, native_bf16)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3, 224, 224, generator=g).to(dtype)  # output >= 12 MB in either dtype: pooled
    y = torch.arange(40) % 7
    if cutoff == "per-sample":
        cutoff = torch.rand(40, generator=g)
    kw = {"lam_low": 0.7, "lam_high": 0.2, "cutoff": cutoff, "num_classes": 7, "energy": energy,
          "index": torch.randperm(40, generator=g)}
    monkeypatch.setattr(M, "ENABLED", False)
    monkeypatch.setattr(M, "POOL", M.BufferPool(0))
    plain = robustmix(x, y, **kw)
    monkeypatch.setattr(M, "ENABLED", True)
    monkeypatch.setattr(M, "POOL", M.BufferPool(1 << 30))
    first = robustmix(x, y, **kw)
    del first
    owned = M.POOL.owned_bytes
    assert owned >= 12 * MIB
    for bufs in M.POOL._free.values():  # poison every idle buffer: all-ones bytes are NaN in both dtypes
        for buf in bufs:
            buf[:] = 0xFF
    again = robustmix(x, y, **kw)  # runs on the poisoned buffers
    assert M.POOL.owned_bytes == owned  # no new buffer: every large one was a reused, poisoned one
    assert torch.equal(again[0], plain[0]) and torch.equal(again[1], plain[1])


def test_size_class_hand_values():
    assert M.size_class(8 * MIB) == 8 * MIB
    assert M.size_class(8 * MIB + 1) == 10 * MIB
    assert M.size_class(128 * 3 * 224 * 224 * 4) == 80 * MIB  # 77,070,336 bytes: 64 MiB + 1 quarter step
    assert M.size_class(15 * MIB) == 16 * MIB


@given(st.integers(min_value=5, max_value=1 << 40))
def test_size_class_covers_wastes_under_a_quarter_and_is_monotone(nbytes):
    cls = M.size_class(nbytes)
    assert nbytes <= cls < 1.25 * nbytes + 1
    assert M.size_class(cls) == cls
    assert M.size_class(nbytes + 1) >= cls


def test_sizes_in_one_class_share_buffers_and_idle_buffers_are_bounded(monkeypatch):
    monkeypatch.setattr(M, "POOL", M.BufferPool(256 * MIB))
    a = _cpu((9 * MIB // 4,))  # 9 MiB -> class 10 MiB
    ptr = a.data_ptr()
    del a
    b = _cpu((10 * MIB // 4 - 8,))  # another size of the same class: the same buffer
    assert b.data_ptr() == ptr and b.numel() == 10 * MIB // 4 - 8
    del b
    held = [_cpu((10 * MIB // 4,)) for _ in range(M.MAX_IDLE_PER_CLASS + 2)]
    assert M.POOL.owned_bytes == (M.MAX_IDLE_PER_CLASS + 2) * 10 * MIB
    del held  # all given back, but only MAX_IDLE_PER_CLASS of them kept
    assert M.POOL.owned_bytes == M.MAX_IDLE_PER_CLASS * 10 * MIB


def test_traced_calls_get_plain_tensors(monkeypatch):
    pool = M.BufferPool(64 * MIB)
    monkeypatch.setattr(M, "POOL", pool)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    out = _cpu((4, MIB))
    assert out.shape == (4, MIB) and pool.owned_bytes == 0


class _Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(i)
        return torch.rand(3, 224, 224, generator=g), i % 5


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forked DataLoader workers need os.fork (POSIX)")
def test_pooled_batches_cross_dataloader_worker_processes(monkeypatch):
    """Mixed in a forked worker from the child's own pool (16 x 3 x 224^2 float32 = 9.6 MB), sent to
    the parent through shared memory: the same batches as with the pool off."""
    from robustmix.transforms import MixCollate, RobustMix

    def loader() -> list[tuple[torch.Tensor, torch.Tensor]]:
        dl = torch.utils.data.DataLoader(_Images(), batch_size=16, num_workers=1,
                                         collate_fn=MixCollate(RobustMix(5, seed=0)),
                                         generator=torch.Generator().manual_seed(0),
                                         multiprocessing_context="fork")
        return list(dl)

    monkeypatch.setattr(M, "POOL", M.BufferPool(64 * MIB))
    pooled = loader()
    monkeypatch.setattr(M, "POOL", M.BufferPool(0))  # the worker's pool inherits the size: off
    plain = loader()
    assert len(pooled) == len(plain) == 4
    for (images, soft), (want_images, want_soft) in zip(pooled, plain):
        assert images.shape == (16, 3, 224, 224)
        assert torch.equal(images, want_images) and torch.equal(soft, want_soft)


@pytest.mark.parametrize("name", ["contrast", "gaussian_noise", "pixelate"])
def test_corrupt_values_do_not_depend_on_the_pool(monkeypatch, name):
    from robustmix.corruptions.registry import corrupt

    x = torch.rand(16, 3, 224, 224, generator=torch.Generator().manual_seed(1))  # 9.6 MB: chunked, pooled
    monkeypatch.setattr(M, "POOL", M.BufferPool(0))
    plain = corrupt(x, name, 3, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(M, "POOL", M.BufferPool(64 * MIB))
    del_me = corrupt(x, name, 3, generator=torch.Generator().manual_seed(2))
    del del_me
    owned = M.POOL.owned_bytes
    assert owned >= 10 * MIB  # the output at least (Gaussian noise also draws into a pooled buffer)
    for bufs in M.POOL._free.values():  # poison the idle buffers
        for buf in bufs:
            buf[:] = 0xFF
    got = corrupt(x, name, 3, generator=torch.Generator().manual_seed(2))
    assert M.POOL.owned_bytes == owned and torch.equal(got, plain)  # ran on the poisoned ones


def test_pooled_tensors_save_pickle_and_copy_like_any_tensor(monkeypatch, tmp_path):
    import copy
    import pickle

    monkeypatch.setattr(M, "POOL", M.BufferPool(64 * MIB))
    t = _cpu((4, MIB)).fill_(2.5)
    assert M.POOL.owned_bytes == 16 * MIB
    torch.save(t, tmp_path / "t.pt")
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True), t)
    assert torch.equal(pickle.loads(pickle.dumps(t)), t) and torch.equal(copy.deepcopy(t), t)
    assert not t.untyped_storage().resizable()


def test_pool_size_from_the_environment():
    assert M.pool_bytes_from_env(None) == 256 * MIB
    assert M.pool_bytes_from_env("0") == 0 and M.pool_bytes_from_env("64") == 64 * MIB
    for bad in ("abc", "-1", "1.5", ""):
        with pytest.raises(ValueError, match="ROBUSTMIX_BUFFER_POOL_MB must be a non-negative whole number"):
            M.pool_bytes_from_env(bad)


def _storage_start(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_scratch_views_are_aligned_disjoint_and_reused_after_reset(dtype):
    scratch = M.Scratch(1000, dtype)
    kept = scratch.keep((3, 5))
    a = scratch.take((7, 3))
    b = scratch.take((11,), from_end=True)
    c = scratch.take((2, 2))
    views = [kept, a, b, c]
    assert all(v.data_ptr() % 64 == 0 and v.is_contiguous() for v in views)
    assert len({_storage_start(v) for v in views}) == 1  # one buffer
    spans = sorted((v.data_ptr(), v.data_ptr() + v.numel() * v.element_size()) for v in views)
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))  # no overlaps
    scratch.reset()
    assert scratch.take((7, 3)).data_ptr() == a.data_ptr()  # the kept view stays, the rest is free again
    assert scratch.take((11,), from_end=True).data_ptr() == b.data_ptr()
    too_big = scratch.take((scratch._flat.numel() + 1,))
    other_dtype = scratch.take((4,), torch.int64)
    assert _storage_start(too_big) != _storage_start(kept) and too_big.dtype == dtype
    assert _storage_start(other_dtype) != _storage_start(kept) and other_dtype.dtype == torch.int64


def test_a_scratch_is_lent_again_only_after_it_was_given_back(monkeypatch):
    import threading

    monkeypatch.setattr(M, "_THREAD", threading.local())
    first = M.lend_scratch(100, torch.float32)
    nested = M.lend_scratch(100, torch.float32)  # lent while the first is out: its own
    assert nested is not first
    M.give_back_scratch(first)
    assert M.lend_scratch(50, torch.float32) is first  # fits: reused, emptied
    M.give_back_scratch(first)
    assert M.lend_scratch(100, torch.float64) is not first  # another dtype
    M.give_back_scratch(first)
    assert M.lend_scratch(first._flat.numel() + 1, torch.float32) is not first  # too small
    M.give_back_scratch(first)
    seen = []
    worker = threading.Thread(target=lambda: seen.append(M.lend_scratch(10, torch.float32)))
    worker.start()
    worker.join()
    assert seen[0] is not first  # another thread has its own
    monkeypatch.setattr(M, "POOL", M.BufferPool(0))
    M.give_back_scratch(M.lend_scratch(10, torch.float32))
    assert M._THREAD.scratch is None  # the pool off: nothing kept between calls
    M._THREAD.scratch = first  # kept before the pool was turned off: not lent again
    assert M.lend_scratch(10, torch.float32) is not first


def test_a_scratch_kept_from_inference_mode_is_not_reused_outside_it():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(600, 3, 32, 32, generator=g)  # chunked: the op takes a scratch
    y = torch.arange(600) % 10
    kw = {"lam_low": 0.7, "lam_high": 0.2, "cutoff": 0.4, "index": torch.randperm(600, generator=g), "num_classes": 10}
    want = robustmix(x, y, **kw)
    M._THREAD.scratch = None  # so that the next one is made under inference mode
    with torch.inference_mode():
        inside = robustmix(x, y, **kw)
    assert M._THREAD.scratch._flat.is_inference()
    after = robustmix(x, y, **kw)  # an inference tensor cannot be written out here
    assert not M._THREAD.scratch._flat.is_inference()
    kept = M._THREAD.scratch
    with torch.inference_mode():
        again = robustmix(x, y, **kw)  # a normal one serves inside too
    assert M._THREAD.scratch is kept
    for got in (inside, after, again):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_clearing_the_pool_drops_this_threads_kept_scratch_too(monkeypatch):
    import threading

    monkeypatch.setattr(M, "_THREAD", threading.local())
    monkeypatch.setattr(M, "POOL", M.BufferPool(64 * MIB))
    M.give_back_scratch(M.lend_scratch(MIB, torch.float32))  # 4 MiB, kept between calls
    assert M.POOL.owned_bytes >= 4 * MIB and M._THREAD.scratch is not None
    M.POOL.clear()
    assert M.POOL.owned_bytes == 0 and M._THREAD.scratch is None


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize(("dtype", "native_bf16"), _with_bf16_products([torch.float32, torch.float64, torch.bfloat16]))
@pytest.mark.parametrize("shape", [(300, 3, 32, 32), (7, 3, 224, 224), (600, 3, 32, 32)])
def test_robustmix_values_do_not_depend_on_its_scratch(monkeypatch, dtype, native_bf16, shape, per_sample):
    # one chunk with its products in a scratch, and chunked calls (whose coefficient rows are
    # unaligned in float64 at 224 px: a float64 product into them would round otherwise); bf16
    # inverse products (native bf16 CPUs) take their memory apart from the fp32 scratch
    import robustmix.functional as F

    _set_native_bf16(monkeypatch, native_bf16)

    g = torch.Generator().manual_seed(1)
    n = shape[0]
    x = torch.randn(shape, generator=g).to(dtype)
    kw = {"lam_low": 0.7, "lam_high": 0.2, "cutoff": 0.45, "num_classes": 5, "index": torch.randperm(n, generator=g)}
    if per_sample:  # with several chunks, the per-sample pass's gathers are in the scratch too
        kw["cutoff"] = torch.rand(n, generator=g)
    y = torch.arange(n) % 5
    first = robustmix(x, y, **kw)
    held = M._THREAD.scratch
    assert held is not None  # given back after the call
    held._flat.fill_(float("nan"))  # poisoned: the next call must overwrite all it reads
    again = robustmix(x, y, **kw)
    assert M._THREAD.scratch is held
    assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
    if len(F._batch_chunks(x if dtype != torch.bfloat16 else x.float())) == 1:
        monkeypatch.setattr(F, "_SCRATCH_MIN_BYTES", 1 << 40)  # no scratch at all
        plain = robustmix(x, y, **kw)
        assert torch.equal(plain[0], first[0]) and torch.equal(plain[1], first[1])
