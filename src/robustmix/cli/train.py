"""``robustmix train``: train a classifier from a config file and/or flags.

Precedence: defaults < ``--config FILE`` < ``--set key=value`` < direct flags. Every field of
:class:`robustmix.train.TrainConfig` has a direct flag (``--batch-size``, ``--mixer``,
``--resume/--no-resume``, ...), generated from the dataclass so the two never drift apart.
Under ``torchrun`` every rank runs this command; rank 0 alone prints and writes files.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing

__all__ = ["add_parser", "handler"]

_HELP = {
    "dataset": "dataset name",
    "data_dir": "dataset folder (default: the dataset's standard location)",
    "model": "compact_cnn, resnet18_cifar, torchvision names, timm:<name>",
    "epochs": "passes over the training set",
    "batch_size": "images per step per process",
    "lr": "peak learning rate",
    "schedule": "learning-rate schedule",
    "warmup_epochs": "linear warm-up length in epochs (fractions allowed)",
    "momentum": "SGD momentum",
    "alpha": "Beta(alpha, alpha) concentration of the mixing weights",
    "mixer": "mixing method",
    "mix_prob": "probability that a batch is mixed (p)",
    "tau": "Robustmix: lower end of the cutoff range in [0, 1]",
    "energy": "Robustmix label weighting: a float in [0, 1] or one of",
    "per_sample": "one mixing weight per sample instead of per batch",
    "band": "Robustmix band transform",
    "lam_low": "fixed Robustmix low-band weight instead of Beta draws (ablation)",
    "lam_high": "fixed Robustmix high-band weight instead of Beta draws (ablation)",
    "check_values": "the mixer checks batch values (NaN images, labels in range): one host sync a step on a GPU",
    "augment": "per-image augmentation",
    "amp": "autocast (bf16: CPU or CUDA, fp16: CUDA)",
    "channels_last": "channels-last memory format",
    "compile": "wrap the network with torch.compile",
    "workers": "DataLoader worker processes",
    "seed": "seed of everything random, >= 0",
    "limit_train": "train on a seeded random subset of this many images",
    "limit_test": "evaluate on a seeded random subset of this many images",
    "resume": "continue from OUTPUT_DIR/checkpoint.pt",
    "progress": "progress bars (on a terminal only)",
    "device": "auto, cpu, cuda, cuda:N",
    "output_dir": "where config.json, checkpoint.pt and metrics go",
}


def _choices() -> dict[str, tuple[str, ...]]:
    """Allowed values of the choice fields, from the constants the config and data check against."""
    from robustmix.data import AUGMENTATIONS, DATASETS
    from robustmix.train import config

    return {
        "dataset": DATASETS, "schedule": config.SCHEDULES, "optimizer": config.OPTIMIZERS,
        "mixer": config.MIXERS, "energy": config.ENERGY_MODES, "band": config.BANDS,
        "augment": AUGMENTATIONS, "amp": config.AMP_MODES,
    }  # fmt: skip


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``train`` and its options on ``subparsers``."""
    from robustmix.train.config import TrainConfig

    parser = subparsers.add_parser(
        "train",
        help="train a classifier with Robustmix, Mixup, CutMix or no mixing",
        description=__doc__.split("\n\n")[0].replace("``", ""),
    )
    parser.add_argument("--config", metavar="FILE", help="TOML or JSON (or YAML with pyyaml) config")
    parser.add_argument(
        "--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
        help="override one config field (repeatable)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a previous run in the output dir"
    )
    defaults = TrainConfig()
    hints = typing.get_type_hints(TrainConfig)
    choices = _choices()
    group = parser.add_argument_group("config fields (override the file and --set)")
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        help_text = _HELP.get(field.name, field.name.replace("_", " "))
        if field.name in choices:
            help_text += ": " + ", ".join(choices[field.name])
        help_text += f" [config: {default!r}]"
        if hints[field.name] is bool:
            group.add_argument(
                flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                help=help_text,
            )
        else:
            group.add_argument(
                flag, dest=field.name, metavar=field.name.upper(), default=None, help=help_text
            )
    parser.set_defaults(func=handler)
    return parser


def handler(args: argparse.Namespace) -> int:
    """Resolve the config, train, and print where the checkpoint and metrics are."""
    from robustmix.cli import check_output_dir
    from robustmix.train.config import TrainConfig, load_config, parse_overrides
    from robustmix.train.run import train

    overrides = parse_overrides(list(args.overrides))
    for field in dataclasses.fields(TrainConfig):
        value = getattr(args, field.name, None)
        if value is not None:
            overrides[field.name] = value
    try:
        config = load_config(args.config, overrides)
    except TypeError as exc:  # a wrongly typed value in the config file
        where = f"config file {args.config!r}: " if args.config else ""
        raise ValueError(f"{where}{exc}") from exc
    check_output_dir(config.output_dir, "--output-dir")
    is_main = int(os.environ.get("RANK", "0")) == 0

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if is_main:
        what = "resuming" if config.resume else "training"
        log(
            f"{what} {config.model} on {config.dataset} with mixer={config.mixer} for "
            f"{config.epochs} epoch(s) -> {config.output_dir}"
        )
    result = train(config, overwrite=args.overwrite, log=log if is_main else None)
    if is_main:
        final = result["final"] or {}
        print(f"checkpoint: {result['checkpoint']}")
        print(f"metrics:    {result['metrics']} (per epoch: {result['metrics_jsonl']})")
        if final:
            print(
                f"test error {final['test_error']:.4f}  test loss {final['test_loss']:.4f}  "
                f"after {result['epochs_completed']} epoch(s), "
                f"{final['train_time_s']:.1f}s of training"
            )
    return 0
