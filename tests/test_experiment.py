"""The experiment command end to end on the tiny synthetic dataset: results layout, resumability,
and the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from robustmix import experiment as E
from robustmix.cli import main as cli_main

# The same overrides through the library and through the CLI, so the CLI call resumes the run.
OVERRIDES = {
    "dataset": "synthetic",
    "methods": "none,robustmix_tau0.5",
    "epochs": "1",
    "batch_size": "32",
    "limit_train": "128",
    "eval_limit": "64",
    "corruptions": "gaussian_noise,saturate",
    "severities": "1-2",
    "diag_limit": "64",
    "heatmap_limit": "3",
    "heatmap_max_freq": "2",
    "spectrum_limit": "64",
    "cutoffs": "0,0.25,0.5,1",
    "eval_batch_size": "64",
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("exp") / "results"
    preset = E.PRESETS["quick"].replace(**OVERRIDES)
    lines: list[str] = []
    E.run_experiment(preset, out, device="cpu", log=lines.append)
    return out, lines


def test_results_layout_and_contents(finished):
    out, lines = finished
    exp = json.loads((out / "experiment.json").read_text())
    assert exp["status"] == "finished" and exp["methods"] == ["none", "robustmix_tau0.5"] and exp["seeds"] == [0]
    assert exp["environment"]["torch"] and exp["wall_time_s"] > 0
    (inv,) = exp["invocations"]
    assert inv["status"] == "finished" and inv["environment"] == exp["environment"]
    assert inv["elapsed_s"] == exp["wall_time_s"]
    for method in ("none", "robustmix_tau0.5"):
        run = out / "runs" / method / "seed0"
        for name in ("config.json", "checkpoint.pt", "metrics.json", "eval.json", "diagnostics.json", "run.json"):
            assert (run / name).is_file(), (method, name)
        config = json.loads((run / "config.json").read_text())
        assert config["dataset"] == "synthetic" and config["limit_train"] == 128
        ev = json.loads((run / "eval.json").read_text())
        assert ev["clean"]["n"] == 64
        assert set(ev["corrupted"]) == {"gaussian_noise", "saturate"}
        assert set(ev["corrupted"]["saturate"]) == {"1", "2"}
        diag = json.loads((run / "diagnostics.json").read_text())
        assert diag["filtered_accuracy"]["cutoffs"] == [0.0, 0.25, 0.5, 1.0]
        assert len(diag["filtered_accuracy"]["lowpass_accuracy"]) == 4
        assert len(diag["fourier_heatmap"]["map"]) == 28 and diag["fourier_heatmap"]["n_images"] == 3
        assert 0 <= diag["cue_conflict"]["low_band_fraction"] <= 1
        record = json.loads((run / "run.json").read_text())
        assert record["stages"] == json.loads((run / "stages.json").read_text())["stages"]
        for stage in ("train", "eval", "diagnostics"):
            st = record["stages"][stage]
            assert st["seconds"] > 0 and st["partial"] is False
            assert st["invocation"] == 1 and st["commit"] == exp["environment"]["commit"]
            assert record["timings"][f"{stage}_s"] == st["seconds"]
    robust_cfg = json.loads((out / "runs" / "robustmix_tau0.5" / "seed0" / "config.json").read_text())
    assert robust_cfg["mixer"] == "robustmix" and robust_cfg["tau"] == 0.5
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["lambda_c"][0] == 0.0 and ds["lambda_c"][-1] == pytest.approx(1.0)
    md = (out / "report.md").read_text()
    assert "| none | 1 |" in md and "| robustmix_tau0.5 | 1 |" in md
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 5
    assert any("report:" in line for line in lines)


def test_second_invocation_skips_finished_runs(finished, monkeypatch, capsys):
    out, _ = finished
    import robustmix.evaluate
    import robustmix.train.run

    def boom(*args, **kwargs):
        raise AssertionError("a finished run was redone")

    monkeypatch.setattr(robustmix.train.run, "train", boom)
    monkeypatch.setattr(robustmix.evaluate, "evaluate_checkpoint", boom)
    before = (out / "runs" / "none" / "seed0" / "run.json").read_text()
    argv = ["experiment", "--preset", "quick", "--out", str(out), "--device", "cpu", "--no-progress"]
    for key, value in OVERRIDES.items():
        argv += ["--set", f"{key}={value}"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier: skipped") == 2
    assert (out / "runs" / "none" / "seed0" / "run.json").read_text() == before
    exp = json.loads((out / "experiment.json").read_text())
    assert [i["status"] for i in exp["invocations"]] == ["finished", "finished"]
    assert exp["wall_time_s"] == pytest.approx(sum(i["elapsed_s"] for i in exp["invocations"]))
    # other settings into the same folder are refused, not mixed in
    assert cli_main([*argv, "--epochs", "3"]) == 2
    assert "holds an experiment with other settings (epochs)" in capsys.readouterr().err


def test_killed_run_resumes_from_checkpoint(tmp_path):
    from robustmix.train.run import train

    preset = E.PRESETS["quick"].replace(**{**OVERRIDES, "epochs": "2", "corruptions": "gaussian_noise", "severities": "1"})
    run_dir = tmp_path / "runs" / "none" / "seed0"
    config = E._train_config(preset, "none", 0, run_dir, data_dir=None, device="cpu", progress=False)
    first = train(config, stop_after_epoch=1)  # as if killed after epoch 1
    assert not first["finished"] and not (run_dir / "metrics.json").exists()
    lines: list[str] = []
    record = E.run_one(preset, "none", 0, run_dir, device="cpu", log=lines.append)
    assert any("resuming" in line for line in lines)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len([ln for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]) == 2
    assert metrics
    assert set(record["timings"]) == {"train_s", "eval_s", "diagnostics_s"}
    # the killed epoch's time is not in train_s: marked partial (the report shows "≥")
    assert record["stages"]["train"]["partial"] is True and record["timings"]["train_s"] > 0
    assert record["stages"]["train"]["invocation"] is None and record["stages"]["eval"]["partial"] is False
    assert E.run_one(preset, "none", 0, run_dir, device="cpu", log=lines.append)["skipped"] is True


def test_method_names():
    assert E.method_overrides("none") == {"mixer": "none"}
    assert E.method_overrides("robustmix_tau0.5_uniform") == {"mixer": "robustmix", "tau": 0.5, "energy": "uniform"}
    assert E.method_overrides("robustmix_energy0.3_persample") == {"mixer": "robustmix", "energy": 0.3, "per_sample": True}
    assert E.method_overrides("mixup_alpha0.2") == {"mixer": "mixup", "alpha": 0.2}
    assert E.method_overrides("robustmix_fft_laml0.7_lamh0.2") == {
        "mixer": "robustmix", "band": "fft", "lam_low": 0.7, "lam_high": 0.2
    }
    with pytest.raises(ValueError, match="must start with one of"):
        E.method_overrides("augmix")
    with pytest.raises(ValueError, match=r"unknown modifier 'tau0\.5' for 'mixup'"):
        E.method_overrides("mixup_tau0.5")
    with pytest.raises(ValueError, match="unknown modifier"):
        E.parse_methods("none,robustmix_fast")


def test_presets_are_data_and_overridable():
    quick = E.PRESETS["quick"]
    assert quick.dataset == "fashion_mnist" and quick.methods == ("none", "mixup", "cutmix", "robustmix")
    assert E.PRESETS["full"].seeds >= 3
    p = quick.replace(limit_train="none", severities="1-3", cutoffs="0,0.5", seeds=2, methods="none,cutmix")
    assert p.limit_train is None and p.severities == (1, 2, 3) and p.cutoffs == (0.0, 0.5)
    assert p.seeds == 2 and p.methods == ("none", "cutmix")
    assert quick.seeds == 1  # frozen: the preset itself is unchanged
    with pytest.raises(ValueError, match="unknown preset field"):
        quick.replace(epoch=3)
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        quick.replace(seeds=0)
    with pytest.raises(ValueError, match="preset field 'epochs': cannot parse"):
        quick.replace(epochs="many")
    with pytest.raises(TypeError, match="preset must be a Preset"):
        E.run_experiment({"name": "quick"}, "/tmp/never")


class _Killed(BaseException):
    """Stands in for a SIGKILL: nothing after it runs."""


def test_interrupted_invocation_keeps_its_time_stages_and_commit(tmp_path, monkeypatch):
    out = tmp_path / "results"
    preset = E.PRESETS["quick"].replace(**{**OVERRIDES, "methods": "none,mixup", "heatmap_limit": "1"})
    real_diagnose = E._diagnose
    calls = []

    def diagnose_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # killed during the second run's diagnostics
            raise _Killed
        return real_diagnose(*args, **kwargs)

    env = E.environment_info()
    monkeypatch.setattr(E, "environment_info", lambda: {**env, "commit": "commit-a"})
    monkeypatch.setattr(E, "_diagnose", diagnose_then_die)
    with pytest.raises(_Killed):
        E.run_experiment(preset, out, device="cpu", report=False, log=lambda line: None)
    exp = json.loads((out / "experiment.json").read_text())
    (first,) = exp["invocations"]
    assert exp["status"] == first["status"] == "running"
    assert first["elapsed_s"] > 0 and exp["wall_time_s"] == first["elapsed_s"]  # saved after the first run
    mixup = out / "runs" / "mixup" / "seed0"
    kept = json.loads((mixup / "stages.json").read_text())["stages"]
    assert set(kept) == {"train", "eval"} and kept["train"]["seconds"] > 0 and kept["eval"]["seconds"] > 0

    monkeypatch.setattr(E, "environment_info", lambda: {**env, "commit": "commit-b"})
    monkeypatch.setattr(E, "_diagnose", real_diagnose)
    E.run_experiment(preset, out, device="cpu", log=lambda line: None)
    exp = json.loads((out / "experiment.json").read_text())
    assert [i["status"] for i in exp["invocations"]] == ["interrupted", "finished"]
    assert [i["environment"]["commit"] for i in exp["invocations"]] == ["commit-a", "commit-b"]
    assert exp["invocations"][0]["elapsed_s"] == first["elapsed_s"]
    assert exp["wall_time_s"] == pytest.approx(first["elapsed_s"] + exp["invocations"][1]["elapsed_s"])
    none_run = json.loads((out / "runs" / "none" / "seed0" / "run.json").read_text())
    assert {(st["invocation"], st["commit"]) for st in none_run["stages"].values()} == {(1, "commit-a")}
    run = json.loads((mixup / "run.json").read_text())
    # stages done before the kill keep their recorded time, invocation and commit
    assert run["stages"]["train"] == kept["train"] and run["stages"]["eval"] == kept["eval"]
    assert run["timings"]["train_s"] == kept["train"]["seconds"] and run["timings"]["eval_s"] == kept["eval"]["seconds"]
    assert run["stages"]["diagnostics"]["invocation"] == 2 and run["stages"]["diagnostics"]["commit"] == "commit-b"
    text = (out / "report.md").read_text()
    assert "Total wall time: at least" in text and "summed over 2 invocations; invocation 1 stopped early" in text
    assert "Results come from 2 commits (commit-a, commit-b)" in text


def test_older_experiment_json_becomes_one_invocation():
    old = {"environment": {"commit": "c0"}, "command": "robustmix experiment", "wall_time_s": 3.0, "status": "running"}
    assert E._previous_invocations(old) == [
        {"command": "robustmix experiment", "environment": {"commit": "c0"}, "elapsed_s": 3.0, "status": "interrupted", "legacy": True}
    ]
    assert E._previous_invocations(None) == []
    assert E._previous_invocations({"invocations": [{"status": "finished"}, {"status": "running"}]}) == [
        {"status": "finished"}, {"status": "interrupted"}
    ]


def test_corrupt_experiment_json_is_named(tmp_path):
    (tmp_path / "experiment.json").write_text('{"preset": {"name": ')
    with pytest.raises(ValueError, match=r"experiment\.json' is not valid JSON: Expecting value"):
        E.run_experiment(E.PRESETS["quick"], tmp_path, device="cpu", report=False)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_commit_is_read_in_a_checkout_and_in_a_worktree(tmp_path, monkeypatch):
    import subprocess

    from robustmix import experiment as E

    def git(*args, cwd=tmp_path / "repo"):
        return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()

    (tmp_path / "repo").mkdir()
    git("init", "-q", "-b", "main")
    (tmp_path / "repo" / "f.txt").write_text("x")
    git("add", "f.txt")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    git("worktree", "add", "-q", "--detach", str(tmp_path / "wt"))
    head = git("rev-parse", "HEAD")
    for root in (tmp_path / "repo", tmp_path / "wt"):
        module = root / "src" / "robustmix" / "experiment.py"
        module.parent.mkdir(parents=True)
        module.write_text("")
        monkeypatch.setattr(E, "__file__", str(module))
        assert E._git_commit() == head, root
    git("pack-refs", "--all")  # refs only in packed-refs
    monkeypatch.setattr(E, "__file__", str(tmp_path / "repo" / "src" / "robustmix" / "experiment.py"))
    assert E._git_commit() == head
