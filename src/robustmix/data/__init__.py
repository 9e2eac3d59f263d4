"""Datasets and loaders: Fashion-MNIST (IDX), CIFAR-10/100 (pickles), ImageFolder, a synthetic
set for tests, and precomputed corrupted sets (CIFAR-10-C ``.npy``, ImageNet-C folders).

Every dataset yields float32 images in [0, 1], shape (C, H, W); normalisation lives in the model.
Nothing is downloaded.
"""

from .augment import AUGMENTATIONS, build_transform
from .cifar import load_cifar
from .corrupted import imagenet_c_folder, list_cifar_c, load_cifar_c, open_cifar_c
from .datasets import (
    DATASETS,
    ArrayDataset,
    DatasetInfo,
    build_dataset,
    dataset_info,
    load_split_tensors,
)
from .idx import FASHION_MNIST_ROOT, load_fashion_mnist, read_idx
from .synthetic import make_synthetic

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "FASHION_MNIST_ROOT",
    "ArrayDataset",
    "DatasetInfo",
    "build_dataset",
    "build_transform",
    "dataset_info",
    "imagenet_c_folder",
    "list_cifar_c",
    "load_cifar",
    "load_cifar_c",
    "load_fashion_mnist",
    "load_split_tensors",
    "make_synthetic",
    "open_cifar_c",
    "read_idx",
]
