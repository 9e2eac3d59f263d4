"""How fast are the 19 corruptions? Images/s of ``robustmix.corruptions`` vs ``imagecorruptions``.

The reference is the ``imagecorruptions`` package (the ImageNet-C code as a library), called per
image through its public API ``imagecorruptions.corrupt(uint8 HWC, corruption_name=, severity=)``,
as a user corrupting a test set would. Ours is called on a float (N, 3, S, S) batch of the same
8-bit images (values k / 255). Neither side is charged for converting between uint8 HWC and
float NCHW. Both use severity 3 on the same smooth synthetic images (a smooth random field, so
JPEG and blurs see natural-like content).

``imagecorruptions`` 1.1.2 does not import or run as published on numpy 2 / scikit-image >= 0.19 /
setuptools without ``pkg_resources``; :func:`load_imagecorruptions` patches, inside this process
only: a stand-in ``pkg_resources.resource_filename`` (frost texture paths), ``gaussian(...,
multichannel=)`` -> ``channel_axis`` (gaussian blur, glass blur, spatter, elastic) and ``np.float_``
(fog). A corruption that still fails is recorded as unavailable with the error.

Note for 32 px: ``imagecorruptions`` applies the ImageNet-C parameters at every size, while ours
uses the CIFAR-10-C table at <= 32 px, so the 32 px rows compare the two suites as a user gets
them, not identical work.

Run: ``python benchmarks/corruptions.py [--device cuda] [--quick] [--sizes 64:32]``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import itertools
import math
import os
import sys
import time
import types
from typing import Any

import numpy as np
import torch
from torch import Tensor

import _harness as H
from robustmix.corruptions import ALL_CORRUPTIONS, corrupt, registry

SEVERITY = 3
# (image size, our batch) per device; the reference goes image by image.
FULL_CASES = {"cpu": ((224, 8), (32, 32)), "cuda": ((224, 64), (32, 256))}
# Images of our batch the reference corrupts per round (its first ones). On the CPU the whole
# batch, so both sides do the same work back to back; a CUDA batch of 64 at 224 px would take the
# reference minutes per round (glass blur ~3 s an image), so there it does the first 8 / 32: its
# images/s do not depend on our batch, and ours run on the GPU, not in the reference's caches.
REFERENCE_IMAGES = {"cpu": {}, "cuda": {224: 8, 32: 32}}
QUICK_CASES = ((64, 2), (32, 4))
# A large CPU batch, as an evaluation loader hands it over: chunked (the default) vs one call.
LARGE_BATCH = {"full": (224, 64), "quick": (64, 12)}
CASE_BUDGET_S = 4.0
MIN_ROUNDS = 3


def smooth_images(n: int, size: int, *, seed: int = 0) -> Tensor:
    """Deterministic smooth colour images in [0, 1], (n, 3, size, size), float32."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, max(2, size // 8), max(2, size // 8), generator=g)
    field = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    fine = 0.05 * torch.randn(n, 3, size, size, generator=g)
    return torch.sigmoid(field + fine)


def to_uint8_hwc(images: Tensor) -> list[np.ndarray]:
    return list((images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy())


# --------------------------------------------------------------------------------------------
# The reference and its compatibility shim


class _NumpyCompat(types.ModuleType):
    """numpy with the aliases removed in numpy 2 that imagecorruptions still uses (``np.float_``)."""

    def __init__(self) -> None:
        super().__init__("numpy")
        self.float_ = np.float64

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def _gaussian_compat(gaussian: Any) -> Any:
    def patched(image: Any, *args: Any, multichannel: bool | None = None, **kwargs: Any) -> Any:
        # scikit-image 0.19 renamed multichannel=True to channel_axis=-1 (and later removed it).
        if multichannel is not None and "channel_axis" not in kwargs:
            kwargs["channel_axis"] = -1 if multichannel else None
        return gaussian(image, *args, **kwargs)

    return patched


def load_imagecorruptions() -> tuple[Any, dict[str, str]]:
    """Import ``imagecorruptions`` with the shims above; returns the module and the list of shims.

    Raises ImportError (with the missing piece named) when it cannot be imported at all.
    """
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("imagecorruptions is not installed (pip install --no-deps imagecorruptions)")
    root = spec.submodule_search_locations[0]
    shims: dict[str, str] = {}
    stub_added = False
    if importlib.util.find_spec("pkg_resources") is None:
        stub = types.ModuleType("pkg_resources")
        stub.resource_filename = lambda package, relative: os.path.join(root, relative)  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = stub
        stub_added = True
        shims["pkg_resources"] = "stand-in resource_filename (setuptools no longer ships pkg_resources)"
    try:
        ic = importlib.import_module("imagecorruptions")
    finally:
        if stub_added:
            sys.modules.pop("pkg_resources", None)
    module = importlib.import_module("imagecorruptions.corruptions")
    module.gaussian = _gaussian_compat(module.gaussian)
    shims["skimage.filters.gaussian"] = "multichannel= mapped to channel_axis= (removed in scikit-image >= 0.19)"
    if not hasattr(np, "float_"):
        module.np = _NumpyCompat()
        shims["np.float_"] = "alias of np.float64 inside imagecorruptions (removed in numpy 2)"
    return ic, shims


def parse_only(parser: argparse.ArgumentParser, only: str | None) -> tuple[str, ...]:
    """The corruptions named by ``--only NAME[,NAME...]`` (all when None); unknown names are a usage error."""
    if not only:
        return ALL_CORRUPTIONS
    names = tuple(n.strip() for n in only.split(",") if n.strip())
    unknown = sorted(set(names) - set(ALL_CORRUPTIONS))
    if unknown:
        parser.error(f"--only: unknown corruption(s) {unknown}; known: {', '.join(ALL_CORRUPTIONS)}")
    return names


def parse_sizes(parser: argparse.ArgumentParser, sizes: str | None) -> tuple[tuple[int, int], ...] | None:
    """``--sizes SIZE:BATCH[,SIZE:BATCH...]`` as ((size, batch), ...); None when not given."""
    if not sizes:
        return None
    cases = []
    for item in sizes.split(","):
        size, _, batch = item.strip().partition(":")
        try:
            case = (int(size), int(batch))
        except ValueError:
            parser.error(f"--sizes: expected SIZE:BATCH items such as 64:32, got {item.strip()!r}")
        if min(case) < 1:
            parser.error(f"--sizes: size and batch must be >= 1, got {item.strip()!r}")
        cases.append(case)
    return tuple(cases)


# --------------------------------------------------------------------------------------------
# Measurement


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _first_call(fn: Any) -> tuple[float | None, str | None]:
    """Run ``fn`` once (the warm-up call): its time, or the error that stops it."""
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start, None
    except Exception as exc:  # a broken corruption is a result to report, not a crash
        return None, _error(exc)


def bench_size(
    size: int, batch: int, device: torch.device, repeats: int, reference: Any | None,
    names: tuple[str, ...] = ALL_CORRUPTIONS, reference_rounds: str = "batch", reference_images: int | None = None,
) -> list[dict[str, Any]]:
    """One row per corruption: ours on the batch, the reference on the same images one by one.

    The two sides are timed round-robin (``H.measure_interleaved``: ours on the batch, then the
    reference on each image of it, then ours, ...), so drift on a shared machine hits both alike
    and the ratio is taken between rounds that ran side by side. Each side runs its whole batch
    in a row: one reference call per round, between two calls of ours (``reference_rounds="one"``,
    the method before f5c3741, kept to compare), found the reference's caches cold every call and
    flattered the cheap corruptions. After one warm-up call per side (which also sizes the run), as many rounds as
    fit in ``CASE_BUDGET_S``, at least ``MIN_ROUNDS`` and at most ``repeats``. A side that
    raises is recorded as unavailable and the other is timed alone. ``reference_images`` (default:
    the whole batch) limits the reference's round to the batch's first images.
    """
    reference_images = batch if reference_images is None else reference_images
    if not 1 <= reference_images <= batch:
        raise ValueError(f"reference_images must be in [1, batch={batch}], got {reference_images}")
    hwc = to_uint8_hwc(smooth_images(batch, size))
    # Ours gets the very images the reference gets: the 8-bit ones, as float k / 255.
    x = torch.from_numpy(np.stack(hwc)).permute(0, 3, 1, 2).float().div(255).contiguous().to(device)
    rows = []
    for name in names:
        row: dict[str, Any] = {"corruption": name, "image_size": size, "batch": batch, "severity": SEVERITY}
        if reference_rounds == "batch":
            row["reference_images"] = reference_images
        g = torch.Generator(device=device).manual_seed(0)
        fns = {"ours": lambda name=name, g=g: corrupt(x, name, SEVERITY, generator=g)}
        if reference is not None and reference_rounds == "one":
            cycle = itertools.cycle(hwc)
            fns["reference"] = lambda name=name, cycle=cycle: reference.corrupt(
                next(cycle), corruption_name=name, severity=SEVERITY)
        elif reference is not None:
            fns["reference"] = lambda name=name: [
                reference.corrupt(image, corruption_name=name, severity=SEVERITY) for image in hwc[:reference_images]]
        ref_images = 1 if reference_rounds == "one" else reference_images  # images per timed reference call
        working, round_s = {}, 0.0
        for side, fn in fns.items():
            elapsed, error = _first_call(fn)  # the warm-up call, which also sizes the run
            if error is None:
                working[side], round_s = fn, round_s + elapsed
            else:
                row[side] = {"unavailable": error}
        if reference is None:
            row["reference"] = {"unavailable": "imagecorruptions not importable"}
        if working:
            rounds = int(min(repeats, max(MIN_ROUNDS, CASE_BUDGET_S // max(round_s, 1e-9))))
            timings = H.measure_interleaved(working, device=device, warmup=0, repeats=rounds)
            if "ours" in timings:
                row["ours"] = {"timing": timings["ours"].to_dict(), "images_per_s": batch / timings["ours"].median_s}
            if "reference" in timings:
                row["reference"] = {"timing": timings["reference"].to_dict(),
                                    "images_per_s": ref_images / timings["reference"].median_s}
        if "images_per_s" in row["ours"] and "images_per_s" in row["reference"]:
            row["speedup"] = row["ours"]["images_per_s"] / row["reference"]["images_per_s"]
        ours_s = f"{row['ours']['images_per_s']:10.1f}" if "images_per_s" in row["ours"] else "       n/a"
        ref_s = f"{row['reference']['images_per_s']:10.1f}" if "images_per_s" in row["reference"] else "       n/a"
        speed = f"{row['speedup']:8.2f}x" if "speedup" in row else ""
        print(f"  {size:>3}px {name:<18} ours {ours_s} img/s  ref {ref_s} img/s {speed}", flush=True)
        rows.append(row)
    return rows


SAMPLERS = {
    # name: (torch draw into a float32 tensor, NumPy draw of one image as the reference makes it)
    "normal": (lambda t, g: t.normal_(generator=g), lambda rs, shape: rs.normal(size=shape, scale=0.18)),
    "uniform": (lambda t, g: t.uniform_(generator=g), lambda rs, shape: rs.uniform(size=shape)),
    "poisson, rate 6": (lambda t, g: torch.poisson(t.fill_(6.0), generator=g),
                        lambda rs, shape: rs.poisson(np.full(shape, 6.0))),
}


def bench_samplers(size: int, batch: int, repeats: int) -> list[dict[str, Any]]:
    """Nanoseconds per draw of torch's CPU samplers (one stream, as a corruption draws) and of
    NumPy's legacy ``RandomState`` (the reference's global RNG), one image's worth at a time.

    The noise corruptions are bound by these: their speed-up cannot exceed the ratio by much.
    """
    shape_t, shape_np = (batch, 3, size, size), (size, size, 3)
    rows = []
    for name, (draw_torch, draw_numpy) in SAMPLERS.items():
        t = torch.empty(shape_t)
        g = torch.Generator().manual_seed(0)
        rs = np.random.RandomState(0)
        timings = H.measure_interleaved(
            {"torch": lambda t=t, g=g, f=draw_torch: f(t, g), "numpy": lambda rs=rs, f=draw_numpy: f(rs, shape_np)},
            warmup=1, repeats=max(repeats, 3),
        )
        torch_ns = 1e9 * timings["torch"].median_s / t.numel()
        numpy_ns = 1e9 * timings["numpy"].median_s / math.prod(shape_np)
        rows.append({"sampler": name, "image_size": size, "torch_ns_per_draw": torch_ns,
                     "numpy_ns_per_draw": numpy_ns, "ratio": numpy_ns / torch_ns})
        print(f"  {size:>3}px sampler {name:<16} torch {torch_ns:6.2f} ns/draw  numpy {numpy_ns:6.2f} ns/draw"
              f"  {numpy_ns / torch_ns:6.2f}x", flush=True)
    return rows


def bench_large_batch(size: int, batch: int, repeats: int, names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Images/s of ours on one large CPU batch: in cache-sized chunks vs the whole batch in one
    call, timed round-robin. ``corrupt`` ships the first (``registry.CPU_CHUNK_ELEMENTS``) except
    for ``registry.UNCHUNKED``; both are timed for every corruption, so the rows show the choice."""
    x = torch.from_numpy(np.stack(to_uint8_hwc(smooth_images(batch, size)))).permute(0, 3, 1, 2).float().div(255)
    x = x.contiguous()  # 8-bit images as float k / 255, as in bench_size
    default, unchunked = registry.CPU_CHUNK_ELEMENTS, registry.UNCHUNKED

    def call(name: str, g: torch.Generator, chunk: int) -> None:
        registry.CPU_CHUNK_ELEMENTS, registry.UNCHUNKED = chunk, frozenset()
        try:
            corrupt(x, name, SEVERITY, generator=g)
        finally:
            registry.CPU_CHUNK_ELEMENTS, registry.UNCHUNKED = default, unchunked

    rows = []
    for name in names:
        g = torch.Generator().manual_seed(0)
        timings = H.measure_interleaved(
            {"chunked": lambda name=name, g=g: call(name, g, default),
             "one_call": lambda name=name, g=g: call(name, g, x.numel())},
            warmup=1, repeats=max(1, repeats),
        )
        chunked, whole = (batch / timings[k].median_s for k in ("chunked", "one_call"))
        rows.append({"corruption": name, "image_size": size, "batch": batch,
                     "shipped": "one_call" if name in unchunked else "chunked",
                     "images_per_call": min(batch, max(1, default // x[0].numel())),
                     "chunked_images_per_s": chunked, "one_call_images_per_s": whole, "ratio": chunked / whole})
        print(f"  {size:>3}px batch {batch} {name:<18} chunked {chunked:10.1f} img/s  one call {whole:10.1f} img/s"
              f"  {chunked / whole:5.2f}x", flush=True)
    return rows


def median_run_rows(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per corruption and size, the row of the run with the median speed-up (lower median for an
    even count), with every run's speed-up attached as ``speedups_over_runs``.

    A whole suite takes under a minute, shorter than the slow phases of a shared VM, so one run
    can catch a phase on some rows; the median of several runs does not. Rows without a
    speed-up (one side unavailable) come from the first run.
    """
    out = []
    for i, first in enumerate(runs[0]):
        same = [run[i] for run in runs]
        if not all("speedup" in r for r in same):
            out.append(first)
            continue
        ranked = sorted(same, key=lambda r: r["speedup"])
        out.append({**ranked[(len(ranked) - 1) // 2], "speedups_over_runs": [r["speedup"] for r in same]})
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Geometric-mean speedup over the corruptions both sides ran, per image size."""
    out: dict[str, Any] = {}
    for size in sorted({r["image_size"] for r in rows}, reverse=True):
        both = [r for r in rows if r["image_size"] == size and "speedup" in r]
        entry: dict[str, Any] = {"compared": len(both)}
        if both:
            entry["geomean_speedup"] = H.geometric_mean([r["speedup"] for r in both])
            slowest = min(both, key=lambda r: r["speedup"])
            entry["min_speedup"] = {"corruption": slowest["corruption"], "speedup": slowest["speedup"]}
            entry["slower_than_reference"] = [r["corruption"] for r in both if r["speedup"] < 1.0]
        out[str(size)] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = H.add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), repeats=40)
    parser.add_argument("--only", default=None, metavar="NAME[,NAME...]",
                        help="measure only these corruptions: a partial result, written to the temp dir "
                             "(like --quick) unless --out is given, and never rendered by table.py")
    parser.add_argument("--sizes", default=None, metavar="SIZE:BATCH[,...]",
                        help="other image sizes and our batch per size (e.g. 64:32 for Tiny-ImageNet-C's side): "
                             "a partial result, like --only; without it 224:8,32:32 (CPU) or 224:64,32:256 (CUDA)")
    parser.add_argument("--runs", type=int, default=3,
                        help="whole-suite runs; each row is the run with the median speed-up (default 3)")
    parser.add_argument("--reference-rounds", choices=("batch", "one"), default="batch",
                        help="per round, the reference corrupts our whole batch image by image (default), or "
                             "'one' image (the rounds before f5c3741, to compare): a partial result, like --only")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    if args.quick:
        args.runs = 1
    names = parse_only(parser, args.only)
    sizes = parse_sizes(parser, args.sizes)
    partial = args.quick or bool(args.only) or sizes is not None or args.reference_rounds != "batch"
    device = H.resolve_device(args.device)
    H.apply_threads(args.threads)
    probe_start = H.machine_probe() if device.type == "cpu" and not args.quick else None
    cases = sizes or (QUICK_CASES if args.quick else FULL_CASES[device.type])
    repeats = 1 if args.quick else args.repeats
    try:
        reference, shims = load_imagecorruptions()
        ref_error = None
    except ImportError as exc:
        reference, shims, ref_error = None, {}, _error(exc)
        print(f"reference unavailable: {ref_error}", file=sys.stderr)
    try:
        import cv2

        cv2_threads = cv2.getNumThreads()
    except ImportError:
        cv2_threads = None

    # Images the reference corrupts per round, by size: the full cases' setting, else the whole batch.
    reference_images = {} if sizes or args.quick else REFERENCE_IMAGES[device.type]
    runs = []
    for run in range(args.runs):
        print(f"run {run + 1} of {args.runs}", flush=True)
        runs.append([row for size, batch in cases for row in bench_size(
            size, batch, device, repeats, reference, names, args.reference_rounds, reference_images.get(size))])
    rows = median_run_rows(runs)
    samplers = [] if device.type != "cpu" else bench_samplers(*cases[0], repeats)
    large = [] if device.type != "cpu" or sizes else bench_large_batch(
        *LARGE_BATCH["quick" if args.quick else "full"], 1 if args.quick else 5, names)
    summary = summarize(rows)
    for size, entry in summary.items():
        if "geomean_speedup" in entry:
            print(f"  {size}px: geometric-mean speedup {entry['geomean_speedup']:.2f}x over {entry['compared']}"
                  f" corruptions; slowest {entry['min_speedup']}")
    versions = {d: H.dist_version(d) for d in ("imagecorruptions", "scikit-image", "opencv-python-headless", "scipy", "Pillow")}
    probe_end = H.machine_probe() if probe_start is not None else None
    result = {
        "benchmark": "corruptions",
        "quick": partial,
        "only": list(names) if args.only else None,
        "sizes": [list(c) for c in sizes] if sizes else None,
        "meta": H.collect_metadata(device, extra={"probe_start": probe_start, "probe_end": probe_end, "peer_versions": versions, "cv2_threads": cv2_threads}),
        "config": {"severity": SEVERITY, "runs": args.runs, "row_per_case": "the run with the median speed-up",
                   "max_rounds": repeats, "min_rounds": MIN_ROUNDS, "warmup": 1,
                   "case_budget_s": CASE_BUDGET_S, "timing": "interleaved rounds: one call of ours on the batch, " + (
                       "then one reference call per image of the same batch" + (
                           " (its first reference_images, given per row)" if reference_images else ""
                       ) if args.reference_rounds == "batch"
                       else "one reference call on the next image"),
                   "images": "smooth random field (bicubic-upsampled noise), seed 0",
                   "reference_call": "imagecorruptions.corrupt(uint8 HWC, corruption_name=, severity=) per image",
                   "ours_call": "robustmix.corruptions.corrupt(float NCHW batch, name, severity, generator=)"},
        "reference_shims": shims,
        "reference_error": ref_error,
        "rows": rows,
        "samplers": samplers,
        "large_batch": large,
        "summary": summary,
    }
    out = args.out or H.default_out_path("corruptions", device, quick=partial)
    print(f"wrote {H.write_result(out, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
