"""Batch mixers as thin classes: sample parameters (:mod:`robustmix.params`), call the pure op.

Use them like timm's ``Mixup``: ``images, soft_targets = mixer(images, targets)``, or as a
DataLoader ``collate_fn`` through :class:`MixCollate`.

Example:
    >>> mixer = RobustMix(num_classes=10, seed=0)
    >>> images, targets = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    >>> mixed, soft = mixer(images, targets)
    >>> mixed.shape, soft.shape
    (torch.Size([8, 3, 32, 32]), torch.Size([8, 10]))
"""

from __future__ import annotations

import contextlib
import inspect
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import default_collate, get_worker_info

from robustmix import freq
from robustmix import functional as F
from robustmix import params as P
from robustmix._device import to_device

__all__ = ["CutMix", "MixCollate", "MixUp", "RobustMix", "build_mixer", "mixer_names"]


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_ids_shape(images: Tensor, targets: Tensor) -> None:
    """Integer class ids must be one per image."""
    if targets.ndim != 1 or targets.shape[0] != images.shape[0]:
        raise ValueError(
            f"targets must have shape ({images.shape[0]},) to match images, got {tuple(targets.shape)}"
        )


class _BatchMixer:
    """Shared plumbing: options, generator, soft targets, pickling."""

    def __init__(
        self,
        num_classes: int,
        *,
        p: float,
        label_smoothing: float,
        seed: int | None,
        generator: torch.Generator | None,
        check_values: bool = True,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.p = P.check_probability(p, "p")
        self.label_smoothing = P.check_probability(label_smoothing, "label_smoothing", upper_open=True)
        self.generator = P.make_generator(seed, generator)
        self.check_values = _check_flag(check_values, "check_values")

    def _soft_targets(self, images: Tensor, targets: Tensor) -> Tensor:
        if not isinstance(targets, Tensor):
            raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
        if targets.is_floating_point():
            soft = F._soft_targets(targets, images.shape[0], self.num_classes, images.dtype, images.device)
            if self.label_smoothing:
                soft = soft * (1 - self.label_smoothing) + self.label_smoothing / self.num_classes
            return soft
        _check_ids_shape(images, targets)
        dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
        soft = F.one_hot(targets, self.num_classes, label_smoothing=self.label_smoothing, dtype=dtype)
        return to_device(soft, images.device)

    def _op_targets(self, images: Tensor, targets: Tensor) -> Tensor:
        """What the op gets: integer class ids as they are where no smoothing applies (the op
        builds the same one-hot rows, on CUDA inside its graph, and does not check its own rows
        again as soft targets: ~10 small ops a call fewer), else the (smoothed) soft targets."""
        if isinstance(targets, Tensor) and not targets.is_floating_point() and not self.label_smoothing:
            _check_ids_shape(images, targets)
            return targets
        return self._soft_targets(images, targets)

    def _min_dims(self) -> int:
        """Batch dim plus the signal dims the op needs."""
        return 2

    def make_params(self, images: Tensor) -> Any:
        raise NotImplementedError

    def _mix(self, images: Tensor, targets: Tensor, params: Any) -> tuple[Tensor, Tensor]:
        """The op on ``targets``: class ids (with ``num_classes``) or soft targets (N, K)."""
        raise NotImplementedError

    def __call__(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Mix a batch: ``(images, int or soft targets) -> (mixed images, soft targets)``."""
        F._check_images(images, self._min_dims())
        # Some input checks ride on the mixing work (NaN images show in the energies), so they
        # fail after the draws: a failed call puts the generator back, so it draws nothing and
        # the next call gets the parameters this one would have had.
        state = self.generator.get_state()
        try:
            # The value checks of the whole call: one host sync on an accelerator, or none at all
            # with check_values=False (types and shapes are checked either way).
            with F._checked(), (F._values_unchecked() if not self.check_values else contextlib.nullcontext()):
                op_targets = self._op_targets(images, targets)
                params = self.make_params(images)
                if not params.apply:
                    F._check_finite_images(images)  # the mixing path checks them on the way; so must this one
                    if op_targets.is_floating_point():
                        return images, op_targets
                    return images, self._soft_targets(images, targets)
                with F._drawn_index(params.index):  # our own randperm: no permutation check
                    return self._mix(images, op_targets, params)
        except BaseException:
            self.generator.set_state(state)
            raise

    # torch.Generator does not pickle; carry its state instead (DataLoader workers, spawn).
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        g = state.pop("generator")
        state["_generator_state"] = (str(g.device), g.get_state())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        device, rng_state = state.pop("_generator_state")
        state.setdefault("check_values", True)  # mixers pickled before the option existed
        self.__dict__.update(state)
        self.generator = torch.Generator(device=device)
        self.generator.set_state(rng_state)

    def _options(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        opts = {"num_classes": self.num_classes, **self._options(), "p": self.p,
                "label_smoothing": self.label_smoothing}
        if not self.check_values:
            opts["check_values"] = False
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in opts.items())})"


class RobustMix(_BatchMixer):
    """Robustmix: Mixup with separate weights for the low and high DCT bands (arXiv 2304.02847).

    Per call: ``lam_low, lam_high ~ Beta(alpha, alpha)`` independently, ``cutoff ~ U[tau, 1]``,
    a random partner permutation; with probability ``1 - p`` the batch is returned unmixed (the
    input tensor itself, not a copy) with (smoothed) one-hot targets. Label smoothing is applied to both targets before mixing.

    Args:
        num_classes: number of classes of the integer targets.
        alpha: Beta concentration of both lambdas.
        tau: lower end of the cutoff range.
        p: probability of mixing a batch.
        label_smoothing: epsilon of label smoothing, ``y * (1 - eps) + eps / num_classes`` (timm's
            convention); given soft targets are smoothed too, as ``torch.nn.functional.cross_entropy``
            smooths probability targets.
        energy: label weighting, see :func:`robustmix.functional.robustmix`.
        per_sample: draw lambdas and cutoff per sample instead of per batch.
        dims: signal dims (``(-2, -1)`` images, ``(-1,)`` audio, ``(-3, -2, -1)`` volumes).
        seed: seed of a private generator. generator: or use this one.
        lam_low, lam_high: fixed values instead of Beta draws (an ablation; default: draw).
        transform: ``"dct"`` (the paper) or ``"fft"`` band (an ablation).
        check_values: check the values of the inputs (NaN or inf images, class ids in range,
            soft targets in [0, 1]) and raise on bad ones. On an accelerator this costs one host
            sync a call, which keeps the host from queueing work ahead of the GPU; ``False``
            skips these checks on every device (no sync; bad values then give unspecified
            results, never a device-side assert). Types and shapes are always checked.
            ``MixUp`` and ``CutMix`` take it too.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        alpha: float = 1.0,
        tau: float = 0.0,
        p: float = 1.0,
        label_smoothing: float = 0.0,
        energy: str | float = "batch",
        per_sample: bool = False,
        dims: Sequence[int] = (-2, -1),
        seed: int | None = None,
        generator: torch.Generator | None = None,
        check_values: bool = True,
        lam_low: float | None = None,
        lam_high: float | None = None,
        transform: str = "dct",
    ) -> None:
        super().__init__(num_classes, p=p, label_smoothing=label_smoothing, seed=seed, generator=generator,
                         check_values=check_values)
        self.alpha = P._check_alpha(alpha)
        self.tau = P.check_probability(tau, "tau")
        self.transform = freq.check_transform(transform)
        self.energy = F._check_energy(energy)
        self.per_sample = _check_flag(per_sample, "per_sample")
        self.dims = freq.dims_spec(dims)
        self.lam_low = None if lam_low is None else P.check_probability(lam_low, "lam_low")
        self.lam_high = None if lam_high is None else P.check_probability(lam_high, "lam_high")

    def make_params(self, images: Tensor) -> P.RobustMixParams:
        """Draw the parameters of one call for this batch."""
        freq.normalize_dims(self.dims, images.ndim, batched=True)  # on every call, mixed or not
        return P.sample_robustmix_params(
            images.shape[0], alpha=self.alpha, tau=self.tau, p=self.p, per_sample=self.per_sample,
            generator=self.generator, lam_low=self.lam_low, lam_high=self.lam_high,
        )

    def _min_dims(self) -> int:
        return len(self.dims) + 1

    def _mix(self, images: Tensor, targets: Tensor, params: P.RobustMixParams) -> tuple[Tensor, Tensor]:
        return F.robustmix(
            images, targets, lam_low=params.lam_low, lam_high=params.lam_high, cutoff=params.cutoff,
            index=params.index, num_classes=self.num_classes, energy=self.energy, dims=self.dims,
            transform=self.transform,
        )

    def _options(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "tau": self.tau, "energy": self.energy, "per_sample": self.per_sample,
                "dims": self.dims, "transform": self.transform}


class MixUp(_BatchMixer):
    """Mixup: ``lam ~ Beta(alpha, alpha)`` per batch (or per sample), a random partner."""

    def __init__(
        self,
        num_classes: int,
        *,
        alpha: float = 1.0,
        p: float = 1.0,
        label_smoothing: float = 0.0,
        per_sample: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        check_values: bool = True,
    ) -> None:
        super().__init__(num_classes, p=p, label_smoothing=label_smoothing, seed=seed, generator=generator,
                         check_values=check_values)
        self.alpha = P._check_alpha(alpha)
        self.per_sample = _check_flag(per_sample, "per_sample")

    def make_params(self, images: Tensor) -> P.MixUpParams:
        return P.sample_mixup_params(
            images.shape[0], alpha=self.alpha, p=self.p, per_sample=self.per_sample, generator=self.generator
        )

    def _mix(self, images: Tensor, targets: Tensor, params: P.MixUpParams) -> tuple[Tensor, Tensor]:
        return F.mixup(images, targets, lam=params.lam, index=params.index, num_classes=self.num_classes)

    def _options(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "per_sample": self.per_sample}


class CutMix(_BatchMixer):
    """CutMix: one box per batch from ``lam ~ Beta(alpha, alpha)``, pasted from a random partner."""

    def __init__(
        self,
        num_classes: int,
        *,
        alpha: float = 1.0,
        p: float = 1.0,
        label_smoothing: float = 0.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        check_values: bool = True,
    ) -> None:
        super().__init__(num_classes, p=p, label_smoothing=label_smoothing, seed=seed, generator=generator,
                         check_values=check_values)
        self.alpha = P._check_alpha(alpha)

    def make_params(self, images: Tensor) -> P.CutMixParams:
        return P.sample_cutmix_params(
            images.shape[0], images.shape[-2], images.shape[-1], alpha=self.alpha, p=self.p,
            generator=self.generator,
        )

    def _min_dims(self) -> int:
        return 3

    def _mix(self, images: Tensor, targets: Tensor, params: P.CutMixParams) -> tuple[Tensor, Tensor]:
        return F.cutmix(images, targets, box=params.box, index=params.index, num_classes=self.num_classes)

    def _options(self) -> dict[str, Any]:
        return {"alpha": self.alpha}


class MixCollate:
    """A DataLoader ``collate_fn`` that collates a batch and mixes it.

    In a worker process the mixer's generator is reseeded once from the worker's seed
    (``torch.utils.data.get_worker_info().seed``, itself drawn from the loader's generator), so
    workers do not repeat each other's parameters and a seeded loader stays reproducible. The
    seed is hashed first (:class:`numpy.random.SeedSequence`): torch seeds the worker's global
    RNG with that very number, and the mixer must not replay the dataset's augmentation draws.
    """

    def __init__(self, mixer: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], collate: Callable = default_collate):
        for value, name in ((mixer, "mixer"), (collate, "collate")):
            if not callable(value):
                raise TypeError(f"{name} must be callable, got {type(value).__name__}")
        self.mixer = mixer
        self.collate = collate
        self._seeded_worker: int | None = None

    def __call__(self, batch: list) -> tuple[Tensor, Tensor]:
        info = get_worker_info()
        if info is not None and self._seeded_worker != info.id and hasattr(self.mixer, "generator"):
            self.mixer.generator.manual_seed(_worker_mixer_seed(info.seed))
            self._seeded_worker = info.id
        images, targets = self.collate(batch)[:2]
        return self.mixer(images, targets)

    def __repr__(self) -> str:
        return f"MixCollate({self.mixer!r})"


def _worker_mixer_seed(worker_seed: int) -> int:
    """A 64-bit seed for a worker's mixer, unrelated to ``worker_seed`` as a stream."""
    return int(np.random.SeedSequence([worker_seed, 0x726D6978]).generate_state(1, np.uint64)[0])


_MIXERS = {"mixup": MixUp, "cutmix": CutMix, "robustmix": RobustMix}


def mixer_names() -> tuple[str, ...]:
    """Names accepted by :func:`build_mixer`."""
    return ("none", *_MIXERS)


def build_mixer(name: str, num_classes: int, **options: Any) -> _BatchMixer | None:
    """A mixer by name; ``"none"`` gives ``None``.

    Options that the named mixer does not take but another does (e.g. ``tau`` for ``"mixup"``)
    are ignored, so one training config can carry the options of every mixer; an option that no
    mixer takes (a typo) is a ``TypeError``.
    """
    if name != "none" and name not in _MIXERS:
        raise ValueError(f"mixer must be one of {mixer_names()}, got {name!r}")
    known = set().union(*(_options_of(cls) for cls in _MIXERS.values()))
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"build_mixer got unknown option(s) {unknown}; known: {sorted(known)}")
    if name == "none":
        return None
    cls = _MIXERS[name]
    accepted = _options_of(cls)
    return cls(num_classes, **{k: v for k, v in options.items() if k in accepted})


def _options_of(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self", "num_classes"}
