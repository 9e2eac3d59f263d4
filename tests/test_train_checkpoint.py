"""Checkpoints: atomic writes, weights_only loading, format checks, weight fingerprints."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from robustmix.train.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    save_checkpoint,
    state_dict_sha256,
)


class _NotAllowed:
    """A class that ``torch.load(weights_only=True)`` must refuse to unpickle."""

    def __init__(self) -> None:
        self.payload = 1


def _state(value: float) -> dict:
    return {"epoch": 1, "model": {"w": torch.full((2, 3), value)}, "history": [{"epoch": 1}]}


def test_round_trip(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ck.pt", _state(1.5))
    state = load_checkpoint(path)
    assert state["format"] == CHECKPOINT_FORMAT and state["version"] == 1
    assert state["epoch"] == 1 and state["history"] == [{"epoch": 1}]
    torch.testing.assert_close(state["model"]["w"], torch.full((2, 3), 1.5), rtol=0, atol=0)


def test_crash_during_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, _state(1.0))
    before = path.read_bytes()

    def crashing_save(obj: object, f: object) -> None:
        f.write(b"half a checkpoint")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _state(2.0))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["model"]["w"][0, 0].item() == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]  # temp file removed


def test_load_uses_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "obj": _NotAllowed()}, path)
    # Plain torch.load would happily run the pickle; ours must refuse it.
    assert isinstance(torch.load(path, weights_only=False)["obj"], _NotAllowed)
    with pytest.raises(ValueError, match="could not be read as a torch file") as info:
        load_checkpoint(path)
    message = str(info.value)
    # The refused object is named, and torch's advice to load with weights_only=False is not passed on.
    assert "_NotAllowed" in message and "never runs code" in message
    assert "likely succeed" not in message and "weights_only` set to `False`" not in message


def test_rejects_truncated_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(64, 64)}})
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"could not be read as a torch file \(truncated, corrupted, or not a torch file\)"):
        load_checkpoint(cut)
    assert load_checkpoint(path)["model"]["w"].sum() == 64 * 64


def test_rejects_foreign_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nothing\.pt"):
        load_checkpoint(tmp_path / "nothing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="is not a robustmix checkpoint"):
        load_checkpoint(foreign)
    future = tmp_path / "future.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 99}, future)
    with pytest.raises(ValueError, match="has version 99, this robustmix reads version 1"):
        load_checkpoint(future)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match=r"could not be read as a torch file \(corrupted, or not a torch file\)") as info:
        load_checkpoint(garbage)
    assert "likely succeed" not in str(info.value)


def test_state_dict_sha256_matches_hand_hash() -> None:
    sd = {"b": torch.tensor([1.0, 2.0]), "a": torch.tensor([3], dtype=torch.int64)}
    h = hashlib.sha256()
    h.update(b"a|torch.int64|(1,)|" + (3).to_bytes(8, "little"))
    h.update(b"b|torch.float32|(2,)|" + torch.tensor([1.0, 2.0]).numpy().tobytes())
    assert state_dict_sha256(sd) == h.hexdigest()
    changed = {**sd, "b": torch.tensor([1.0, 2.0000002])}
    assert state_dict_sha256(changed) != state_dict_sha256(sd)
    assert state_dict_sha256({"x": torch.zeros(2, dtype=torch.bfloat16)}) != state_dict_sha256(
        {"x": torch.zeros(2, dtype=torch.float16)}
    )
