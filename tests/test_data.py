"""robustmix.data: loaders on tiny files written in the exact standard formats, plus the real
Fashion-MNIST when it is installed."""

from __future__ import annotations

import ast
import gzip
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import robustmix.data as rdata
from _fixtures_data import (
    idx_bytes,
    write_cifar10,
    write_cifar100,
    write_fashion_mnist,
    write_idx,
    write_image_folder,
)
from robustmix.data import (
    AUGMENTATIONS,
    DATASETS,
    ArrayDataset,
    build_dataset,
    build_transform,
    dataset_info,
    imagenet_c_folder,
    load_cifar,
    load_cifar_c,
    load_fashion_mnist,
    load_split_tensors,
    make_synthetic,
    read_idx,
)

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")
HAVE_REAL_FMNIST = (REAL_FMNIST / "t10k-labels-idx1-ubyte.gz").is_file()


def test_public_names() -> None:
    expected = {
        "AUGMENTATIONS", "DATASETS", "FASHION_MNIST_ROOT", "ArrayDataset", "DatasetInfo",
        "build_dataset", "build_transform", "dataset_info", "imagenet_c_folder", "list_cifar_c",
        "load_cifar", "load_cifar_c", "load_fashion_mnist", "load_split_tensors",
        "make_synthetic", "open_cifar_c", "read_idx",
    }  # fmt: skip
    assert set(rdata.__all__) == expected
    assert all(hasattr(rdata, n) for n in expected)


def test_data_package_does_not_import_cli_extras() -> None:
    # matplotlib/tqdm are the `cli` extra; the data package must not need them.
    for path in Path(rdata.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in {"matplotlib", "tqdm"}, (path, name)


# ------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrip(tmp_path: Path, compress: bool) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "a-idx3-ubyte", array, compress=compress)
    out = read_idx(path, ndim=3)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, array)
    out[0, 0, 0] = 7  # owns writable memory


def test_idx_header_bytes_match_the_spec() -> None:
    # Independent of the writer: magic 0x00000803 then big-endian dims.
    data = idx_bytes(np.zeros((2, 28, 28), dtype=np.uint8))
    assert data[:4] == bytes.fromhex("00000803")
    assert data[4:16] == bytes.fromhex("000000020000001c0000001c")
    assert len(data) == 16 + 2 * 28 * 28


def test_read_idx_detects_gzip_by_content_not_name(tmp_path: Path) -> None:
    labels = np.array([3, 1, 4], dtype=np.uint8)
    raw_named_gz = write_idx(tmp_path / "labels.gz", labels, compress=False)
    gz_named_raw = write_idx(tmp_path / "labels-raw", labels, compress=True)
    np.testing.assert_array_equal(read_idx(raw_named_gz, ndim=1), labels)
    np.testing.assert_array_equal(read_idx(gz_named_raw, ndim=1), labels)


def test_read_idx_rejects_wrong_magic(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels", np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"magic number 0x00000801 is not 0x00000803"):
        read_idx(path, ndim=3)
    junk = tmp_path / "junk"
    junk.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ValueError, match=r"junk: IDX magic number 0x504b0304"):
        read_idx(junk)


def test_read_idx_rejects_wrong_dtype_code(tmp_path: Path) -> None:
    data = bytearray(idx_bytes(np.zeros(4, dtype=np.uint8)))
    data[2] = 0x0D  # float
    (tmp_path / "f").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"dtype code 0x0d is not 0x08"):
        read_idx(tmp_path / "f", ndim=1)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_rejects_truncated_and_padded(tmp_path: Path, compress: bool) -> None:
    full = idx_bytes(np.zeros((3, 4, 4), dtype=np.uint8))
    for name, data, pattern in (
        ("short", full[:-5], r"truncated: 59 bytes .* dims \(3, 4, 4\), i\.e\. 64 bytes"),
        ("long", full + b"\0", r"has trailing bytes: 65 bytes"),
        ("header", full[:9], r"truncated header: 9 bytes, expected 16"),
        ("empty", b"", r"0 bytes, too short"),
    ):
        path = tmp_path / name
        path.write_bytes(gzip.compress(data) if compress else data)
        with pytest.raises(ValueError, match=pattern):
            read_idx(path, ndim=3)


def test_read_idx_rejects_truncated_gzip(tmp_path: Path) -> None:
    blob = gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8).reshape(10, 10, 10)))
    (tmp_path / "cut.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"cut\.gz: gzip data is corrupt or truncated"):
        read_idx(tmp_path / "cut.gz")


def test_read_idx_missing_file_says_how_to_get_data(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope.*apt-get install dataset-fashion-mnist"):
        read_idx(tmp_path / "nope")


@pytest.mark.parametrize("gz", [True, False])
def test_load_fashion_mnist_tiny(tmp_path: Path, gz: bool) -> None:
    written = write_fashion_mnist(tmp_path, gz=gz)
    for split in ("train", "test"):
        images, labels = load_fashion_mnist(tmp_path, split=split)
        assert images.shape == (len(written[split][0]), 28, 28, 1) and images.dtype == np.uint8
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(images[..., 0], written[split][0])
        np.testing.assert_array_equal(labels, written[split][1])


def test_load_fashion_mnist_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"does not exist.*--data-dir"):
        load_fashion_mnist(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte\.gz \(or .*not found"):
        load_fashion_mnist(tmp_path, split="test")
    with pytest.raises(ValueError, match=r"split must be one of \['test', 'train'\], got 'val'"):
        load_fashion_mnist(tmp_path, split="val")
    write_fashion_mnist(tmp_path, n_test=6)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"holds 6 images but .* holds 5 labels"):
        load_fashion_mnist(tmp_path, split="test")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(6, 10, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"label 10 out of range"):
        load_fashion_mnist(tmp_path, split="test")


def test_build_dataset_fashion_mnist_tiny(tmp_path: Path) -> None:
    written = write_fashion_mnist(tmp_path)
    ds = build_dataset("fashion_mnist", root=tmp_path, split="train")
    assert len(ds) == 12
    x, y = ds[3]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28)
    # Standard augmentation for Fashion-MNIST is none: item == pixels / 255 exactly.
    torch.testing.assert_close(x[0], torch.from_numpy(written["train"][0][3]).float() / 255)
    assert y == int(written["train"][1][3]) and isinstance(y, int)
    up = build_dataset("fashion_mnist", root=tmp_path, split="test", image_size=32)
    assert up[0][0].shape == (1, 32, 32)


@pytest.mark.skipif(not HAVE_REAL_FMNIST, reason="Fashion-MNIST not installed at /usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist)")  # fmt: skip
def test_real_fashion_mnist_test_split() -> None:
    images, labels = load_split_tensors("fashion_mnist", split="test")
    assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.uint8
    # The published test split is balanced: 1,000 images per class.
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 1000))
    ds = build_dataset("fashion_mnist", split="test", augment="none")
    assert len(ds) == 10_000
    torch.testing.assert_close(ds[17][0][0], torch.from_numpy(images[17, :, :, 0]).float() / 255)


@pytest.mark.skipif(not HAVE_REAL_FMNIST, reason="Fashion-MNIST not installed at /usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist)")  # fmt: skip
def test_real_fashion_mnist_train_stats_match_dataset_info() -> None:
    images, labels = load_fashion_mnist(split="train")
    assert images.shape == (60_000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 6000))
    # Exact moments from the 256-bin histogram (no 47M-element float copy).
    hist = np.bincount(images.ravel(), minlength=256).astype(np.float64)
    values = np.arange(256) / 255
    mean = (hist * values).sum() / hist.sum()
    std = np.sqrt((hist * (values - mean) ** 2).sum() / hist.sum())
    info = dataset_info("fashion_mnist")
    assert mean == pytest.approx(info.mean[0], abs=5e-5)
    assert std == pytest.approx(info.std[0], abs=5e-5)


# ------------------------------------------------------------------------------------------
# CIFAR


def test_load_cifar10_both_root_forms(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path, per_batch=4, n_test=5)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        for split, n in (("train", 20), ("test", 5)):
            images, labels = load_cifar(root, name="cifar10", split=split)
            assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
            assert labels.dtype == np.int64
            np.testing.assert_array_equal(images, written[split][0])
            np.testing.assert_array_equal(labels, written[split][1])


def test_cifar_rows_are_channel_major(tmp_path: Path) -> None:
    # Independent check of the layout: byte c*1024 + y*32 + x is channel c at (y, x).
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(tmp_path)
    data = np.zeros((1, 3072), dtype=np.uint8)
    data[0, 2 * 1024 + 5 * 32 + 7] = 200  # blue, row 5, column 7
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [3]}, protocol=2))
    images, labels = load_cifar(tmp_path, split="test")
    assert images[0, 5, 7, 2] == 200 and int(images.sum()) == 200 and labels.tolist() == [3]


def test_load_cifar100_fine_labels(tmp_path: Path) -> None:
    folder = write_cifar100(tmp_path, n_train=6, n_test=4)
    raw = pickle.loads((folder / "test").read_bytes(), encoding="bytes")
    images, labels = load_cifar(tmp_path, name="cifar100", split="test")
    assert images.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(labels, raw[b"fine_labels"])
    assert dataset_info("cifar100").num_classes == 100 == len(dataset_info("cifar100").class_names)


def test_cifar_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no default location.*cifar-10-batches-py"):
        load_cifar(None)
    with pytest.raises(FileNotFoundError, match=r"holds the batch file 'test_batch'"):
        load_cifar(tmp_path)
    with pytest.raises(ValueError, match=r"name must be one of \['cifar10', 'cifar100'\]"):
        load_cifar(tmp_path, name="cifar1000")
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"data_batch_3 does not exist"):
        load_cifar(tmp_path, split="train")
    test = folder / "test_batch"
    cases = [
        ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, r"\(N, 3072\), got uint8 \(2, 3000\)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, r"has shape \(1,\), expected \(2,\)"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, r"labels must lie in 0\.\.9"),
        ({b"data": np.zeros((1, 3072), np.uint8)}, r"expected keys b'data' and b'labels'"),
    ]  # fmt: skip
    for obj, pattern in cases:
        test.write_bytes(pickle.dumps(obj, protocol=2))
        with pytest.raises(ValueError, match=pattern):
            load_cifar(tmp_path, split="test")
    test.write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8)})[:40])
    with pytest.raises(ValueError, match=r"not a readable CIFAR pickle batch"):
        load_cifar(tmp_path, split="test")


# numpy warns about a damaged dtype argument and reports an internal error it cannot raise.
@pytest.mark.filterwarnings("ignore::numpy.exceptions.VisibleDeprecationWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_cifar_damaged_byte_is_a_value_error_naming_the_file(tmp_path: Path) -> None:
    # Every single-byte change outside the pixel payload either still loads or is refused with a
    # ValueError naming the file: numpy's reconstruction of a damaged stream raised LookupError,
    # AttributeError, IndexError and SystemError before (e.g. byte 47 -> 1: "unknown encoding").
    # Values below 128: protocol 2 stores the bytes as latin-1 text in UTF-8, unchanged for these.
    pixels = (np.arange(3072) % 128).astype(np.uint8).reshape(1, 3072)
    raw = pickle.dumps({b"data": pixels, b"labels": [3]}, protocol=2)
    start = raw.index(pixels.tobytes())
    outside = [i for i in range(len(raw)) if not start <= i < start + pixels.size]
    write_cifar10(tmp_path)
    test = tmp_path / "cifar-10-batches-py" / "test_batch"
    refused = 0
    for offset in outside:
        for value in (0, 1, 0xFF):
            damaged = bytearray(raw)
            damaged[offset] = value
            test.write_bytes(bytes(damaged))
            try:
                load_cifar(tmp_path, split="test")
            except ValueError as exc:
                assert str(test) in str(exc)
                refused += 1
    assert refused > len(outside)  # most damage is caught, not silently loaded


class _Evil:
    def __reduce__(self):  # would run os.system on a plain pickle.load
        import os

        return (os.system, ("echo hacked",))


def test_cifar_unpickler_refuses_code(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(
        pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2)
    )
    with pytest.raises(ValueError, match=r"refusing to load global"):
        load_cifar(tmp_path, split="test")


def test_cifar_standard_augmentation_is_pad4_crop_and_flip(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    original = torch.from_numpy(written["train"][0][0]).permute(2, 0, 1)
    padded = torch.nn.functional.pad(original, (4, 4, 4, 4))  # zero fill, in uint8
    candidates = [
        view
        for dy in range(9)
        for dx in range(9)
        for view in (padded[:, dy : dy + 32, dx : dx + 32],)
        for view in (view, view.flip(-1))
    ]
    ds = build_dataset("cifar10", root=tmp_path, split="train", augment="standard")
    torch.manual_seed(0)
    outs = [ds[0][0] for _ in range(12)]
    for out in outs:
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
        as_uint8 = (out * 255).round().to(torch.uint8)
        assert any(torch.equal(as_uint8, c) for c in candidates)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # it is random
    plain = build_dataset("cifar10", root=tmp_path, split="test", augment="standard")
    torch.testing.assert_close(
        plain[0][0], torch.from_numpy(written["test"][0][0]).permute(2, 0, 1).float() / 255
    )


# ------------------------------------------------------------------------------------------
# ImageFolder


def test_imagefolder(tmp_path: Path) -> None:
    write_image_folder(tmp_path, classes=("cat", "dog"), per_class=2, size=(20, 14))
    info = dataset_info("imagefolder", root=tmp_path)
    assert info.class_names == ("cat", "dog") and info.num_classes == 2
    assert info.mean == (0.485, 0.456, 0.406) and info.std == (0.229, 0.224, 0.225)
    for split in ("train", "test"):
        ds = build_dataset("imagefolder", root=tmp_path, split=split, image_size=16)
        assert len(ds) == 4
        x, y = ds[3]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 1
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert len(build_dataset("imagefolder", root=tmp_path, limit=3)) == 3
    images, labels = load_split_tensors("imagefolder", root=tmp_path, image_size=12)
    assert images.shape == (4, 12, 12, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 0, 1, 1]


def test_imagefolder_test_transform_is_resize_center_crop(tmp_path: Path) -> None:
    from PIL import Image

    write_image_folder(tmp_path, classes=("a",), per_class=1, splits=("train", "test"))
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    pixels[:, 8:] = 255  # left half black, right half white
    Image.fromarray(pixels).save(tmp_path / "test" / "a" / "0.png")
    x, _ = build_dataset("imagefolder", root=tmp_path, split="test", image_size=14)[0]
    # Resize 14/0.875 = 16 (no-op), center crop 14: columns 1..14 of the original.
    expected = torch.from_numpy(pixels[1:15, 1:15]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(x, expected)


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'imagefolder' needs root"):
        dataset_info("imagefolder")
    write_image_folder(tmp_path, splits=("train",))
    with pytest.raises(FileNotFoundError, match=r"val or .*test .*folders present: \['train'\]"):
        build_dataset("imagefolder", root=tmp_path, split="test")


# ------------------------------------------------------------------------------------------
# Synthetic


def test_synthetic_is_deterministic_and_balanced() -> None:
    a = make_synthetic(split="train", num_samples=40, seed=3)
    b = make_synthetic(split="train", num_samples=40, seed=3)
    c = make_synthetic(split="train", num_samples=40, seed=4)
    t = make_synthetic(split="test", num_samples=40, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[0], t[0])
    assert a[0].shape == (40, 28, 28, 1) and a[0].dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(a[1]), np.full(10, 4))
    rgb, _ = make_synthetic(num_samples=5, channels=3, image_size=32)
    assert rgb.shape == (5, 32, 32, 3)


@pytest.mark.parametrize("name", ["synthetic", "synthetic_rgb"])
def test_synthetic_is_learnable(name: str) -> None:
    # Nearest class mean on train pixels must classify held-out test images well above chance.
    train_x, train_y = load_split_tensors(name, split="train", limit=300, seed=1)
    test_x, test_y = load_split_tensors(name, split="test", limit=200, seed=1)
    flat = train_x.reshape(len(train_x), -1).astype(np.float64)
    means = np.stack([flat[train_y == k].mean(0) for k in range(10)])
    test_flat = test_x.reshape(len(test_x), -1).astype(np.float64)
    dists = ((test_flat[:, None, :] - means[None]) ** 2).sum(-1)
    assert (dists.argmin(1) == test_y).mean() > 0.9


def test_synthetic_dataset_matches_info() -> None:
    for name in ("synthetic", "synthetic_rgb"):
        info = dataset_info(name)
        ds = build_dataset(name, split="test", limit=6, seed=2)
        assert len(ds) == 6
        x, y = ds[0]
        assert x.shape == (info.in_channels, info.image_size, info.image_size)
        assert 0 <= y < info.num_classes
    assert len(build_dataset("synthetic", split="train")) == 512


def test_make_synthetic_errors() -> None:
    for kwargs, pattern in (
        ({"channels": 2}, r"channels must be 1 or 3, got 2"),
        ({"num_samples": 0}, r"num_samples must be >= 1, got 0"),
        ({"num_classes": 1}, r"num_classes must be >= 2, got 1"),
        ({"image_size": 3}, r"image_size must be >= 4, got 3"),
        ({"noise": 2.0}, r"noise must lie in \[0, 1\], got 2.0"),
        ({"split": "val"}, r"split must be 'train' or 'test', got 'val'"),
    ):
        with pytest.raises(ValueError, match=pattern):
            make_synthetic(**kwargs)


# ------------------------------------------------------------------------------------------
# Registry and augmentation


def test_dataset_info_published_stats() -> None:
    assert DATASETS == (
        "fashion_mnist", "cifar10", "cifar100", "imagefolder", "synthetic", "synthetic_rgb",
    )  # fmt: skip
    fm = dataset_info("Fashion-MNIST")
    assert (fm.name, fm.num_classes, fm.in_channels, fm.image_size) == ("fashion_mnist", 10, 1, 28)
    assert fm.mean == (0.2860,) and fm.std == (0.3530,)
    assert fm.class_names[0] == "T-shirt/top" and fm.class_names[9] == "Ankle boot"
    c10 = dataset_info("cifar10")
    assert c10.mean == (0.4914, 0.4822, 0.4465) and c10.std == (0.2470, 0.2435, 0.2616)
    assert c10.class_names[0] == "airplane" and len(c10.class_names) == 10
    c100 = dataset_info("cifar100")
    assert c100.mean == (0.5071, 0.4865, 0.4409) and c100.std == (0.2673, 0.2564, 0.2762)
    assert c100.class_names[:2] == ("apple", "aquarium_fish") and c100.class_names[-1] == "worm"
    with pytest.raises(AttributeError):
        fm.num_classes = 3  # type: ignore[misc]


def test_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; available: fashion_mnist, "):
        dataset_info("mnist")
    with pytest.raises(TypeError, match=r"dataset name must be a str, got int"):
        build_dataset(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'test'\], got 'val'"):
        build_dataset("synthetic", split="val")
    with pytest.raises(ValueError, match=r"augment must be one of .*'augmix'.*got 'cutout'"):
        build_dataset("synthetic", augment="cutout")
    with pytest.raises(ValueError, match=r"limit must be a positive int or None, got 0"):
        load_split_tensors("synthetic", limit=0)
    with pytest.raises(ValueError, match=r"image_size must be a positive int or None, got -1"):
        build_dataset("synthetic", image_size=-1)
    with pytest.raises(ValueError, match=r"dataset must be one of"):
        build_transform("mnist", split="train", augment="none", image_size=28, native_size=28)


def test_array_dataset_validates() -> None:
    with pytest.raises(ValueError, match=r"images must be uint8 \(N, H, W, C\), got float64"):
        ArrayDataset(np.zeros((2, 4, 4, 1)), np.zeros(2))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\) to match images"):
        ArrayDataset(np.zeros((2, 4, 4, 1), np.uint8), np.zeros(3))
    ds = ArrayDataset(np.full((2, 4, 4, 3), 51, np.uint8), np.array([1, 0]))
    x, y = ds[0]
    assert x.shape == (3, 4, 4) and torch.allclose(x, torch.full_like(x, 0.2)) and y == 1


@pytest.mark.parametrize("augment", AUGMENTATIONS)
@pytest.mark.parametrize("name", ["synthetic", "synthetic_rgb"])
def test_every_augmentation_runs_on_gray_and_rgb(name: str, augment: str) -> None:
    info = dataset_info(name)
    train = build_dataset(name, split="train", augment=augment, limit=4)
    test = build_dataset(name, split="test", augment=augment, limit=4)
    raw, _ = load_split_tensors(name, split="test", limit=4)
    for i in range(4):
        x, _ = train[i]
        assert x.dtype == torch.float32
        assert x.shape == (info.in_channels, info.image_size, info.image_size)
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        # The test split is never augmented.
        expected = torch.from_numpy(raw[i]).permute(2, 0, 1).float() / 255
        torch.testing.assert_close(test[i][0], expected)


def test_policy_augmentation_changes_images() -> None:
    plain = build_dataset("synthetic_rgb", split="train", augment="none", limit=8)
    torch.manual_seed(0)
    aug = build_dataset("synthetic_rgb", split="train", augment="trivialaugment", limit=8)
    changed = sum(not torch.equal(plain[i][0], aug[i][0]) for i in range(8))
    assert changed >= 4


def test_dataloader_workers_make_augmentation_reproducible() -> None:
    ds = build_dataset("synthetic_rgb", split="train", augment="randaugment", limit=16)

    def batches(seed: int) -> list[torch.Tensor]:
        loader = torch.utils.data.DataLoader(
            ds, batch_size=8, num_workers=2, generator=torch.Generator().manual_seed(seed)
        )
        return [x for x, _ in loader]

    a, b, c = batches(5), batches(5), batches(6)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


# ------------------------------------------------------------------------------------------
# Corrupted sets


def _write_cifar_c(root: Path, *, n: int = 3, gray: bool = False, labels_5n: bool = True) -> None:
    root.mkdir(parents=True, exist_ok=True)
    shape = (5 * n, 4, 4) if gray else (5 * n, 4, 4, 3)
    images = np.zeros(shape, dtype=np.uint8)
    for s in range(5):  # severity-major: rows s*n..(s+1)*n hold severity s+1
        images[s * n : (s + 1) * n] = 10 * (s + 1) + np.arange(n).reshape(
            (n,) + (1,) * (images.ndim - 1)
        )
    np.save(root / "gaussian_noise.npy", images)
    labels = np.arange(n) + 1
    np.save(root / "labels.npy", np.tile(labels, 5) if labels_5n else labels)


@pytest.mark.parametrize("labels_5n", [True, False])
def test_load_cifar_c(tmp_path: Path, labels_5n: bool) -> None:
    _write_cifar_c(tmp_path, n=3, labels_5n=labels_5n)
    for severity in range(1, 6):
        images, labels = load_cifar_c(tmp_path, "gaussian_noise", severity)
        assert images.shape == (3, 4, 4, 3) and images.dtype == np.uint8
        assert images[:, 0, 0, 0].tolist() == [10 * severity + i for i in range(3)]
        assert labels.tolist() == [1, 2, 3] and labels.dtype == np.int64
    assert rdata.list_cifar_c(tmp_path) == ["gaussian_noise"]


@pytest.mark.parametrize("labels_5n", [True, False])
def test_load_cifar_c_limit_reads_the_first_images_of_the_slice(tmp_path: Path, labels_5n: bool) -> None:
    _write_cifar_c(tmp_path, n=4, labels_5n=labels_5n)
    images, labels = load_cifar_c(tmp_path, "gaussian_noise", 3, limit=2)
    assert images[:, 0, 0, 0].tolist() == [30, 31] and labels.tolist() == [1, 2]
    images, labels = load_cifar_c(tmp_path, "gaussian_noise", 5, limit=9)  # more than the slice holds
    assert images[:, 0, 0, 0].tolist() == [50, 51, 52, 53] and labels.tolist() == [1, 2, 3, 4]
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="limit: expected a positive int or None"):
            load_cifar_c(tmp_path, "gaussian_noise", 1, limit=bad)  # type: ignore[arg-type]


def test_open_cifar_c_maps_without_reading_images(tmp_path: Path) -> None:
    _write_cifar_c(tmp_path, n=3, gray=True)
    images, labels = rdata.open_cifar_c(tmp_path, "gaussian_noise")
    # memory maps: the header's layout, no image bytes read
    assert isinstance(images, np.memmap) and isinstance(labels, np.memmap)
    assert images.shape == (15, 4, 4) and labels.tolist() == [1, 2, 3] * 5
    with pytest.raises(FileNotFoundError, match=r"'fog'.*available in .*\['gaussian_noise'\]"):
        rdata.open_cifar_c(tmp_path, "fog")


def test_load_cifar_c_grayscale_gets_channel_axis(tmp_path: Path) -> None:
    _write_cifar_c(tmp_path, n=2, gray=True)
    images, _ = load_cifar_c(tmp_path, "gaussian_noise", 2)
    assert images.shape == (2, 4, 4, 1) and images[1, 0, 0, 0] == 21


def test_load_cifar_c_errors(tmp_path: Path) -> None:
    _write_cifar_c(tmp_path, n=3)
    with pytest.raises(FileNotFoundError, match=r"'fog'.*available in .*\['gaussian_noise'\]"):
        load_cifar_c(tmp_path, "fog", 1)
    for bad in (0, 6, 2.5, True):
        with pytest.raises(ValueError, match=r"severity must be one of \[1, 2, 3, 4, 5\]"):
            load_cifar_c(tmp_path, "gaussian_noise", bad)  # type: ignore[arg-type]
    np.save(tmp_path / "snow.npy", np.zeros((7, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"first dim 7 is not a multiple of 5"):
        load_cifar_c(tmp_path, "snow", 1)
    np.save(tmp_path / "snow.npy", np.zeros((15, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"expected uint8 images .* got float32"):
        load_cifar_c(tmp_path, "snow", 1)
    np.save(tmp_path / "snow.npy", np.zeros((15, 4, 4, 5), np.uint8))
    with pytest.raises(ValueError, match=r"last dim must be channels \(1 or 3\)"):
        load_cifar_c(tmp_path, "snow", 1)
    np.save(tmp_path / "snow.npy", np.zeros((10, 4, 4, 3), np.uint8))
    with pytest.raises(
        ValueError, match=r"labels\.npy: shape \(15,\) does not match .* \(10,\) or \(2,\)"
    ):
        load_cifar_c(tmp_path, "snow", 1)
    full = (tmp_path / "gaussian_noise.npy").read_bytes()
    (tmp_path / "fog.npy").write_bytes(full[: len(full) // 2])  # a download cut short
    with pytest.raises(ValueError, match=r"fog\.npy: not a readable \.npy array .*truncated"):
        load_cifar_c(tmp_path, "fog", 1)
    (tmp_path / "fog.npy").write_bytes(full[:8] + b"\x01" + full[9:])  # header length damaged
    with pytest.raises(ValueError, match=r"fog\.npy: not a readable \.npy array"):
        load_cifar_c(tmp_path, "fog", 1)  # numpy's own error here is tokenize.TokenError
    (tmp_path / "labels.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"labels\.npy does not exist"):
        load_cifar_c(tmp_path, "gaussian_noise", 1)


def test_imagenet_c_folder(tmp_path: Path) -> None:
    write_image_folder(
        tmp_path / "gaussian_noise", classes=("n01", "n02"), per_class=2, splits=("3",)
    )
    ds = imagenet_c_folder(tmp_path, "gaussian_noise", 3)
    assert len(ds) == 4 and ds.classes == ["n01", "n02"]
    x, y = ds[2]
    assert x.shape == (3, 14, 20) and x.dtype == torch.float32 and y == 1
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    with pytest.raises(FileNotFoundError, match=r"'fog'.*present in .*\['gaussian_noise'\]"):
        imagenet_c_folder(tmp_path, "fog", 3)
    with pytest.raises(
        FileNotFoundError, match=r"severity 1: .*present for 'gaussian_noise': \['3'\]"
    ):
        imagenet_c_folder(tmp_path, "gaussian_noise", 1)
    with pytest.raises(ValueError, match=r"severity must be one of"):
        imagenet_c_folder(tmp_path, "gaussian_noise", 7)


def test_imagenet_c_folder_names_bad_files_and_empty_folders(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "fog", classes=("n01", "n02"), per_class=2, splits=("2",))
    from PIL import Image

    victim = tmp_path / "fog" / "2" / "n02" / "0.JPEG"  # sorts first in n02: item 2
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(victim, quality=85)
    victim.write_bytes(victim.read_bytes()[:2000])  # a JPEG cut short (PIL: "image file is truncated")
    ds = imagenet_c_folder(tmp_path, "fog", 2)
    assert ds[0][0].shape[0] == 3  # the good files still load
    with pytest.raises(ValueError, match=rf"{re.escape(str(victim))}: not a readable image .*truncated"):
        ds[2]
    victim.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"{re.escape(str(victim))}: not a readable image"):
        imagenet_c_folder(tmp_path, "fog", 2)[2]
    (tmp_path / "fog" / "4" / "n01").mkdir(parents=True)  # class folder without images
    with pytest.raises(FileNotFoundError, match=r"ImageNet-C 'fog' severity 4: .*fog/4 holds no images"):
        imagenet_c_folder(tmp_path, "fog", 4)


# ------------------------------------------------------------------------------------------
# Bad files named in every error


def test_read_idx_huge_header_dims_do_not_overflow(tmp_path: Path) -> None:
    # 2**31 * 2**31 * 4 wraps to 0 in int64, which once made this 16-byte file "fit".
    path = tmp_path / "huge-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + (2**31).to_bytes(4, "big") * 2 + (4).to_bytes(4, "big"))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: file truncated: 16 bytes"):
        read_idx(path, ndim=3)


def test_read_idx_folder_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path))} is a folder; expected an IDX file"):
        read_idx(tmp_path)


def test_load_fashion_mnist_refuses_empty_and_wrong_size_files(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, n_test=0)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    with pytest.raises(ValueError, match=rf"{re.escape(str(images))}: holds images of shape \(0, 28, 28\); expected \(N, 28, 28\) with N >= 1"):
        load_fashion_mnist(tmp_path, split="test")
    write_idx(images, np.zeros((3, 32, 32), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match=r"holds images of shape \(3, 32, 32\); expected \(N, 28, 28\)"):
        load_fashion_mnist(tmp_path, split="test")


def test_load_fashion_mnist_paths_that_are_not_what_they_should_be(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match=rf"{re.escape(str(afile))} is a file, not a folder"):
        load_fashion_mnist(afile)
    write_fashion_mnist(tmp_path / "d")
    labels = tmp_path / "d" / "t10k-labels-idx1-ubyte.gz"
    labels.unlink()
    labels.mkdir()
    with pytest.raises(ValueError, match=rf"{re.escape(str(labels))} is a folder; expected an IDX file"):
        load_fashion_mnist(tmp_path / "d", split="test")


@pytest.mark.parametrize(
    ("labels", "found"), [([0, "x"], "'x'"), ([0, 1.7], "1.7"), ([True, False], "True")]
)
def test_cifar_labels_must_be_integers(tmp_path: Path, labels: list, found: str) -> None:
    write_cifar10(tmp_path)
    test = tmp_path / "cifar-10-batches-py" / "test_batch"
    test.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}, protocol=2))
    with pytest.raises(ValueError, match=rf"{re.escape(str(test))}: b'labels' must hold integer class labels, found {re.escape(found)}"):
        load_cifar(tmp_path, split="test")


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([1.0, 2.0, 1.7] * 5), r"expected integer class labels, got dtype float64"),
        (np.array([0, -1, 2] * 5), r"expected class labels >= 0, found -1"),
    ],
)
def test_load_cifar_c_refuses_non_class_labels(tmp_path: Path, labels: np.ndarray, message: str) -> None:
    _write_cifar_c(tmp_path, n=3)
    np.save(tmp_path / "labels.npy", labels)
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path / 'labels.npy'))}: {message}"):
        load_cifar_c(tmp_path, "gaussian_noise", 1)
