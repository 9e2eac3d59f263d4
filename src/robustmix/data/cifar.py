"""CIFAR-10 / CIFAR-100 from the standard "python version" pickle batches.

The files are unpickled with an allow-list (numpy arrays, lists, dicts, bytes) so a tampered
file cannot run code: the format only needs ``numpy.core.multiarray._reconstruct``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CIFAR10_CLASSES", "CIFAR100_CLASSES", "load_cifar"]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_CIFAR100_NAMES = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
    butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab
    crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard
    lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom
    oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine
    possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake
    spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor
    train trout tulip turtle wardrobe whale willow_tree wolf woman worm"""
CIFAR100_CLASSES = tuple(_CIFAR100_NAMES.split())

# name -> (folder, train files, test files, label key, number of classes)
_LAYOUT: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], bytes, int]] = {
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        b"labels",
        10,
    ),
    "cifar100": ("cifar-100-python", ("train",), ("test",), b"fine_labels", 100),
}
_HOW_TO_GET = (
    "Download the 'CIFAR python version' archive from https://www.cs.toronto.edu/~kriz/cifar.html, "
    "extract it, and pass --data-dir pointing at the folder that contains '{folder}' (or at "
    "'{folder}' itself). Nothing is downloaded automatically."
)
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # protocol-2 pickles of bytes written by Python 3
    ("builtins", "bytearray"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: CIFAR batches only hold numpy arrays, "
                "lists and dicts"
            )
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as exc:
        # A damaged byte inside an allow-listed stream makes numpy's array reconstruction raise
        # almost anything (LookupError, IndexError, AttributeError, SystemError): all mean the same.
        raise ValueError(
            f"{path}: not a readable CIFAR pickle batch ({exc}); expected a dict with keys "
            "b'data' and b'labels' / b'fine_labels'. The file may be truncated: re-extract it."
        ) from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _resolve_folder(root: str | os.PathLike | None, name: str) -> Path:
    """The batch folder for ``name``: ``root/<folder>`` or ``root`` itself when it is that folder."""
    folder = _LAYOUT[name][0]
    if root is None:
        raise FileNotFoundError(
            f"{name} has no default location; pass --data-dir (root=...). "
            + _HOW_TO_GET.format(folder=folder)
        )
    root = Path(root)
    first_file = _LAYOUT[name][2][0]
    for candidate in (root / folder, root):
        if (candidate / first_file).is_file():
            return candidate
    raise FileNotFoundError(
        f"{name}: neither {root / folder} nor {root} holds the batch file '{first_file}'. "
        + _HOW_TO_GET.format(folder=folder)
    )


def _int_labels(values: Any, path: Path, label_key: bytes) -> np.ndarray:
    """``values`` as int64; anything but integers (strings, 1.7, True) is refused, not truncated."""
    try:
        labels = np.asarray(values)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"{path}: {label_key!r} must be a flat list of integers ({exc})") from exc
    if labels.size and labels.dtype.kind not in "iu":
        items = values if isinstance(values, list) else labels.ravel().tolist()
        bad = next((v for v in items if isinstance(v, bool) or not isinstance(v, int)), items[0])
        raise ValueError(f"{path}: {label_key!r} must hold integer class labels, found {bad!r}")
    return labels.astype(np.int64)


def _read_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR batch file {path} does not exist (incomplete extraction?)")
    batch = _unpickle(path)
    if b"data" not in batch or label_key not in batch:
        raise ValueError(
            f"{path}: expected keys b'data' and {label_key!r}, found {sorted(batch)!r}"
        )
    data = np.asarray(batch[b"data"])
    labels = _int_labels(batch[label_key], path, label_key)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"{path}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: {label_key!r} has shape {labels.shape}, expected ({data.shape[0]},) "
            "to match b'data'"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{path}: labels must lie in 0..{num_classes - 1}, found "
            f"{int(labels.min())}..{int(labels.max())}"
        )
    # Rows are channel-major (1024 R, 1024 G, 1024 B); convert to NHWC like every other loader.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def load_cifar(
    root: str | os.PathLike | None, *, name: str = "cifar10", split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Load a CIFAR split from the python pickle batches.

    Args:
        root: The folder containing ``cifar-10-batches-py`` / ``cifar-100-python``, or that
            folder itself.
        name: ``"cifar10"`` or ``"cifar100"`` (fine labels).
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(images, labels)``: uint8 ``(N, 32, 32, 3)`` and int64 ``(N,)``.
    """
    if name not in _LAYOUT:
        raise ValueError(f"name must be one of {sorted(_LAYOUT)}, got {name!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = _resolve_folder(root, name)
    _, train_files, test_files, label_key, num_classes = _LAYOUT[name]
    files = train_files if split == "train" else test_files
    parts = [_read_batch(folder / f, label_key, num_classes) for f in files]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return images, labels
