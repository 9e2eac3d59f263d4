"""User errors on the command line: exit 2, one ``error:`` line naming the argument or file,
no traceback, and nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from robustmix.cli import main


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip().splitlines()[-1]


def _expect_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, last = _run(argv, capsys)
    assert code == 2, last
    assert last.startswith(f"robustmix {argv[0]}: error: "), last
    assert message in last, last


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A 28x28 grayscale 10-class compact CNN on the synthetic set, in the trainer's format."""
    from robustmix.models import build_model
    from robustmix.train.checkpoint import save_checkpoint

    spec = {"name": "compact_cnn", "num_classes": 10, "in_channels": 1, "image_size": 28,
            "mean": [0.5], "std": [0.2]}  # fmt: skip
    model = build_model("compact_cnn", num_classes=10, in_channels=1, image_size=28,
                        mean=(0.5,), std=(0.2,))  # fmt: skip
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    save_checkpoint(path, {
        "epoch": 1, "model": model.state_dict(), "model_spec": spec, "dataset": "synthetic",
        "config": {"dataset": "synthetic", "data_dir": None, "seed": 0}, "history": [],
    })  # fmt: skip
    return path


@pytest.fixture
def afile(tmp_path: Path) -> Path:
    path = tmp_path / "afile"
    path.write_text("not a folder, not JSON\n")
    return path


# ------------------------------------------------------------------------------------- train


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.json", '{"batch_size": 1.5}', "config field 'batch_size' must be int, got float 1.5"),
        ("bad.toml", 'batch_size = "x"\n', "config field 'batch_size' must be int, got str 'x'"),
    ],
)
def test_train_config_of_the_wrong_type(
    name: str, text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / name
    config.write_text(text)
    out = tmp_path / "run"
    _expect_error(["train", "--config", str(config), "--output-dir", str(out)],
                  f"config file {str(config)!r}: {message}", capsys)  # fmt: skip
    assert not out.exists()


def test_train_output_dir_is_a_file(afile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--dataset", "synthetic", "--no-progress"]
    _expect_error([*argv, "--output-dir", str(afile)], f"--output-dir: {str(afile)!r} is a file", capsys)
    _expect_error([*argv, "--output-dir", str(afile / "run")],
                  f"--output-dir: cannot create folder {str(afile / 'run')!r}", capsys)  # fmt: skip


# ------------------------------------------------------------------------------------ corrupt

CORRUPT = ["corrupt", "--dataset", "synthetic", "--limit", "4", "--corruptions", "fog", "--no-progress"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--batch-size", "-5"], "--batch-size must be >= 1, got -5"),
        (["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
        (["--device", "gpu"], "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
        pytest.param(
            ["--device", "cuda"], "CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
    ],
)
def test_corrupt_checks_arguments_before_writing(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "c"
    _expect_error([*CORRUPT, "--out", str(out), *extra], message, capsys)
    assert not out.exists()  # not even labels.npy


def test_corrupt_out_is_a_file(afile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _expect_error([*CORRUPT, "--out", str(afile)], f"--out: {str(afile)!r} is a file", capsys)


@pytest.mark.parametrize(
    ("command", "phrases"),
    [
        ("corrupt", ["--seed SEED seed of the corruptions",
                     "--batch-size BATCH_SIZE images corrupted at once",
                     "--device DEVICE 'cpu' (default)", "--no-progress no progress bar"]),
        ("evaluate", ["--batch-size BATCH_SIZE images per forward pass",
                      "--amp {none,bf16,fp16} autocast",
                      "--channels-last channels-last memory format", "--no-progress no progress bar"]),
    ],
)  # fmt: skip
def test_help_documents_every_option(
    command: str, phrases: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in phrases:
        assert phrase in text


# ----------------------------------------------------------------------------------- evaluate


def test_evaluate_out_is_checked_before_evaluating(
    checkpoint: Path, afile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import robustmix.evaluate

    def must_not_run(*args, **kwargs):
        raise AssertionError("the evaluation ran before the output path was checked")

    monkeypatch.setattr(robustmix.evaluate, "evaluate_checkpoint", must_not_run)
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--corruptions", "none", "--no-progress"]
    _expect_error([*argv, "--out", str(tmp_path)], f"--out: {str(tmp_path)!r} is a folder", capsys)
    target = afile / "x.json"
    _expect_error([*argv, "--out", str(target)],
                  f"--out: cannot write {str(target)!r}: {str(afile)!r} is a file", capsys)  # fmt: skip
    _expect_error([*argv, "--seed", "-1"], "--seed must be an integer >= 0, got -1", capsys)


def test_evaluate_checkpoint_is_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["evaluate", "--checkpoint", str(tmp_path), "--corruptions", "none", "--no-progress",
            "--out", str(tmp_path / "e.json")]  # fmt: skip
    _expect_error(argv, f"checkpoint: {str(tmp_path)!r} is a folder", capsys)


def test_evaluate_baseline_not_json(
    checkpoint: Path, afile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--corruptions", "none", "--no-progress",
            "--out", str(tmp_path / "e.json"), "--baseline", str(afile)]  # fmt: skip
    _expect_error(argv, f"--baseline: {str(afile)!r} is not valid JSON", capsys)
    assert not (tmp_path / "e.json").exists()


def _cifar_c(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    root.mkdir()
    np.save(root / "fog.npy", images)
    np.save(root / "labels.npy", labels)
    return root


GRAY = np.zeros((20, 28, 28, 1), np.uint8)


@pytest.mark.parametrize(
    ("images", "labels", "file", "message"),
    [
        (GRAY, np.full(20, 12), "labels.npy",
         "label 12 is out of range for the model's 10 classes; expected labels in 0..9"),
        # only severity 5's labels are out of range: refused before any evaluation too
        (GRAY, np.r_[np.zeros(16, np.int64), np.full(4, 11)], "labels.npy",
         "label 11 is out of range for the model's 10 classes; expected labels in 0..9"),
        (GRAY, np.full(20, -1), "labels.npy", "expected class labels >= 0, found -1"),
        (GRAY[:, :, :, 0], np.full(20, 10), "labels.npy",
         "label 10 is out of range for the model's 10 classes; expected labels in 0..9"),
        (GRAY, np.full(20, 1.7), "labels.npy", "expected integer class labels, got dtype float64"),
        (np.zeros((20, 32, 32, 3), np.uint8), np.zeros(20, np.int64), "fog.npy",
         "the source's images do not match the model's input: they are 32x32 with 3 channel(s), "
         "the model takes 28x28 with 1"),
    ],
)  # fmt: skip
def test_evaluate_source_that_does_not_fit_the_model(
    images: np.ndarray, labels: np.ndarray, file: str, message: str, checkpoint: Path,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    source = _cifar_c(tmp_path / "c", images, labels)
    out = tmp_path / "e.json"
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--source", str(source), "--no-progress",
            "--out", str(out)]  # fmt: skip
    _expect_error(argv, f"{source / file}: {message}", capsys)
    assert not out.exists()


# ------------------------------------------------------------------------- experiment, report


def test_experiment_out_is_a_file(afile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _expect_error(["experiment", "--dataset", "synthetic", "--out", str(afile)],
                  f"--out: {str(afile)!r} is a file", capsys)  # fmt: skip


def _results(root: Path, methods: tuple[str, ...]) -> Path:
    for i, method in enumerate(methods):
        run = root / "runs" / method / "seed0"
        run.mkdir(parents=True)
        corrupted = {"fog": {str(s): 0.1 * s + 0.01 * i for s in range(1, 6)}}
        (run / "eval.json").write_text(json.dumps({"clean": {"error": 0.1, "loss": 0.3, "n": 10},
                                                   "corrupted": corrupted}))  # fmt: skip
    return root


def test_report_unknown_baseline_lists_methods(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _results(tmp_path / "res", ("none", "mixup"))
    code, last = _run(["report", str(root), "--baseline", "bogus", "--no-plots"], capsys)
    assert code == 2
    assert last.startswith("robustmix report: error: baseline: no runs of method 'bogus'"), last
    assert last.endswith("methods present: mixup, none"), last
    assert not (root / "report.md").exists() and not (root / "report.html").exists()


def test_report_names_the_baseline_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _results(tmp_path / "res", ("none", "mixup"))
    assert main(["report", str(root), "--baseline", "mixup", "--no-plots"]) == 0
    text = (root / "report.md").read_text()
    assert "relative to the `mixup` runs" in text and "`none`" not in text
    # A baseline without runs (library use): the note names it, not a hard-coded `none`.
    from robustmix import report

    results = report.load_results(root)
    summary = report.summarize_experiment(results, baseline="absent")
    assert report.tables(summary, results)[0].note.startswith("No baseline (`absent`) runs")
    # The default baseline is `none` when it has runs; without them, no mCE (and no error).
    shutil.rmtree(root / "runs" / "none")
    (root / "report.md").unlink()
    assert main(["report", str(root), "--no-plots"]) == 0
    assert "No baseline (`none`) runs" in (root / "report.md").read_text()


def test_train_help_shows_choices_and_no_default_none(capsys: pytest.CaptureFixture[str]) -> None:
    from robustmix.data import AUGMENTATIONS, DATASETS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "``" not in text
    assert "robustmix train: train a classifier" in text
    assert "cosine, constant" in text and "sgd, adamw" in text and "dct, fft" in text
    assert ", ".join(AUGMENTATIONS) in text and ", ".join(DATASETS) in text
    assert "synthetic_rgb" in text
    with pytest.raises(SystemExit):
        main(["experiment", "--help"])
    assert "``" not in capsys.readouterr().out
