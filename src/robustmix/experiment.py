"""The compared experiment: methods x seeds -> train, evaluate on corruptions, diagnose, report.

One :class:`Preset` (plain data) says what to run; :func:`run_experiment` trains every method
and seed with :func:`robustmix.train.train`, evaluates each checkpoint on clean data and every
corruption with :func:`robustmix.evaluate.evaluate_checkpoint` (on the fly, one fixed corruption
seed, so all methods see the same corrupted images), runs the frequency diagnostics of
:mod:`robustmix.diagnostics`, saves JSON per run and writes the report (:mod:`robustmix.report`,
which documents the results layout).

Resumable: a run whose ``run.json`` exists is skipped; a run killed during training resumes from
its ``checkpoint.pt`` (the trainer's resume gives the same weights as an uninterrupted run);
a finished evaluation (``eval.json``) is not redone.

Bookkeeping across invocations: ``experiment.json`` keeps one entry per invocation in
``invocations`` (start time, command, environment incl. commit, elapsed seconds, status), saved
after every completed run, so a killed invocation keeps the time up to its last completed run
(its status ``running`` becomes ``interrupted`` when the next invocation starts);
``wall_time_s`` is the sum over invocations. Each run's
``stages.json`` records a stage's seconds, invocation and commit as soon as the stage completes;
a stage skipped because its output exists keeps that record, and ``run.json`` copies it
(``stages``, plus ``timings`` in seconds, None where unknown).

Method names: ``none``, ``mixup``, ``cutmix``, ``robustmix``, optionally followed by ``_``
separated modifiers that make ablations: ``alpha<float>``, ``tau<float>`` (Robustmix),
``batch``/``sample``/``uniform`` or ``energy<float>`` (Robustmix label weighting), ``persample``,
e.g. ``robustmix_tau0.5``, ``robustmix_uniform``, ``mixup_alpha0.2``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustmix._io import read_json, write_json

__all__ = [
    "PRESETS",
    "Preset",
    "environment_info",
    "method_overrides",
    "parse_methods",
    "run_experiment",
    "run_one",
]

MIXERS = ("none", "mixup", "cutmix", "robustmix")
_ENERGY_MODES = ("batch", "sample", "uniform")


# --------------------------------------------------------------------------------------------
# Methods


def method_overrides(name: str) -> dict[str, Any]:
    """TrainConfig fields for a method name such as ``"robustmix_tau0.5_uniform"``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"method must be a non-empty string, got {name!r}")
    base, *mods = name.split("_")
    if base not in MIXERS:
        raise ValueError(f"method {name!r}: must start with one of {MIXERS}")
    out: dict[str, Any] = {"mixer": base}
    for mod in mods:
        m = re.fullmatch(r"(alpha|tau|energy|laml|lamh)(\d+(?:\.\d*)?)", mod)
        key = {"laml": "lam_low", "lamh": "lam_high"}.get(m.group(1), m.group(1)) if m else None
        if m and not (key != "alpha" and base != "robustmix") and base != "none":
            out[key] = float(m.group(2))
        elif mod == "fft" and base == "robustmix":
            out["band"] = "fft"
        elif mod in _ENERGY_MODES and base == "robustmix":
            out["energy"] = mod
        elif mod == "persample" and base in ("mixup", "robustmix"):
            out["per_sample"] = True
        else:
            raise ValueError(
                f"method {name!r}: unknown modifier {mod!r} for {base!r}; modifiers are alpha<float>, "
                "and for robustmix tau<float>, energy<float>, laml<float>, lamh<float>, batch, sample, uniform, "
                "persample, fft"
            )
    return out


@dataclass(frozen=True)
class Preset:
    """Everything an experiment runs, as data.

    Attributes:
        name: preset name (recorded in the results).
        dataset, model: as in :class:`robustmix.train.TrainConfig`.
        methods: method names (see the module docstring).
        seeds: number of seeds per method (seeds ``0 .. seeds-1``).
        epochs, batch_size, lr, weight_decay, optimizer, warmup_epochs: training settings.
        limit_train: train on a seeded subset of this many images (None: all).
        eval_limit: evaluate clean and corrupted error on the first this-many test images.
        corruptions: ``"all"`` (15 + 4 extra) or comma-separated names.
        severities: corruption severities.
        corruption_seed: seed of the on-the-fly corruptions (same for every run).
        diag_limit: test images for filtered accuracy and cue conflict.
        heatmap_limit: test images for the Fourier heat map (its cost is H*W/2 forward passes each).
        heatmap_eps: L2 norm of the Fourier perturbation per channel ([0, 1] pixel scale).
        heatmap_max_freq: only frequencies with ``|u|, |v| <=`` this in the heat map (None: all).
        cutoffs: cutoff sweep of the filtered-accuracy curves and the lam_c curve.
        cue_cutoff: band split of the cue-conflict hybrids.
        spectrum_limit: training images for the dataset energy spectrum.
        eval_batch_size: images per forward pass in evaluation and diagnostics.
    """

    name: str = "custom"
    dataset: str = "fashion_mnist"
    model: str = "compact_cnn"
    methods: tuple[str, ...] = ("none", "mixup", "cutmix", "robustmix")
    seeds: int = 1
    epochs: int = 2
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    warmup_epochs: float = 0.0
    limit_train: int | None = None
    eval_limit: int | None = 1000
    corruptions: str = "all"
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    corruption_seed: int = 0
    diag_limit: int = 1000
    heatmap_limit: int = 100
    heatmap_eps: float = 2.0
    heatmap_max_freq: int | None = None
    cutoffs: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
    cue_cutoff: float = 0.25
    spectrum_limit: int = 10000
    eval_batch_size: int = 500

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if not self.methods:
            raise ValueError("methods must name at least one method, got none")
        for m in self.methods:
            method_overrides(m)  # validates the name early
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods has repeated names: {self.methods}")

    def replace(self, **changes: Any) -> Preset:
        """A copy with fields changed; string values (from the CLI) are parsed to the field type."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise ValueError(f"unknown preset field(s) {unknown}; valid fields are: {', '.join(fields)}")
        parsed = {k: _parse_field(k, v, getattr(self, k)) for k, v in changes.items()}
        return dataclasses.replace(self, **parsed)


_OPTIONAL_INTS = ("limit_train", "eval_limit", "heatmap_max_freq")


def _parse_field(name: str, value: Any, current: Any) -> Any:
    if not isinstance(value, str):
        return tuple(value) if isinstance(current, tuple) else value
    text = value.strip()
    try:
        if name == "methods":
            return tuple(t.strip() for t in text.split(",") if t.strip())
        if name == "severities":
            from robustmix.evaluate import parse_severities

            return parse_severities(text)
        if name == "cutoffs":
            return tuple(float(t) for t in text.split(","))
        if name in _OPTIONAL_INTS and text.lower() in ("none", "all", ""):
            return None
        if isinstance(current, bool):
            return text.lower() in ("1", "true", "yes", "on")
        if isinstance(current, int) or name in _OPTIONAL_INTS:
            return int(text)
        if isinstance(current, float):
            return float(text)
    except ValueError as exc:
        raise ValueError(f"preset field {name!r}: cannot parse {value!r} ({exc})") from exc
    return text


#: The README's first command: Fashion-MNIST, 2 CPU cores, about ten minutes including corruption
#: evaluation and diagnostics, 4 methods x 1 seed.
QUICK = Preset(
    name="quick",
    seeds=1,
    epochs=3,
    batch_size=128,
    lr=0.05,
    limit_train=15000,
    eval_limit=1000,
    diag_limit=1000,
    heatmap_limit=50,
    spectrum_limit=10000,
)

#: The measured reproduction: the whole training set, 3 seeds, more epochs.
FULL = Preset(
    name="full",
    seeds=3,
    epochs=4,
    batch_size=128,
    lr=0.05,
    warmup_epochs=0.5,
    limit_train=None,
    eval_limit=2000,
    diag_limit=2000,
    heatmap_limit=100,
    spectrum_limit=20000,
)

PRESETS: dict[str, Preset] = {"quick": QUICK, "full": FULL}


# --------------------------------------------------------------------------------------------
# Environment


def _git_commit() -> str | None:
    """The checkout's commit, read from .git files (no subprocess), or None."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        git = parent / ".git"
        if git.is_file():  # a worktree or submodule: ".git" names the real folder
            try:
                pointer = git.read_text().strip()
            except OSError:
                return None
            if not pointer.startswith("gitdir: "):
                return None
            git = (parent / pointer[8:]).resolve()
            common = git / "commondir"  # refs of a worktree live in the main repository
            if (git / "HEAD").is_file() and common.is_file():
                head = (git / "HEAD").read_text().strip()
                if not head.startswith("ref: "):
                    return head
                git = (git / common.read_text().strip()).resolve()
                return _resolve_ref(git, head[5:])
        if git.is_dir():
            try:
                head = (git / "HEAD").read_text().strip()
                if not head.startswith("ref: "):
                    return head
                return _resolve_ref(git, head[5:])
            except OSError:
                return None
    return None


def _resolve_ref(git: Path, ref: str) -> str | None:
    """The commit a ref (``refs/heads/main``) names in the repository folder ``git``."""
    try:
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        packed = git / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
    except OSError:
        return None
    return None


def environment_info() -> dict[str, Any]:
    """Versions and hardware that produced a result (recorded in experiment.json)."""
    import numpy
    import torch
    import torchvision

    import robustmix

    return {
        "robustmix": getattr(robustmix, "__version__", "unknown"),
        "commit": _git_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# --------------------------------------------------------------------------------------------
# One run


def _train_config(preset: Preset, method: str, seed: int, run_dir: Path, *, data_dir: str | None, device: str, progress: bool) -> Any:
    """The run's TrainConfig.

    ``limit_test=eval_limit`` makes the training log's test error (metrics.json) use a *seeded
    random* subset of ``eval_limit`` test images, while the evaluation (eval.json, the report's
    clean error) uses the *first* ``eval_limit``: the two differ by about a point. Left as is,
    since changing it would change the trained results.
    """
    from robustmix.train import TrainConfig

    return TrainConfig(
        dataset=preset.dataset,
        data_dir=data_dir,
        model=preset.model,
        epochs=preset.epochs,
        batch_size=preset.batch_size,
        lr=preset.lr,
        weight_decay=preset.weight_decay,
        optimizer=preset.optimizer,
        warmup_epochs=preset.warmup_epochs,
        limit_train=preset.limit_train,
        limit_test=preset.eval_limit,
        seed=seed,
        output_dir=str(run_dir),
        device=device,
        progress=progress,
        **method_overrides(method),
    )


def _test_images(preset: Preset, data_dir: str | None, limit: int) -> tuple[Any, Any]:
    import torch

    from robustmix.data import load_split_tensors

    images, labels = load_split_tensors(preset.dataset, root=data_dir, split="test", limit=limit)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    return x, torch.from_numpy(labels).long()


def _diagnose(model: Any, preset: Preset, data_dir: str | None, *, device: Any) -> dict[str, Any]:
    from robustmix import diagnostics as D

    x, y = _test_images(preset, data_dir, preset.diag_limit)
    bs = preset.eval_batch_size
    filt = D.filtered_accuracy(model, x, y, cutoffs=preset.cutoffs, batch_size=bs, device=device)
    cue = D.cue_conflict(model, x, y, cutoff=preset.cue_cutoff, seed=preset.corruption_seed, batch_size=bs, device=device)
    n_heat = min(preset.heatmap_limit, x.shape[0])
    heat = D.fourier_heatmap(
        model, x[:n_heat], y[:n_heat], eps=preset.heatmap_eps, batch_size=max(bs, 4 * n_heat), device=device,
        max_freq=preset.heatmap_max_freq, seed=preset.corruption_seed,
    )
    return {
        "filtered_accuracy": filt,
        "cue_conflict": {**cue, "cutoff": preset.cue_cutoff},
        "fourier_heatmap": {
            "eps": preset.heatmap_eps, "n_images": n_heat, "max_freq": preset.heatmap_max_freq, "map": heat.tolist(),
        },
        "n_images": int(x.shape[0]),
    }


_STAGES = ("train", "eval", "diagnostics")  # a run's stages, in order


def _unknown_stage() -> dict[str, Any]:
    """A stage done by an invocation that recorded nothing about it (older code)."""
    return {"seconds": None, "partial": False, "invocation": None, "commit": None}


def run_one(
    preset: Preset,
    method: str,
    seed: int,
    run_dir: str | os.PathLike,
    *,
    data_dir: str | None = None,
    device: str = "auto",
    progress: bool = False,
    log: Callable[[str], None] = print,
    invocation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, evaluate and diagnose one (method, seed); resumable at each stage.

    Args:
        invocation: ``{"id": 1-based position in experiment.json's invocations, "commit": ...}`` recorded
            with each stage this call runs (default: no id, this checkout's commit).

    Returns the run's ``run.json`` record: method, seed, ``stages`` (per stage: ``seconds``,
    ``partial`` = training resumed after a kill whose time is not counted, ``invocation``,
    ``commit``; all None for a stage done earlier without a record), ``timings``
    (``train_s``/``eval_s``/``diagnostics_s``); ``skipped`` when run.json already existed.
    """
    from robustmix.evaluate import evaluate_checkpoint
    from robustmix.train import load_checkpoint_model, train
    from robustmix.train.distributed import resolve_device

    run_dir = Path(run_dir)
    marker = run_dir / "run.json"
    if marker.is_file():
        return {**read_json(marker), "skipped": True}
    who = invocation if invocation is not None else {"id": None, "commit": _git_commit()}
    stages_path = run_dir / "stages.json"
    stages: dict[str, Any] = read_json(stages_path).get("stages", {}) if stages_path.is_file() else {}

    def done(stage: str, t0: float, *, partial: bool = False) -> None:
        stages[stage] = {"seconds": time.perf_counter() - t0, "partial": partial, "invocation": who.get("id"), "commit": who.get("commit")}
        write_json(stages_path, {"stages": stages})  # kept even if a later stage is killed

    config = _train_config(preset, method, seed, run_dir, data_dir=data_dir, device=device, progress=progress)
    checkpoint = run_dir / "checkpoint.pt"

    t0 = time.perf_counter()
    if not (run_dir / "metrics.json").is_file():
        resume = checkpoint.is_file()
        log(f"[{method} seed{seed}] {'resuming' if resume else 'training'}")
        # A folder without a checkpoint holds only the config of a run killed before its first
        # epoch: start over.
        train(config.replace(resume=resume), overwrite=not resume, log=log)
        done("train", t0, partial=resume)

    t0 = time.perf_counter()
    if not (run_dir / "eval.json").is_file():
        log(f"[{method} seed{seed}] evaluating on clean and corrupted test images")
        results = evaluate_checkpoint(
            checkpoint,
            data_dir=data_dir,
            corruptions=preset.corruptions,
            severities=preset.severities,
            batch_size=preset.eval_batch_size,
            device=device,
            seed=preset.corruption_seed,
            limit=preset.eval_limit,
            progress=progress,
        )
        write_json(run_dir / "eval.json", results)
        done("eval", t0)

    t0 = time.perf_counter()
    if not (run_dir / "diagnostics.json").is_file():
        log(f"[{method} seed{seed}] frequency diagnostics")
        dev = resolve_device(device)
        model, _ = load_checkpoint_model(checkpoint, map_location=dev)
        write_json(run_dir / "diagnostics.json", _diagnose(model, preset, data_dir, device=dev))
        done("diagnostics", t0)

    stages = {name: stages.get(name) or _unknown_stage() for name in _STAGES}
    timings = {f"{name}_s": stages[name]["seconds"] for name in _STAGES}
    record = {"method": method, "seed": seed, "timings": timings, "stages": stages}
    write_json(marker, record)
    return record


# --------------------------------------------------------------------------------------------
# Whole experiment


def _dataset_stats(preset: Preset, data_dir: str | None) -> dict[str, Any]:
    import torch

    from robustmix import diagnostics as D
    from robustmix.data import dataset_info, load_split_tensors

    info = dataset_info(preset.dataset)
    images, _ = load_split_tensors(preset.dataset, root=data_dir, split="train", limit=preset.spectrum_limit)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(info.mean, device="cpu").view(1, -1, 1, 1)
    std = torch.tensor(info.std, device="cpu").view(1, -1, 1, 1)
    spectrum = D.energy_spectrum((x - mean) / std)  # what the op sees: normalised images
    return {
        "dataset": preset.dataset,
        "normalized": True,
        "n_images": int(x.shape[0]),
        "energy_spectrum": spectrum.tolist(),
        "cutoffs": list(preset.cutoffs),
        "lambda_c": D.lambda_c_curve(cutoffs=preset.cutoffs, spectrum=spectrum),
    }


def _previous_invocations(previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Invocations recorded in an earlier experiment.json; ``running`` ones were killed.

    A file written before invocations were recorded becomes one ``legacy`` entry: its
    environment is the last invocation's and its elapsed time the sum over the invocations
    that finished (killed ones added none).
    """
    if not previous:
        return []
    if isinstance(previous.get("invocations"), list):
        invocations = [dict(i) for i in previous["invocations"]]
    elif previous.get("environment") is not None or previous.get("wall_time_s") is not None:
        invocations = [
            {
                "command": previous.get("command"),
                "environment": previous.get("environment"),
                "elapsed_s": previous.get("wall_time_s"),
                "status": previous.get("status"),
                "legacy": True,
            }
        ]
    else:
        invocations = []
    for inv in invocations:
        if inv.get("status") == "running":
            inv["status"] = "interrupted"
    return invocations


def run_experiment(
    preset: Preset,
    out_dir: str | os.PathLike,
    *,
    data_dir: str | None = None,
    device: str = "auto",
    progress: bool = False,
    report: bool = True,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Run (or resume) every method x seed of ``preset`` into ``out_dir``, then write the report.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: ``out_dir`` holds an experiment made with a different preset.
    """
    if not isinstance(preset, Preset):
        raise TypeError(f"preset must be a Preset, got {type(preset).__name__}")
    out = Path(out_dir)
    exp_path = out / "experiment.json"
    preset_dict = dataclasses.asdict(preset)
    previous = read_json(exp_path) if exp_path.is_file() else None
    if previous is not None:
        old = {k: v for k, v in previous.get("preset", {}).items() if k not in ("methods", "seeds")}
        new = {k: v for k, v in json.loads(json.dumps(preset_dict)).items() if k not in ("methods", "seeds")}
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ValueError(
                f"out_dir {str(out)!r} holds an experiment with other settings ({', '.join(diff)}); "
                "use another --out or the same preset and overrides to resume it"
            )
    started = time.perf_counter()
    methods = list(dict.fromkeys([*(previous or {}).get("methods", []), *preset.methods]))
    seeds = sorted(set((previous or {}).get("seeds", [])) | set(range(preset.seeds)))
    env = environment_info()
    invocations = _previous_invocations(previous)
    this = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "environment": env,
        "elapsed_s": 0.0,
        "status": "running",
    }
    invocations.append(this)
    who = {"id": len(invocations), "commit": env["commit"]}  # 1-based position in invocations
    record: dict[str, Any] = {
        "preset": preset_dict,
        "methods": methods,
        "seeds": seeds,
        "command": command,
        "environment": env,  # this (the last) invocation's; each one's is in invocations
        "status": "running",
        "wall_time_s": 0.0,
        "invocations": invocations,
    }

    def save(status: str = "running") -> None:
        """Write experiment.json with this invocation's elapsed time so far."""
        this.update(elapsed_s=time.perf_counter() - started, status=status)
        record.update(status=status, wall_time_s=sum(float(i.get("elapsed_s") or 0.0) for i in invocations))
        write_json(exp_path, record)

    save()
    if not (out / "dataset.json").is_file():
        log("dataset energy spectrum and lam_c curve")
        write_json(out / "dataset.json", _dataset_stats(preset, data_dir))
        save()
    for method in preset.methods:
        for seed in range(preset.seeds):
            done = run_one(
                preset, method, seed, out / "runs" / method / f"seed{seed}",
                data_dir=data_dir, device=device, progress=progress, log=log, invocation=who,
            )  # fmt: skip
            if done.get("skipped"):
                log(f"[{method} seed{seed}] finished earlier: skipped")
            else:
                save()
    save("finished")
    if report:
        from robustmix.report import write_report

        md, page = write_report(out)
        log(f"report: {md} and {page}")
    return out


def parse_methods(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"none,robustmix"`` -> ``("none", "robustmix")``, each name validated."""
    names = tuple(t.strip() for t in text.split(",") if t.strip()) if isinstance(text, str) else tuple(text)
    for n in names:
        method_overrides(n)
    return names
