"""``robustmix report RESULTS_DIR``: write report.md and a self-contained report.html from saved results."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "handler"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``report`` and its options on ``subparsers``."""
    parser = subparsers.add_parser(
        "report",
        help="write report.md and report.html from an experiment's results folder",
        description=__doc__,
    )
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="folder written by `robustmix experiment`")
    parser.add_argument(
        "--baseline", default=None,
        help="method whose runs are the mCE baseline (default: 'none' when it has runs)",
    )  # fmt: skip
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="tables only (no matplotlib)")
    parser.set_defaults(func=handler)
    return parser


def handler(args: argparse.Namespace) -> int:
    """Write the report and print where it is."""
    from robustmix.report import write_report

    md, page = write_report(args.results_dir, baseline=args.baseline, plots=args.plots)
    print(f"wrote {md}")
    print(f"wrote {page}")
    return 0
