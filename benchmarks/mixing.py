"""How long does one mixing call take? Robustmix vs timm Mixup, torchvision v2.MixUp, torch-dct.

Peers are called through their public APIs in the same run, on the same batch:

* ``timm.data.Mixup(mixup_alpha=1, cutmix_alpha=0, label_smoothing=0)``. It mixes the batch in
  place, so each timed call gets a fresh clone made *outside* the timed region; timm therefore
  skips the output allocation that the other mixers pay for (the comparison favours timm).
* ``torchvision.transforms.v2.MixUp(alpha=1)``.
* the straightforward Robustmix a user would write with the ``torch-dct`` package: full
  ``dct_2d`` of both mixes, keep the low box of one and the rest of the other, one ``idct_2d`` of
  the sum (linearity), and ``dct_2d`` of the batch for the label weight (the op computes the same
  batch energy share). Float32 only (``torch.fft`` has no bfloat16 on CPU); its output is checked
  against the op's before timing.

Robustmix rows: ``robustmix c=0.5`` is the pure function with fixed parameters (cutoff 0.5, the
mean of U[0, 1]); ``RobustMix batch`` and ``RobustMix per-sample`` are the classes drawing new
parameters (cutoff ~ U[0, 1]) per call, as in training; the per-sample block is the largest
cutoff of the batch, so it costs about a full transform.

Compute floor: the op's matrix products at the measured GEMM rate of the dtype each runs in
(forward transform in fp32, inverse in ``freq.matmul_dtype``), from one GEMM of the op's largest
product shape (N*C*H x W @ W x k) written into a preallocated output, so the rate is compute
only: a fresh output would add the kernel's page faults on first touch. The GEMMs are timed
round-robin with the fixed-cutoff op and the ratio op / floor is taken per round
(``measure_floor_paired``), so the VM's drifting GEMM rate cancels out.

Run: ``python benchmarks/mixing.py [--device cuda] [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

import _harness as H
from robustmix import RobustMix, freq
from robustmix import functional as F

FULL_SHAPES = ((128, 3, 224, 224), (512, 3, 32, 32), (256, 1, 28, 28))
QUICK_SHAPES = ((8, 3, 64, 64), (32, 3, 32, 32), (16, 1, 28, 28))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
LAM_LOW, LAM_HIGH, CUTOFF = 0.7, 0.3, 0.5
# The torch-dct peer takes seconds per call at 224 px: a few repeats bound the run.
SLOW_PEER_REPEATS = 3
CASE_BUDGET_S = 10.0


def num_classes_for(shape: tuple[int, ...]) -> int:
    return 1000 if shape[-1] >= 224 else 10


# --------------------------------------------------------------------------------------------
# The peers


def torch_dct_robustmix(
    x: Tensor, targets: Tensor, *, lam_low: float, lam_high: float, cutoff: float, index: Tensor
) -> tuple[Tensor, Tensor]:
    """Robustmix as written from the paper's formula with full 2-D DCTs (``torch_dct``)."""
    import torch_dct

    x2 = x[index]
    h, w = x.shape[-2:]
    kh, kw = freq.band_sizes(cutoff, (h, w))
    mask = torch.zeros(h, w, device=x.device, dtype=x.dtype)
    mask[:kh, :kw] = 1
    low = torch_dct.dct_2d(lam_low * x + (1 - lam_low) * x2, norm="ortho")
    high = torch_dct.dct_2d(lam_high * x + (1 - lam_high) * x2, norm="ortho")
    out = torch_dct.idct_2d(low * mask + high * (1 - mask), norm="ortho")
    coef = torch_dct.dct_2d(x, norm="ortho")
    lam_c = (coef * mask).square().sum() / coef.square().sum()
    lam = lam_c * lam_low + (1 - lam_c) * lam_high
    return out, lam * targets + (1 - lam) * targets[index]


def _peer_factories(num_classes: int) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """Constructors of the installed peers, and the reason for each missing one."""
    factories: dict[str, Callable[[], Any]] = {}
    missing: dict[str, str] = {}
    try:
        from timm.data import Mixup

        factories["timm Mixup"] = lambda: Mixup(
            mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=num_classes
        )
    except ImportError as exc:
        missing["timm Mixup"] = f"timm not importable: {exc}"
    try:
        from torchvision.transforms import v2

        factories["torchvision v2.MixUp"] = lambda: v2.MixUp(alpha=1.0, num_classes=num_classes)
    except ImportError as exc:
        missing["torchvision v2.MixUp"] = f"torchvision not importable: {exc}"
    try:
        import torch_dct  # noqa: F401

        factories["torch-dct"] = lambda: torch_dct_robustmix
    except ImportError as exc:
        missing["torch-dct"] = f"torch-dct not importable: {exc}"
    return factories, missing


# --------------------------------------------------------------------------------------------
# Compute floor


def matmul_flops(shape: tuple[int, ...], cutoff: float) -> tuple[int, int]:
    """FLOPs of the op's band products, (forward, inverse) (see ``functional.robustmix``).

    Forward: ``(NC*H x W) @ (W x kw)`` then ``(kh x H) @ (H x kw)`` per image-channel; the
    inverse does the transposed pair. The elementwise lerp and energy sums are not counted.
    """
    n, c, h, w = shape
    kh, kw = freq.band_sizes(cutoff, (h, w))
    nc = n * c
    forward = 2 * nc * h * w * kw + 2 * nc * kh * h * kw
    inverse = 2 * nc * h * kh * kw + 2 * nc * h * kw * w
    return forward, inverse


def _gemm_call(
    shape: tuple[int, ...], cutoff: float, dtype: torch.dtype, device: torch.device
) -> tuple[Callable[[], Any], int, str]:
    """The op's largest product ``(N*C*H x W) @ (W x kw)`` into a preallocated output: the call,
    its FLOPs and its shape as text."""
    n, c, h, w = shape
    _, kw = freq.band_sizes(cutoff, (h, w))
    g = torch.Generator().manual_seed(1)
    a = torch.randn(n * c * h, w, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(w, kw, generator=g).to(device=device, dtype=dtype)
    out = torch.empty(a.shape[0], kw, device=device, dtype=dtype)
    return (lambda: torch.mm(a, b, out=out)), 2 * a.shape[0] * w * kw, f"({a.shape[0]}x{w}) @ ({w}x{kw})"


def measure_gemm(
    shape: tuple[int, ...], cutoff: float, dtype: torch.dtype, device: torch.device, repeats: int
) -> dict[str, Any]:
    """GEMM rate on the op's largest product ``(N*C*H x W) @ (W x kw)``, into a preallocated output."""
    call, flops, text = _gemm_call(shape, cutoff, dtype, device)
    timing = H.measure(call, device=device, warmup=2, repeats=repeats, max_time_s=CASE_BUDGET_S)
    return {
        "gemm": text,
        "dtype": str(dtype).removeprefix("torch."),
        "flops": flops,
        "gflops_per_s": flops / timing.median_s / 1e9,
        "timing": timing.to_dict(),
    }


def measure_floor_paired(op: Callable[[], Any], shape: tuple[int, ...], dtype: torch.dtype,
                         device: torch.device, repeats: int) -> dict[str, Any]:
    """The op over its compute floor, with the GEMM rates timed round-robin with the op.

    This VM's GEMM rate drifts by tens of percent over minutes; a floor from a GEMM timed a
    minute earlier moves the ratio as much. Here every round times the op and then each product
    dtype it multiplies in, and the ratio is taken per round (op time / floor from that round's
    rates): its median and quartiles are what the table shows.
    """
    fwd_dtype, inv_dtype = freq._compute_dtype(dtype), freq.matmul_dtype(dtype, device)
    gemms = {d: _gemm_call(shape, CUTOFF, d, device) for d in dict.fromkeys((fwd_dtype, inv_dtype))}
    cases = {"op": op, **{str(d): call for d, (call, _, _) in gemms.items()}}
    timings = H.measure_interleaved(cases, device=device, warmup=2, repeats=repeats)
    fwd_flops, inv_flops = matmul_flops(shape, CUTOFF)
    ratios, floors = [], []
    for r, op_s in enumerate(timings["op"].times_s):
        rate = {d: flops / timings[str(d)].times_s[r] for d, (_, flops, _) in gemms.items()}
        floor_s = fwd_flops / rate[fwd_dtype] + inv_flops / rate[inv_dtype]
        floors.append(floor_s)
        ratios.append(op_s / floor_s)
    stats = H.summarize_times(ratios)
    return {
        "forward_dtype": str(fwd_dtype).removeprefix("torch."),
        "matmul_dtype": str(inv_dtype).removeprefix("torch."),
        "flops": fwd_flops + inv_flops,
        "paired_rounds": len(ratios),
        "floor_ms": 1e3 * H.summarize_times(floors)["median_s"],
        "op_ms": timings["op"].median_ms,
        "time_over_floor": stats["median_s"],
        "time_over_floor_q1": stats["q25_s"],
        "time_over_floor_q3": stats["q75_s"],
        "ratios": ratios,
        "gemm_gflops_per_s": {str(d).removeprefix("torch."): flops / timings[str(d)].median_s / 1e9
                              for d, (_, flops, _) in gemms.items()},
    }


def measure_buffer_pool(shape: tuple[int, ...], device: torch.device, repeats: int) -> list[dict[str, Any]]:
    """The op and the batch mixer with the pool of large CPU buffers on and off, round-robin, and
    a fresh vs a reused buffer of the output's size filled once: what the pool saves and why."""
    from robustmix import _memory

    num_classes = num_classes_for(shape)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    y = torch.randint(0, num_classes, (shape[0],), generator=g)
    index = torch.randperm(shape[0], generator=g)
    pools = {"pool on": _memory.BufferPool(_memory.POOL.max_bytes or _memory.pool_bytes_from_env(None)), "pool off": _memory.BufferPool(0)}
    mixers = {name: RobustMix(num_classes, seed=0) for name in pools}
    reused = torch.empty(shape)
    saved = _memory.POOL

    def with_pool(name: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            _memory.POOL = pools[name]
            try:
                return fn()
            finally:
                _memory.POOL = saved
        return call

    cases: dict[str, Callable[[], Any]] = {}
    for name in pools:
        cases[f"robustmix c=0.5, {name}"] = with_pool(name, lambda: F.robustmix(
            x, y, lam_low=LAM_LOW, lam_high=LAM_HIGH, cutoff=CUTOFF, index=index, num_classes=num_classes))
        cases[f"RobustMix batch, {name}"] = with_pool(name, lambda m=mixers[name]: m(x, y))
    cases["fill a fresh buffer"] = lambda: torch.empty(shape).fill_(1.0)
    cases["fill a reused buffer"] = lambda: reused.fill_(1.0)
    timings = H.measure_interleaved(cases, device=device, warmup=2, repeats=repeats)
    rows = [{"shape": list(shape), "case": name, "timing": t.to_dict()} for name, t in timings.items()]
    for row in rows:
        print(f"  {'x'.join(map(str, shape)):>16} {row['case']:<34} {row['timing']['median_ms']:10.2f} ms", flush=True)
    return rows


# --------------------------------------------------------------------------------------------
# One shape


def _check_against_torch_dct(x: Tensor, y: Tensor, num_classes: int) -> dict[str, float]:
    """Max differences between the op and the torch-dct peer on 8 samples (same computation)."""
    xs, ys = x[:8].float(), F.one_hot(y[:8], num_classes)
    index = torch.randperm(xs.shape[0], generator=torch.Generator().manual_seed(2)).to(x.device)
    ours, ours_soft = F.robustmix(xs, ys, lam_low=LAM_LOW, lam_high=LAM_HIGH, cutoff=CUTOFF, index=index)
    ref, ref_soft = torch_dct_robustmix(xs, ys, lam_low=LAM_LOW, lam_high=LAM_HIGH, cutoff=CUTOFF, index=index)
    return {
        "max_abs_diff_images": float((ours - ref).abs().max()),
        "max_abs_diff_targets": float((ours_soft - ref_soft).abs().max()),
    }


MEDIUM = "robustmix c=0.5, matmul 'medium'"


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """``torch.set_float32_matmul_precision`` for the block, restored after (a benchmark may flip
    this global; the library never does). On CPUs with AVX512-BF16/AMX, ``"medium"`` lets oneDNN
    run float32 products on the bf16 units."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def error_vs_float64(x: Tensor, y: Tensor, index: Tensor, num_classes: int) -> dict[str, float]:
    """Max |op - op in float64| of the fixed-cutoff call on the first 16 samples."""
    xs, ys, idx = x[:16], y[:16], torch.argsort(index[:16])  # any permutation of the 16
    kwargs = {"lam_low": LAM_LOW, "lam_high": LAM_HIGH, "cutoff": CUTOFF, "index": idx, "num_classes": num_classes}
    out, soft = F.robustmix(xs, ys, **kwargs)
    ref, ref_soft = F.robustmix(xs.double(), ys, **kwargs)
    return {"max_abs_err_images_vs_float64": float((out.double() - ref).abs().max()),
            "max_abs_err_targets_vs_float64": float((soft.double() - ref_soft).abs().max())}


def bench_shape(
    shape: tuple[int, ...], device: torch.device, repeats: int, peers: dict[str, Callable[[], Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All methods on one batch shape, both dtypes; returns the case rows and a check dict."""
    num_classes = num_classes_for(shape)
    g = torch.Generator().manual_seed(0)
    x32 = torch.randn(shape, generator=g).to(device)
    y = torch.randint(0, num_classes, (shape[0],), generator=g).to(device)
    index = torch.randperm(shape[0], generator=g).to(device)
    check = _check_against_torch_dct(x32, y, num_classes) if "torch-dct" in peers else {}
    rows: list[dict[str, Any]] = []

    def add(method: str, kind: str, dtype_name: str, timing: H.Timing) -> None:
        rows.append({"shape": list(shape), "dtype": dtype_name, "method": method, "kind": kind,
                     "timing": timing.to_dict()})
        print(f"  {'x'.join(map(str, shape)):>16} {dtype_name:>8} {method:<34} {timing.median_ms:10.2f} ms "
              f"(IQR {timing.stats['iqr_s'] * 1e3:.2f}, n={len(timing.times_s)})", flush=True)

    for dtype_name, dtype in DTYPES.items():
        x = x32.to(dtype)
        batch_mixer = RobustMix(num_classes, seed=0)
        sample_mixer = RobustMix(num_classes, seed=0, per_sample=True)
        ours: dict[str, Callable[[], Any]] = {
            "robustmix c=0.5": lambda x=x: F.robustmix(
                x, y, lam_low=LAM_LOW, lam_high=LAM_HIGH, cutoff=CUTOFF, index=index, num_classes=num_classes
            ),
            "RobustMix batch": lambda x=x, m=batch_mixer: m(x, y),
            "RobustMix per-sample": lambda x=x, m=sample_mixer: m(x, y),
        }
        for method, fn in ours.items():
            add(method, "robustmix", dtype_name,
                H.measure(fn, device=device, warmup=2, repeats=repeats, max_time_s=CASE_BUDGET_S))
            if method == "robustmix c=0.5":
                rows[-1].update(error_vs_float64(x, y, index, num_classes))
                rows[-1]["floor"] = measure_floor_paired(fn, shape, dtype, device, repeats)
                with matmul_precision("medium"):
                    add(MEDIUM, "robustmix", dtype_name,
                        H.measure(fn, device=device, warmup=2, repeats=repeats, max_time_s=CASE_BUDGET_S))
                    rows[-1].update(error_vs_float64(x, y, index, num_classes), matmul_precision="medium")
        for method, factory in peers.items():
            if method == "torch-dct":
                if dtype != torch.float32:
                    continue
                soft = F.one_hot(y, num_classes)
                timing = H.measure(
                    lambda x=x, soft=soft: torch_dct_robustmix(
                        x, soft, lam_low=LAM_LOW, lam_high=LAM_HIGH, cutoff=CUTOFF, index=index
                    ),
                    device=device, warmup=1, repeats=min(repeats, SLOW_PEER_REPEATS),
                )
            elif method == "timm Mixup":
                mixer = factory()
                # In place: a fresh clone per call, made outside the timed region.
                timing = H.measure(lambda xc, mixer=mixer: mixer(xc, y), setup=lambda x=x: x.clone(),
                                   device=device, warmup=2, repeats=repeats, max_time_s=CASE_BUDGET_S)
            else:
                mixer = factory()
                timing = H.measure(lambda x=x, mixer=mixer: mixer(x, y), device=device, warmup=2,
                                   repeats=repeats, max_time_s=CASE_BUDGET_S)
            add(method, "peer", dtype_name, timing)
    return rows, check


def add_ratios_and_floor(rows: list[dict[str, Any]], gemm: list[dict[str, Any]], device: torch.device) -> None:
    """Each robustmix row gets its time over every peer's (same shape and dtype; torch-dct runs
    in float32 only) and, for the fixed cutoff, its time over the compute floor."""
    rate = {(tuple(r["shape"]), r["dtype"]): r["gflops_per_s"] * 1e9 for r in gemm}
    for row in rows:
        if row["kind"] != "robustmix":
            continue
        shape = tuple(row["shape"])
        ours = row["timing"]["median_ms"]
        row["time_over_peer"] = {
            p["method"]: ours / p["timing"]["median_ms"]
            for p in rows
            if p["kind"] == "peer" and tuple(p["shape"]) == shape and p["dtype"] == row["dtype"]
        }
        if row["method"] == "robustmix c=0.5":
            # The forward transform (energies) multiplies in fp32, the inverse in matmul_dtype.
            # Kept next to the paired ratio: the same floor from the GEMM table's separate timings.
            dtype = DTYPES[row["dtype"]]
            fwd = str(freq._compute_dtype(dtype)).removeprefix("torch.")
            inv = str(freq.matmul_dtype(dtype, device)).removeprefix("torch.")
            fwd_flops, inv_flops = matmul_flops(shape, CUTOFF)
            floor_ms = 1e3 * (fwd_flops / rate[(shape, fwd)] + inv_flops / rate[(shape, inv)])
            row["floor_separate"] = {"floor_ms": floor_ms, "time_over_floor": ours / floor_ms}


def main(argv: list[str] | None = None) -> int:
    parser = H.add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), repeats=20)
    args = parser.parse_args(argv)
    device = H.resolve_device(args.device)
    H.apply_threads(args.threads)
    probe_start = H.machine_probe() if device.type == "cpu" and not args.quick else None
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    repeats = min(args.repeats, 3) if args.quick else args.repeats
    _, unavailable = _peer_factories(10)
    for name, why in unavailable.items():
        print(f"peer unavailable: {name}: {why}", file=sys.stderr)

    rows: list[dict[str, Any]] = []
    gemm: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    for shape in shapes:
        peers, _ = _peer_factories(num_classes_for(shape))
        for dtype in (torch.float32, torch.bfloat16):
            gemm.append({"shape": list(shape), **measure_gemm(shape, CUTOFF, dtype, device, repeats)})
            print(f"  GEMM {gemm[-1]['gemm']} {gemm[-1]['dtype']}: {gemm[-1]['gflops_per_s']:.1f} GFLOP/s", flush=True)
        with matmul_precision("medium"):
            medium = measure_gemm(shape, CUTOFF, torch.float32, device, repeats)
        gemm.append({"shape": list(shape), **medium, "dtype": "float32, matmul 'medium'"})
        print(f"  GEMM {medium['gemm']} float32 'medium': {medium['gflops_per_s']:.1f} GFLOP/s", flush=True)
        shape_rows, check = bench_shape(shape, device, repeats, peers)
        rows += shape_rows
        if check:
            checks.append({"shape": list(shape), **check})
    add_ratios_and_floor(rows, gemm, device)
    pool_rows = measure_buffer_pool(shapes[0], device, repeats) if device.type == "cpu" else []

    versions = {dist: H.dist_version(dist) for dist in ("timm", "torchvision", "torch-dct")}
    probe_end = H.machine_probe() if probe_start is not None else None
    result = {
        "benchmark": "mixing",
        "quick": args.quick,
        "meta": H.collect_metadata(device, extra={"probe_start": probe_start, "probe_end": probe_end, "peer_versions": versions}),
        "config": {"lam_low": LAM_LOW, "lam_high": LAM_HIGH, "cutoff": CUTOFF, "energy": "batch",
                   "repeats": repeats, "slow_peer_repeats": SLOW_PEER_REPEATS, "case_budget_s": CASE_BUDGET_S},
        "gemm": gemm,
        "cases": rows,
        "checks_vs_torch_dct": checks,
        "buffer_pool": pool_rows,
        "unavailable": unavailable,
    }
    out = args.out or H.default_out_path("mixing", device, quick=args.quick)
    print(f"wrote {H.write_result(out, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
