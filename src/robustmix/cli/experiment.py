"""``robustmix experiment``: train none / mixup / cutmix / robustmix over seeds, evaluate on
corruptions, run the frequency diagnostics and write the report. Resumable: run it again with the
same options to finish a killed experiment.

Precedence: the preset < ``--set field=value`` < direct flags (``--methods``, ``--seeds``, ...).
"""

from __future__ import annotations

import argparse
import shlex
import sys

__all__ = ["add_parser", "handler"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``experiment`` and its options on ``subparsers``."""
    parser = subparsers.add_parser(
        "experiment",
        help="the compared experiment (methods x seeds) with corruption evaluation, diagnostics and report",
        description=__doc__.split("\n\n")[0].replace("``", ""),
    )
    parser.add_argument("--preset", default="quick", help="quick (about 10 min on 2 CPU cores) or full")
    parser.add_argument("--out", default=None, help="results folder (default: results/<preset>)")
    parser.add_argument("--methods", default=None, help="comma-separated, e.g. none,mixup,cutmix,robustmix,robustmix_tau0.5")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds per method")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs")
    parser.add_argument("--dataset", default=None, help="dataset name (default: the preset's, fashion_mnist)")
    parser.add_argument("--data-dir", default=None, help="dataset folder (default: its standard location)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--set", dest="overrides", metavar="FIELD=VALUE", action="append", default=[],
        help="override any preset field, e.g. --set limit_train=5000 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--no-report", dest="report", action="store_false", help="skip writing the report")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars (default: on a terminal)")
    parser.set_defaults(func=handler)
    return parser


def handler(args: argparse.Namespace) -> int:
    """Resolve the preset, run the experiment and print where the report is."""
    from robustmix.cli import check_output_dir, check_seed
    from robustmix.experiment import PRESETS, parse_methods, run_experiment
    from robustmix.train.distributed import resolve_device

    if args.preset not in PRESETS:
        raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {args.preset!r}")
    changes: dict[str, object] = {}
    for pair in args.overrides:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set must look like field=value, got {pair!r}")
        changes[key.strip().replace("-", "_")] = value
    for field in ("seeds", "epochs", "dataset"):
        if getattr(args, field) is not None:
            changes[field] = getattr(args, field)
    if args.methods is not None:
        changes["methods"] = parse_methods(args.methods)
    preset = PRESETS[args.preset].replace(**changes)
    out = args.out or f"results/{preset.name}"
    check_seed(preset.corruption_seed, "corruption_seed")
    resolve_device(args.device)
    check_output_dir(out, "--out")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    command = "robustmix " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    run_experiment(
        preset, out, data_dir=args.data_dir, device=args.device, progress=progress, report=args.report,
        command=command, log=lambda line: print(line, flush=True),
    )  # fmt: skip
    if args.report:
        _print_headline(out)
    print(f"results in {out}")
    return 0


def _print_headline(out: str) -> None:
    """The report's headline table on the terminal, so a run ends with its answer."""
    from robustmix import report

    results = report.load_results(out)
    headline = report.tables(report.summarize_experiment(results), results)[0]
    widths = [max(len(h), *(len(r[i]) for r in headline.rows)) for i, h in enumerate(headline.header)]
    print("\n" + headline.title)
    for row in (headline.header, *headline.rows):
        print("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))))
