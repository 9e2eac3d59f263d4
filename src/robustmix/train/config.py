"""The training configuration: one frozen dataclass, loaded from TOML/JSON/YAML plus overrides.

A run is fully described by its :class:`TrainConfig`; the resolved config is saved as
``config.json`` next to every result, so a result can always be traced back and re-run.
Values are type-checked here (a typo in a config file fails before any data is loaded).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "AMP_MODES",
    "BANDS",
    "ENERGY_MODES",
    "MIXERS",
    "OPTIMIZERS",
    "SCHEDULES",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "parse_overrides",
]

SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("sgd", "adamw")
MIXERS = ("none", "mixup", "cutmix", "robustmix")
AMP_MODES = ("none", "bf16", "fp16")
BANDS = ("dct", "fft")
ENERGY_MODES = ("batch", "sample", "uniform")  # or a float in [0, 1]

# Fields that may differ between an interrupted run and its resumption: they change where or
# how fast the run executes, never what it computes.
RUNTIME_FIELDS = frozenset(
    {"resume", "output_dir", "data_dir", "workers", "progress", "device", "compile", "check_values"}
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    Attributes:
        dataset: dataset name for :func:`robustmix.data.build_dataset` ("fashion_mnist", ...).
        data_dir: dataset folder; ``None`` uses the dataset's default location.
        model: model name for :func:`robustmix.models.build_model`.
        epochs: number of passes over the training set.
        batch_size: images per optimisation step *per process*.
        lr: peak learning rate.
        schedule: "cosine" (linear warm-up, then cosine decay to 0, per step) or "constant".
        warmup_epochs: length of the linear warm-up (fractions allowed).
        weight_decay: decoupled for AdamW, L2 for SGD.
        optimizer: "sgd" (Nesterov, momentum ``momentum``) or "adamw".
        momentum: SGD momentum.
        mixer: "none", "mixup", "cutmix" or "robustmix".
        alpha: Beta(alpha, alpha) concentration of the mixing weights.
        tau: Robustmix lower end of the cutoff range, in [0, 1] (``None``: the mixer's default).
        mix_prob: probability that a batch is mixed (``p`` of the mixers).
        energy: Robustmix label weighting: "batch", "sample", "uniform" or a float in [0, 1].
        per_sample: one mixing weight per sample instead of per batch (Mixup/Robustmix).
        band: Robustmix band transform: "dct" (the paper) or "fft" (ablation).
        lam_low, lam_high: fixed Robustmix band weights instead of Beta draws (ablation).
        label_smoothing: smoothing of the (soft) targets.
        check_values: the mixer checks the values of each batch (NaN images, labels in range);
            on a GPU that is one host sync a step. ``False`` skips them (same values for valid
            data; see ``RobustMix(check_values=...)``).
        augment: per-image augmentation passed to the dataset ("standard", "none", ...).
        amp: autocast mode: "none", "bf16" (CPU and CUDA) or "fp16" (CUDA, with a grad scaler).
        channels_last: use the channels-last memory format for the network.
        compile: wrap the network with ``torch.compile``.
        workers: DataLoader worker processes.
        seed: seed of everything random (init, data order, augmentation, mixing).
        output_dir: where config, checkpoint and metrics go.
        limit_train: use a seeded random subset of this many training images.
        limit_test: use a seeded random subset of this many test images.
        resume: continue from ``output_dir/checkpoint.pt``.
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
        progress: show progress bars (only on a terminal, only on rank 0).
    """

    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    model: str = "compact_cnn"
    epochs: int = 2
    batch_size: int = 128
    lr: float = 0.05
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    momentum: float = 0.9
    mixer: str = "none"
    alpha: float = 1.0
    tau: float | None = None
    mix_prob: float = 1.0
    energy: str | float = "batch"
    per_sample: bool = False
    band: str = "dct"
    lam_low: float | None = None
    lam_high: float | None = None
    label_smoothing: float = 0.0
    check_values: bool = True
    augment: str = "standard"
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    workers: int = 0
    seed: int = 0
    output_dir: str = "runs/train"
    limit_train: int | None = None
    limit_test: int | None = None
    resume: bool = False
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        hints = _field_types()
        for f in dataclasses.fields(self):
            value = _check_type(f.name, getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, value)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("mixer", self.mixer, MIXERS)
        _check_choice("amp", self.amp, AMP_MODES)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        _check_range("lr", self.lr, 0.0, math.inf, low_open=True)
        _check_range("alpha", self.alpha, 0.0, math.inf, low_open=True)
        _check_range("weight_decay", self.weight_decay, 0.0, math.inf)
        _check_range("momentum", self.momentum, 0.0, 1.0, high_open=True)
        _check_range("mix_prob", self.mix_prob, 0.0, 1.0)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        _check_range("warmup_epochs", self.warmup_epochs, 0.0, float(self.epochs))
        _check_choice("band", self.band, BANDS)
        for name in ("tau", "lam_low", "lam_high"):
            if getattr(self, name) is not None:
                _check_range(name, getattr(self, name), 0.0, 1.0)
        if isinstance(self.energy, float):
            _check_range("energy", self.energy, 0.0, 1.0)
        elif self.energy not in ENERGY_MODES:
            raise ValueError(
                f"energy must be 'batch', 'sample', 'uniform' or a float in [0, 1], got {self.energy!r}"
            )

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated like the original)."""
        return config_from_dict({**config_to_dict(self), **changes})


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if args:
        return " or ".join("None" if a is type(None) else a.__name__ for a in args)
    return tp.__name__


def _check_type(name: str, value: Any, tp: Any) -> Any:
    """Return ``value`` if it matches ``tp`` (ints widen to float), else raise TypeError."""
    allowed = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
    for t in allowed:
        if t is type(None) and value is None:
            return None
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is str and isinstance(value, str):
            return value
    raise TypeError(
        f"config field {name!r} must be {_type_name(tp)}, got {type(value).__name__} {value!r}"
    )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_range(
    name: str,
    value: float,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    # An infinite bound means "any finite value": inf as lr or weight decay trains to NaN.
    ok_low = value > low if low_open else value >= low
    ok_high = value < high if high_open else value <= high
    if not (ok_low and ok_high and math.isfinite(value)):
        left, right = "(" if low_open else "[", ")" if (high_open or math.isinf(high)) else "]"
        raise ValueError(f"{name} must lie in {left}{low}, {high}{right}, got {value}")


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """The config as a plain JSON-able dict (field order kept)."""
    return dataclasses.asdict(config)


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a config from a dict; unknown keys raise ValueError listing the valid ones."""
    if not isinstance(values, dict):
        raise TypeError(f"config values must be a dict, got {type(values).__name__}")
    valid = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; valid keys are: {', '.join(valid)}")
    return TrainConfig(**values)


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {str(path)!r}")
    suffix = path.suffix.lower()
    kinds = {".toml": "TOML", ".json": "JSON", ".yaml": "YAML", ".yml": "YAML"}
    if suffix not in kinds:
        raise ValueError(
            f"config file {str(path)!r} must end in .toml, .json, .yaml or .yml, got {suffix!r}"
        )
    kind = kinds[suffix]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"config file {str(path)!r} is not UTF-8 text: {exc}") from exc
    if kind == "TOML":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10 only
            import tomli as tomllib
        parse, errors = tomllib.loads, (tomllib.TOMLDecodeError,)
    elif kind == "JSON":
        parse, errors = json.loads, (json.JSONDecodeError,)
    else:
        try:
            import yaml
        except ModuleNotFoundError as exc:
            raise ValueError(
                f"config file {str(path)!r} is YAML but pyyaml is not installed "
                "(pip install pyyaml), or use a .toml or .json file"
            ) from exc
        parse, errors = yaml.safe_load, (yaml.YAMLError,)
    try:
        data = parse(text)
    except errors as exc:
        raise ValueError(f"config file {str(path)!r} is not valid {kind}: {exc}") from exc
    # A [train] table/section is accepted so one file can hold several jobs' settings later.
    if isinstance(data, dict) and set(data) == {"train"} and isinstance(data["train"], dict):
        data = data["train"]
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a table of key = value pairs")
    return data


def load_config(
    path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Defaults, then the file at ``path`` (TOML, JSON, or YAML with pyyaml), then ``overrides``.

    Args:
        path: config file or ``None`` for the defaults.
        overrides: field -> value, applied last (e.g. from the command line). String values are
            parsed to the field's type (see :func:`parse_overrides`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown keys (the message lists the valid ones), bad values, bad file.
        TypeError: a value of the wrong type.
    """
    values: dict[str, Any] = {} if path is None else _read_file(Path(path))
    if overrides:
        hints = _field_types()
        parsed = {
            k: _parse_value(k, v, hints[k]) if isinstance(v, str) and k in hints else v
            for k, v in overrides.items()
        }
        values = {**values, **parsed}
    return config_from_dict(values)


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def _parse_value(name: str, text: str, tp: Any) -> Any:
    """Parse a command-line string into the field type ``tp`` (first type that fits wins)."""
    allowed = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
    low = text.strip().lower()
    if type(None) in allowed and low in ("none", "null", ""):
        return None
    # Most specific first, so "0.5" for a ``str | float`` field is the float 0.5.
    order = (bool, int, float, str)
    for t in sorted(allowed, key=lambda t: order.index(t) if t in order else len(order)):
        if t is bool and low in _TRUE | _FALSE:
            return low in _TRUE
        if t is int:
            try:
                return int(text)
            except ValueError:
                continue
        if t is float:
            try:
                return float(text)
            except ValueError:
                continue
        if t is str:
            return text
    raise ValueError(f"config field {name!r} must be {_type_name(tp)}, got {text!r}")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["lr=0.1", "mixer=cutmix"]`` into typed values (``{"lr": 0.1, "mixer": "cutmix"}``)."""
    hints = _field_types()
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"override must look like key=value, got {pair!r}")
        if key not in hints:
            raise ValueError(
                f"unknown config key {key!r} in override {pair!r}; valid keys are: "
                + ", ".join(f.name for f in dataclasses.fields(TrainConfig))
            )
        out[key] = _parse_value(key, text, hints[key])
    return out
