"""``robustmix evaluate``: clean and corrupted error of a checkpoint -> results JSON and a table."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "format_table", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="clean and corrupted top-1 error, mCE and relative mCE of a checkpoint",
        description=(
            "Evaluate a checkpoint on its clean test set and on common corruptions (applied on "
            "the fly with a seed, or read from a CIFAR-10-C / ImageNet-C folder). Writes every "
            "(corruption, severity) error as JSON and prints a table."
        ),
    )
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint.pt written by `robustmix train`"
    )
    parser.add_argument(
        "--data-dir", default=None, help="clean dataset folder (default: the run's)"
    )
    parser.add_argument("--dataset", default=None, help="override the checkpoint's dataset name")
    parser.add_argument(
        "--corruptions", default="all",
        help="'all' (default), 'none' (clean error and loss only) or comma-separated names",
    )  # fmt: skip
    parser.add_argument("--severities", default="1-5", help="e.g. '1-5' (default) or '1,3'")
    parser.add_argument(
        "--source", default=None,
        help="precomputed corrupted set: CIFAR-10-C style folder (<corruption>.npy + labels.npy) "
        "or ImageNet-C tree (<corruption>/<severity>/<class>/<image>); default: corrupt on the fly",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", default=None,
        help="'alexnet' (ImageNet-C paper's errors) or a results JSON of another run, for CE/mCE",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int, default=256, help="images per forward pass (default 256)"
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N test images")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the on-the-fly corruptions, >= 0 (default 0)"
    )
    parser.add_argument(
        "--store", default="release", choices=("release", "round", "float"),
        help="how on-the-fly corrupted images are stored before the model sees them: 'release' "
        "(default) as the benchmark files (8-bit truncation; JPEG quality 85 above 32 px), "
        "'round' 8-bit rounding, 'float' unchanged",
    )  # fmt: skip
    parser.add_argument("--device", default="auto", help="'auto' (default), 'cpu', 'cuda', 'cuda:1'")
    parser.add_argument(
        "--amp", default="none", choices=("none", "bf16", "fp16"),
        help="autocast of the forward pass: 'none' (default), 'bf16' (CPU or CUDA), 'fp16' (CUDA)",
    )  # fmt: skip
    parser.add_argument(
        "--channels-last", action="store_true", help="channels-last memory format (faster on GPUs)"
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar"
    )
    parser.add_argument(
        "--out", default=None,
        help="results JSON path (default: evaluation.json next to the checkpoint)",
    )  # fmt: skip
    parser.set_defaults(func=run)
    return parser


def _load_baseline(value: str | None) -> str | dict[str, Any] | None:
    if value is None or value.lower() == "alexnet":
        return None if value is None else "alexnet"
    from robustmix._io import read_json

    path = Path(value)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"--baseline: expected 'alexnet' or a results JSON file, {str(path)!r} {what}"
        )
    try:
        results = read_json(path)
    except ValueError as exc:  # read_json's message names the file and the JSON error
        raise ValueError(
            f"--baseline: {exc}; expected 'alexnet' or a results JSON written by `robustmix evaluate`"
        ) from exc
    if not isinstance(results, dict) or "corrupted" not in results or "clean" not in results:
        raise ValueError(
            f"--baseline: {str(path)!r} is not a `robustmix evaluate` results file "
            "(needs 'corrupted' and 'clean')"
        )
    results.setdefault("checkpoint", str(path))
    return results


def run(args: argparse.Namespace) -> int:
    from robustmix._io import write_json
    from robustmix.cli import check_output_file, check_seed
    from robustmix.evaluate import evaluate_checkpoint

    check_seed(args.seed)
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name("evaluation.json")
    check_output_file(out, "--out" if args.out else "--checkpoint")
    baseline = _load_baseline(args.baseline)
    results = evaluate_checkpoint(
        args.checkpoint,
        data_dir=args.data_dir,
        dataset=args.dataset,
        corruptions=args.corruptions,
        severities=args.severities,
        source=args.source,
        baseline=baseline,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
        store=args.store,
        limit=args.limit,
        amp=args.amp,
        channels_last=args.channels_last,
        progress=args.progress,
    )
    write_json(out, results)
    print(format_table(results))
    print(f"\nresults written to {out}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------- the table


def _pct(value: float | None) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{100 * value:.2f}"
    )


def _rows(
    names: list[str], results: dict[str, Any], severities: list[str], summary: dict
) -> list[str]:
    lines = []
    ce, rel = summary.get("ce", {}), summary.get("relative_ce", {})
    extra_ce = summary.get("extra", {}).get("ce", {})
    for name in names:
        errs = results["corrupted"][name]
        per = sum(errs.values()) / len(errs)
        cells = "".join(f"{_pct(errs.get(s)):>8}" for s in severities)
        lines.append(
            f"{name:<20}{cells}{_pct(per):>8}{_pct(ce.get(name, extra_ce.get(name))):>8}"
            f"{_pct(rel.get(name)):>8}"
        )
    return lines


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table of a results dict: errors in %, CE / mCE in % of the baseline."""
    clean = results["clean"]
    lines = [
        f"checkpoint {results['checkpoint']}  dataset {results['dataset']}  "
        f"model {results.get('model')}  epoch {results.get('epoch')}",
        f"clean error {_pct(clean['error'])} %   loss {clean['loss']:.4f}   n {clean['n']}",
    ]
    summary = results.get("summary")
    if not summary:
        return "\n".join(lines)
    severities = [str(s) for s in results["config"]["severities"]]
    header = f"{'corruption':<20}" + "".join(f"{'s' + s:>8}" for s in severities)
    header += f"{'mean':>8}{'CE':>8}{'rel CE':>8}"
    config = results["config"]
    lines += [
        "",
        f"top-1 error (%) by severity; source {config['source']}",
        header,
        "-" * len(header),
    ]
    lines += _rows(summary["corruptions"], results, severities, summary)
    lines.append(
        f"mean corruption error ({len(summary['corruptions'])} ImageNet-C corruptions): "
        f"{_pct(summary['mean_corruption_error'])} %"
    )
    if summary.get("baseline") is not None:
        lines.append(
            f"mCE vs {summary['baseline']}: {_pct(summary['mce'])} %   "
            f"relative mCE: {_pct(summary['relative_mce'])} %"
            + ("" if summary["mce"] is not None else "   (mCE needs all 15 corruptions)")
        )
    extra = summary.get("extra", {})
    if extra.get("corruptions"):
        lines += ["", "extra corruptions (reported apart, not in mCE)", header, "-" * len(header)]
        lines += _rows(extra["corruptions"], results, severities, summary)
        lines.append(f"mean error of the extras: {_pct(extra['mean_corruption_error'])} %")
    return "\n".join(lines)
