"""IDX files (the MNIST / Fashion-MNIST format), gzip-compressed or raw, validated on read.

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype> <ndim>``, then ``ndim`` big-endian
uint32 dims, then the items. The reader checks every field against the file size, so a truncated
download or a wrong file gives an error that names the file instead of a silent short array.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_ROOT",
    "load_fashion_mnist",
    "read_idx",
]

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_HOW_TO_GET = (
    "Install it with `apt-get install dataset-fashion-mnist` (files land in "
    f"{FASHION_MNIST_ROOT}/), or pass --data-dir pointing at a folder holding the four IDX files "
    "(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
    "t10k-labels-idx1-ubyte[.gz])."
)
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UBYTE = 0x08  # the only dtype code the Fashion-MNIST / MNIST files use


def _read_bytes(path: Path) -> bytes:
    """Whole file contents, gunzipped when the file starts with the gzip magic bytes."""
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise ValueError(
            f"{path}: gzip data is corrupt or truncated ({exc}); expected a complete gzip-compressed "
            f"IDX file. Re-download or reinstall it. {_HOW_TO_GET}"
        ) from exc


def read_idx(path: str | os.PathLike, *, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file of unsigned bytes into a uint8 array of its stored shape.

    Args:
        path: The file, gzip-compressed or raw (detected from the content, not the name).
        ndim: Expected number of dims (3 for images, 1 for labels); ``None`` accepts any.

    Returns:
        A read-only-free ``np.ndarray`` of dtype uint8 and shape ``dims``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: bad magic number, dtype code, dims, or item count vs. file size.

    Example:
        >>> labels = read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz", ndim=1)
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"IDX file {path} is a folder; expected an IDX file. {_HOW_TO_GET}")
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} does not exist. {_HOW_TO_GET}")
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes, too short for the 4-byte IDX magic number")
    zero0, zero1, code, found_ndim = data[:4]
    want_magic = f"0x000008{ndim:02x}" if ndim is not None else "0x000008<ndim>"
    if zero0 != 0 or zero1 != 0 or (ndim is not None and found_ndim != ndim):
        raise ValueError(
            f"{path}: IDX magic number 0x{data[:4].hex()} is not {want_magic} "
            f"({'images' if ndim == 3 else 'labels' if ndim == 1 else 'IDX'}); "
            f"not an IDX file of the expected kind. {_HOW_TO_GET}"
        )
    if code != _IDX_UBYTE:
        raise ValueError(
            f"{path}: IDX dtype code 0x{code:02x} is not 0x08 (unsigned byte); only uint8 IDX "
            "files are supported"
        )
    if found_ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dims; expected at least 1")
    header = 4 + 4 * found_ndim
    if len(data) < header:
        raise ValueError(
            f"{path}: truncated header: {len(data)} bytes, expected {header} for {found_ndim} dims"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=found_ndim, offset=4))
    expected = header + math.prod(dims)  # Python ints: huge header dims cannot overflow
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: file {kind}: {len(data)} bytes (uncompressed) but the header declares "
            f"dims {dims}, i.e. {expected} bytes. {_HOW_TO_GET}"
        )
    # Copy so the array owns writable memory (frombuffer over bytes is read-only).
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    for name in (stem + ".gz", stem):
        if (root / name).is_dir():
            raise ValueError(f"{root / name} is a folder; expected an IDX file. {_HOW_TO_GET}")
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}.gz (or {stem}) not found in {root}. {_HOW_TO_GET}"
    )


def load_fashion_mnist(
    root: str | os.PathLike | None = None, *, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Load a Fashion-MNIST split from its IDX files.

    Args:
        root: Folder holding the IDX files; ``None`` means :data:`FASHION_MNIST_ROOT`.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).

    Returns:
        ``(images, labels)``: uint8 ``(N, 28, 28, 1)`` (NHWC) and int64 ``(N,)``.
    """
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(FASHION_MNIST_FILES)}, got {split!r}")
    root = FASHION_MNIST_ROOT if root is None else Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"Fashion-MNIST --data-dir {root} is a file, not a folder. {_HOW_TO_GET}")
    if not root.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST folder {root} does not exist. {_HOW_TO_GET}")
    image_stem, label_stem = FASHION_MNIST_FILES[split]
    image_path, label_path = _find(root, image_stem), _find(root, label_stem)
    images = read_idx(image_path, ndim=3)
    if images.shape[0] < 1 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{image_path}: holds images of shape {images.shape}; expected (N, 28, 28) with "
            f"N >= 1 for Fashion-MNIST. {_HOW_TO_GET}"
        )
    labels = read_idx(label_path, ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{image_path} holds {images.shape[0]} images but {label_path} holds "
            f"{labels.shape[0]} labels; expected equal counts (mismatched or partial files)"
        )
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise ValueError(
            f"{label_path}: label {int(labels.max())} out of range; expected 0..9 for Fashion-MNIST"
        )
    return images[..., None], labels.astype(np.int64)
