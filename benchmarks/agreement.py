"""How close are the corruptions to the reference? Strength ratios vs ``imagecorruptions``.

Speed is only worth having if the corruptions are the benchmark's. For each of the 19 corruptions
and severities 1-5 at 224 px (ImageNet-C parameters on both sides), on the same smooth synthetic
images as ``corruptions.py``:

* strength: mean |corrupted - clean| over pixels and images, ours and the reference's, and their
  ratio (1 = the same amount of corruption). Random corruptions draw different samples on the two
  sides (torch vs NumPy generators), so only such statistics can agree; ``--images`` sets how many
  images average out the draws (glass blur's reference takes ~2 s an image, so it gets fewer).
* shift: mean (corrupted - clean), which catches a wrong brightness or colour cast.
* for the deterministic corruptions, also the mean |ours - reference| in 8-bit levels.

Both sides are compared as the 8-bit images the reference produces: ``imagecorruptions.corrupt``
returns ``np.uint8(x)`` (truncation, as ImageNet-C's files were written), and ours is truncated the
same way here. ``imagecorruptions`` is the ImageNet-C code as a library, with one definition
changed: its ``elastic_transform`` replaced ImageNet-C's parameters (no affine step, alpha and sigma
from the image size), while ours follows ``make_imagenet_c.py``; that row is reported but flagged.

Run: ``python benchmarks/agreement.py [--images 16] [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import torch

import _harness as H
from corruptions import load_imagecorruptions, parse_only, smooth_images, to_uint8_hwc
from robustmix.corruptions import corrupt

SIZE = 224
SEVERITIES = (1, 2, 3, 4, 5)
DETERMINISTIC = ("defocus_blur", "zoom_blur", "gaussian_blur", "brightness", "contrast", "saturate", "pixelate",
                 "jpeg_compression")
REDEFINED_BY_REFERENCE = {
    "elastic_transform": "imagecorruptions 1.1.2 re-parametrised it (no affine step, alpha and sigma from the image "
                         "size); ours is make_imagenet_c.py's, so the strengths are not expected to agree",
}
IMAGES_OVERRIDE = {
    "glass_blur": 3,  # its reference is a per-pixel Python loop (~2 s an image)
    # one random layer per image (frost photo and window, fog map, spatter blobs) swings the
    # strength by tens of percent from image to image: more images average it out
    "frost": 96, "fog": 96, "spatter": 96,
}


def _as_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) float in [0, 1] -> (N, H, W, C) uint8, truncated like the reference's np.uint8."""
    return (images.double() * 255).floor().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def compare(name: str, severity: int, clean: list[np.ndarray], reference: Any, seed: int) -> dict[str, Any]:
    """Strength, shift and (deterministic) 8-bit difference of ours vs the reference on ``clean``."""
    np.random.seed(seed)  # noqa: NPY002 - imagecorruptions draws from NumPy's global generator
    ref = np.stack([np.uint8(reference.corrupt(img, corruption_name=name, severity=severity)) for img in clean])
    x = torch.from_numpy(np.stack(clean)).permute(0, 3, 1, 2).float() / 255
    ours = _as_uint8(corrupt(x, name, severity, generator=torch.Generator().manual_seed(seed)))
    base = np.stack(clean).astype(np.float64)
    ref_f, ours_f = ref.astype(np.float64), ours.astype(np.float64)
    row: dict[str, Any] = {
        "corruption": name, "severity": severity, "images": len(clean),
        "strength_ours": float(np.abs(ours_f - base).mean() / 255),
        "strength_reference": float(np.abs(ref_f - base).mean() / 255),
        "shift_ours": float((ours_f - base).mean() / 255),
        "shift_reference": float((ref_f - base).mean() / 255),
    }
    row["strength_ratio"] = row["strength_ours"] / max(row["strength_reference"], 1e-12)
    if name in DETERMINISTIC:
        row["mean_abs_diff_levels"] = float(np.abs(ours_f - ref_f).mean())
    if name in REDEFINED_BY_REFERENCE:
        row["note"] = REDEFINED_BY_REFERENCE[name]
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per corruption: strength ratios by severity, their worst |log| deviation, and the 8-bit diff."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r["corruption"] for r in rows):
        mine = [r for r in rows if r["corruption"] == name]
        ratios = [r["strength_ratio"] for r in mine]
        entry: dict[str, Any] = {"ratios": ratios, "worst_ratio": max(ratios, key=lambda v: abs(np.log(v)))}
        diffs = [r["mean_abs_diff_levels"] for r in mine if "mean_abs_diff_levels" in r]
        if diffs:
            entry["max_mean_abs_diff_levels"] = max(diffs)
        out[name] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="images per corruption and severity (default 24)")
    parser.add_argument("--quick", action="store_true", help="2 images, severities 1 and 5, result to the temp dir")
    parser.add_argument("--only", default=None, metavar="NAME[,NAME...]", help="a subset (partial: temp dir)")
    parser.add_argument("--out", default=None, help="result path (default benchmarks/results/agreement-cpu.json)")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be >= 1, got {args.images}")
    names = parse_only(parser, args.only)
    try:
        reference, shims = load_imagecorruptions()
    except ImportError as exc:
        print(f"reference unavailable: {exc}", file=sys.stderr)
        return 2
    n_images = 2 if args.quick else args.images
    severities = (1, 5) if args.quick else SEVERITIES
    counts = {name: n_images if args.quick else IMAGES_OVERRIDE.get(name, n_images) for name in names}
    clean = to_uint8_hwc(smooth_images(max(counts.values()), SIZE, seed=1))
    rows = []
    for name in names:
        subset = clean[: counts[name]]
        for severity in severities:
            start = time.perf_counter()
            row = compare(name, severity, subset, reference, seed=severity)
            rows.append(row)
            extra = f"  |ours-ref| {row['mean_abs_diff_levels']:.2f} levels" if "mean_abs_diff_levels" in row else ""
            print(f"  {name:<18} s{severity}  strength ours {row['strength_ours']:.4f} ref {row['strength_reference']:.4f}"
                  f"  ratio {row['strength_ratio']:.3f}{extra}  ({time.perf_counter() - start:.1f} s)", flush=True)
    partial = args.quick or bool(args.only)
    result = {
        "benchmark": "agreement",
        "quick": partial,
        "meta": H.collect_metadata(torch.device("cpu"), extra={"imagecorruptions": H.dist_version("imagecorruptions")}),
        "config": {"image_size": SIZE, "severities": list(severities), "images": n_images,
                   "images_override": {} if args.quick else IMAGES_OVERRIDE, "images_kind": "smooth random field, seed 1",
                   "quantisation": "both sides truncated to uint8 (np.uint8), as the reference"},
        "reference_shims": shims,
        "rows": rows,
        "summary": summarize(rows),
    }
    out = args.out or H.default_out_path("agreement", torch.device("cpu"), quick=partial)
    print(f"wrote {H.write_result(out, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
