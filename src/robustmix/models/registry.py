"""Build any supported model by name, always wrapped in :class:`ImageClassifier`.

Names: the local small nets (``compact_cnn``, ``resnet18_cifar``), torchvision's classification
models (``resnet18``, ``resnet50``, ``efficientnet_b0``, ...) and ``timm:<name>`` when timm is
installed. Weights are always random: nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence

import torchvision.models as tvm
from torch import nn

from .classifier import ImageClassifier
from .small import compact_cnn, resnet18_cifar

__all__ = ["LOCAL_MODELS", "available_models", "build_model"]

LOCAL_MODELS: dict[str, Callable[..., nn.Module]] = {
    "compact_cnn": compact_cnn,
    "resnet18_cifar": resnet18_cifar,
}
_TIMM_PREFIX = "timm:"


def _timm_available() -> bool:
    return importlib.util.find_spec("timm") is not None


def _torchvision_names() -> list[str]:
    return sorted(tvm.list_models(module=tvm))


def available_models() -> list[str]:
    """Local names, then torchvision classification names, then ``"timm:<name>"`` if timm is
    importable (any timm model name may follow the prefix)."""
    names = [*LOCAL_MODELS, *_torchvision_names()]
    if _timm_available():
        names.append(_TIMM_PREFIX + "<name>")
    return names


def _adapt_first_conv(net: nn.Module, in_channels: int) -> None:
    """Replace the first ``Conv2d`` in forward (definition) order by one taking ``in_channels``."""
    # named_modules() is depth-first in definition order, i.e. the stem comes first.
    found = next(((name, m) for name, m in net.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None:
        raise ValueError(f"no Conv2d found to adapt to in_channels={in_channels}")
    qualified, old = found
    if old.in_channels == in_channels:
        return
    if old.groups != 1:
        raise ValueError(
            f"cannot adapt the first conv ({old}) to in_channels={in_channels}: it is grouped"
        )
    conv = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,  # type: ignore[arg-type]
        stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding,  # type: ignore[arg-type]
        dilation=old.dilation,  # type: ignore[arg-type]
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    )
    # Torchvision's CNNs init their convs Kaiming-normal (fan_out); keep that for the new stem.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    parent_name, _, child_name = qualified.rpartition(".")
    setattr(net.get_submodule(parent_name), child_name, conv)


def _build_net(name: str, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    if name in LOCAL_MODELS:
        return LOCAL_MODELS[name](num_classes=num_classes, in_channels=in_channels)
    if name.startswith(_TIMM_PREFIX):
        if not _timm_available():
            raise ValueError(
                f"model {name!r} needs timm, which is not installed; `pip install timm`, or pick "
                f"one of: {', '.join(LOCAL_MODELS)}, or a torchvision name"
            )
        import timm  # optional dependency, imported only when asked for

        timm_name = name[len(_TIMM_PREFIX) :]
        try:
            return timm.create_model(
                timm_name, pretrained=False, in_chans=in_channels, num_classes=num_classes
            )
        except RuntimeError as exc:  # timm's "Unknown model" error
            raise ValueError(f"timm has no model {timm_name!r}: {exc}") from exc
    if name in _torchvision_names():
        kwargs = {"image_size": image_size} if name.startswith("vit_") else {}
        net = tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        if in_channels != 3:
            _adapt_first_conv(net, in_channels)
        return net
    raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
) -> ImageClassifier:
    """A randomly initialised classifier taking [0, 1] images.

    Args:
        name: See :func:`available_models`.
        num_classes: Number of output logits.
        in_channels: Input channels (torchvision models get their first conv rebuilt when != 3).
        image_size: Input height = width (needed by ViTs; checked to be positive otherwise).
        mean: Per-channel dataset mean for the ``normalize`` layer (``None``: 0, no shift).
        std: Per-channel dataset std (``None``: 1, no scaling).

    Returns:
        ``ImageClassifier(normalize, net)``.

    Example:
        >>> model = build_model("compact_cnn", num_classes=10, in_channels=1, image_size=28,
        ...                     mean=(0.286,), std=(0.353,))
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels),
                       ("image_size", image_size)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    net = _build_net(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    return ImageClassifier(
        net,
        mean=0.0 if mean is None else mean,
        std=1.0 if std is None else std,
        in_channels=in_channels,
    )
