"""The experiment report: tables and plots from saved results only.

Reads the layout :mod:`robustmix.experiment` writes and produces ``report.md`` (figures as PNG
files next to it) and a self-contained ``report.html`` (the same tables, figures embedded as
base64 data URIs, plain CSS, no scripts). Nothing is recomputed from a model: every number comes
from the JSON files, so a report can be rebuilt anywhere from a results folder.

Results layout::

    RESULTS_DIR/
      experiment.json                  preset/config, methods, seeds, environment, wall time
      dataset.json                     energy spectrum and lam_c curve of the training data
      runs/<method>/seed<k>/
        config.json  metrics.json      written by robustmix.train
        eval.json                      robustmix.evaluate results (clean + corrupted errors)
        diagnostics.json               filtered accuracy, Fourier heat map, cue conflict
        run.json                       completion marker with timings (written last)

Aggregation: mean ± sample standard deviation (ddof=1; 0 with one seed) over seeds. CE, mCE
and relative mCE use the baseline method's error tables averaged over its seeds (default
baseline: ``"none"``), over the ImageNet-C corruptions that were evaluated (all 15 in the
presets); the 4 extra corruptions are reported apart, never in mCE.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
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
    """Read every finished run of a results folder.

    Returns:
        ``{"experiment": dict, "dataset": dict | None, "runs": {method: {seed: run}}}`` with
        ``run = {"eval", "diagnostics" (or None), "config" (or None), "metrics" (or None),
        "run" (or None)}``. Runs without ``eval.json`` are not finished and are left out.

    Raises:
        FileNotFoundError: the folder or its ``runs/`` subfolder does not exist.
        ValueError: no finished run was found.
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
    order = list(experiment.get("methods", []))
    method_dirs = sorted((d for d in runs_root.iterdir() if d.is_dir()), key=lambda d: (d.name not in order, order.index(d.name) if d.name in order else 0, d.name))
    for mdir in method_dirs:
        for sdir in sorted(mdir.iterdir(), key=lambda d: (_seed_of(d) is None, _seed_of(d) or 0)):
            seed = _seed_of(sdir)
            if seed is None or not (sdir / "eval.json").is_file():
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
    return {"experiment": experiment, "dataset": opt(root / "dataset.json"), "runs": runs}


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
    ``cutoffs``, the seed-averaged ``heatmap`` and ``n_seeds``.
    """
    runs = results["runs"]
    tables = {
        m: {s: metrics.normalize_errors(r["eval"]["corrupted"], name=f"{m}/seed{s} corrupted") for s, r in seeds.items()}
        for m, seeds in runs.items()
    }
    cleans = {m: {s: float(r["eval"]["clean"]["error"]) for s, r in seeds.items()} for m, seeds in runs.items()}
    all_tables = [t for seeds in tables.values() for t in seeds.values()]
    present = set.intersection(*(set(t) for t in all_tables))
    bench = [c for c in metrics.BENCHMARK_CORRUPTIONS if c in present]
    extra = sorted(c for c in present if c not in metrics.BENCHMARK_CORRUPTIONS)
    severities = sorted(set.intersection(*(set(t[c]) for t in all_tables for c in present))) if present else []

    base_table = base_clean = None
    if baseline in runs and bench:
        base_table = _mean_table(list(tables[baseline].values()))
        base_clean = sum(cleans[baseline].values()) / len(cleans[baseline])

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
        out.update(_summarize_diagnostics([seeds[s]["diagnostics"] for s in seed_ids]))
        per_method[m] = out
    return {
        "methods": list(runs),
        "baseline": baseline if base_table is not None else None,
        "requested_baseline": baseline,
        "corruptions": bench,
        "extra_corruptions": extra,
        "severities": severities,
        "per_method": per_method,
    }


def _summarize_diagnostics(diags: list[dict[str, Any] | None]) -> dict[str, Any]:
    diags = [d for d in diags if d]
    out: dict[str, Any] = {"cutoffs": [], "lowpass": [], "highpass": [], "cue_conflict": (math.nan, math.nan), "heatmap": None}
    filt = [d["filtered_accuracy"] for d in diags if "filtered_accuracy" in d]
    if filt:
        cutoffs = filt[0]["cutoffs"]
        filt = [f for f in filt if f["cutoffs"] == cutoffs]
        out["cutoffs"] = list(cutoffs)
        out["lowpass"] = [_mean_std([f["lowpass_accuracy"][i] for f in filt]) for i in range(len(cutoffs))]
        out["highpass"] = [_mean_std([f["highpass_accuracy"][i] for f in filt]) for i in range(len(cutoffs))]
    cue = [d["cue_conflict"]["low_band_fraction"] for d in diags if "cue_conflict" in d]
    cue = [c for c in cue if c is not None and not math.isnan(c)]
    if cue:
        out["cue_conflict"] = _mean_std(cue)
    maps = [d["fourier_heatmap"]["map"] for d in diags if "fourier_heatmap" in d]
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
        out["heatmap_eps"] = diags[0]["fourier_heatmap"].get("eps")
    return out


# --------------------------------------------------------------------------------------------
# Tables


def _pct(n_seeds: int, pair: tuple[float, float]) -> str:
    """A fraction as percent, ``mean ± std``; with one seed there is no spread to show."""
    mean, std = pair
    if math.isnan(mean):
        return "n/a"
    return f"{100 * mean:.2f}" if n_seeds < 2 else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _frac(n_seeds: int, pair: tuple[float, float]) -> str:
    mean, std = pair
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f}" if n_seeds < 2 else f"{mean:.3f} ± {std:.3f}"


def _no_baseline_note(summary: dict[str, Any]) -> str:
    wanted = summary.get("requested_baseline", "none")
    if wanted not in summary["methods"]:
        return f"No baseline (`{wanted}`) runs: mCE and relative mCE are not available."
    return "No ImageNet-C corruption was evaluated: mCE and relative mCE are not available."


def tables(summary: dict[str, Any], results: dict[str, Any]) -> list[Table]:
    """The report's tables, as strings (rendered identically to markdown and HTML)."""
    methods = summary["methods"]
    pm = summary["per_method"]
    base = summary["baseline"]
    out = [
        Table(
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
                    _frac(pm[m]["n_seeds"], pm[m]["cue_conflict"]),
                )
                for m in methods
            ),
            note=(
                f"mCE and relative mCE are relative to the `{base}` runs averaged over their seeds, over "
                f"{len(summary['corruptions'])} ImageNet-C corruptions; the extra corruptions are not in mCE."
                if base
                else _no_baseline_note(summary)
            ),
        )
    ]
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
        out.append(
            Table(
                "Accuracy in % on low-pass / high-pass filtered test images (DCT box), mean ± std over seeds",
                ("cutoff", *(f"{m} low-pass" for m in with_filt), *(f"{m} high-pass" for m in with_filt)),
                tuple(
                    (
                        f"{c:.3f}",
                        *(_pct(pm[m]["n_seeds"], pm[m]["lowpass"][i]) for m in with_filt),
                        *(_pct(pm[m]["n_seeds"], pm[m]["highpass"][i]) for m in with_filt),
                    )
                    for i, c in enumerate(cutoffs)
                ),
                note="High-passed images get the data's mean grey level added back (not clipped).",
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
    timing = [(m, s, r["run"]["timings"]) for m, seeds in results["runs"].items() for s, r in seeds.items() if r.get("run") and "timings" in r["run"]]
    if timing:
        out.append(
            Table(
                "Wall time per run in seconds",
                ("method", "seed", "train", "evaluate", "diagnostics"),
                tuple(
                    (m, str(s), *(f"{t.get(k, math.nan):.1f}" for k in ("train_s", "eval_s", "diagnostics_s")))
                    for m, s, t in timing
                ),
            )
        )
    env = results["experiment"].get("environment")
    if env:
        out.append(Table("Environment that produced the results", ("item", "value"), tuple((str(k), str(v)) for k, v in env.items())))
    return out


# --------------------------------------------------------------------------------------------
# Rendering


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(t: Table) -> str:
    lines = [f"### {t.title}", "", "| " + " | ".join(map(_md_cell, t.header)) + " |", "|" + "---|" * len(t.header)]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in t.rows]
    if t.note:
        lines += ["", t.note]
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


def _intro(summary: dict[str, Any], results: dict[str, Any]) -> str:
    exp = results["experiment"]
    preset = exp.get("preset", {})
    what = f"preset `{preset.get('name')}`" if isinstance(preset, dict) and preset.get("name") else "saved results"
    wall = exp.get("wall_time_s")
    wall_txt = f" Total wall time: {wall:.0f} s." if isinstance(wall, (int, float)) else ""
    return (
        f"Methods {', '.join(summary['methods'])} from {what}; errors are top-1 errors, mean ± std "
        f"(sample std) over seeds.{wall_txt}"
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
    if t.note:
        parts.append(f'<p class="note">{e(t.note)}</p>')
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
        rel = f"figures/fig{i + 1}.png"
        atomic_write(root / rel, lambda f, png=png: f.write(png))
        paths[caption] = rel
    md = render_markdown(summary, results, paths).encode("utf-8")
    page = render_html(summary, results, pngs).encode("utf-8")
    md_path = atomic_write(root / "report.md", lambda f: f.write(md))
    html_path = atomic_write(root / "report.html", lambda f: f.write(page))
    return md_path, html_path
