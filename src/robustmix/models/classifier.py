"""The model wrapper every builder returns: per-channel normalisation, then the network.

Keeping normalisation inside the model lets datasets, corruptions and diagnostics work in
[0, 1] pixel space, while training can still mix *normalised* images
(``x = model.normalize(x01); logits = model.net(mixer(x))``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ImageClassifier", "Normalize"]


def _as_channel_tuple(
    values: Sequence[float] | float, channels: int, name: str
) -> tuple[float, ...]:
    if isinstance(values, int | float):
        values = (float(values),)
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(
            f"{name} must have 1 or {channels} (in_channels) values, got {len(values)}: {values}"
        )
    return values


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; no parameters and nothing in the state dict.

    mean/std are non-persistent buffers: they follow ``.to(device)`` but are rebuilt from the
    config (dataset mean/std) rather than stored, so checkpoints hold only learned weights.

    Args:
        mean: One value per channel (or one value for all).
        std: One positive value per channel (or one value for all).
        channels: Number of input channels.

    Shape:
        - Input: ``(N, C, H, W)``, any float dtype, any memory format.
        - Output: same shape and dtype.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self, mean: Sequence[float] | float, std: Sequence[float] | float, *, channels: int
    ) -> None:
        super().__init__()
        mean_t = _as_channel_tuple(mean, channels, "mean")
        std_t = _as_channel_tuple(std, channels, "std")
        if any(not s > 0 for s in std_t):
            raise ValueError(f"std must be positive, got {std_t}")
        self.channels = channels
        self.register_buffer(
            "mean", torch.tensor(mean_t, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std_t, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"expected input of shape (N, {self.channels}, H, W), got {tuple(x.shape)}"
            )
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        mean = tuple(round(v, 4) for v in self.mean.flatten().tolist())
        std = tuple(round(v, 4) for v in self.std.flatten().tolist())
        return f"mean={mean}, std={std}"


class ImageClassifier(nn.Module):
    """``net(normalize(x))`` for images in [0, 1].

    Args:
        net: A module mapping normalised ``(N, C, H, W)`` images to ``(N, num_classes)`` logits.
        mean: Per-channel dataset mean (see :class:`Normalize`).
        std: Per-channel dataset std.
        in_channels: C.

    Example:
        >>> model = ImageClassifier(nn.Sequential(nn.Flatten(), nn.LazyLinear(10)),
        ...                         mean=(0.5,), std=(0.25,), in_channels=1)
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        mean: Sequence[float] | float = 0.0,
        std: Sequence[float] | float = 1.0,
        in_channels: int,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std, channels=in_channels)
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))
