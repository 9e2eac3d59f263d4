"""CUDA graphs for the Robustmix op: one graph launch instead of ~40 kernel launches.

On a GPU the op's arithmetic is small (0.73 ms of kernels at B128x3x224^2 bfloat16 on an H200,
``benchmarks/cuda_overhead.py`` at dd5ac1b; 0.87 ms at 5baa57a) and eagerly its cost was the host's:
~40 kernel launches at tens of microseconds each (that script prints syncs, kernel time and graph
memory). Replaying a captured graph costs one launch. The core of the op is captured on static
buffers per batch shape; a call copies its batch, targets, partner permutation, mixing weights and
band sizes into them, replays, and clones the outputs (a replay overwrites the last one's). The
value checks (permutation, target ranges, finite images) and the one-hot rows run inside the graph;
their flags come back as one vector, answered with the call's single host sync.

Weights and band sizes are device values in the graph, so one graph serves every draw. Only
the matrix shapes are fixed at capture: the kept block is rounded up to a multiple of
:data:`BAND_STEP` rows and the basis rows beyond the drawn band are zeroed, so a 224-px batch
needs at most 7 graphs for all cutoffs (one below 33 px), at the cost of at most 31 extra rows
per product. Zeroed rows add exact zeros, so values equal the eager path's up to the summation
order cuBLAS picks for the other shape (float rounding; tested on CUDA).

Graphs of one batch shape share their static inputs and one memory pool (replays never overlap:
a lock serialises them). ``ROBUSTMIX_CUDA_GRAPHS=0`` turns graphs off; a shape whose capture
fails runs eagerly from then on.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from robustmix import freq

__all__ = ["BAND_STEP", "ENABLED", "MAX_SHAPES", "bucket", "clear", "graph_core", "matmul_settings", "replay"]

ENABLED = os.environ.get("ROBUSTMIX_CUDA_GRAPHS", "1") != "0"
BAND_STEP = 32
MAX_SHAPES = 2
"""Batch shapes kept (least recently used dropped; a training loop has one, plus its last
batch): each holds its static buffers and one memory pool for its graphs, ~2.9x the batch in
bytes (106 MiB at B128x3x224^2 bfloat16 on an H200, ``benchmarks/cuda_overhead.py`` at 5baa57a, a53b29f and dd5ac1b)."""


def bucket(k: int, n: int) -> int:
    """Rows a graph multiplies for a band of ``k`` of ``n``: ``k`` rounded up to ``BAND_STEP``."""
    return min(n, BAND_STEP * max(1, math.ceil(k / BAND_STEP)))


def matmul_settings() -> tuple[Any, ...]:
    """The cuBLAS settings a captured graph bakes in (TF32 for fp32 products, reduced-precision
    half reductions). Part of a graph's key: after e.g. ``torch.set_float32_matmul_precision("high")``
    a call captures a new graph instead of replaying kernels chosen under the old setting."""
    m = torch.backends.cuda.matmul
    # fp32_precision (torch >= 2.9) reads in every state; allow_tf32 raises once the new API is used.
    tf32 = m.fp32_precision if hasattr(m, "fp32_precision") else m.allow_tf32
    return tf32, m.allow_bf16_reduced_precision_reduction, m.allow_fp16_reduced_precision_reduction


def graph_core(
    x1: Tensor,
    targets: Tensor,
    index: Tensor,
    params: Tensor,
    *,
    block: tuple[int, ...],
    dims: tuple[int, ...],
    energy: str | float,
    out_dtype: torch.dtype,
    soft_dtype: torch.dtype,
    num_classes: int | None,
    share_of: Callable[..., Any],
    mix_targets: Callable[[Tensor, Tensor, Any], Tensor],
    sq_norms_of: Callable[[Tensor, torch.dtype], Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """``(mixed, soft targets, checks)`` for a batch-wide band, with no host sync.

    ``targets``: int64 class ids ``(N,)`` (one-hot rows of ``num_classes`` in ``soft_dtype`` are
    built here) or soft targets ``(N, K)``; ``index`` the partner permutation, checked
    and clamped here. ``checks`` is a bool vector: index a permutation, the targets' value checks
    (ids in range; or soft finite, soft in [0, 1]), every image finite: the eager op's order.

    ``x1``: the batch, contiguous in the op's build dtype (``freq.matmul_dtype``); ``params``:
    float64 ``(lam_low, lam_high, k_1, ..., k_D)``, the weights and the kept rows per dim of
    ``dims`` (at most ``block``); ``out_dtype``: the images' dtype. The same operations and roundings as :func:`robustmix.functional.robustmix`:
    a half batch's lerp runs in fp32 and rounds once, as torch's half lerp with a Python weight.
    """
    compute = freq._compute_dtype(x1.dtype)
    sizes = {d: x1.shape[d] for d in dims}
    n = x1.shape[0]
    lam_low, lam_high, ks = params[0], params[1], params[2:]
    checks = [(torch.sort(index).values == torch.arange(n, device=index.device)).all()]
    index = index.clamp(0, n - 1)
    if targets.is_floating_point():
        y1 = targets
        checks += [torch.isfinite(y1).all(), ((y1 >= 0) & (y1 <= 1)).all()]
    else:
        checks.append(((targets >= 0) & (targets < num_classes)).all())
        y1 = torch.zeros(n, num_classes, dtype=soft_dtype, device=targets.device)
        y1.scatter_(1, targets.clamp(0, num_classes - 1).unsqueeze(1), 1.0)
    x_c = x1 if x1.dtype == compute else x1.to(compute)
    # The basis rows beyond the drawn band zeroed: no pass over the coefficients to mask them.
    coef = freq.block_coefficients(x_c, dims, block, kept=ks)
    sq_norms = torch.linalg.vector_norm(x_c.flatten(1), dim=1).square()
    low_sq = sq_norms_of(coef, compute)
    checks.append(torch.isfinite(sq_norms).all())
    # Products cast on their way out (out= in the build dtype): the same roundings as a cast
    # after, without a pass over a full-size fp32 temporary.
    delta_coef = torch.empty(coef.shape, dtype=x1.dtype, device=coef.device)
    torch.mul(coef - coef.index_select(0, index), (lam_low - lam_high).to(compute), out=delta_coef)
    out = torch.empty(x1.shape, dtype=x1.dtype, device=x1.device)
    if x1.dtype in (torch.float16, torch.bfloat16):
        # x_c is x1 in fp32 already (compute): its rows are x1[index].float() and x1.float()
        # exactly, without two more conversions and a half gather of the batch.
        torch.lerp(x_c.index_select(0, index), x_c, lam_high.float(), out=out)
    else:
        torch.lerp(x1.index_select(0, index), x1, lam_high.to(x1.dtype), out=out)
    freq.coefficients_to_signal(delta_coef, sizes, add_to=out)
    out = out.to(out_dtype)  # the images' dtype, as the eager op measures "sample" energies on it
    if energy == "uniform":
        lam_c = ks[0] / sizes[dims[0]]  # prod(k_d / n_d) in the eager op's order; no tensor from
        for i, d in enumerate(dims[1:], start=1):  # host data inside a capture
            lam_c = lam_c * (ks[i] / sizes[d])
    else:
        lam_c = share_of(energy, coef, None, sq_norms, low_sq, None, index, lam_low, out, dims)
    lam = lam_c * lam_low + (1 - lam_c) * lam_high
    return out, mix_targets(y1, index, lam), torch.stack(checks)


@dataclass
class _Statics:
    """One batch shape's static inputs, memory pool and graphs (by block and energy)."""

    x: Tensor
    y: Tensor
    index: Tensor
    params: Tensor
    pool: Any
    stream: torch.cuda.Stream  # capture stream on this batch's GPU (the default one is per process)
    done: torch.cuda.Event  # recorded after each call's clones: the next call's copies wait on it
    bases: list[Tensor] = field(default_factory=list)  # the cached DCT bases the graphs read
    graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, tuple[Tensor, Tensor, Tensor]] | None] = field(
        default_factory=dict
    )


_SHAPES: OrderedDict[tuple, _Statics] = OrderedDict()
_LOCK = threading.Lock()


def replay(
    images: Tensor,
    targets: Tensor,
    index: Tensor,
    lams: tuple[float, float],
    ks: tuple[int, ...],
    *,
    x_dtype: torch.dtype,
    graph_key: tuple,
    core: Callable[..., tuple[Tensor, Tensor, Tensor]],
) -> tuple[Tensor, Tensor, Tensor] | None:
    """Fresh ``(out, soft, checks)`` from the graph of ``core`` for ``graph_key`` (captured on
    first use), or ``None`` when it cannot be captured (the caller then runs eagerly). ``out`` is
    contiguous. ``targets`` and ``index`` may live on the CPU (copied in through pinned memory)."""
    device = images.device
    shape_key = (device, tuple(images.shape), x_dtype, tuple(targets.shape), targets.dtype, len(ks))
    # Buffers made under an enclosing inference_mode would be inference tensors, which a later
    # call outside it could not copy into; outputs are plain tensors either way. The batch's GPU
    # is made current: copies, replay and clones go to its current stream.
    with _LOCK, torch.inference_mode(False), torch.no_grad(), torch.cuda.device(device):
        statics = _SHAPES.get(shape_key)
        if statics is None:
            statics = _Statics(
                x=torch.empty(images.shape, dtype=x_dtype, device=device),
                y=torch.empty(targets.shape, dtype=targets.dtype, device=device),
                index=torch.empty(images.shape[0], dtype=torch.long, device=device),
                params=torch.zeros(2 + len(ks), dtype=torch.float64, device=device),
                pool=torch.cuda.graph_pool_handle(),
                stream=torch.cuda.Stream(device),
                done=torch.cuda.Event(),
            )
            _SHAPES[shape_key] = statics
            while len(_SHAPES) > MAX_SHAPES:
                _SHAPES.popitem(last=False)
        _SHAPES.move_to_end(shape_key)
        # The lock orders the host's calls; the event orders the GPU's, when callers use other
        # streams: this call's copies wait until the last call's clones have run.
        stream = torch.cuda.current_stream(device)
        stream.wait_event(statics.done)
        statics.x.copy_(images)
        statics.y.copy_(_pinned(targets), non_blocking=True)
        statics.index.copy_(_pinned(index), non_blocking=True)
        statics.params.copy_(torch.tensor([*lams, *ks], dtype=torch.float64, device="cpu").pin_memory(), non_blocking=True)
        if graph_key not in statics.graphs:
            statics.graphs[graph_key] = _capture(statics, core)
        captured = statics.graphs[graph_key]
        if captured is None:
            return None
        graph, (out, soft, checks) = captured
        graph.replay()
        result = out.clone(), soft.clone(), checks.clone()
        statics.done.record(stream)
        return result


def _pinned(t: Tensor) -> Tensor:
    # A CPU source goes through pinned memory, so that its copy is queued without a host sync.
    return t.pin_memory() if t.device.type == "cpu" else t


def _capture(statics: _Statics, core: Callable[..., Any]) -> tuple[Any, tuple[Tensor, Tensor, Tensor]] | None:
    device = statics.x.device
    args = (statics.x, statics.y, statics.index, statics.params)
    try:
        with torch.cuda.device(device):
            side = statics.stream
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up: cuBLAS handles, basis caches, lazy inits
                for _ in range(2):
                    core(*args)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # Thread-local errors: another thread's syncs during a capture must not fail there.
            with torch.cuda.graph(graph, pool=statics.pool, stream=side, capture_error_mode="thread_local"):
                outputs = core(*args)
            torch.cuda.current_stream(device).wait_stream(side)
            # The graph reads the cached DCT bases by address: keep them alive with the graph
            # (the basis cache is an LRU that replays never touch).
            for n in {statics.x.shape[d] for d in range(1, statics.x.ndim)}:
                for dtype in {statics.x.dtype, freq._compute_dtype(statics.x.dtype)}:
                    statics.bases.append(freq.dct_basis(n, device=device, dtype=dtype))
            return graph, outputs
    except Exception:  # a capture failure of any kind means: run this shape eagerly
        return None


def clear() -> None:
    """Drop every cached graph and static buffer (and their memory)."""
    with _LOCK:
        _SHAPES.clear()
