"""Training losses: cross-entropy against soft (mixed) targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["classification_loss", "soft_target_cross_entropy"]


def soft_target_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of ``-sum_k targets[k] * log_softmax(logits)[k]``.

    Computed in float32 even under autocast, because log-softmax of low-precision logits loses
    the small probabilities that soft targets put weight on.

    Shape:
        logits ``(N, K)``, targets ``(N, K)`` (rows summing to 1) -> scalar.
    """
    if logits.shape != targets.shape:
        raise ValueError(
            f"logits and targets must have the same shape, got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return -(targets.float() * log_probs).sum(dim=-1).mean()


def classification_loss(logits: Tensor, targets: Tensor, *, label_smoothing: float = 0.0) -> Tensor:
    """Soft-target CE for ``(N, K)`` targets, plain (smoothed) CE for int ``(N,)`` targets.

    Mixers already fold label smoothing into their soft targets, so it is applied here only to
    integer targets (the unmixed case).
    """
    if targets.ndim == 2:
        return soft_target_cross_entropy(logits, targets)
    if targets.ndim != 1 or targets.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(
            f"targets must be int class ids (N,) or soft targets (N, K), got dtype {targets.dtype} "
            f"shape {tuple(targets.shape)}"
        )
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
