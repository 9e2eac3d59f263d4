"""TrainConfig: defaults, files (TOML/JSON/YAML), overrides, and every rejected input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from robustmix.train.config import (
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_overrides,
)


def test_defaults_match_the_documented_main_job() -> None:
    cfg = load_config()
    assert cfg == TrainConfig()
    assert (cfg.dataset, cfg.model, cfg.schedule, cfg.optimizer) == (
        "fashion_mnist", "compact_cnn", "cosine", "sgd"
    )
    assert cfg.momentum == 0.9 and cfg.amp == "none" and cfg.device == "auto"
    assert cfg.limit_train is None and cfg.resume is False


def test_config_is_frozen() -> None:
    cfg = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]


def test_toml_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        'dataset = "synthetic"\nepochs = 3\nlr = 1\nmixer = "robustmix"\ntau = 0.25\n'
        "per_sample = true\nlimit_train = 64\n"
    )
    cfg = load_config(path, {"epochs": 5, "mixer": "cutmix"})
    assert cfg.dataset == "synthetic"
    assert cfg.epochs == 5  # override wins over the file
    assert cfg.mixer == "cutmix"
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)  # TOML int widened to float
    assert cfg.tau == 0.25 and cfg.per_sample is True and cfg.limit_train == 64


def test_toml_train_table_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[train]\nmodel = "resnet18_cifar"\nbatch_size = 64\n')
    cfg = load_config(path)
    assert cfg.model == "resnet18_cifar" and cfg.batch_size == 64


def test_json_file_round_trip(tmp_path: Path) -> None:
    original = TrainConfig(dataset="synthetic", epochs=4, energy=0.3, limit_test=10)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_to_dict(original)))
    assert load_config(path) == original
    assert config_from_dict(config_to_dict(original)) == original


def test_string_overrides_are_parsed_to_field_types() -> None:
    cfg = load_config(None, {"epochs": "7", "lr": "0.2", "compile": "yes", "limit_train": "none",
                             "energy": "0.5", "tau": "0.1"})
    assert cfg.epochs == 7 and cfg.lr == 0.2 and cfg.compile is True
    assert cfg.limit_train is None
    assert cfg.energy == 0.5 and isinstance(cfg.energy, float)
    assert cfg.tau == 0.1
    assert load_config(None, {"energy": "sample"}).energy == "sample"


def test_parse_overrides() -> None:
    assert parse_overrides(["lr=0.1", "mixer=mixup", "channels-last=false", "limit_test=32"]) == {
        "lr": 0.1, "mixer": "mixup", "channels_last": False, "limit_test": 32,
    }


def test_replace_validates() -> None:
    cfg = TrainConfig().replace(epochs=9)
    assert cfg.epochs == 9
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        TrainConfig().replace(epochs=0)


def test_unknown_key_lists_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("learning_rate = 0.1\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['learning_rate'\].*valid keys are: dataset, data_dir"):
        load_config(path)
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['nope'\]"):
        load_config(None, {"nope": 1})
    with pytest.raises(ValueError, match="unknown config key 'nope' in override 'nope=1'; valid keys"):
        parse_overrides(["nope=1"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epochs": "2"}, "config field 'epochs' must be int, got str '2'"),
        ({"epochs": 2.5}, "config field 'epochs' must be int, got float 2.5"),
        ({"epochs": True}, "config field 'epochs' must be int, got bool True"),
        ({"lr": "fast"}, "config field 'lr' must be float, got str 'fast'"),
        ({"resume": 1}, "config field 'resume' must be bool, got int 1"),
        ({"limit_train": 1.5}, "config field 'limit_train' must be int or None, got float 1.5"),
        ({"dataset": None}, "config field 'dataset' must be str, got NoneType None"),
    ],
)
def test_wrong_types_raise_type_error(values: dict, message: str) -> None:
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_from_dict(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"schedule": "step"}, r"schedule must be one of \('cosine', 'constant'\), got 'step'"),
        ({"optimizer": "adam"}, r"optimizer must be one of \('sgd', 'adamw'\), got 'adam'"),
        ({"mixer": "mixmatch"}, r"mixer must be one of \('none', 'mixup', 'cutmix', 'robustmix'\)"),
        ({"amp": "fp8"}, r"amp must be one of \('none', 'bf16', 'fp16'\), got 'fp8'"),
        ({"epochs": 0}, "epochs must be >= 1, got 0"),
        ({"batch_size": -1}, "batch_size must be >= 1, got -1"),
        ({"limit_test": 0}, "limit_test must be >= 1 or None, got 0"),
        ({"workers": -2}, "workers must be >= 0, got -2"),
        ({"seed": -1}, "seed must be >= 0, got -1"),
        ({"lr": 0.0}, r"lr must lie in \(0.0, inf\), got 0.0"),
        ({"lr": float("inf")}, r"lr must lie in \(0.0, inf\), got inf"),
        ({"weight_decay": float("inf")}, r"weight_decay must lie in \[0.0, inf\), got inf"),
        ({"alpha": -1.0}, r"alpha must lie in \(0.0, inf\), got -1.0"),
        ({"mix_prob": 1.5}, r"mix_prob must lie in \[0.0, 1.0\], got 1.5"),
        ({"label_smoothing": 1.0}, r"label_smoothing must lie in \[0.0, 1.0\), got 1.0"),
        ({"momentum": 1.0}, r"momentum must lie in \[0.0, 1.0\), got 1.0"),
        ({"warmup_epochs": 3.0, "epochs": 2}, r"warmup_epochs must lie in \[0.0, 2.0\], got 3.0"),
        ({"tau": 1.5}, r"tau must lie in \[0.0, 1.0\], got 1.5"),
        ({"energy": "max"}, "energy must be 'batch', 'sample', 'uniform' or a float in"),
        ({"energy": 2.0}, r"energy must lie in \[0.0, 1.0\], got 2.0"),
        ({"lr": float("nan")}, "lr must lie in"),
    ],
)
def test_bad_values_raise_value_error(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_from_dict(values)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config file not found: .*missing\.toml"):
        load_config(tmp_path / "missing.toml")
    ini = tmp_path / "run.ini"
    ini.write_text("x=1")
    with pytest.raises(ValueError, match=r"must end in .toml, .json, .yaml or .yml, got '.ini'"):
        load_config(ini)
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("epochs = = 2\n")
    with pytest.raises(ValueError, match="is not valid TOML"):
        load_config(bad_toml)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{epochs: 2}")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_config(bad_json)
    for suffix in (".toml", ".json", ".yaml"):
        latin1 = tmp_path / f"latin1{suffix}"
        latin1.write_bytes(b"mixer = 'caf\xe9'\n")
        with pytest.raises(ValueError, match=rf"latin1\{suffix}' is not UTF-8 text: .*0xe9"):
            load_config(latin1)
    not_table = tmp_path / "list.json"
    not_table.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a table of key = value pairs"):
        load_config(not_table)


def test_yaml_needs_pyyaml(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 3\nmixer: mixup\n")
    try:
        import yaml  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(ValueError, match="is YAML but pyyaml is not installed"):
            load_config(path)
    else:
        cfg = load_config(path)
        assert cfg.epochs == 3 and cfg.mixer == "mixup"
        path.write_text("epochs: [3\n")
        with pytest.raises(ValueError, match=r"run\.yaml' is not valid YAML: while parsing"):
            load_config(path)


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("lr", "override must look like key=value, got 'lr'"),
        ("=3", "override must look like key=value, got '=3'"),
        ("epochs=two", "config field 'epochs' must be int, got 'two'"),
        ("resume=maybe", "config field 'resume' must be bool, got 'maybe'"),
        ("limit_train=lots", "config field 'limit_train' must be int or None, got 'lots'"),
    ],
)
def test_bad_overrides(pair: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_overrides([pair])


def test_public_surface() -> None:
    import robustmix.train as rt

    expected = {
        "TrainConfig", "classification_loss", "config_from_dict", "config_to_dict", "evaluate",
        "load_checkpoint", "load_checkpoint_model", "load_config", "lr_factor",
        "parse_overrides", "save_checkpoint", "soft_target_cross_entropy", "state_dict_sha256",
        "train", "train_one_epoch",
    }
    assert set(rt.__all__) == expected
    assert all(callable(getattr(rt, name)) for name in expected)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        rt.nope  # noqa: B018


def test_ablation_fields_reach_the_mixer() -> None:
    import torch

    from robustmix.train.run import _mixer_options
    from robustmix.transforms import build_mixer

    config = TrainConfig(mixer="robustmix", band="fft", lam_low=0.7, lam_high=0.2)
    mixer = build_mixer("robustmix", 10, **_mixer_options(config, torch.Generator()))
    assert (mixer.transform, mixer.lam_low, mixer.lam_high) == ("fft", 0.7, 0.2)
    with pytest.raises(ValueError, match="band"):
        TrainConfig(band="wavelet")
    with pytest.raises(ValueError, match="lam_low"):
        TrainConfig(lam_low=1.5)


def test_check_values_reaches_the_mixer_and_may_change_on_resume(tmp_path):
    import torch

    from robustmix.train import run
    from robustmix.train.config import RUNTIME_FIELDS, TrainConfig, config_to_dict
    from robustmix.transforms import build_mixer

    cfg = TrainConfig(mixer="robustmix", check_values=False, output_dir=str(tmp_path))
    options = run._mixer_options(cfg, torch.Generator().manual_seed(0))
    assert options["check_values"] is False
    assert build_mixer(cfg.mixer, 10, **options).check_values is False
    assert TrainConfig().check_values is True
    # it changes no value, so a run may resume with it changed (and from a config saved before it existed)
    assert "check_values" in RUNTIME_FIELDS
    saved = config_to_dict(TrainConfig(mixer="robustmix", output_dir=str(tmp_path)))
    run._check_resumable(saved, cfg, tmp_path / "checkpoint.pt")
    del saved["check_values"]
    run._check_resumable(saved, cfg, tmp_path / "checkpoint.pt")
