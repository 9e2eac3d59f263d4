"""Writers for tiny datasets in the exact standard on-disk formats (IDX, CIFAR pickles,
ImageFolder trees, CIFAR-10-C .npy), shared by the data tests and anyone needing files."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, big-endian dims, raw bytes."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as IDX; gzip when ``compress`` (default: when the name ends in .gz)."""
    data = idx_bytes(array)
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def write_fashion_mnist(
    root: Path, *, n_train: int = 12, n_test: int = 6, gz: bool = True, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Four IDX files named as Fashion-MNIST's; returns the arrays written, NHW and labels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        out[split] = (images, labels)
    return out


def _pickle(path: Path, obj: dict) -> None:
    # Protocol 2 like the original (Python 2 written) files.
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar10(
    root: Path, *, per_batch: int = 4, n_test: int = 5, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``root/cifar-10-batches-py`` with data_batch_1..5, test_batch, batches.meta.

    Returns the written data as NHWC images and labels for each split.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rows_by_split: dict[str, list[tuple[np.ndarray, list[int]]]] = {"train": [], "test": []}
    names = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        _pickle(
            folder / name,
            {
                b"batch_label": name.encode(),
                b"labels": labels,
                b"data": data,
                b"filenames": [f"img_{i}.png".encode() for i in range(n)],
            },
        )
        rows_by_split["test" if name == "test_batch" else "train"].append((data, labels))
    _pickle(
        folder / "batches.meta",
        {b"label_names": [b"airplane"] * 10, b"num_cases_per_batch": per_batch, b"num_vis": 3072},
    )
    return {
        split: (
            np.concatenate([d for d, _ in parts]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1),
            np.asarray([v for _, labels in parts for v in labels], dtype=np.int64),
        )
        for split, parts in rows_by_split.items()
    }


def write_cifar100(root: Path, *, n_train: int = 6, n_test: int = 4, seed: int = 0) -> Path:
    """``root/cifar-100-python`` with train, test, meta (fine and coarse labels)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        _pickle(
            folder / name,
            {
                b"filenames": [b"x.png"] * n,
                b"batch_label": name.encode(),
                b"fine_labels": [int(v) for v in rng.integers(0, 100, size=n)],
                b"coarse_labels": [int(v) for v in rng.integers(0, 20, size=n)],
                b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            },
        )
    _pickle(folder / "meta", {b"fine_label_names": [b"apple"] * 100})
    return folder


def write_image_folder(
    root: Path,
    *,
    classes: tuple[str, ...] = ("cat", "dog"),
    per_class: int = 2,
    size: tuple[int, int] = (20, 14),
    splits: tuple[str, ...] = ("train", "val"),
    seed: int = 0,
) -> Path:
    """``root/<split>/<class>/<i>.png`` RGB images of ``size`` (width, height)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in splits:
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root
