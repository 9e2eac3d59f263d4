"""Where jpeg_compression's time goes: each stage of its path now, next to the form it replaced.

A diagnosis, printed, not a peer comparison (``corruptions.py`` is). The JPEG corruption is the
one whose work is the reference's own (libjpeg per image), so its speed is decided by what
surrounds the codec: moving the bytes to the host, the codec threads, and moving them back.
On a GPU batch the old transfers cost more than the codec: on an H200 at B64x3x224^2 this script
(at a53b29f, ``benchmarks/results/cuda-diagnosis-h200.txt``) timed the bytes to the host 24.82 ->
0.84 ms, the codec round trip 13.58 -> 10.53 ms and the levels back 12.00 -> 0.89 ms, the whole
call 13.98 ms (4,578 images/s).

    python benchmarks/jpeg_stages.py --device cuda     # B64x3x224^2 (CPU default: B8)
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from typing import Any

import torch

import _harness as H
import corruptions as bench  # the suite's images (a script sibling, as _harness is)
from robustmix.corruptions import corrupt, digital


def median_ms(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    return H.measure(fn, device=device, warmup=3, repeats=repeats).median_ms


def old_bytes_hwc(x: torch.Tensor) -> torch.Tensor:
    """The form before: int32 bit patterns moved to the host, cast to bytes there."""
    n, c, h, w = x.shape
    magic = torch.empty((n, h, w, c), dtype=torch.float32, device=x.device)
    magic.copy_(x.permute(0, 2, 3, 1)).mul_(255).clamp_(0, 255).add_(8388608.0)
    return magic.view(torch.int32).to("cpu", torch.uint8)


def old_roundtrip(batch: torch.Tensor, quality: int) -> torch.Tensor:
    """The form before: decoded images gathered by torch.stack (a parallel op in the caller)."""
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    from robustmix.corruptions._common import map_split

    mode = ImageReadMode.GRAY if batch.shape[1] == 1 else ImageReadMode.RGB
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29's codec notice, as digital.py
        decoded = map_split(lambda image: decode_jpeg(encode_jpeg(image, quality=quality), mode=mode), list(batch))
    return torch.stack([d.permute(1, 2, 0) for d in decoded])


def old_levels(decoded: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The form before: one permuting, converting copy across devices."""
    n, h, w, c = decoded.shape
    out = torch.empty((n, c, h, w), dtype=like.dtype, device=like.device)
    return out.copy_(decoded.permute(0, 3, 1, 2)).div_(255)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch", type=int, default=None, help="images (default 8 on CPU, 64 on CUDA)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a GPU (torch.cuda.is_available() is False)")
    device = torch.device(args.device)
    batch = args.batch or (64 if device.type == "cuda" else 8)
    quality = 15  # ImageNet-C's severity 3
    images = bench.smooth_images(batch, args.size).mul(255).round().div(255).to(device)
    codec_in = digital._bytes_hwc(images).permute(0, 3, 1, 2)
    decoded = digital._jpeg_roundtrip(codec_in, quality)
    stages = [
        ("bytes to the host", lambda: digital._bytes_hwc(images), lambda: old_bytes_hwc(images)),
        ("codec round trip", lambda: digital._jpeg_roundtrip(codec_in, quality), lambda: old_roundtrip(codec_in, quality)),
        ("levels back", lambda: digital._levels_from_bytes(decoded, images), lambda: old_levels(decoded, images)),
    ]
    print(f"jpeg_compression, B{batch}x3x{args.size}^2 on {device.type}, {torch.get_num_threads()} torch threads")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for name, now, before in stages:
            print(f"  {name:<18} now {median_ms(now, device, args.repeats):8.2f} ms"
                  f"   before {median_ms(before, device, args.repeats):8.2f} ms", flush=True)
        whole = median_ms(lambda: corrupt(images, "jpeg_compression", 3), device, args.repeats)
    print(f"  whole call         {whole:8.2f} ms = {batch / whole * 1e3:,.0f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
