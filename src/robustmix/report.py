"""The experiment report: tables and plots from saved results only.

Reads the layout :mod:`robustmix.experiment` writes and produces ``report.md`` (figures as PNG
files next to it) and a self-contained ``report.html`` (the same tables, figures embedded as
base64 data URIs, plain CSS, no scripts). Nothing is recomputed from a model: every number comes
from the JSON files, so a report can be rebuilt anywhere from a results folder.

Results layout::

    RESULTS_DIR/
      experiment.json                  preset/config, methods, seeds, environment, wall time,
                                       invocations (each one's environment, elapsed time, status)
      dataset.json                     energy spectrum and lam_c curve of the training data
      runs/<method>/seed<k>/
        config.json  metrics.json      written by robustmix.train
        eval.json                      robustmix.evaluate results (clean + corrupted errors)
        diagnostics.json               filtered accuracy, Fourier heat map, cue conflict
        stages.json                    per-stage seconds, invocation and commit, as each completes
        run.json                       completion marker with timings and stages (written last)

Aggregation: mean ± sample standard deviation (ddof=1; 0 with one seed) over seeds. CE, mCE
and relative mCE use the baseline method's error tables averaged over its seeds (default
baseline: ``"none"``), over the ImageNet-C corruptions that every run evaluated (all 15 in the
presets); the 4 extra corruptions are reported apart, never in mCE. A value from fewer seeds
than its method has (diagnostics missing for a seed) is marked ``(n=k)``; missing or unfinished
runs, corruptions or severities left out, and undefined relative CEs are named in the notes.

The clean error here is on the *first* ``eval_limit`` test images (eval.json); the training
log's test error (metrics.json, not shown) is on a seeded random subset of as many images, so
the two differ slightly.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustmix import metrics
from robustmix._io import atomic_write, read_json

__all__ = [
    "Table",
    "load_results",
    "render_html",
    "render_markdown",
    "summarize_experiment",
    "tables",
    "write_report",
]

RUNS_DIR = "runs"
FIGURES_DIR = "figures"
_FIGURE_NAME = re.compile(r"fig\d+\.png")  # the names write_report gives its figures
#: The stages of a run, in order, as run.json's ``stages`` and ``timings`` (``<stage>_s``) name them.
_RUN_STAGES = ("train", "eval", "diagnostics")
#: Mean baseline degradation per severity below which a relative CE is flagged as unstable.
_SMALL_DEGRADATION = 0.01


@dataclass(frozen=True)
class Table:
    """One report table as strings: the markdown and HTML versions render the same cells."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""


# --------------------------------------------------------------------------------------------
# Loading


def _seed_of(folder: Path) -> int | None:
    name = folder.name
    return int(name[4:]) if name.startswith("seed") and name[4:].isdigit() else None


def load_results(results_dir: str | os.PathLike) -> dict[str, Any]:
    """Read every evaluated run of a results folder.

    Returns:
        ``{"experiment": dict, "dataset": dict | None, "runs": {method: {seed: run}},
        "incomplete": [{"method", "seed"}]}`` with ``run = {"eval", "diagnostics" (or None),
        "config" (or None), "metrics" (or None), "run" (or None: unfinished, reported as such)}``.
        Seed folders without ``eval.json`` are left out of ``runs`` and listed in ``incomplete``.

    Raises:
        FileNotFoundError: the folder or its ``runs/`` subfolder does not exist.
        ValueError: no evaluated run was found, or a JSON file is corrupt (the message names it).
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results_dir {str(root)!r} is not a directory")
    runs_root = root / RUNS_DIR
    if not runs_root.is_dir():
        raise FileNotFoundError(
            f"results_dir {str(root)!r} has no {RUNS_DIR}/ folder; expected the layout "
            f"{RUNS_DIR}/<method>/seed<k>/eval.json written by `robustmix experiment`"
        )

    def opt(path: Path) -> Any:
        return read_json(path) if path.is_file() else None

    experiment = opt(root / "experiment.json") or {}
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    incomplete: list[dict[str, Any]] = []
    order = list(experiment.get("methods", []))
    method_dirs = sorted((d for d in runs_root.iterdir() if d.is_dir()), key=lambda d: (d.name not in order, order.index(d.name) if d.name in order else 0, d.name))
    for mdir in method_dirs:
        for sdir in sorted(mdir.iterdir(), key=lambda d: (_seed_of(d) is None, _seed_of(d) or 0)):
            seed = _seed_of(sdir)
            if seed is None:
                continue
            if not (sdir / "eval.json").is_file():
                incomplete.append({"method": mdir.name, "seed": seed})
                continue
            runs.setdefault(mdir.name, {})[seed] = {
                "eval": read_json(sdir / "eval.json"),
                "diagnostics": opt(sdir / "diagnostics.json"),
                "config": opt(sdir / "config.json"),
                "metrics": opt(sdir / "metrics.json"),
                "run": opt(sdir / "run.json"),
            }
    if not runs:
        raise ValueError(f"results_dir {str(root)!r} holds no finished run ({RUNS_DIR}/<method>/seed<k>/eval.json)")
    return {"experiment": experiment, "dataset": opt(root / "dataset.json"), "runs": runs, "incomplete": incomplete}


# --------------------------------------------------------------------------------------------
# Aggregation (pure)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def _mean_table(tables: Sequence[dict[str, dict[int, float]]]) -> dict[str, dict[int, float]]:
    names = [c for c in tables[0] if all(c in t for t in tables)]
    return {
        c: {s: sum(t[c][s] for t in tables) / len(tables) for s in tables[0][c] if all(s in t[c] for t in tables)}
        for c in names
    }


def summarize_experiment(results: dict[str, Any], *, baseline: str = "none") -> dict[str, Any]:
    """Every number of the report, from :func:`load_results` output. Pure: no I/O.

    Returns a dict with ``methods``, ``baseline`` (method name or None when absent),
    ``requested_baseline`` (the ``baseline`` argument),
    ``corruptions`` (ImageNet-C ones evaluated), ``extra_corruptions``, ``severities`` and
    ``per_method[method]`` holding ``(mean, std)`` pairs: ``clean_error``, ``mce``,
    ``relative_mce``, ``mean_corruption_error``, ``extra_error``, ``per_corruption[c]``,
    ``per_severity[s]``, ``cue_conflict`` and lists ``lowpass``/``highpass`` (per cutoff), the
    ``cutoffs``, the seed-averaged ``heatmap``, ``n_seeds`` and ``diagnostics_seeds`` (kind ->
    the seeds behind it). Coverage: ``missing_runs`` (``(method, seed, why)`` for runs that
    experiment.json lists or that started but are absent), ``unfinished_runs`` (``(method, seed)``
    reported without run.json), ``dropped_corruptions`` / ``dropped_severities`` (name -> runs
    lacking it, left out of every table) and ``baseline_degradation`` (ImageNet-C corruption ->
    the baseline's Σ_s E_{s,c} − E_clean, the relative CE denominator).
    """
    runs = results["runs"]
    tables = {
        m: {s: metrics.normalize_errors(r["eval"]["corrupted"], name=f"{m}/seed{s} corrupted") for s, r in seeds.items()}
        for m, seeds in runs.items()
    }
    cleans = {m: {s: float(r["eval"]["clean"]["error"]) for s, r in seeds.items()} for m, seeds in runs.items()}
    labelled = [(f"{m}/seed{s}", t) for m, seeds in tables.items() for s, t in seeds.items()]
    all_tables = [t for _, t in labelled]
    present = set.intersection(*(set(t) for t in all_tables))
    bench = [c for c in metrics.BENCHMARK_CORRUPTIONS if c in present]
    extra = sorted(c for c in present if c not in metrics.BENCHMARK_CORRUPTIONS)
    severities = sorted(set.intersection(*(set(t[c]) for t in all_tables for c in present))) if present else []
    all_sevs = {sev for t in all_tables for c in present for sev in t[c]}
    dropped_corruptions = {
        c: [name for name, t in labelled if c not in t] for c in sorted(set().union(*all_tables) - present)
    }
    dropped_severities = {
        sev: [name for name, t in labelled if any(sev not in t[c] for c in present)] for sev in sorted(all_sevs - set(severities))
    }

    base_table = base_clean = None
    degradation: dict[str, float] = {}
    if baseline in runs and bench:
        base_table = _mean_table(list(tables[baseline].values()))
        base_clean = sum(cleans[baseline].values()) / len(cleans[baseline])
        degradation = {c: sum(base_table[c].values()) - base_clean * len(base_table[c]) for c in bench}

    per_method: dict[str, Any] = {}
    for m, seeds in runs.items():
        seed_ids = list(seeds)
        out: dict[str, Any] = {"n_seeds": len(seed_ids), "seeds": seed_ids}
        out["clean_error"] = _mean_std([cleans[m][s] for s in seed_ids])
        if bench:
            out["mean_corruption_error"] = _mean_std(
                [metrics.mean_corruption_error(tables[m][s], corruptions=bench) for s in seed_ids]
            )
            out["per_severity"] = {
                sev: _mean_std([sum(tables[m][s][c][sev] for c in bench) / len(bench) for s in seed_ids])
                for sev in severities
            }
        else:
            out["mean_corruption_error"] = (math.nan, math.nan)
            out["per_severity"] = {}
        out["extra_error"] = (
            _mean_std([metrics.mean_corruption_error(tables[m][s], corruptions=extra) for s in seed_ids])
            if extra
            else (math.nan, math.nan)
        )
        out["per_corruption"] = {
            c: _mean_std([sum(tables[m][s][c].values()) / len(tables[m][s][c]) for s in seed_ids])
            for c in [*bench, *extra]
        }
        if base_table is not None:
            out["mce"] = _mean_std([metrics.mce(tables[m][s], base_table, corruptions=bench) for s in seed_ids])
            out["relative_mce"] = _mean_std(
                [
                    metrics.relative_mce(
                        tables[m][s], base_table, clean_error=cleans[m][s], baseline_clean_error=base_clean, corruptions=bench
                    )
                    for s in seed_ids
                ]
            )
        else:
            out["mce"] = out["relative_mce"] = (math.nan, math.nan)
        out.update(_summarize_diagnostics({s: seeds[s]["diagnostics"] for s in seed_ids}))
        per_method[m] = out
    return {
        "methods": list(runs),
        "baseline": baseline if base_table is not None else None,
        "requested_baseline": baseline,
        "corruptions": bench,
        "extra_corruptions": extra,
        "severities": severities,
        "per_method": per_method,
        "missing_runs": _missing_runs(results),
        "unfinished_runs": [(m, s) for m, seeds in runs.items() for s, r in seeds.items() if r.get("run") is None],
        "dropped_corruptions": dropped_corruptions,
        "dropped_severities": dropped_severities,
        "baseline_degradation": degradation,
    }


def _missing_runs(results: dict[str, Any]) -> list[tuple[str, int, str]]:
    """Runs listed in experiment.json (methods x seeds) or started, but not evaluated."""
    exp = results.get("experiment") or {}
    runs = results["runs"]
    started = {(i["method"], i["seed"]) for i in results.get("incomplete", [])}
    expected = [(m, s) for m in exp.get("methods", []) for s in exp.get("seeds", [])]
    expected += sorted(started - set(expected))
    return [
        (m, s, "started, not evaluated (no eval.json)" if (m, s) in started else "no run folder")
        for m, s in expected
        if s not in runs.get(m, {})
    ]


def _summarize_diagnostics(diags: dict[int, dict[str, Any] | None]) -> dict[str, Any]:
    """Seed-averaged diagnostics; ``diagnostics_seeds`` says which seeds each one comes from."""
    diags = {s: d for s, d in diags.items() if d}
    out: dict[str, Any] = {"cutoffs": [], "lowpass": [], "highpass": [], "cue_conflict": (math.nan, math.nan), "heatmap": None}
    used: dict[str, list[int]] = {"filtered_accuracy": [], "cue_conflict": [], "fourier_heatmap": []}
    out["diagnostics_seeds"] = used
    filt = {s: d["filtered_accuracy"] for s, d in diags.items() if "filtered_accuracy" in d}
    if filt:
        cutoffs = next(iter(filt.values()))["cutoffs"]
        filt = {s: f for s, f in filt.items() if f["cutoffs"] == cutoffs}
        used["filtered_accuracy"] = list(filt)
        out["cutoffs"] = list(cutoffs)
        out["lowpass"] = [_mean_std([f["lowpass_accuracy"][i] for f in filt.values()]) for i in range(len(cutoffs))]
        out["highpass"] = [_mean_std([f["highpass_accuracy"][i] for f in filt.values()]) for i in range(len(cutoffs))]
    cue = {s: d["cue_conflict"]["low_band_fraction"] for s, d in diags.items() if "cue_conflict" in d}
    cue = {s: c for s, c in cue.items() if c is not None and not math.isnan(c)}
    if cue:
        used["cue_conflict"] = list(cue)
        out["cue_conflict"] = _mean_std(list(cue.values()))
    maps = [d["fourier_heatmap"]["map"] for d in diags.values() if "fourier_heatmap" in d]
    used["fourier_heatmap"] = [s for s, d in diags.items() if "fourier_heatmap" in d]
    if maps:
        h, w = len(maps[0]), len(maps[0][0])
        avg = []
        for i in range(h):
            row = []
            for j in range(w):
                vals = [mp[i][j] for mp in maps if mp[i][j] is not None and not math.isnan(mp[i][j])]
                row.append(sum(vals) / len(vals) if vals else math.nan)
            avg.append(row)
        out["heatmap"] = avg
        out["heatmap_eps"] = diags[used["fourier_heatmap"][0]]["fourier_heatmap"].get("eps")
    return out


# --------------------------------------------------------------------------------------------
# Tables


def _mark(text: str, n: int, of: int | None) -> str:
    """Mark a value computed from fewer seeds (``n``) than its method has (``of``)."""
    return text if of is None or n == of or text == "n/a" else f"{text} (n={n})"


def _pct(n_seeds: int, pair: tuple[float, float], of: int | None = None) -> str:
    """A fraction as percent, ``mean ± std`` over ``n_seeds``; one seed: no spread to show."""
    mean, std = pair
    if math.isnan(mean):
        return "n/a"
    return _mark(f"{100 * mean:.2f}" if n_seeds < 2 else f"{100 * mean:.2f} ± {100 * std:.2f}", n_seeds, of)


def _frac(n_seeds: int, pair: tuple[float, float], of: int | None = None) -> str:
    """A fraction, ``mean ± std`` over ``n_seeds``; one seed: no spread to show."""
    mean, std = pair
    if math.isnan(mean):
        return "n/a"
    return _mark(f"{mean:.3f}" if n_seeds < 2 else f"{mean:.3f} ± {std:.3f}", n_seeds, of)


def _listing(items: Sequence[str], limit: int = 12) -> str:
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _no_baseline_note(summary: dict[str, Any]) -> str:
    wanted = summary.get("requested_baseline", "none")
    if wanted not in summary["methods"]:
        return f"No baseline (`{wanted}`) runs: mCE and relative mCE are not available."
    return "No ImageNet-C corruption was evaluated: mCE and relative mCE are not available."


def _coverage_notes(summary: dict[str, Any]) -> list[str]:
    """Runs, corruptions and severities that the tables lack, by name."""
    notes = []
    missing = summary.get("missing_runs", [])
    if missing:
        notes.append(
            "Runs not in this report: " + _listing([f"{m}/seed{s} ({why})" for m, s, why in missing])
            + ". Each method is averaged over the runs it has."
        )
        base = summary["baseline"]
        lost = [str(s) for m, s, _ in missing if m == base]
        if lost:
            notes.append(
                f"The baseline `{base}` lacks seed{'s' * (len(lost) > 1)} {', '.join(lost)}: every method's mCE and relative mCE "
                "divide by an average over fewer baseline seeds."
            )
    unfinished = summary.get("unfinished_runs", [])
    if unfinished:
        notes.append(
            "Unfinished runs (no run.json), reported from their eval.json: "
            + _listing([f"{m}/seed{s}" for m, s in unfinished])
            + ". Their errors are final (evaluation follows training) but later stages may be missing."
        )
    for what, dropped in (("Corruptions", summary.get("dropped_corruptions", {})), ("Severities", summary.get("dropped_severities", {}))):
        if dropped:
            notes.append(
                f"{what} left out of every table and of mCE because some runs lack them: "
                + "; ".join(f"{k} (missing in {_listing(runs)})" for k, runs in dropped.items())
                + "."
            )
    return notes


def _relative_mce_note(summary: dict[str, Any]) -> str:
    """Why relative mCE is n/a, and which denominators are near zero."""
    degradation = summary.get("baseline_degradation") or {}
    per_sev = max(1, len(summary["severities"]))
    undefined = [c for c, d in degradation.items() if not d > 0]
    small = [c for c, d in degradation.items() if 0 < d < _SMALL_DEGRADATION * per_sev]
    if not undefined and not small:
        return ""

    def show(names: list[str]) -> str:
        return ", ".join(f"{c} ({100 * degradation[c]:+.2f})" for c in names)

    denominator = (
        f"the `{summary['baseline']}` baseline's degradation Σ_s E_s,c − E_clean (the relative CE "
        f"denominator, in points summed over {per_sev} severities)"
    )
    parts = []
    if undefined:
        parts.append(f"Relative mCE is n/a: {denominator} is <= 0 for {show(undefined)}, where relative CE is undefined.")
    if small:
        subject = "It" if undefined else denominator[0].upper() + denominator[1:]
        parts.append(f"{subject} is under 1 point per severity for {show(small)}.")
    parts.append("Relative CE divides by this degradation, so near-zero denominators make relative mCE unstable.")
    return " ".join(parts)


def _diagnostics_note(summary: dict[str, Any]) -> str:
    """Methods whose diagnostics come from fewer seeds than their errors (none at all shows n/a)."""
    kinds = (("cue_conflict", "cue conflict"), ("filtered_accuracy", "filtered accuracy"), ("fourier_heatmap", "Fourier heat map"))
    lines = []
    for m in summary["methods"]:
        pm = summary["per_method"][m]
        used = pm.get("diagnostics_seeds", {})
        n = pm["n_seeds"]
        short = [f"{label} from {len(used.get(k, []))} of {n}" for k, label in kinds if 0 < len(used.get(k, [])) < n]
        if short:
            without = [f"seed{s}" for s in pm["seeds"] if not any(s in used.get(k, []) for k, _ in kinds)]
            lacking = f" ({', '.join(without)} without diagnostics)" if without else ""
            lines.append(f"`{m}`: {', '.join(short)} seeds{lacking}")
    if not lines:
        return ""
    return (
        "Diagnostics from fewer seeds than the errors (cells marked (n=k): mean ± std over those k, "
        "a bare mean when k = 1): " + "; ".join(lines) + "."
    )


def _headline(summary: dict[str, Any]) -> Table:
    pm = summary["per_method"]
    base = summary["baseline"]
    note = (
        f"mCE and relative mCE are relative to the `{base}` runs averaged over their seeds, over "
        f"{len(summary['corruptions'])} ImageNet-C corruptions; the extra corruptions are not in mCE."
        if base
        else _no_baseline_note(summary)
    )
    extra = [*_coverage_notes(summary), _relative_mce_note(summary), _diagnostics_note(summary)]
    return Table(
        "Headline: errors in %, mean ± std over seeds",
        ("method", "seeds", "clean error", "mCE", "relative mCE", "mean corruption error", "extra-4 error", "cue-conflict low-band fraction"),
        tuple(
            (
                m,
                str(pm[m]["n_seeds"]),
                _pct(pm[m]["n_seeds"], pm[m]["clean_error"]),
                _pct(pm[m]["n_seeds"], pm[m]["mce"]),
                _pct(pm[m]["n_seeds"], pm[m]["relative_mce"]),
                _pct(pm[m]["n_seeds"], pm[m]["mean_corruption_error"]),
                _pct(pm[m]["n_seeds"], pm[m]["extra_error"]),
                _frac(len(pm[m]["diagnostics_seeds"]["cue_conflict"]), pm[m]["cue_conflict"], pm[m]["n_seeds"]),
            )
            for m in summary["methods"]
        ),
        note="\n".join([note, *(t for t in extra if t)]),
    )


def _commits(results: dict[str, Any]) -> dict[str, dict[str, list]]:
    """commit -> the invocations and runs (``method/seed``) it produced."""
    out: dict[str, dict[str, list]] = {}
    exp = results["experiment"]
    invocations = exp.get("invocations")
    if isinstance(invocations, list):
        for k, inv in enumerate(invocations, 1):
            commit = (inv.get("environment") or {}).get("commit")
            if commit:
                out.setdefault(commit, {"invocations": [], "runs": []})["invocations"].append(k)
    elif (exp.get("environment") or {}).get("commit"):
        out[exp["environment"]["commit"]] = {"invocations": [], "runs": []}
    for m, seeds in results["runs"].items():
        for s, r in seeds.items():
            for stage in ((r.get("run") or {}).get("stages") or {}).values():
                commit = (stage or {}).get("commit")
                runs = out.setdefault(commit, {"invocations": [], "runs": []})["runs"] if commit else None
                if runs is not None and f"{m}/seed{s}" not in runs:
                    runs.append(f"{m}/seed{s}")
    return out


def _timing_table(results: dict[str, Any]) -> Table | None:
    """Seconds per run and stage; ``≥`` partial, ``unknown`` unrecorded (see the note)."""
    invocations = results["experiment"].get("invocations") or []
    who = len(invocations) > 1 or len(_commits(results)) > 1
    rows, flags = [], set()
    for m, seeds in results["runs"].items():
        for s, r in seeds.items():
            run = r.get("run")
            if not run or "timings" not in run:
                continue
            stages = run.get("stages")
            if stages is None:
                flags.add("legacy")
            cells = []
            for name in _RUN_STAGES:
                sec = run["timings"].get(f"{name}_s")
                if sec is None:
                    cells.append("unknown")
                    flags.add("unknown")
                elif ((stages or {}).get(name) or {}).get("partial"):
                    cells.append(f"≥ {sec:.1f}")
                    flags.add("partial")
                else:
                    cells.append(f"{sec:.1f}")
            if who:
                st = [(stages or {}).get(n) or {} for n in _RUN_STAGES]
                cells.append(", ".join(dict.fromkeys(str(x["invocation"]) if x.get("invocation") else "?" for x in st)))
                cells.append(", ".join(dict.fromkeys(str(x["commit"])[:10] if x.get("commit") else "?" for x in st)))
            rows.append((m, str(s), *cells))
    if not rows:
        return None
    notes = {
        "partial": "≥: training resumed after an interrupted invocation, whose share is not counted.",
        "unknown": "unknown: the stage was done by a version, or an interrupted invocation, that recorded no time for it.",
        "legacy": (
            "Runs recorded by an older version (run.json without stages) timed only their last invocation: "
            "a stage finished by an earlier, interrupted invocation shows about 0 s."
        ),
    }
    header = ("method", "seed", "train", "evaluate", "diagnostics", *(("invocation", "commit") if who else ()))
    note = "\n".join(notes[k] for k in ("partial", "unknown", "legacy") if k in flags)
    return Table("Wall time per run in seconds", header, tuple(rows), note=note)


def _invocations_table(results: dict[str, Any]) -> Table | None:
    """One row per `robustmix experiment` invocation recorded in experiment.json."""
    invocations = results["experiment"].get("invocations")
    if not isinstance(invocations, list) or not invocations:
        return None
    rows = []
    for k, inv in enumerate(invocations, 1):
        env = inv.get("environment") or {}
        elapsed = inv.get("elapsed_s")
        rows.append(
            (
                str(k),
                str(inv.get("started") or "?"),
                str(env.get("commit") or "unknown"),
                str(env.get("robustmix") or "?"),
                str(env.get("torch") or "?"),
                f"{elapsed:.0f}" if isinstance(elapsed, (int, float)) else "unknown",
                str(inv.get("status") or "?") + (" (older record)" if inv.get("legacy") else ""),
                str(inv.get("command") or ""),
            )
        )
    notes = []
    commits = _commits(results)
    if len(commits) > 1:
        notes.append(
            f"{len(commits)} commits contributed: "
            + "; ".join(
                f"{c[:10]}: invocation {', '.join(map(str, v['invocations'])) or '?'}, runs {_listing(v['runs']) or 'none'}"
                for c, v in commits.items()
            )
            + "."
        )
    if any(inv.get("legacy") for inv in invocations):
        notes.append(
            "An older record stands for the invocations before per-invocation records: its environment is "
            "the last of them, its time the sum over those that finished."
        )
    return Table(
        "Invocations of `robustmix experiment` that wrote these results",
        ("#", "started", "commit", "robustmix", "torch", "elapsed s", "status", "command"),
        tuple(rows),
        note="\n".join(notes),
    )


def tables(summary: dict[str, Any], results: dict[str, Any]) -> list[Table]:
    """The report's tables, as strings (rendered identically to markdown and HTML)."""
    methods = summary["methods"]
    pm = summary["per_method"]
    out = [_headline(summary)]
    corr = [*summary["corruptions"], *summary["extra_corruptions"]]
    if corr:
        out.append(
            Table(
                "Error per corruption in % (mean over severities), mean ± std over seeds",
                ("corruption", *methods),
                tuple((c, *(_pct(pm[m]["n_seeds"], pm[m]["per_corruption"][c]) for m in methods)) for c in corr),
            )
        )
    if summary["severities"] and summary["corruptions"]:
        out.append(
            Table(
                "Error vs severity in % (mean over the ImageNet-C corruptions), mean ± std over seeds",
                ("severity", *methods),
                tuple((str(s), *(_pct(pm[m]["n_seeds"], pm[m]["per_severity"][s]) for m in methods)) for s in summary["severities"]),
            )
        )
    with_filt = [m for m in methods if pm[m]["cutoffs"]]
    if with_filt:
        cutoffs = pm[with_filt[0]]["cutoffs"]
        with_filt = [m for m in with_filt if pm[m]["cutoffs"] == cutoffs]
        n_filt = {m: len(pm[m]["diagnostics_seeds"]["filtered_accuracy"]) for m in with_filt}
        fewer = ", ".join(f"`{m}` {n_filt[m]} of {pm[m]['n_seeds']}" for m in with_filt if n_filt[m] < pm[m]["n_seeds"])
        out.append(
            Table(
                "Accuracy in % on low-pass / high-pass filtered test images (DCT box), mean ± std over seeds",
                ("cutoff", *(f"{m} low-pass" for m in with_filt), *(f"{m} high-pass" for m in with_filt)),
                tuple(
                    (
                        f"{c:.3f}",
                        *(_pct(n_filt[m], pm[m]["lowpass"][i], pm[m]["n_seeds"]) for m in with_filt),
                        *(_pct(n_filt[m], pm[m]["highpass"][i], pm[m]["n_seeds"]) for m in with_filt),
                    )
                    for i, c in enumerate(cutoffs)
                ),
                note="High-passed images get the data's mean grey level added back (not clipped)."
                + (
                    f" (n=k): from k of the method's seeds ({fewer})."
                    if fewer
                    else ""
                ),
            )
        )
    ds = results.get("dataset")
    if ds and ds.get("cutoffs"):
        out.append(
            Table(
                f"lam_c per cutoff on {ds.get('dataset', 'the training data')} (energy share of the low band, as the op's energy=\"batch\")",
                ("cutoff", "lam_c"),
                tuple((f"{c:.3f}", f"{lam:.4f}") for c, lam in zip(ds["cutoffs"], ds["lambda_c"])),
                note="Computed on normalised images, which is what Robustmix mixes.",
            )
        )
    out += [t for t in (_timing_table(results), _invocations_table(results)) if t is not None]
    env = results["experiment"].get("environment")
    if env:
        several = len(results["experiment"].get("invocations") or []) > 1
        title = "Environment of the last invocation (each one's commit: Invocations)" if several else "Environment that produced the results"
        out.append(Table(title, ("item", "value"), tuple((str(k), str(v)) for k, v in env.items())))
    return out


# --------------------------------------------------------------------------------------------
# Rendering


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(t: Table) -> str:
    lines = [f"### {t.title}", "", "| " + " | ".join(map(_md_cell, t.header)) + " |", "|" + "---|" * len(t.header)]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in t.rows]
    for para in t.note.split("\n") if t.note else ():
        lines += ["", para]
    return "\n".join(lines) + "\n"


def _config_text(results: dict[str, Any]) -> str:
    exp = results["experiment"]
    keep = {k: exp[k] for k in ("preset", "methods", "seeds", "command", "wall_time_s") if k in exp}
    return json.dumps(keep, indent=2)


def render_markdown(summary: dict[str, Any], results: dict[str, Any], figures: dict[str, str]) -> str:
    """``report.md``: tables, figures (``figures`` = caption -> relative PNG path), config."""
    parts = ["# Robustmix experiment report", "", _intro(summary, results), ""]
    headline, *details = tables(summary, results)
    parts.append(_md_table(headline))
    if figures:
        parts.append("## Figures\n")
        for caption, path in figures.items():
            parts.append(f"![{caption}]({path})\n\n*{caption}*\n")
    parts.append("## Tables\n")
    for t in details:
        parts.append(_md_table(t))
    parts.append("## Configuration\n\n```json\n" + _config_text(results) + "\n```\n")
    return "\n".join(parts)


def _wall_time(exp: dict[str, Any]) -> str:
    """Total wall time over invocations, saying when it is a lower bound."""
    invocations = exp.get("invocations")
    if not isinstance(invocations, list) or not invocations:
        wall = exp.get("wall_time_s")
        if not isinstance(wall, (int, float)):
            return ""
        return f" Total wall time: {wall:.0f} s (recorded by an older version, which added no time for interrupted invocations)."
    total = sum(float(i.get("elapsed_s") or 0.0) for i in invocations)
    cut = [str(k) for k, i in enumerate(invocations, 1) if i.get("status") in ("running", "interrupted")]
    legacy = any(i.get("legacy") for i in invocations)
    n = len(invocations)
    text = f" Total wall time: {'at least ' if cut or legacy else ''}{total:.0f} s, summed over {n} invocation{'s' * (n > 1)}"
    if cut:
        text += f"; invocation {', '.join(cut)} stopped early (interrupted, or still running) and counts only up to its last completed run"
    if legacy:
        text += "; the older record counts no time of interrupted invocations before it"
    return text + "."


def _intro(summary: dict[str, Any], results: dict[str, Any]) -> str:
    exp = results["experiment"]
    preset = exp.get("preset", {})
    what = f"preset `{preset.get('name')}`" if isinstance(preset, dict) and preset.get("name") else "saved results"
    commits = _commits(results)
    commit_txt = (
        f" Results come from {len(commits)} commits ({', '.join(c[:10] for c in commits)}): see the Invocations table."
        if len(commits) > 1
        else ""
    )
    return (
        f"Methods {', '.join(summary['methods'])} from {what}; errors are top-1 errors, mean ± std "
        f"(sample std) over seeds.{_wall_time(exp)}{commit_txt}"
    )


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
.note { color: #555; font-size: 0.85em; }
"""


def _html_table(t: Table) -> str:
    e = html.escape
    parts = [f"<h3>{e(t.title)}</h3><table><thead><tr>"]
    parts.append("".join(f"<th>{e(h)}</th>" for h in t.header) + "</tr></thead><tbody>")
    parts.extend("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    parts.append("</tbody></table>")
    parts.extend(f'<p class="note">{e(para)}</p>' for para in (t.note.split("\n") if t.note else ()))
    return "".join(parts)


def render_html(summary: dict[str, Any], results: dict[str, Any], figures: dict[str, bytes]) -> str:
    """Self-contained ``report.html``: ``figures`` = caption -> PNG bytes, embedded as data URIs."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Robustmix experiment report</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>Robustmix experiment report</h1>",
        f"<p>{e(_intro(summary, results))}</p>",
    ]
    headline, *details = tables(summary, results)
    parts.append(_html_table(headline))
    if figures:
        parts.append("<h2>Figures</h2>")
        for caption, png in figures.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}"><figcaption>{e(caption)}</figcaption></figure>')
    parts.append("<h2>Tables</h2>")
    parts.extend(_html_table(t) for t in details)
    parts.append(f"<h2>Configuration</h2><pre>{e(_config_text(results))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(results_dir: str | os.PathLike, *, baseline: str | None = None, plots: bool = True) -> tuple[Path, Path]:
    """Write ``report.md``, ``figures/*.png`` and ``report.html`` into ``results_dir``.

    Figure files an earlier report wrote (``figures/fig<N>.png``) that this one does not use are
    removed (all of them with ``plots=False``); other files in ``figures/`` are left alone.

    Args:
        results_dir: a folder in the layout of this module's docstring.
        baseline: the method whose runs define CE/mCE denominators; it must have runs.
            ``None``: the ``"none"`` method's runs, or no mCE when there are none.
        plots: draw the figures (needs matplotlib, the ``cli`` extra).

    Returns:
        ``(markdown path, html path)``.

    Raises:
        ValueError: ``baseline`` names a method without runs (the message lists those present).
    """
    root = Path(results_dir)
    results = load_results(root)
    if baseline is not None and baseline not in results["runs"]:
        raise ValueError(
            f"baseline: no runs of method {baseline!r} in {str(root)!r}; methods present: "
            f"{', '.join(results['runs'])}"
        )
    summary = summarize_experiment(results, baseline="none" if baseline is None else baseline)
    pngs: dict[str, bytes] = {}
    if plots:
        from robustmix import _plots

        pngs = _plots.all_figures(summary, results)
    paths: dict[str, str] = {}
    for i, (caption, png) in enumerate(pngs.items()):
        rel = f"{FIGURES_DIR}/fig{i + 1}.png"
        atomic_write(root / rel, lambda f, png=png: f.write(png))
        paths[caption] = rel
    md = render_markdown(summary, results, paths).encode("utf-8")
    page = render_html(summary, results, pngs).encode("utf-8")
    md_path = atomic_write(root / "report.md", lambda f: f.write(md))
    html_path = atomic_write(root / "report.html", lambda f: f.write(page))
    _remove_stale_figures(root / FIGURES_DIR, keep={Path(p).name for p in paths.values()})
    return md_path, html_path


def _remove_stale_figures(folder: Path, keep: set[str]) -> None:
    """Delete figure files an earlier report wrote (``fig<N>.png``) that this one does not use."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if _FIGURE_NAME.fullmatch(path.name) and path.name not in keep and path.is_file():
            path.unlink()
