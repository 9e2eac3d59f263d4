"""Which torch ops run element by element on this CPU? Each next to the form the corruptions use.

A diagnosis, printed, not a peer comparison. On CPU (torch 2.14) a few ops are not vectorised:
``torch.where`` and ``masked_fill`` with a bool mask, a bool -> float cast, and a crop of
per-image windows by advanced indexing. The CPU paths of ``robustmix.corruptions`` use other
forms that give the same floats (each tested equal to the one it replaced); this prints both,
timed on one batch, with an add as the yardstick of a memory-bound pass. Also pixelate's 8-bit
BOX window sums (pixelate's severity-3 scale, 0.4), along columns and along rows: a banded 0/1
product and row gathers next to ``index_add_``, which pixelate uses.

    python benchmarks/cpu_ops.py                 # B8x3x224^2, all torch threads
    python benchmarks/cpu_ops.py --threads 1     # per core
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

import _harness as H
from robustmix.corruptions import digital
from robustmix.corruptions._common import banded_product, nonzero_where, positive_weight, zero_below

Case = tuple[str, Callable[[], Any], Callable[[], Any]]


def cases(batch: int, size: int, generator: torch.Generator) -> list[Case]:
    """(what, the element-by-element form, the form used instead), each pair tested equal."""
    x = torch.rand(batch, 3, size, size, generator=generator)
    y = torch.rand(batch, 3, size, size, generator=generator)
    mask = x > 0.5
    centred = x - 0.5
    weight = positive_weight(centred)
    bank = torch.rand(5, 3, size + 96, size + 96, generator=generator)
    picks = torch.randint(0, 5, (batch,), generator=generator).tolist()
    tops = torch.randint(0, 96, (batch,), generator=generator).tolist()
    rows = torch.tensor(tops).view(batch, 1, 1, 1) + torch.arange(size).view(1, 1, size, 1)
    cols = torch.tensor(tops).view(batch, 1, 1, 1) + torch.arange(size).view(1, 1, 1, size)
    photo, channel = torch.tensor(picks).view(batch, 1, 1, 1), torch.arange(3).view(1, 3, 1, 1)

    # Pixelate's window sums, on integer levels (exact sums in any order, so the pair is equal).
    levels = (x * 255).round()
    small = max(1, int(size * 0.4))
    members, windows = digital._pil_box_members(size, small)[0], digital._box_windows(size, small)
    wide = levels.view(batch * 3, size, size)[..., :small].contiguous()
    src, valid = digital._box_taps_8bit(size, small)

    def row_gathers() -> torch.Tensor:
        sums = wide.index_select(1, src[:, 0])
        for t in range(1, src.shape[1]):
            sums.addcmul_(wide.index_select(1, src[:, t]), valid[:, t].unsqueeze(-1))
        return sums

    def sliced() -> torch.Tensor:
        out = x.new_empty(batch, 3, size, size)
        for i, (p, t) in enumerate(zip(picks, tops)):
            out[i] = bank[p, :, t : t + size, t : t + size]
        return out

    return [
        ("select: where(m, x, y) | lerp(y, x, w)", lambda: torch.where(mask, x, y), lambda: torch.lerp(y, x, weight)),
        ("zero below 0.5: where | F.threshold", lambda: torch.where(x < 0.5, 0.0, x), lambda: zero_below(x, 0.5)),
        ("masked_fill_ | F.threshold_", lambda: x.clone().masked_fill_(x < 0.5, 0.0),
         lambda: zero_below(x.clone(), 0.5, inplace=True)),
        ("0/1 weight: bool -> float | positive_weight", lambda: (centred > 0).float(), lambda: positive_weight(centred)),
        ("bool -> float | bool as uint8 -> float", lambda: mask.float(), lambda: mask.view(torch.uint8).float()),
        ("safe divisor: where(w > 0, x, 1) | nonzero_where", lambda: torch.where(weight > 0, x, 1.0),
         lambda: nonzero_where(x, weight)),
        ("windows: advanced indexing | slices", lambda: bank[photo, channel, rows, cols], sliced),
        ("BOX sums, columns: banded 0/1 product | index_add_", lambda: banded_product(members, levels, -1),
         lambda: digital._window_sums(levels.view(-1, size), windows, small).view(batch, 3, size, small)),
        ("BOX sums, rows: row gathers | index_add_", row_gathers, lambda: digital._window_sums(wide, windows, small)),
        ("yardstick: x + y | (same)", lambda: x + y, lambda: x + y),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    values = args.batch * 3 * args.size**2
    print(f"B{args.batch}x3x{args.size}^2 ({values:,} values) on cpu, {torch.get_num_threads()} torch threads;"
          " median ms (ns per value), each form timed in blocks A B A B")
    for name, slow, fast in cases(args.batch, args.size, torch.Generator().manual_seed(0)):
        # Blocks A B A B (H.measure_blocks); the median of each form's block medians.
        blocks = H.measure_blocks({"slow": slow, "fast": fast}, rounds=2, repeats=args.repeats, warmup=3)
        a, b = (sorted(t.median_ms for t in v)[len(v) // 2] for v in blocks.values())
        print(f"  {name:<48} {a:7.3f} ({a * 1e6 / values:5.2f})  {b:7.3f} ({b * 1e6 / values:5.2f})  {a / b:5.1f}x",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
