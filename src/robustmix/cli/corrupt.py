"""``robustmix corrupt``: write a corrupted copy of a test set in the CIFAR-10-C layout.

The folder gets ``<corruption>.npy``, uint8 (5 * N, H, W, C), severity-major (rows ``s * N .. (s+1)
* N - 1`` hold severity ``s + 1``), and ``labels.npy`` (5 * N,) int64, the clean labels repeated
five times, as in CIFAR-10-C. Each (corruption, severity) pair draws from its own generator seeded
by ``(seed, corruption index in ALL_CORRUPTIONS, severity)``, so a file does not depend on which
other corruptions were written. The bytes are stored as the released sets store theirs
(``--store release``, :func:`robustmix.corruptions.store`: 8-bit truncation, and a JPEG round trip
at quality 85 for ImageNet-C-sized images), the same bytes ``robustmix evaluate`` feeds a model on
the fly; ``--store round`` rounds to the nearest level instead.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["add_parser", "corrupt_uint8", "run", "write_corrupted_set"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "corrupt",
        help="write a corrupted test set (CIFAR-10-C layout: <corruption>.npy + labels.npy)",
        description=(
            "Apply ImageNet-C / CIFAR-10-C corruptions at severities 1-5 to a test split and "
            "write <corruption>.npy (uint8, 5N x H x W x C, severity-major) plus labels.npy."
        ),
    )
    parser.add_argument("--dataset", default="fashion_mnist", help="dataset name (default fashion_mnist)")
    parser.add_argument("--data-dir", default=None, help="clean dataset folder (default: its standard place)")
    parser.add_argument(
        "--corruptions", default="all",
        help="'all', 'benchmark', 'extra', a group (noise, blur, weather, digital) or comma-separated names",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--seed", type=int, default=0,
        help="seed of the corruptions' randomness, an integer >= 0 (default 0)",
    )  # fmt: skip
    parser.add_argument(
        "--store", default="release", choices=("release", "round"),
        help="'release' (default): as the released sets (8-bit truncation; JPEG quality 85 above "
        "32 px); 'round': nearest 8-bit level",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int, default=256, help="images corrupted at once (default 256)"
    )
    parser.add_argument("--limit", type=int, default=None, help="corrupt the first N test images only")
    parser.add_argument(
        "--device", default="cpu", help="'cpu' (default), 'auto', 'cuda' or 'cuda:N'"
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar"
    )
    parser.set_defaults(func=run)
    return parser


def _check_args(seed: int, store: str, batch_size: int) -> None:
    if store not in ("release", "round"):
        raise ValueError(f"store: expected 'release' or 'round' for uint8 files, got {store!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def _generator_for(seed: int, name: str, severity: int) -> Any:
    # The seeding of on-the-fly evaluation: a set written here holds the very images that
    # `robustmix evaluate --seed` (no --source) feeds the model.
    import torch

    from robustmix.evaluate import pair_seed

    return torch.Generator(device="cpu").manual_seed(pair_seed(seed, name, severity))


def corrupt_uint8(
    images: np.ndarray,
    name: str,
    severity: int,
    *,
    seed: int = 0,
    store: str = "release",
    batch_size: int = 256,
    device: str = "cpu",
    on_batch: Any = None,
) -> np.ndarray:
    """Corrupt uint8 (N, H, W, C) images with ``name`` at ``severity``; return uint8 (N, H, W, C),
    stored as ``store`` says (``"release"`` or ``"round"``, see :func:`robustmix.corruptions.store`)."""
    import torch

    from robustmix._device import divide_exactly_
    from robustmix.corruptions import corrupt
    from robustmix.corruptions import store as store_images

    _check_args(seed, store, batch_size)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    generator = _generator_for(seed, name, severity)
    out = np.empty_like(images)
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        x = divide_exactly_(chunk.to(device).permute(0, 3, 1, 2).float(), 255)
        y = store_images(corrupt(x, name, severity, generator=generator), store)
        y8 = (y * 255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # exact levels
        out[start : start + len(chunk)] = y8
        if on_batch is not None:
            on_batch(len(chunk))
    return out


def write_corrupted_set(
    images: np.ndarray,
    labels: np.ndarray,
    out_dir: str | Path,
    corruptions: Sequence[str],
    *,
    seed: int = 0,
    store: str = "release",
    batch_size: int = 256,
    device: str = "cpu",
    progress: bool = True,
) -> list[Path]:
    """Write ``labels.npy`` and one ``<corruption>.npy`` per name (atomically); return the paths.

    Every argument is checked before anything is written."""
    from robustmix._io import atomic_write
    from robustmix.corruptions import ALL_CORRUPTIONS

    out_dir = Path(out_dir)
    n = len(images)
    if n == 0:
        raise ValueError("images: expected at least one image, got none")
    if len(labels) != n:
        raise ValueError(f"labels must have one entry per image ({n}), got {len(labels)}")
    unknown = [c for c in corruptions if c not in ALL_CORRUPTIONS]
    if unknown:
        raise ValueError(f"corruptions: unknown names {unknown}; expected names from {list(ALL_CORRUPTIONS)}")
    _check_args(seed, store, batch_size)
    total = n * 5 * len(corruptions)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="img", desc="corrupt")
    written = [out_dir / "labels.npy"]
    all_labels = np.tile(np.asarray(labels, dtype=np.int64), 5)
    atomic_write(written[0], lambda f: np.save(f, all_labels, allow_pickle=False))
    try:
        for name in corruptions:
            if bar is not None:
                bar.set_postfix_str(name)
            update = None if bar is None else bar.update
            stack = np.concatenate(
                [
                    corrupt_uint8(
                        images, name, severity, seed=seed, store=store, batch_size=batch_size,
                        device=device, on_batch=update,
                    )
                    for severity in range(1, 6)
                ]
            )
            path = out_dir / f"{name}.npy"
            atomic_write(path, lambda f, a=stack: np.save(f, a, allow_pickle=False))
            written.append(path)
    finally:
        if bar is not None:
            bar.close()
    return written


def run(args: argparse.Namespace) -> int:
    from robustmix.cli import check_output_dir, check_seed
    from robustmix.corruptions import resolve_corruptions
    from robustmix.data import load_split_tensors
    from robustmix.train.distributed import resolve_device

    # Every argument is checked before the data is read and anything is written.
    names = resolve_corruptions(args.corruptions)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_seed(args.seed)
    device = str(resolve_device(args.device))
    check_output_dir(args.out, "--out")
    images, labels = load_split_tensors(args.dataset, root=args.data_dir, split="test", limit=args.limit)
    if images.ndim == 3:  # grayscale stored without a channel axis
        images = images[..., None]
    paths = write_corrupted_set(
        images, labels, args.out, names,
        seed=args.seed, store=args.store, batch_size=args.batch_size, device=device,
        progress=args.progress,
    )  # fmt: skip
    print(f"wrote {len(paths) - 1} corruptions x 5 severities x {len(images)} images to {args.out}")
    return 0
