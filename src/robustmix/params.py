"""The one place mixing parameters are sampled: lambdas, cutoffs, boxes and partners.

All draws go through an explicit ``torch.Generator``. ``torch.distributions.Beta`` cannot take a
generator, so Beta draws come from a NumPy generator seeded by one draw of the torch generator:
the same generator state always gives the same parameters, and no global RNG is touched.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CutMixParams",
    "MixUpParams",
    "RobustMixParams",
    "check_probability",
    "make_generator",
    "sample_beta",
    "sample_cutmix_params",
    "sample_mixup_params",
    "sample_permutation",
    "sample_robustmix_params",
]


def make_generator(seed: int | None = None, generator: torch.Generator | None = None) -> torch.Generator:
    """The generator to draw from: ``generator`` if given, else a new one seeded with ``seed``.

    With neither, the new generator gets a nondeterministic seed of its own (the global RNG is
    left alone).
    """
    if generator is not None:
        if seed is not None:
            raise ValueError("pass either seed or generator, not both")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if not 0 <= seed < 2**64:  # torch would wrap negatives onto other seeds' streams
            raise ValueError(f"seed must lie in [0, 2**64), got {seed}")
        g.manual_seed(int(seed))
    return g


def _numpy_rng(generator: torch.Generator) -> np.random.Generator:
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return np.random.default_rng(seed)


def check_probability(value: float, name: str, *, upper_open: bool = False) -> float:
    """``value`` as a float in [0, 1] (or [0, 1) with ``upper_open``); raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    if not ok:
        raise ValueError(f"{name} must lie in [0, {'1)' if upper_open else '1]'}, got {value}")
    return value


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a positive float, got {type(alpha).__name__}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive finite float (Beta(alpha, alpha)), got {alpha}")
    return float(alpha)


def sample_beta(alpha: float, size: int | None, generator: torch.Generator) -> float | Tensor:
    """Beta(alpha, alpha) draws: a float when ``size`` is None, else a float64 ``(size,)`` tensor."""
    alpha = _check_alpha(alpha)
    draws = _numpy_rng(generator).beta(alpha, alpha, size=size)
    return float(draws) if size is None else torch.from_numpy(np.asarray(draws, dtype=np.float64))


def _sample_uniform(low: float, high: float, size: int | None, generator: torch.Generator) -> float | Tensor:
    u = torch.rand(1 if size is None else size, generator=generator, dtype=torch.float64, device=generator.device)
    if size is None:  # the same two float64 roundings in Python, without three tensor ops (host time a call)
        return low + (high - low) * float(u)
    return (low + (high - low) * u).cpu()


def _bernoulli(p: float, generator: torch.Generator) -> bool:
    # Always draw, so the stream of parameters does not depend on p's value.
    u = float(torch.rand(1, generator=generator, dtype=torch.float64, device=generator.device))
    return u < p


def sample_permutation(n: int, generator: torch.Generator) -> Tensor:
    """A uniformly random partner permutation of ``0..n-1`` (CPU int64)."""
    if n < 1:
        raise ValueError(f"batch size must be positive, got {n}")
    return torch.randperm(n, generator=generator, device=generator.device).cpu()


@dataclass(frozen=True)
class RobustMixParams:
    """Parameters of one Robustmix call; ``apply=False`` means return the batch unmixed."""

    lam_low: float | Tensor
    lam_high: float | Tensor
    cutoff: float | Tensor
    index: Tensor
    apply: bool = True


@dataclass(frozen=True)
class MixUpParams:
    lam: float | Tensor
    index: Tensor
    apply: bool = True


@dataclass(frozen=True)
class CutMixParams:
    box: tuple[int, int, int, int]
    index: Tensor
    apply: bool = True


def sample_robustmix_params(
    n: int,
    *,
    alpha: float,
    tau: float,
    p: float,
    per_sample: bool,
    generator: torch.Generator,
    lam_low: float | None = None,
    lam_high: float | None = None,
) -> RobustMixParams:
    """lam_low, lam_high ~ Beta(alpha, alpha) independently, cutoff ~ U[tau, 1], a random partner.

    ``lam_low``/``lam_high`` given as floats are used instead of draws (an ablation).
    The draw order is fixed (apply, lam_low, lam_high, cutoff, index) for reproducibility.
    """
    tau = check_probability(tau, "tau")
    p = check_probability(p, "p")
    apply = _bernoulli(p, generator)
    size = n if per_sample else None
    ll = sample_beta(alpha, size, generator)
    lh = sample_beta(alpha, size, generator)
    if lam_low is not None:
        ll = check_probability(lam_low, "lam_low")
    if lam_high is not None:
        lh = check_probability(lam_high, "lam_high")
    cutoff = _sample_uniform(tau, 1.0, size, generator)
    index = sample_permutation(n, generator)
    return RobustMixParams(lam_low=ll, lam_high=lh, cutoff=cutoff, index=index, apply=apply)


def sample_mixup_params(
    n: int, *, alpha: float, p: float, per_sample: bool, generator: torch.Generator
) -> MixUpParams:
    """lam ~ Beta(alpha, alpha) (one per batch, or one per sample) and a random partner."""
    p = check_probability(p, "p")
    apply = _bernoulli(p, generator)
    lam = sample_beta(alpha, n if per_sample else None, generator)
    return MixUpParams(lam=lam, index=sample_permutation(n, generator), apply=apply)


def sample_cutmix_params(
    n: int, height: int, width: int, *, alpha: float, p: float, generator: torch.Generator
) -> CutMixParams:
    """A box as in the CutMix paper: lam ~ Beta(alpha, alpha), side ratios sqrt(1 - lam),
    centre uniform over the image, clipped to the image (so the area may shrink).

    The box is the paper's code's (``rand_bbox`` of clovaai/CutMix-PyTorch): it reaches
    ``cut // 2`` from the centre on both sides, so an unclipped side is ``cut`` rounded down to
    an even number (timm's ``rand_bbox`` adds the odd pixel on the far side). The label weight
    is the pasted area's, so labels match pixels either way.
    """
    p = check_probability(p, "p")
    apply = _bernoulli(p, generator)
    lam = sample_beta(alpha, None, generator)
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    # The same float64 products in Python as on the tensor, without four tensor ops a call
    # (`python benchmarks/revisions.py --base fc33123` at 39c5bd3: CutMix B256x1x28^2 1.12x)
    centre_y, centre_x = torch.rand(2, generator=generator, dtype=torch.float64, device=generator.device).tolist()
    cy, cx = int(centre_y * height), int(centre_x * width)
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    box = (top, left, bottom - top, right - left)
    return CutMixParams(box=box, index=sample_permutation(n, generator), apply=apply)
