"""evaluate_model / evaluate_checkpoint / `robustmix evaluate` on a tiny synthetic checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import robustmix.evaluate as rev
from robustmix.evaluate import (
    evaluate_checkpoint,
    evaluate_model,
    pair_seed,
    parse_corruptions,
    parse_severities,
    source_format,
)

LIMIT = 48  # synthetic test images per evaluation: enough for distinct errors, fast on 2 cores


def _make_checkpoint(path: Path, *, dataset: str, in_channels: int, image_size: int) -> Path:
    """A compact CNN with seeded random weights, saved in the trainer's checkpoint format."""
    from robustmix.models import build_model
    from robustmix.train.checkpoint import save_checkpoint

    spec = {
        "name": "compact_cnn", "num_classes": 10, "in_channels": in_channels,
        "image_size": image_size, "mean": [0.5] * in_channels, "std": [0.2] * in_channels,
    }  # fmt: skip
    model = build_model(
        spec["name"], num_classes=10, in_channels=in_channels, image_size=image_size,
        mean=tuple(spec["mean"]), std=tuple(spec["std"]),
    )  # fmt: skip
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    save_checkpoint(path, {
        "epoch": 1, "model": model.state_dict(), "model_spec": spec, "dataset": dataset,
        "config": {"dataset": dataset, "data_dir": None, "seed": 0}, "history": [],
    })  # fmt: skip
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckpt")
    return _make_checkpoint(
        root / "checkpoint.pt", dataset="synthetic", in_channels=1, image_size=28
    )


@pytest.fixture(scope="module")
def model_and_data(checkpoint):
    from robustmix.data import load_split_tensors
    from robustmix.train.checkpoint import load_checkpoint_model

    model, _ = load_checkpoint_model(checkpoint)
    images, labels = load_split_tensors("synthetic", split="test", limit=LIMIT)
    return model, images, labels


def _reference(model, x01: torch.Tensor, labels) -> tuple[float, float]:
    """Error and loss computed directly, without evaluate_model."""
    with torch.no_grad():
        logits = model(x01)
    y = torch.as_tensor(labels, dtype=torch.int64)
    wrong = int((logits.argmax(1) != y).sum())
    return wrong / len(y), float(F.cross_entropy(logits, y))


def _to01(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


# ---------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1-5", (1, 2, 3, 4, 5)), ("1,3", (1, 3)), ("3,1,3", (1, 3)), ("2-3,5", (2, 3, 5)), (4, (4,)),
     ([5, 1], (1, 5))],
)  # fmt: skip
def test_parse_severities(text, expected) -> None:
    assert parse_severities(text) == expected


@pytest.mark.parametrize("bad", ["0", "1-6", "6", "a", "3-1", "", [0], [1.5], [True]])
def test_parse_severities_rejects(bad) -> None:
    with pytest.raises(ValueError, match="severities: expected"):
        parse_severities(bad)


def test_parse_corruptions() -> None:
    from robustmix.corruptions import ALL_CORRUPTIONS

    assert parse_corruptions("all") == tuple(ALL_CORRUPTIONS)
    assert parse_corruptions("none") == ()
    assert parse_corruptions(None) == ()
    assert parse_corruptions("fog, gaussian_noise,fog") == ("fog", "gaussian_noise")
    with pytest.raises(ValueError, match=r"corruptions: unknown names \['gausian_noise'\]"):
        parse_corruptions("gausian_noise")
    with pytest.raises(ValueError, match=r"unknown names \['rain'\]"):
        parse_corruptions(["fog", "rain"])


def test_pair_seed_is_stable_and_distinct() -> None:
    assert pair_seed(0, "fog", 1) == pair_seed(0, "fog", 1)
    seeds = {pair_seed(s, c, v) for s in (0, 1) for c in ("fog", "snow") for v in (1, 2)}
    assert len(seeds) == 8
    assert all(0 <= s < 2**63 for s in seeds)


# ----------------------------------------------------------------------------- evaluate_model


def test_evaluate_model_matches_direct_computation(model_and_data) -> None:
    model, images, labels = model_and_data
    error, loss = _reference(model, _to01(images), labels)
    for batch_size in (7, 256):
        result = evaluate_model(model, images, labels, batch_size=batch_size)
        assert result["n"] == LIMIT
        assert result["error"] == pytest.approx(error, abs=1e-12)
        assert result["loss"] == pytest.approx(loss, rel=1e-5)
    # float NCHW tensor input and a loader of batches give the same numbers
    float_result = evaluate_model(model, _to01(images), torch.from_numpy(labels), batch_size=10)
    assert float_result["error"] == pytest.approx(error, abs=1e-12)
    loader = [
        (_to01(images[i : i + 16]), torch.from_numpy(labels[i : i + 16]))
        for i in range(0, LIMIT, 16)
    ]
    assert evaluate_model(model, loader)["error"] == pytest.approx(error, abs=1e-12)


def test_evaluate_model_bad_inputs(model_and_data) -> None:
    model, images, labels = model_and_data
    with pytest.raises(ValueError, match="labels: required"):
        evaluate_model(model, images)
    with pytest.raises(ValueError, match="labels: expected 48 labels"):
        evaluate_model(model, images, labels[:5])
    with pytest.raises(ValueError, match="batch_size: expected a positive int"):
        evaluate_model(model, images, labels, batch_size=0)
    with pytest.raises(ValueError, match="give both or neither"):
        evaluate_model(model, images, labels, corruption="fog")
    with pytest.raises(ValueError, match="images: expected uint8"):
        evaluate_model(model, images[..., 0], labels)
    with pytest.raises(ValueError, match="store: expected one of"):
        evaluate_model(model, images, labels, corruption="fog", severity=1, store="png")


def test_evaluate_model_store_modes(model_and_data) -> None:
    """The corrupted batch reaches the model as stored: truncated, rounded or as floats."""
    from robustmix.corruptions import corrupt

    model, images, labels = model_and_data
    for store, keep in [
        ("release", lambda x: (x.clamp(0, 1) * 255).floor() / 255),
        ("round", lambda x: (x.clamp(0, 1) * 255).round() / 255),
        ("float", lambda x: x),
    ]:
        gen = torch.Generator().manual_seed(5)
        result = evaluate_model(
            model, images, labels, corruption="speckle_noise", severity=3, generator=gen, store=store
        )
        x = corrupt(_to01(images), "speckle_noise", 3, generator=torch.Generator().manual_seed(5))
        error, loss = _reference(model, keep(x), labels)
        assert result["error"] == pytest.approx(error, abs=1e-12)
        assert result["loss"] == pytest.approx(loss, rel=1e-5), store


# ---------------------------------------------------------------------- evaluate_checkpoint


def test_clean_only(checkpoint, model_and_data) -> None:
    model, images, labels = model_and_data
    results = evaluate_checkpoint(checkpoint, corruptions="none", limit=LIMIT, progress=False)
    error, loss = _reference(model, _to01(images), labels)
    assert results["clean"]["n"] == LIMIT
    assert results["clean"]["error"] == pytest.approx(error, abs=1e-12)
    assert results["clean"]["loss"] == pytest.approx(loss, rel=1e-5)
    assert results["corrupted"] == {} and results["summary"] is None
    assert results["dataset"] == "synthetic" and results["model"] == "compact_cnn"
    assert results["config"]["source_format"] == "on-the-fly"
    json.dumps(results)


def test_on_the_fly_is_seeded_per_pair(checkpoint, model_and_data) -> None:
    from robustmix.corruptions import corrupt

    model, images, labels = model_and_data
    kwargs = {"limit": LIMIT, "progress": False, "batch_size": 256, "seed": 3}
    first = evaluate_checkpoint(
        checkpoint, corruptions="gaussian_noise,contrast", severities="1,5", **kwargs
    )
    again = evaluate_checkpoint(
        checkpoint, corruptions="gaussian_noise,contrast", severities="1,5", **kwargs
    )
    assert first["corrupted"] == again["corrupted"]
    assert set(first["corrupted"]) == {"gaussian_noise", "contrast"}
    assert set(first["corrupted"]["contrast"]) == {"1", "5"}
    # a pair's numbers do not depend on which other pairs were evaluated, nor their order
    alone = evaluate_checkpoint(checkpoint, corruptions=["contrast"], severities=[5], **kwargs)
    assert alone["corrupted"]["contrast"]["5"] == first["corrupted"]["contrast"]["5"]

    # reference: the same corruption applied by hand with the documented generator seed
    gen = torch.Generator().manual_seed(pair_seed(3, "gaussian_noise", 5))
    x = corrupt(_to01(images), "gaussian_noise", 5, generator=gen)
    x = (x.clamp(0, 1) * 255).floor() / 255  # stored as CIFAR-10-C stores it: np.uint8 truncates
    error, loss = _reference(model, x, labels)
    assert first["corrupted"]["gaussian_noise"]["5"] == pytest.approx(error, abs=1e-12)
    assert first["corrupted_loss"]["gaussian_noise"]["5"] == pytest.approx(loss, rel=1e-5)
    assert first["corrupted_n"]["gaussian_noise"]["5"] == LIMIT
    # and the corruption did change the images (so the check above is not the clean one)
    assert not torch.equal(x, _to01(images))

    summary = first["summary"]
    assert summary["corruptions"] == ["gaussian_noise", "contrast"]
    per = {c: sum(v.values()) / 2 for c, v in first["corrupted"].items()}
    assert summary["mean_corruption_error"] == pytest.approx(
        (per["gaussian_noise"] + per["contrast"]) / 2
    )


def test_other_seed_changes_the_corrupted_images() -> None:
    from robustmix.corruptions import corrupt

    x = torch.full((4, 1, 28, 28), 0.5)
    a = corrupt(
        x,
        "gaussian_noise",
        3,
        generator=torch.Generator().manual_seed(pair_seed(0, "gaussian_noise", 3)),
    )
    b = corrupt(
        x,
        "gaussian_noise",
        3,
        generator=torch.Generator().manual_seed(pair_seed(1, "gaussian_noise", 3)),
    )
    assert not torch.equal(a, b)


def _write_cifar_c(
    root: Path, images: np.ndarray, labels: np.ndarray, name: str
) -> list[np.ndarray]:
    """A CIFAR-10-C style file: five distinct uint8 versions of ``images``, severity-major."""
    gen = np.random.default_rng(0)
    versions = []
    for s in range(1, 6):
        noise = gen.integers(-20 * s, 20 * s + 1, size=images.shape)
        versions.append(np.clip(images.astype(np.int64) + noise, 0, 255).astype(np.uint8))
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / f"{name}.npy", np.concatenate(versions))
    np.save(root / "labels.npy", np.tile(labels, 5))
    return versions


def test_cifar_c_source_is_checked_whole_before_any_evaluation(
    checkpoint, monkeypatch, tmp_path
) -> None:
    """A label out of range in the last severity only, or in a second file, stops the run
    before the first forward pass, naming the file (not after an hour of evaluation)."""
    images = np.zeros((4, 28, 28, 1), np.uint8)
    _write_cifar_c(tmp_path / "c", images, np.zeros(4, np.int64), "fog")
    _write_cifar_c(tmp_path / "c", images, np.zeros(4, np.int64), "snow")
    np.save(tmp_path / "c" / "labels.npy", np.r_[np.zeros(16, np.int64), np.full(4, 10)])

    def no_evaluation(*args, **kwargs):
        raise AssertionError("the model was evaluated before the source was checked")

    monkeypatch.setattr(rev, "evaluate_model", no_evaluation)
    with pytest.raises(ValueError, match=r"labels.npy: label 10 is out of range"):
        evaluate_checkpoint(checkpoint, source=tmp_path / "c", progress=False)
    np.save(tmp_path / "c" / "labels.npy", np.zeros(20, np.int64))
    np.save(tmp_path / "c" / "snow.npy", np.zeros((20, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"snow.npy: the source's images do not match"):
        evaluate_checkpoint(checkpoint, source=tmp_path / "c", progress=False)


def test_cifar_c_source_matches_direct_evaluation(checkpoint, model_and_data, tmp_path) -> None:
    model, images, labels = model_and_data
    versions = _write_cifar_c(tmp_path / "c", images, labels, "shot_noise")
    results = evaluate_checkpoint(
        checkpoint,
        source=tmp_path / "c",
        corruptions="all",
        severities="2,4",
        limit=LIMIT,
        progress=False,
    )
    assert results["config"]["source_format"] == "cifar-c"
    assert results["config"]["corruptions"] == ["shot_noise"]  # "all" = what the folder holds
    for s in (2, 4):
        error, loss = _reference(model, _to01(versions[s - 1]), labels)
        assert results["corrupted"]["shot_noise"][str(s)] == pytest.approx(error, abs=1e-12)
        assert results["corrupted_loss"]["shot_noise"][str(s)] == pytest.approx(loss, rel=1e-5)
        direct = evaluate_model(model, versions[s - 1], labels)
        assert results["corrupted"]["shot_noise"][str(s)] == direct["error"]


def test_cifar_c_source_with_a_limit_evaluates_the_first_images_of_each_slice(
    checkpoint, model_and_data, tmp_path
) -> None:
    model, images, labels = model_and_data
    versions = _write_cifar_c(tmp_path / "c", images, labels, "fog")
    half = LIMIT // 2
    results = evaluate_checkpoint(
        checkpoint, source=tmp_path / "c", severities="3", limit=half, progress=False
    )
    direct = evaluate_model(model, versions[2][:half], labels[:half])
    assert results["corrupted"]["fog"]["3"] == direct["error"]


def test_imagenet_c_source(tmp_path) -> None:
    from PIL import Image

    from robustmix.data import load_split_tensors
    from robustmix.train.checkpoint import load_checkpoint_model

    ckpt = _make_checkpoint(
        tmp_path / "rgb.pt", dataset="synthetic_rgb", in_channels=3, image_size=32
    )
    model, _ = load_checkpoint_model(ckpt)
    images, labels = load_split_tensors("synthetic_rgb", split="test", limit=12)
    order = []
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / "inc" / "fog" / "3" / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
        order.append((f"class_{label}", f"{i:03d}", i))
    assert source_format(tmp_path / "inc") == "imagenet-c"
    results = evaluate_checkpoint(
        ckpt, source=tmp_path / "inc", corruptions="fog", severities="3", limit=12, progress=False
    )
    # ImageFolder indexes classes by sorted folder name; rebuild the same order and labels
    classes = sorted({c for c, _, _ in order})
    index = [i for _, _, i in sorted(order)]
    folder_labels = np.array([classes.index(f"class_{labels[i]}") for i in index])
    error, loss = _reference(model, _to01(images[index]), folder_labels)
    assert results["config"]["source_format"] == "imagenet-c"
    assert results["corrupted"]["fog"]["3"] == pytest.approx(error, abs=1e-12)
    assert results["corrupted_loss"]["fog"]["3"] == pytest.approx(loss, rel=1e-5)


def test_imagenet_c_source_refuses_severities_with_other_classes(tmp_path) -> None:
    # A severity folder missing a class would shift every later label (sorted folder index).
    from PIL import Image

    ckpt = _make_checkpoint(
        tmp_path / "rgb.pt", dataset="synthetic_rgb", in_channels=3, image_size=32
    )
    pixels = np.zeros((32, 32, 3), np.uint8)
    for severity, classes in (("1", ("a", "b", "c")), ("2", ("a", "c"))):
        for name in classes:
            folder = tmp_path / "inc" / "fog" / severity / name
            folder.mkdir(parents=True)
            Image.fromarray(pixels).save(folder / "0.png")
    with pytest.raises(ValueError, match=r"fog/2: its class folders differ from those of fog/1 "
                                         r"\(missing \['b'\], extra \[\]\)"):
        evaluate_checkpoint(ckpt, source=tmp_path / "inc", corruptions="fog", severities="1-2",
                            progress=False)


def test_checkpoint_bad_paths(checkpoint, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        evaluate_checkpoint(tmp_path / "nope.pt", corruptions="none", progress=False)
    with pytest.raises(FileNotFoundError, match="source: corrupted-set folder"):
        evaluate_checkpoint(checkpoint, source=tmp_path / "missing", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither CIFAR-10-C files"):
        evaluate_checkpoint(checkpoint, source=tmp_path / "empty", progress=False)
    images = np.zeros((4, 28, 28, 1), np.uint8)
    _write_cifar_c(tmp_path / "c", images, np.zeros(4, np.int64), "fog")
    with pytest.raises(FileNotFoundError, match=r"snow.npy does not exist"):
        evaluate_checkpoint(checkpoint, source=tmp_path / "c", corruptions="snow", progress=False)
    with pytest.raises(ValueError, match="unknown names"):
        evaluate_checkpoint(checkpoint, corruptions="fgo", progress=False)
    with pytest.raises(ValueError, match="severities: expected"):
        evaluate_checkpoint(checkpoint, severities="0-2", progress=False)
    with pytest.raises(ValueError, match="limit: expected a positive int"):
        evaluate_checkpoint(checkpoint, limit=0, progress=False)
    # AlexNet's published errors are 5-severity means: refused up front for a partial run
    with pytest.raises(
        ValueError, match=r"baseline: cannot score severities \[1, 2\].*scalar baseline"
    ):
        evaluate_checkpoint(checkpoint, corruptions="fog", severities="1-2", baseline="alexnet")


# ------------------------------------------------------------------------------------- the CLI


def test_cli_writes_json_and_table(checkpoint, tmp_path, capsys) -> None:
    from robustmix.cli import main

    out = tmp_path / "res" / "results.json"
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--corruptions", "gaussian_noise,speckle_noise",
            "--severities", "1,2", "--limit", str(LIMIT), "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert set(results) >= {"checkpoint", "dataset", "config", "clean", "corrupted", "summary"}
    assert results["config"]["store"] == "release"
    assert set(results["corrupted"]) == {"gaussian_noise", "speckle_noise"}
    assert results["summary"]["corruptions"] == ["gaussian_noise"]
    assert results["summary"]["extra"]["corruptions"] == ["speckle_noise"]
    table = capsys.readouterr().out
    assert "clean error" in table and "gaussian_noise" in table
    assert "extra corruptions (reported apart, not in mCE)" in table
    assert f"{100 * results['clean']['error']:.2f}" in table

    # the same run as its own baseline: every CE and relative CE is exactly 1
    out2 = tmp_path / "res" / "vs_self.json"
    assert main([*argv[:-3], "--out", str(out2), "--baseline", str(out), "--no-progress"]) == 0
    summary = json.loads(out2.read_text())["summary"]
    assert summary["ce"] == {"gaussian_noise": pytest.approx(1.0)}
    assert summary["extra"]["ce"] == {"speckle_noise": pytest.approx(1.0)}
    assert summary["baseline"] == str(checkpoint)


def test_cli_errors_exit_2(checkpoint, tmp_path, capsys) -> None:
    from robustmix.cli import main

    assert (
        main(
            ["evaluate", "--checkpoint", str(checkpoint), "--corruptions", "nope", "--no-progress"]
        )
        == 2
    )
    assert "unknown names ['nope']" in capsys.readouterr().err
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--baseline", str(tmp_path / "x.json")]
    assert main(argv) == 2
    assert "--baseline: expected 'alexnet' or a results JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse rejects an unknown storage mode
        main(["evaluate", "--checkpoint", str(checkpoint), "--store", "png"])
    assert "invalid choice: 'png'" in capsys.readouterr().err


def test_format_table_full_benchmark_with_alexnet() -> None:
    from robustmix.cli.evaluate import format_table
    from robustmix.metrics import ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, EXTRA_CORRUPTIONS, summarize

    corrupted = {c: {str(s): e for s in range(1, 6)} for c, e in ALEXNET_ERRORS.items()}
    corrupted.update({c: {str(s): 0.5 for s in range(1, 6)} for c in EXTRA_CORRUPTIONS})
    results = {
        "checkpoint": "alexnet.pt", "dataset": "imagefolder", "model": "alexnet", "epoch": None,
        "config": {"severities": [1, 2, 3, 4, 5], "source": "/data/imagenet-c"},
        "clean": {"error": ALEXNET_CLEAN_ERROR, "loss": 1.0, "n": 50000},
        "corrupted": corrupted,
        "summary": summarize(corrupted, clean_error=ALEXNET_CLEAN_ERROR, baseline="alexnet"),
    }  # fmt: skip
    table = format_table(results)
    assert "mCE vs alexnet: 100.00 %   relative mCE: 100.00 %" in table
    assert "speckle_noise" in table.split("extra corruptions")[1]
    assert "speckle_noise" not in table.split("extra corruptions")[0]
