"""Robustness metrics of Hendrycks & Dietterich (ICLR 2019): pure functions of error tables, no I/O.

An *error table* is a plain mapping ``{corruption: {severity: top-1 error in [0, 1]}}``, the shape of
``results["corrupted"]`` written by :mod:`robustmix.evaluate`. Severity keys may be ``int`` or ``str``
(JSON turns them into strings), so a table read back from disk works unchanged.

Definitions, with E_{s,c} the top-1 error of a model at severity s of corruption c:

* corruption error    CE_c  = Σ_s E_{s,c} / Σ_s E^base_{s,c}
* mean CE             mCE   = mean of CE_c over the 15 ImageNet-C corruptions (never the 4 extras)
* relative CE         rCE_c = Σ_s (E_{s,c} − E_clean) / Σ_s (E^base_{s,c} − E^base_clean)
* relative mCE              = mean of rCE_c over the same 15
* mean corruption error     = plain mean of E_{s,c} over corruptions and severities, the number
  CIFAR-10-C papers report because no AlexNet baseline exists there.

The built-in baseline :data:`ALEXNET_ERRORS` holds AlexNet's ImageNet-C error per corruption *averaged
over severities 1–5*, as published with the benchmark (hendrycks/robustness, reused verbatim by AugMix
and RobustBench); a scalar baseline therefore stands for Σ_s E^base_{s,c} / 5 and needs all 5
severities on the model side.

Example:
    >>> errors = {"gaussian_noise": {1: 0.2, 2: 0.4}}
    >>> corruption_error(errors["gaussian_noise"], {1: 0.4, 2: 0.8})
    0.5
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is only needed by top1_error; the formulas stay importable without it
    import torch

__all__ = [
    "ALEXNET_CLEAN_ERROR",
    "ALEXNET_ERRORS",
    "BENCHMARK_CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "SEVERITIES",
    "baseline_from_results",
    "corruption_error",
    "mce",
    "mean_corruption_error",
    "normalize_errors",
    "relative_corruption_error",
    "relative_mce",
    "summarize",
    "top1_error",
]

#: The 15 ImageNet-C corruptions that define mCE, in the benchmark's order.
BENCHMARK_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip

#: The 4 held-out corruptions; reported on their own, never averaged into mCE.
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

#: AlexNet top-1 error on ImageNet-C, mean over severities 1–5 (hendrycks/robustness; AugMix's
#: ``ALEXNET_ERR``). These are the denominators of every published ImageNet mCE.
ALEXNET_ERRORS: Mapping[str, float] = {
    "gaussian_noise": 0.886428,
    "shot_noise": 0.894468,
    "impulse_noise": 0.922640,
    "defocus_blur": 0.819880,
    "glass_blur": 0.826268,
    "motion_blur": 0.785948,
    "zoom_blur": 0.798360,
    "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324,
    "brightness": 0.564592,
    "contrast": 0.853204,
    "elastic_transform": 0.646056,
    "pixelate": 0.717840,
    "jpeg_compression": 0.606500,
}

#: Clean ImageNet top-1 error of the AlexNet used by the ImageNet-C paper (torchvision's
#: ``alexnet-owt-4df8aa71`` weights, acc@1 56.522 %; the paper's table rounds it to 43.5 %).
ALEXNET_CLEAN_ERROR: float = 1.0 - 0.56522

SeverityErrors = Mapping[int | str, float]
ErrorTable = Mapping[str, SeverityErrors]
Baseline = SeverityErrors | float


def top1_error(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of rows whose arg-max logit differs from the integer target.

    Shape:
        logits: (N, K); targets: (N,) integer class indices, N >= 1.
    """
    import torch

    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(
            f"logits: expected a (N, K) tensor, got {type(logits).__name__} "
            f"with shape {tuple(getattr(logits, 'shape', ()))}"
        )
    if not isinstance(targets, torch.Tensor) or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"targets: expected a tensor of shape ({logits.shape[0]},), "
            f"got shape {tuple(getattr(targets, 'shape', ()))}"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"targets: expected integer class indices, got dtype {targets.dtype}")
    if logits.shape[0] == 0:
        raise ValueError("logits: expected at least one row, got N=0")
    wrong = logits.argmax(dim=1) != targets.to(logits.device)
    return float(wrong.float().mean().item())


# ------------------------------------------------------------------------------------ validation


def _severity(key: Any, where: str) -> int:
    try:
        severity = int(key)
    except (TypeError, ValueError):
        severity = None
    if (
        isinstance(key, bool)
        or severity is None
        or str(severity) != str(key).strip()
        or severity < 1
    ):
        raise ValueError(
            f"{where}: expected a severity key that is a positive integer, got {key!r}"
        )
    return severity


def _error(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: expected an error rate (float in [0, 1]), got {value!r}")
    value = float(value)
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{where}: expected an error rate in [0, 1], got {value!r}")
    return value


def _severity_errors(errors: SeverityErrors, where: str) -> dict[int, float]:
    if not isinstance(errors, Mapping) or not errors:
        raise ValueError(
            f"{where}: expected a non-empty mapping {{severity: error}}, got {errors!r}"
        )
    out: dict[int, float] = {}
    for key, value in errors.items():
        severity = _severity(key, where)
        if severity in out:
            raise ValueError(f"{where}: severity {severity} is given twice (as int and str keys)")
        out[severity] = _error(value, f"{where}[{key!r}]")
    return dict(sorted(out.items()))


def normalize_errors(errors: ErrorTable, *, name: str = "errors") -> dict[str, dict[int, float]]:
    """Validate an error table and return it with ``int`` severity keys, sorted.

    Raises:
        ValueError: empty table, a severity key that is not a positive integer, or an error
            outside [0, 1]. TypeError: an error that is not a number.
    """
    if not isinstance(errors, Mapping) or not errors:
        raise ValueError(
            f"{name}: expected a non-empty mapping {{corruption: {{severity: error}}}}, got {errors!r}"
        )
    return {str(c): _severity_errors(e, f"{name}[{c!r}]") for c, e in errors.items()}


# -------------------------------------------------------------------------------------- formulas


def _baseline_sum(
    baseline: Baseline, severities: Iterable[int], where: str
) -> tuple[float, dict[int, float] | None]:
    """Σ_s E^base_s over the model's severities (a scalar baseline is a mean over all five)."""
    severities = list(severities)
    if isinstance(baseline, Mapping):
        base = _severity_errors(baseline, where)
        missing = [s for s in severities if s not in base]
        if missing:
            raise ValueError(
                f"{where}: baseline has no error for severities {missing} "
                f"(it has {sorted(base)}); the baseline must cover every evaluated severity"
            )
        return sum(base[s] for s in severities), base
    mean = _error(baseline, where)
    if sorted(severities) != list(SEVERITIES):
        raise ValueError(
            f"{where}: a scalar baseline is a mean over severities {list(SEVERITIES)}, "
            f"so the model needs all of them, got severities {sorted(severities)}"
        )
    return mean * len(SEVERITIES), None


def _ratio(numerator: float, denominator: float) -> float:
    # A baseline that never errs (or never degrades) leaves the ratio undefined: report NaN
    # rather than infinity or a sign flip that would silently invert the ranking.
    return numerator / denominator if denominator > 0 else math.nan


def corruption_error(
    model_errors_by_severity: SeverityErrors, baseline_errors_by_severity: Baseline
) -> float:
    """CE_c = Σ_s E_{s,c} / Σ_s E^base_{s,c}, summed over the model's severities.

    Args:
        model_errors_by_severity: ``{severity: error}`` of the model for one corruption.
        baseline_errors_by_severity: the same for the baseline, or one float = the baseline's
            mean error over severities 1–5 (as in :data:`ALEXNET_ERRORS`).

    Returns:
        The ratio (1.0 = as bad as the baseline); NaN when the baseline's errors sum to 0.
    """
    model = _severity_errors(model_errors_by_severity, "model_errors_by_severity")
    denominator, _ = _baseline_sum(
        baseline_errors_by_severity, model, "baseline_errors_by_severity"
    )
    return _ratio(sum(model.values()), denominator)


def relative_corruption_error(
    model_errors_by_severity: SeverityErrors,
    baseline_errors_by_severity: Baseline,
    *,
    clean_error: float,
    baseline_clean_error: float,
) -> float:
    """Relative CE_c = Σ_s (E_{s,c} − E_clean) / Σ_s (E^base_{s,c} − E^base_clean).

    Measures the *degradation* caused by the corruption rather than the error itself. NaN when the
    baseline does not degrade (denominator <= 0): the ratio has no meaning there.
    """
    model = _severity_errors(model_errors_by_severity, "model_errors_by_severity")
    clean = _error(clean_error, "clean_error")
    base_clean = _error(baseline_clean_error, "baseline_clean_error")
    base_sum, _ = _baseline_sum(baseline_errors_by_severity, model, "baseline_errors_by_severity")
    numerator = sum(e - clean for e in model.values())
    return _ratio(numerator, base_sum - base_clean * len(model))


def _check_covered(table: Mapping[str, Any], corruptions: Iterable[str], name: str) -> list[str]:
    corruptions = list(corruptions)
    if not corruptions:
        raise ValueError("corruptions: expected at least one corruption name, got none")
    missing = [c for c in corruptions if c not in table]
    if missing:
        raise ValueError(
            f"{name}: missing corruptions {missing}; mCE needs all of {corruptions} "
            f"(got {sorted(table)})"
        )
    return corruptions


def mce(
    model_errors: ErrorTable,
    baseline_errors: Mapping[str, Baseline] = ALEXNET_ERRORS,
    *,
    corruptions: Iterable[str] = BENCHMARK_CORRUPTIONS,
) -> float:
    """Mean corruption error: mean of CE_c over ``corruptions`` (default: the 15 of ImageNet-C).

    Raises:
        ValueError: a corruption is missing from the model's or the baseline's table.
    """
    names = _check_covered(model_errors, corruptions, "model_errors")
    _check_covered(baseline_errors, names, "baseline_errors")
    return sum(corruption_error(model_errors[c], baseline_errors[c]) for c in names) / len(names)


def relative_mce(
    model_errors: ErrorTable,
    baseline_errors: Mapping[str, Baseline] = ALEXNET_ERRORS,
    *,
    clean_error: float,
    baseline_clean_error: float = ALEXNET_CLEAN_ERROR,
    corruptions: Iterable[str] = BENCHMARK_CORRUPTIONS,
) -> float:
    """Relative mCE: mean of the relative CE_c over ``corruptions`` (default: the 15)."""
    names = _check_covered(model_errors, corruptions, "model_errors")
    _check_covered(baseline_errors, names, "baseline_errors")
    total = sum(
        relative_corruption_error(
            model_errors[c],
            baseline_errors[c],
            clean_error=clean_error,
            baseline_clean_error=baseline_clean_error,
        )
        for c in names
    )
    return total / len(names)


def mean_corruption_error(
    model_errors: ErrorTable, *, corruptions: Iterable[str] | None = None
) -> float:
    """Plain mean error: mean over corruptions of each corruption's mean over its severities.

    With the same severities for every corruption this is the mean over all (c, s) pairs, the
    "mean corruption error" / "mean error" of CIFAR-10-C papers.

    Args:
        model_errors: the error table.
        corruptions: which corruptions to average; default every corruption in the table.
    """
    table = normalize_errors(model_errors, name="model_errors")
    names = list(table) if corruptions is None else list(corruptions)
    _check_covered(table, names, "model_errors")
    return sum(sum(table[c].values()) / len(table[c]) for c in names) / len(names)


# ------------------------------------------------------------------------------------- summary


def baseline_from_results(results: Mapping[str, Any]) -> tuple[dict[str, dict[int, float]], float]:
    """``(error table, clean error)`` of a saved evaluation (the dict :mod:`robustmix.evaluate` writes)."""
    if not isinstance(results, Mapping) or "corrupted" not in results or "clean" not in results:
        raise ValueError(
            "baseline: expected an evaluation results dict with 'corrupted' and 'clean' keys, "
            f"got keys {sorted(results) if isinstance(results, Mapping) else type(results).__name__}"
        )
    clean = results["clean"]
    if not isinstance(clean, Mapping) or "error" not in clean:
        raise ValueError(f"baseline['clean']: expected a dict with an 'error' key, got {clean!r}")
    table = normalize_errors(results["corrupted"], name="baseline['corrupted']")
    return table, _error(clean["error"], "baseline['clean']['error']")


def _resolve_baseline(
    baseline: str | Mapping[str, Any] | None, baseline_clean_error: float | None
) -> tuple[str | None, Mapping[str, Baseline] | None, float | None]:
    if baseline is None:
        return None, None, None
    if isinstance(baseline, str):
        if baseline.lower() != "alexnet":
            raise ValueError(
                f"baseline: expected 'alexnet', an error table or a results dict, got {baseline!r}"
            )
        clean = ALEXNET_CLEAN_ERROR if baseline_clean_error is None else baseline_clean_error
        return "alexnet", ALEXNET_ERRORS, clean
    if isinstance(baseline, Mapping) and isinstance(baseline.get("corrupted"), Mapping):
        table, clean = baseline_from_results(baseline)
        label = str(baseline.get("checkpoint", "results"))
        return label, table, clean if baseline_clean_error is None else baseline_clean_error
    if isinstance(baseline, Mapping):
        table = {
            c: (v if isinstance(v, Mapping) else _error(v, f"baseline[{c!r}]"))
            for c, v in baseline.items()
        }
        return "custom", table, baseline_clean_error
    raise TypeError(
        f"baseline: expected None, 'alexnet', an error table or a results dict, "
        f"got {type(baseline).__name__}"
    )


def _group(table: Mapping[str, dict[int, float]], names: list[str]) -> dict[str, Any]:
    per = {c: sum(table[c].values()) / len(table[c]) for c in names}
    return {
        "corruptions": names,
        "mean_corruption_error": sum(per.values()) / len(per) if per else None,
        "per_corruption_error": per,
    }


def summarize(
    errors: ErrorTable,
    *,
    clean_error: float,
    baseline: str | Mapping[str, Any] | None = None,
    baseline_clean_error: float | None = None,
) -> dict[str, Any]:
    """Every headline number of one evaluation, as a JSON-able dict.

    The 15 ImageNet-C corruptions and everything else (the 4 extras, or any other name) are kept
    apart: only the 15 enter the mean error, the CEs' mean and mCE; the rest is under ``"extra"``.

    Args:
        errors: the model's error table ``{corruption: {severity: error}}``.
        clean_error: the model's clean top-1 error (for relative CE).
        baseline: ``None``; ``"alexnet"`` (:data:`ALEXNET_ERRORS`, ImageNet only); an error table;
            or a saved results dict (its ``"corrupted"`` table and ``"clean"]["error"]``).
        baseline_clean_error: the baseline's clean error when ``baseline`` is a bare error table
            (without it, relative CE is not computed); overrides the built-in one otherwise.

    Returns:
        ``{"clean_error", "corruptions", "mean_corruption_error", "per_corruption_error",
        "baseline", "ce", "mce", "relative_ce", "relative_mce", "extra"}``. ``mce`` and
        ``relative_mce`` are ``None`` unless all 15 corruptions were evaluated and a baseline is
        given; ``ce`` / ``relative_ce`` hold every corruption the baseline covers.
        ``extra`` = ``{"corruptions", "mean_corruption_error", "per_corruption_error", "ce"}``.
    """
    table = normalize_errors(errors)
    clean = _error(clean_error, "clean_error")
    label, base_table, base_clean = _resolve_baseline(baseline, baseline_clean_error)

    benchmark = [c for c in BENCHMARK_CORRUPTIONS if c in table]
    others = [c for c in table if c not in BENCHMARK_CORRUPTIONS]
    summary: dict[str, Any] = {"clean_error": clean, **_group(table, benchmark)}
    extra = _group(table, others)

    summary.update(baseline=label, ce={}, mce=None, relative_ce={}, relative_mce=None)
    extra["ce"] = {}
    if base_table is not None:
        for c in benchmark:
            if c in base_table:
                summary["ce"][c] = corruption_error(table[c], base_table[c])
                if base_clean is not None:
                    summary["relative_ce"][c] = relative_corruption_error(
                        table[c], base_table[c], clean_error=clean, baseline_clean_error=base_clean
                    )
        for c in others:
            if c in base_table:
                extra["ce"][c] = corruption_error(table[c], base_table[c])
        if len(summary["ce"]) == len(BENCHMARK_CORRUPTIONS):
            summary["mce"] = sum(summary["ce"].values()) / len(BENCHMARK_CORRUPTIONS)
        if len(summary["relative_ce"]) == len(BENCHMARK_CORRUPTIONS):
            summary["relative_mce"] = sum(summary["relative_ce"].values()) / len(
                BENCHMARK_CORRUPTIONS
            )
    summary["extra"] = extra
    return summary
