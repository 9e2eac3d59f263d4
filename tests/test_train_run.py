"""End-to-end training on the tiny synthetic set: outputs, checkpoints, and bit-exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from robustmix.train import TrainConfig, load_checkpoint, load_checkpoint_model, load_config, train
from robustmix.train.checkpoint import state_dict_sha256

EPOCHS = 3


def _config(out: Path, **changes: Any) -> TrainConfig:
    values = {
        "dataset": "synthetic", "epochs": EPOCHS, "batch_size": 8, "limit_train": 32,
        "limit_test": 32, "mixer": "robustmix", "lr": 0.05, "warmup_epochs": 1.0,
        "output_dir": str(out), "progress": False, "seed": 3,
    }
    return TrainConfig(**{**values, **changes})


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted run that the resume tests compare against."""
    out = tmp_path_factory.mktemp("reference")
    result = train(_config(out))
    return {"out": out, "result": result, "state": load_checkpoint(out / "checkpoint.pt")}


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_outputs_and_metrics(reference: dict[str, Any]) -> None:
    out, result = reference["out"], reference["result"]
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt", "config.json", "metrics.json", "metrics.jsonl"
    ]
    assert json.loads((out / "config.json").read_text()) == json.loads(
        json.dumps(_config(out).__dict__)
    )
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, EPOCHS + 1))
    assert all(r["n_train"] == 32 and r["n_test"] == 32 for r in lines)
    final = json.loads((out / "metrics.json").read_text())
    assert final["final"] == lines[-1] == result["final"]
    assert final["weights_sha256"] == result["weights_sha256"]
    assert result["finished"] and result["epochs_completed"] == EPOCHS
    # lr: 1 warm-up epoch of 4 steps then cosine; epoch 2 starts at the peak.
    assert lines[0]["lr"] == pytest.approx(0.05 / 4)
    assert lines[1]["lr"] == pytest.approx(0.05)
    # The learnable synthetic task: training makes progress on the first epoch's loss.
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]


def test_checkpoint_contents_and_model_reload(reference: dict[str, Any]) -> None:
    out, state = reference["out"], reference["state"]
    assert state["epoch"] == EPOCHS and state["dataset"] == "synthetic"
    assert state["model_spec"] == {
        "name": "compact_cnn", "num_classes": 10, "in_channels": 1, "image_size": 28,
        "mean": [0.5], "std": [0.2],
    }
    assert state["config"]["mixer"] == "robustmix"
    assert {"optimizer", "scheduler", "scaler", "history"} <= state.keys()
    assert state_dict_sha256(state["model"]) == reference["result"]["weights_sha256"]

    model, meta = load_checkpoint_model(out / "checkpoint.pt")
    assert not model.training
    assert meta["epoch"] == EPOCHS and meta["model"] == "compact_cnn"
    assert meta["dataset"] == "synthetic" and meta["config"]["seed"] == 3
    _assert_same_state(model.state_dict(), state["model"])


def test_recorded_test_error_matches_an_independent_recount(tmp_path: Path) -> None:
    result = train(_config(tmp_path, epochs=1, limit_train=16, limit_test=None))
    model, _ = load_checkpoint_model(tmp_path / "checkpoint.pt")
    from robustmix.data import load_split_tensors

    images, labels = load_split_tensors("synthetic", split="test")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        logits = model(x)
    y = torch.from_numpy(labels)
    assert result["final"]["n_test"] == len(labels) == 256
    assert result["final"]["test_error"] == pytest.approx((logits.argmax(1) != y).float().mean().item(), abs=1e-12)
    assert result["final"]["test_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)


def test_stop_then_resume_is_bit_exact(reference: dict[str, Any], tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    first = train(cfg, stop_after_epoch=2)
    assert first["epochs_completed"] == 2 and not first["finished"]
    assert not (tmp_path / "metrics.json").exists()
    resumed = train(cfg.replace(resume=True))
    assert resumed["epochs_completed"] == EPOCHS
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    _assert_same_state(state["model"], reference["state"]["model"])
    assert resumed["weights_sha256"] == reference["result"]["weights_sha256"]
    ref_opt = reference["state"]["optimizer"]["state"]
    for k, v in state["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], ref_opt[k]["momentum_buffer"])
    strip = ("images_per_s", "epoch_time_s", "train_time_s")
    ours = [{k: v for k, v in r.items() if k not in strip} for r in resumed["history"]]
    theirs = [{k: v for k, v in r.items() if k not in strip} for r in reference["result"]["history"]]
    assert ours == theirs
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == list(range(1, EPOCHS + 1))


def test_killed_subprocess_resumes_to_same_weights(reference: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cmd = [
        sys.executable, "-m", "robustmix", "train", "--dataset", "synthetic",
        "--epochs", str(EPOCHS), "--batch-size", "8", "--limit-train", "32", "--limit-test", "32",
        "--mixer", "robustmix", "--lr", "0.05", "--warmup-epochs", "1", "--seed", "3",
        "--output-dir", str(out), "--no-progress",
    ]
    # Same intra-op thread count as this process, so float reductions are ordered alike.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    jsonl = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if jsonl.exists() and jsonl.read_text().count("\n") >= 1:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"run ended before it could be killed: {proc.communicate()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = load_checkpoint(out / "checkpoint.pt")["epoch"]
    assert 1 <= done < EPOCHS
    assert not (out / "metrics.json").exists()

    cfg = load_config(out / "config.json", {"resume": True})
    resumed = train(cfg)
    assert resumed["finished"]
    _assert_same_state(load_checkpoint(out / "checkpoint.pt")["model"], reference["state"]["model"])
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == list(range(1, EPOCHS + 1))


def test_random_augmentation_does_not_depend_on_worker_count(tmp_path: Path) -> None:
    # Per-image transforms draw from torch's default generator, which DataLoader seeds per
    # worker; the trainer seeds it per image instead, so workers may change on resume.
    runs = {}
    for workers in (0, 2):
        cfg = _config(tmp_path / str(workers), epochs=2, augment="trivialaugment", workers=workers)
        runs[workers] = train(cfg)["weights_sha256"]
    resumed = tmp_path / "resumed"
    cfg = _config(resumed, epochs=2, augment="trivialaugment", workers=2)
    train(cfg, stop_after_epoch=1)
    assert train(cfg.replace(resume=True, workers=0))["weights_sha256"] == runs[0]
    assert runs[0] == runs[2]
    # and the augmentation is really random: another seed's augmentation gives other weights
    other = _config(tmp_path / "other", epochs=2, augment="none", workers=0)
    assert train(other)["weights_sha256"] != runs[0]


def test_seeded_items_draws_depend_on_epoch_seed_and_index_only() -> None:
    from robustmix.train.run import SeededItems

    class Draw(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.rand(3)

    items = SeededItems(Draw(), epoch_seed=11)
    before = torch.random.get_rng_state()
    first = [items[i] for i in range(4)]
    assert torch.equal(torch.random.get_rng_state(), before)  # main process: state restored
    assert all(torch.equal(a, b) for a, b in zip(first, [items[i] for i in (0, 1, 2, 3)]))
    assert not torch.equal(first[0], first[1])  # per index
    items.epoch_seed = 12
    assert not torch.equal(items[0], first[0])  # per epoch


def test_different_seed_gives_different_weights(reference: dict[str, Any], tmp_path: Path) -> None:
    result = train(_config(tmp_path, seed=4))
    assert result["weights_sha256"] != reference["result"]["weights_sha256"]


def test_run_guards(tmp_path: Path) -> None:
    cfg = _config(tmp_path, epochs=1, mixer="none", limit_train=8, limit_test=8)
    with pytest.raises(FileNotFoundError, match="resume=True but there is no checkpoint at"):
        train(cfg.replace(resume=True))
    first = train(cfg)
    with pytest.raises(ValueError, match="already holds a run; pass resume=True"):
        train(cfg)
    again = train(cfg, overwrite=True)
    assert again["weights_sha256"] == first["weights_sha256"]  # same seed, same weights
    with pytest.raises(ValueError, match=r"config differs in lr: checkpoint 0.05 vs now 0.1"):
        train(cfg.replace(resume=True, lr=0.1))
    with pytest.raises(ValueError, match="stop_after_epoch must be >= 1 or None, got 0"):
        train(cfg, stop_after_epoch=0)
    with pytest.raises(TypeError, match="config must be a TrainConfig, got dict"):
        train({"epochs": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="amp='fp16' needs a CUDA device"):
        train(cfg.replace(amp="fp16", device="cpu", output_dir=str(tmp_path / "fp16")))


def test_each_mixer_and_options_run_end_to_end(tmp_path: Path) -> None:
    for i, changes in enumerate([
        {"mixer": "mixup", "per_sample": True, "optimizer": "adamw", "lr": 1e-3},
        {"mixer": "cutmix", "schedule": "constant", "label_smoothing": 0.1, "mix_prob": 0.5,
         "workers": 1},
        {"mixer": "robustmix", "tau": 0.2, "energy": "sample", "amp": "bf16", "channels_last": True},
    ]):
        cfg = _config(tmp_path / str(i), epochs=1, limit_train=16, limit_test=8, **changes)
        result = train(cfg)
        final = result["final"]
        assert final["n_train"] == 16 and final["n_test"] == 8
        assert all(map(lambda v: v == v, (final["train_loss"], final["test_loss"])))  # not NaN
