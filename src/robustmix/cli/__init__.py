"""``robustmix`` command line: parse, call the library, print.

Each subcommand lives in its own module of this package with ``add_parser(subparsers)``, which
registers its options and sets ``func`` to a handler ``(args) -> int``. Modules are imported on
use of their subcommand only, so ``robustmix --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "check_output_dir", "check_output_file", "check_seed", "main"]

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


def _first_existing(path: Path) -> Path | None:
    return next((p for p in (path, *path.parents) if p.exists()), None)


def check_output_dir(path: str | os.PathLike, flag: str) -> None:
    """Raise ValueError unless ``path`` is a folder or can be created as one (before any work)."""
    path = Path(path)
    found = _first_existing(path)
    if found is None or found.is_dir():
        return
    if found == path:
        raise ValueError(f"{flag}: {str(path)!r} is a file; expected a folder")
    raise ValueError(f"{flag}: cannot create folder {str(path)!r}: {str(found)!r} is a file")


def check_output_file(path: str | os.PathLike, flag: str) -> None:
    """Raise ValueError unless ``path`` can be written as a file (not a folder, parents not files)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag}: {str(path)!r} is a folder; expected a file path")
    found = _first_existing(path.parent)
    if found is not None and not found.is_dir():
        raise ValueError(f"{flag}: cannot write {str(path)!r}: {str(found)!r} is a file, not a folder")


def check_seed(seed: int, flag: str = "--seed") -> None:
    """Seeds are non-negative integers everywhere in the CLI."""
    if seed < 0:
        raise ValueError(f"{flag} must be an integer >= 0, got {seed}")


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
    except (ValueError, OSError) as exc:  # OSError: missing files, and as a last resort
        print(f"robustmix {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
