"""Metric formulas on hand-computed numbers, the AlexNet table, and every bad-input path."""

from __future__ import annotations

import json
import math

import pytest
import torch

from robustmix import metrics
from robustmix.metrics import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_ERRORS,
    BENCHMARK_CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    baseline_from_results,
    corruption_error,
    mce,
    mean_corruption_error,
    normalize_errors,
    relative_corruption_error,
    relative_mce,
    summarize,
    top1_error,
)


def test_public_names() -> None:
    assert set(metrics.__all__) >= {
        "top1_error", "corruption_error", "mce", "relative_corruption_error", "relative_mce",
        "mean_corruption_error", "summarize", "ALEXNET_ERRORS", "ALEXNET_CLEAN_ERROR",
    }  # fmt: skip


# ------------------------------------------------------------------------------------ top1_error


def test_top1_error_hand_computed() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    targets = torch.tensor([0, 2, 2, 1])  # rows 1 and 3 wrong
    assert top1_error(logits, targets) == pytest.approx(0.5)
    assert top1_error(logits, torch.tensor([0, 1, 2, 0])) == 0.0


@pytest.mark.parametrize(
    ("logits", "targets", "exc", "match"),
    [
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), ValueError, "logits: expected a"),
        (
            torch.zeros(4, 3),
            torch.zeros(3, dtype=torch.long),
            ValueError,
            r"targets: expected .*\(4,\)",
        ),
        (torch.zeros(4, 3), torch.zeros(4), TypeError, "targets: expected integer"),
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), ValueError, "N=0"),
    ],
)
def test_top1_error_bad_input(logits, targets, exc, match) -> None:
    with pytest.raises(exc, match=match):
        top1_error(logits, targets)


# --------------------------------------------------------------------------------- CE, rel. CE


def test_corruption_error_hand_computed() -> None:
    # (0.1 + 0.2 + 0.3) / (0.2 + 0.4 + 0.6) = 0.6 / 1.2
    assert corruption_error(
        {1: 0.1, 2: 0.2, 3: 0.3}, {1: 0.2, 2: 0.4, 3: 0.6, 4: 0.9}
    ) == pytest.approx(0.5)
    # severity keys as JSON strings on either side
    assert corruption_error({"1": 0.3, "2": 0.5}, {1: 0.4, "2": 0.4}) == pytest.approx(1.0)


def test_corruption_error_is_ratio_of_sums_not_mean_of_ratios() -> None:
    # ratio of sums: (0.1 + 0.5) / (0.5 + 0.5) = 0.6; mean of ratios would be (0.2 + 1.0) / 2 = 0.6 too,
    # so use an asymmetric case: (0.1 + 0.6) / (0.2 + 0.8) = 0.7 vs mean of ratios (0.5 + 0.75)/2 = 0.625
    assert corruption_error({1: 0.1, 2: 0.6}, {1: 0.2, 2: 0.8}) == pytest.approx(0.7)


def test_corruption_error_scalar_baseline_is_mean_over_five() -> None:
    model = {s: 0.1 * s for s in range(1, 6)}  # sum 1.5
    assert corruption_error(model, 0.6) == pytest.approx(1.5 / 3.0)
    with pytest.raises(ValueError, match=r"scalar baseline .* got severities \[1, 3\]"):
        corruption_error({1: 0.1, 3: 0.2}, 0.6)


def test_corruption_error_zero_baseline_is_nan() -> None:
    assert math.isnan(corruption_error({1: 0.1}, {1: 0.0}))


def test_relative_corruption_error_hand_computed() -> None:
    # model: clean 0.1, errors 0.2, 0.4 -> degradations 0.1 + 0.3 = 0.4
    # baseline: clean 0.3, errors 0.5, 0.7 -> 0.2 + 0.4 = 0.6  => 0.4 / 0.6
    value = relative_corruption_error(
        {1: 0.2, 2: 0.4}, {1: 0.5, 2: 0.7}, clean_error=0.1, baseline_clean_error=0.3
    )
    assert value == pytest.approx(2 / 3)
    # scalar baseline mean 0.5 over five severities, clean 0.25 -> 5 * 0.25 = 1.25
    model = {s: 0.3 for s in range(1, 6)}  # degradations 5 * 0.2 = 1.0
    assert relative_corruption_error(
        model, 0.5, clean_error=0.1, baseline_clean_error=0.25
    ) == pytest.approx(0.8)


def test_relative_corruption_error_non_degrading_baseline_is_nan() -> None:
    value = relative_corruption_error({1: 0.2}, {1: 0.3}, clean_error=0.1, baseline_clean_error=0.4)
    assert math.isnan(value)


# ------------------------------------------------------------------------------- mCE, rel. mCE


def _table(value) -> dict:
    return {c: {s: value(i, s) for s in range(1, 6)} for i, c in enumerate(BENCHMARK_CORRUPTIONS)}


def test_alexnet_table_is_the_published_one() -> None:
    assert tuple(ALEXNET_ERRORS) == BENCHMARK_CORRUPTIONS
    assert ALEXNET_ERRORS["gaussian_noise"] == 0.886428
    assert ALEXNET_ERRORS["brightness"] == 0.564592
    assert ALEXNET_ERRORS["jpeg_compression"] == 0.606500
    assert ALEXNET_ERRORS["fog"] == 0.819324
    # torchvision AlexNet acc@1 56.522 % -> the 43.5 % clean error of the ImageNet-C paper
    assert round(ALEXNET_CLEAN_ERROR, 5) == 0.43478


def test_mce_of_alexnet_against_itself_is_one() -> None:
    # per-severity errors whose mean is exactly AlexNet's published mean
    offsets = (-0.04, -0.02, 0.0, 0.02, 0.04)
    alexnet = {c: {s: e + offsets[s - 1] for s in range(1, 6)} for c, e in ALEXNET_ERRORS.items()}
    assert mce(alexnet) == pytest.approx(1.0)
    assert relative_mce(alexnet, clean_error=ALEXNET_CLEAN_ERROR) == pytest.approx(1.0)
    summary = summarize(alexnet, clean_error=ALEXNET_CLEAN_ERROR, baseline="alexnet")
    assert summary["mce"] == pytest.approx(1.0)
    assert summary["relative_mce"] == pytest.approx(1.0)


def test_mce_hand_computed() -> None:
    # model error at every severity = half the baseline's, except gaussian_noise = equal
    baseline = _table(lambda i, s: 0.4 + 0.02 * s)
    model = {c: {s: e / 2 for s, e in errs.items()} for c, errs in baseline.items()}
    model["gaussian_noise"] = dict(baseline["gaussian_noise"])
    assert mce(model, baseline) == pytest.approx((14 * 0.5 + 1.0) / 15)


def test_mce_needs_all_fifteen() -> None:
    model = _table(lambda i, s: 0.5)
    del model["fog"]
    with pytest.raises(ValueError, match=r"model_errors: missing corruptions \['fog'\]"):
        mce(model)
    with pytest.raises(ValueError, match=r"baseline_errors: missing corruptions \['fog'\]"):
        mce(_table(lambda i, s: 0.5), {c: v for c, v in ALEXNET_ERRORS.items() if c != "fog"})


def test_mce_subset_of_corruptions() -> None:
    model = {"a": {1: 0.2, 2: 0.4}, "b": {1: 0.3}}
    base = {"a": {1: 0.4, 2: 0.8}, "b": {1: 0.6, 2: 0.1}}
    assert mce(model, base, corruptions=["a", "b"]) == pytest.approx(0.5)


def test_relative_mce_hand_computed() -> None:
    model = {"a": {1: 0.2, 2: 0.4}, "b": {1: 0.3, 2: 0.3}}
    base = {"a": {1: 0.5, 2: 0.7}, "b": {1: 0.5, 2: 0.5}}
    # a: (0.1 + 0.3) / (0.2 + 0.4) = 2/3; b: (0.2 + 0.2) / (0.2 + 0.2) = 1
    value = relative_mce(
        model, base, clean_error=0.1, baseline_clean_error=0.3, corruptions=["a", "b"]
    )
    assert value == pytest.approx((2 / 3 + 1.0) / 2)


def test_mean_corruption_error_hand_computed() -> None:
    table = {"a": {1: 0.1, 2: 0.3}, "b": {"1": 0.5, "2": 0.5, "3": 0.8}}
    # mean of per-corruption means: (0.2 + 0.6) / 2
    assert mean_corruption_error(table) == pytest.approx(0.4)
    assert mean_corruption_error(table, corruptions=["b"]) == pytest.approx(0.6)
    with pytest.raises(ValueError, match=r"missing corruptions \['c'\]"):
        mean_corruption_error(table, corruptions=["c"])


# ------------------------------------------------------------------------------------ summarize


def test_summarize_without_baseline_keeps_extras_apart() -> None:
    table = {
        "gaussian_noise": {1: 0.2, 2: 0.4},
        "fog": {"1": 0.1, "2": 0.1},
        "speckle_noise": {1: 0.9, 2: 0.9},
    }
    summary = summarize(table, clean_error=0.05)
    assert summary["corruptions"] == ["gaussian_noise", "fog"]
    assert summary["per_corruption_error"] == pytest.approx({"gaussian_noise": 0.3, "fog": 0.1})
    assert summary["mean_corruption_error"] == pytest.approx(0.2)  # 0.9s of the extra not mixed in
    assert summary["extra"]["corruptions"] == ["speckle_noise"]
    assert summary["extra"]["mean_corruption_error"] == pytest.approx(0.9)
    assert summary["baseline"] is None and summary["mce"] is None and summary["ce"] == {}
    json.dumps(summary)  # JSON-able


def test_summarize_with_results_baseline() -> None:
    baseline_results = {
        "checkpoint": "runs/base/checkpoint.pt",
        "clean": {"error": 0.2, "loss": 0.5, "n": 100},
        "corrupted": {c: {"1": 0.4, "2": 0.6} for c in (*BENCHMARK_CORRUPTIONS, "spatter")},
    }
    table = {c: {1: 0.3, 2: 0.3} for c in (*BENCHMARK_CORRUPTIONS, "spatter")}
    summary = summarize(table, clean_error=0.1, baseline=baseline_results)
    # CE = 0.6 / 1.0; rel CE = (0.2 + 0.2) / (0.2 + 0.4)
    assert summary["baseline"] == "runs/base/checkpoint.pt"
    assert summary["mce"] == pytest.approx(0.6)
    assert summary["relative_mce"] == pytest.approx(2 / 3)
    assert set(summary["ce"]) == set(BENCHMARK_CORRUPTIONS)
    assert summary["extra"]["ce"] == {"spatter": pytest.approx(0.6)}
    assert summary["mean_corruption_error"] == pytest.approx(0.3)


def test_summarize_partial_table_has_no_mce_but_has_ce() -> None:
    summary = summarize({"fog": {s: 0.5 for s in range(1, 6)}}, clean_error=0.1, baseline="alexnet")
    assert summary["ce"] == {"fog": pytest.approx(0.5 / 0.819324)}
    assert summary["mce"] is None and summary["relative_mce"] is None


def test_summarize_bare_table_baseline_needs_clean_error_for_relative() -> None:
    base = {"fog": {1: 0.5}}
    summary = summarize({"fog": {1: 0.25}}, clean_error=0.1, baseline=base)
    assert summary["baseline"] == "custom"
    assert summary["ce"] == {"fog": pytest.approx(0.5)}
    assert summary["relative_ce"] == {}
    summary = summarize(
        {"fog": {1: 0.25}}, clean_error=0.1, baseline=base, baseline_clean_error=0.3
    )
    assert summary["relative_ce"] == {"fog": pytest.approx(0.75)}


def test_baseline_from_results_round_trip() -> None:
    table, clean = baseline_from_results(
        {"clean": {"error": 0.25}, "corrupted": {"fog": {"3": 0.5}}}
    )
    assert table == {"fog": {3: 0.5}} and clean == 0.25


def test_benchmark_lists_match_corruption_registry() -> None:
    corruptions = pytest.importorskip("robustmix.corruptions")
    assert tuple(corruptions.BENCHMARK_CORRUPTIONS) == BENCHMARK_CORRUPTIONS
    assert tuple(corruptions.EXTRA_CORRUPTIONS) == EXTRA_CORRUPTIONS


# -------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("table", "exc", "match"),
    [
        ({}, ValueError, "errors: expected a non-empty mapping"),
        ({"fog": {}}, ValueError, r"errors\['fog'\]: expected a non-empty mapping"),
        ({"fog": {0: 0.1}}, ValueError, "positive integer, got 0"),
        ({"fog": {"x": 0.1}}, ValueError, "positive integer, got 'x'"),
        ({"fog": {1.5: 0.1}}, ValueError, "positive integer, got 1.5"),
        ({"fog": {1: 0.1, "1": 0.2}}, ValueError, "severity 1 is given twice"),
        ({"fog": {1: 1.5}}, ValueError, r"in \[0, 1\], got 1.5"),
        ({"fog": {1: float("nan")}}, ValueError, r"in \[0, 1\], got nan"),
        ({"fog": {1: "0.1"}}, TypeError, "expected an error rate"),
    ],
)
def test_normalize_errors_rejects(table, exc, match) -> None:
    with pytest.raises(exc, match=match):
        normalize_errors(table)


def test_baseline_missing_severity() -> None:
    with pytest.raises(ValueError, match=r"no error for severities \[2\]"):
        corruption_error({1: 0.1, 2: 0.2}, {1: 0.3})


def test_summarize_rejects_bad_baseline() -> None:
    with pytest.raises(ValueError, match="baseline: expected 'alexnet'"):
        summarize({"fog": {1: 0.1}}, clean_error=0.1, baseline="resnet")
    with pytest.raises(TypeError, match="baseline: expected None"):
        summarize({"fog": {1: 0.1}}, clean_error=0.1, baseline=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clean_error: expected an error rate"):
        summarize({"fog": {1: 0.1}}, clean_error=2.0)
    with pytest.raises(ValueError, match="'corrupted' and 'clean'"):
        baseline_from_results({"corrupted": {}})
