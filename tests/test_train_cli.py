"""``robustmix train``: flags, config files, overrides, output, and error exits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustmix.cli import main


def test_train_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text('dataset = "synthetic"\nepochs = 3\nbatch_size = 8\nmixer = "cutmix"\n')
    out = tmp_path / "run"
    code = main([
        "train", "--config", str(cfg_file), "--set", "epochs=1", "--set", "limit_test=8",
        "--limit-train", "16", "--mixer", "robustmix", "--tau", "0.1", "--per-sample",
        "--no-progress", "--output-dir", str(out),
    ])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"checkpoint: {out / 'checkpoint.pt'}" in captured.out
    assert f"metrics:    {out / 'metrics.json'}" in captured.out
    assert "test error" in captured.out
    assert "epoch 1/1" in captured.err
    saved = json.loads((out / "config.json").read_text())
    # file < --set < direct flags
    assert saved["epochs"] == 1 and saved["batch_size"] == 8 and saved["limit_test"] == 8
    assert saved["mixer"] == "robustmix" and saved["tau"] == 0.1 and saved["per_sample"] is True
    assert saved["limit_train"] == 16 and saved["progress"] is False
    assert (out / "metrics.json").is_file()

    # A second run into the same folder must be explicit about it.
    code = main(["train", "--config", str(cfg_file), "--epochs", "1", "--limit-train", "16",
                 "--limit-test", "8", "--output-dir", str(out), "--mixer", "robustmix",
                 "--tau", "0.1", "--per-sample", "--no-progress"])
    assert code == 2
    assert "already holds a run" in capsys.readouterr().err
    code = main(["train", "--config", str(cfg_file), "--epochs", "1", "--limit-train", "16",
                 "--limit-test", "8", "--output-dir", str(out), "--mixer", "robustmix",
                 "--tau", "0.1", "--per-sample", "--no-progress", "--resume"])
    assert code == 0  # already complete: resuming only rewrites metrics.json
    assert "after 1 epoch(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "bogus=1"], "unknown config key 'bogus' in override 'bogus=1'"),
        (["--set", "epochs"], "override must look like key=value, got 'epochs'"),
        (["--epochs", "two"], "config field 'epochs' must be int, got 'two'"),
        (["--mixer", "mixmatch"], "mixer must be one of"),
        (["--config", "/nonexistent/run.toml"], "config file not found"),
        (["--resume"], "resume=True but there is no checkpoint at"),
    ],
)
def test_errors_exit_2_with_a_message(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "--dataset", "synthetic", "--output-dir", str(tmp_path / "x"), *argv])
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("robustmix train: error: ")
    assert message in last


def test_help_lists_generated_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--config", "--set", "--mix-prob", "--limit-train", "--resume", "--no-resume",
                 "--channels-last", "--amp", "--overwrite"):
        assert flag in text
