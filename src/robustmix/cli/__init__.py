"""``robustmix`` command line: parse, call the library, print.

Each subcommand lives in its own module of this package with ``add_parser(subparsers)``, which
registers its options and sets ``func`` to a handler ``(args) -> int``. Modules are imported on
use of their subcommand only, so ``robustmix --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

SUBCOMMANDS = {
    "train": "robustmix.cli.train",
    "evaluate": "robustmix.cli.evaluate",
    "corrupt": "robustmix.cli.corrupt",
    "experiment": "robustmix.cli.experiment",
    "report": "robustmix.cli.report",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustmix",
        description="Frequency-aware mixing for robust image classifiers: train, corrupt, evaluate, report.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in SUBCOMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=f"(see `robustmix {name} --help`)", add_help=False)
            continue
        try:
            importlib.import_module(module).add_parser(sub)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            sub.add_parser(name, help="(not available in this build)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.error(f"subcommand {args.command!r} is not available in this build")
    try:
        return int(func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"robustmix {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
