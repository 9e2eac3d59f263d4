"""Reference trainer: config, wiring, engine, checkpoints and DDP.

Split as wiring (:mod:`.run`: build everything from a :class:`TrainConfig` and loop), engine
(:mod:`.engine`: one epoch, evaluation), checkpointing (:mod:`.checkpoint`), distributed plumbing
(:mod:`.distributed`) and losses (:mod:`.losses`).

Example:
    >>> from robustmix.train import load_config, train
    >>> cfg = load_config(None, {"dataset": "synthetic", "epochs": 1, "output_dir": "/tmp/run"})
    >>> result = train(cfg)  # doctest: +SKIP
"""

from robustmix.train.checkpoint import (
    load_checkpoint,
    load_checkpoint_model,
    save_checkpoint,
    state_dict_sha256,
)
from robustmix.train.config import (
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_overrides,
)
from robustmix.train.engine import evaluate, train_one_epoch
from robustmix.train.losses import classification_loss, soft_target_cross_entropy

# The wiring pulls in data, models and torchvision; import it on first use so that reading a
# config or a checkpoint stays light.
_LAZY = {"train": "robustmix.train.run", "lr_factor": "robustmix.train.run"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'robustmix.train' has no attribute {name!r}")

__all__ = [
    "TrainConfig",
    "classification_loss",
    "config_from_dict",
    "config_to_dict",
    "evaluate",
    "load_checkpoint",
    "load_checkpoint_model",
    "load_config",
    "lr_factor",
    "parse_overrides",
    "save_checkpoint",
    "soft_target_cross_entropy",
    "state_dict_sha256",
    "train",
    "train_one_epoch",
]
