"""Where should CPU motion blur switch from the FFT convolution to the direct sum of its taps?

A diagnosis, printed: it backs ``robustmix.corruptions._common.MOTION_DIRECT_MIN_PIXELS``.
``motion_blur`` at severity 3 is timed both ways on one batch per size (the same angles: the
generator is re-seeded per call), each route in its own blocks A B A B (``_harness.measure_blocks``), and
the two outputs are checked first: the same 8-bit levels up to float rounding (a value
on a level edge may land one level apart). Above the threshold the library
takes the taps, at or below it the FFT.

    python benchmarks/motion_route.py
    python benchmarks/motion_route.py --cases 224:8,112:8,64:16,32:32,28:64
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from functools import partial

import torch

import _harness as H
from robustmix.corruptions import _common, blur

DEFAULT_CASES = ((224, 8), (112, 8), (64, 16), (32, 32), (28, 64))


@contextlib.contextmanager
def route(name: str) -> Iterator[None]:
    """Force ``"fft"`` or ``"taps"`` for every image size inside the block."""
    saved = _common.MOTION_DIRECT_MIN_PIXELS
    _common.MOTION_DIRECT_MIN_PIXELS = 0 if name == "taps" else 1 << 62
    try:
        yield
    finally:
        _common.MOTION_DIRECT_MIN_PIXELS = saved


def routed(name: str, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``fn()`` by route ``name``."""
    with route(name):
        return fn()


def parse_cases(text: str) -> tuple[tuple[int, int], ...]:
    try:
        cases = tuple((int(size), int(batch)) for size, batch in (item.split(":") for item in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZE:BATCH[,SIZE:BATCH...], got {text!r}") from None
    if not cases or any(size < 8 or batch < 1 for size, batch in cases):
        raise argparse.ArgumentTypeError(f"sizes must be >= 8 and batches >= 1, got {text!r}")
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=parse_cases, default=DEFAULT_CASES, metavar="SIZE:BATCH[,...]")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"motion blur, severity 3, cpu, {torch.get_num_threads()} torch threads; median ms per batch "
          f"(threshold: taps above {_common.MOTION_DIRECT_MIN_PIXELS} pixels)")
    for size, batch in args.cases:
        images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))

        def call(images: torch.Tensor = images) -> torch.Tensor:
            return blur.motion_blur(images, 3, torch.Generator().manual_seed(1))

        outputs = {}
        for name in ("fft", "taps"):
            with route(name):
                outputs[name] = call()
        # The output is 8-bit levels (as ImageMagick's): rounding can put a value on the other
        # side of a level edge, one level apart, and nothing more.
        torch.testing.assert_close(outputs["taps"], outputs["fft"], rtol=0, atol=1.01 / 255)
        moved = (outputs["taps"] != outputs["fft"]).double().mean().item()
        blocks = H.measure_blocks({name: partial(routed, name, call) for name in ("fft", "taps")},
                                  rounds=2, repeats=args.repeats, warmup=2)
        fft, taps = (sorted(t.median_ms for t in v)[len(v) // 2] for v in blocks.values())
        chosen = "taps" if size * size > _common.MOTION_DIRECT_MIN_PIXELS else "fft"
        print(f"  B{batch}x3x{size}^2  fft {fft:7.2f}  taps {taps:7.2f}  fft/taps {fft / taps:5.2f}x  (library: {chosen}; "
              f"{100 * moved:.3f} % of values a level apart)",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
