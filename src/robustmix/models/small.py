"""Small networks for 28-32 px images.

* :func:`compact_cnn`: a 3-conv BatchNorm CNN (~0.1 M parameters) for quick CPU runs.
* :func:`resnet18_cifar`: the ResNet-18 used throughout the CIFAR literature (e.g. the
  kuangliu/pytorch-cifar model the Mixup/CutMix papers train): torchvision's ResNet-18 with a
  3x3 stride-1 stem and no max-pool, so 32 px inputs keep a 4x4 map before pooling.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet18

__all__ = ["compact_cnn", "resnet18_cifar"]


def _conv_bn(cin: int, cout: int, *, stride: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
    return [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def compact_cnn(*, num_classes: int, in_channels: int = 1, width: int = 32) -> nn.Module:
    """conv(w, stride 2) - conv(2w) - pool - conv(4w) - global average pool - linear.

    The stride-2 first conv (instead of conv + max-pool at full resolution) halves the time of
    a training step on CPU, where the full-resolution BatchNorm/ReLU/pool passes dominate; the
    cost is ~7.5 M multiply-adds per 28 px image. Global average pooling makes it work at any
    input size >= 4 px.

    Args:
        num_classes: Output logits.
        in_channels: Input channels.
        width: Channels of the first conv (the others are 2x and 4x).

    Shape:
        - Input: ``(N, in_channels, H, W)``; output ``(N, num_classes)``.
    """
    w = width
    return nn.Sequential(
        *_conv_bn(in_channels, w, stride=2),
        *_conv_bn(w, 2 * w),
        nn.MaxPool2d(2),
        *_conv_bn(2 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * w, num_classes),
    )


def resnet18_cifar(*, num_classes: int, in_channels: int = 3) -> nn.Module:
    """ResNet-18 for small images (3x3 stem, stride 1, no max-pool); ~11 M parameters.

    Shape:
        - Input: ``(N, in_channels, H, W)``; output ``(N, num_classes)``.
    """
    net = resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    # Same init torchvision gives every other conv of the net (a fresh Conv2d would differ).
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    return net
