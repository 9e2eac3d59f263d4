"""Checkpoints: written atomically, read with ``weights_only=True``, self-describing.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (nothing pickled
beyond what ``torch.load(weights_only=True)`` accepts):

    format        "robustmix.checkpoint"
    version       1
    epoch         number of completed epochs
    model         ImageClassifier state_dict
    model_spec    {"name", "num_classes", "in_channels", "image_size", "mean", "std"}
    dataset       dataset name
    config        the TrainConfig as a dict
    optimizer     optimizer state_dict
    scheduler     LR scheduler state_dict
    scaler        GradScaler state_dict (empty dict when unused)
    history       list of per-epoch metric dicts so far

The model spec lets :func:`load_checkpoint_model` rebuild the network without the config
machinery. No RNG state is stored: the trainer re-derives every random stream (data order,
loader workers, augmentation, dropout, mixer) at the start of each epoch from
``(config["seed"], epoch, rank)``, so ``config`` and ``epoch`` are the complete RNG state and a
resumed run continues bit-exactly, under DDP too.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustmix._io import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "load_checkpoint",
    "load_checkpoint_model",
    "save_checkpoint",
    "state_dict_sha256",
]

CHECKPOINT_FORMAT = "robustmix.checkpoint"
CHECKPOINT_VERSION = 1
_SPEC_KEYS = ("name", "num_classes", "in_channels", "image_size", "mean", "std")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus format/version tags) to ``path`` atomically.

    A crash during the write leaves the previous file untouched: ``torch.save`` writes into a
    temporary file that replaces ``path`` only once it is complete and synced.
    """
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(
    path: str | os.PathLike, *, map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check that it is one of ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"checkpoint {str(path)!r} could not be read as a torch file{_load_failure(exc)}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint {str(path)!r} is not a robustmix checkpoint "
            f"(expected format {CHECKPOINT_FORMAT!r}, got {state.get('format') if isinstance(state, dict) else type(state).__name__!r})"
        )
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {str(path)!r} has version {state.get('version')!r}, "
            f"this robustmix reads version {CHECKPOINT_VERSION}"
        )
    return state


def _load_failure(exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a line: torch's own message advises
    re-running with ``weights_only=False``, which is wrong for a corrupt file and unsafe for an
    untrusted one, so only its diagnosis is kept."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n", 1)[0].strip()
        if reason.startswith("Unsupported global"):
            reason = reason.split(" Please use", 1)[0]
            return (": it holds Python objects that loading with weights_only=True refuses (robustmix never "
                    f"runs code from a checkpoint): {reason}")
        return f" (corrupted, or not a torch file): {reason}"
    first = text.strip().split("\n", 1)[0]
    first = first.split(". This is an internal miniz error", 1)[0]
    return f" (truncated, corrupted, or not a torch file): {first}"


def load_checkpoint_model(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained model from a checkpoint's stored spec and weights.

    Returns:
        ``(model, meta)``: the ``ImageClassifier`` in eval mode on ``map_location`` (it takes
        [0, 1] images), and ``meta`` with "config" (dict), "dataset", "model" (name), "epoch",
        "model_spec" and "history".
    """
    from robustmix.models import build_model  # models sit below train; imported on use

    state = load_checkpoint(path, map_location=map_location)
    spec = state.get("model_spec")
    if not isinstance(spec, dict) or any(k not in spec for k in _SPEC_KEYS):
        raise ValueError(f"checkpoint {str(path)!r} has no complete model_spec (needs {_SPEC_KEYS})")
    model = build_model(
        spec["name"],
        num_classes=int(spec["num_classes"]),
        in_channels=int(spec["in_channels"]),
        image_size=int(spec["image_size"]),
        mean=tuple(spec["mean"]),
        std=tuple(spec["std"]),
    )
    model.load_state_dict(state["model"])
    model.to(map_location).eval()
    meta = {
        "config": state.get("config", {}),
        "dataset": state.get("dataset"),
        "model": spec["name"],
        "epoch": state.get("epoch"),
        "model_spec": spec,
        "history": state.get("history", []),
    }
    return model, meta


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a state_dict: a fingerprint of the weights."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # Viewing as bytes works for every dtype (bfloat16 has no numpy equivalent).
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
