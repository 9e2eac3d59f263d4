"""Models: small nets for 28-32 px images and a name registry over torchvision (and timm).

Every builder returns an :class:`ImageClassifier` (``normalize`` then ``net``) taking [0, 1]
images; weights are random, nothing is downloaded.
"""

from .classifier import ImageClassifier, Normalize
from .registry import available_models, build_model
from .small import compact_cnn, resnet18_cifar

__all__ = [
    "ImageClassifier",
    "Normalize",
    "available_models",
    "build_model",
    "compact_cnn",
    "resnet18_cifar",
]
