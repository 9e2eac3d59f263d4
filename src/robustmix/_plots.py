"""The report's figures as PNG bytes (matplotlib, the ``cli`` extra).

Uses ``matplotlib.figure.Figure`` with the Agg canvas directly rather than ``pyplot``: no global
backend or figure state is touched, so drawing is safe inside other programs and tests.
"""

from __future__ import annotations

import io
import math
from typing import Any

__all__ = ["all_figures"]


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _bars(summary: dict[str, Any]) -> bytes:
    methods = summary["methods"]
    corr = [*summary["corruptions"], *summary["extra_corruptions"]]
    fig, ax = _figure(max(8.0, 0.55 * len(corr) + 2), 4.2)
    ax = ax[0, 0]
    width = 0.8 / max(1, len(methods))
    for k, m in enumerate(methods):
        pairs = [summary["per_method"][m]["per_corruption"][c] for c in corr]
        xs = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(corr))]
        ax.bar(xs, [100 * p[0] for p in pairs], width, yerr=[100 * p[1] for p in pairs], label=m, capsize=2)
    ax.set_xticks(range(len(corr)), corr, rotation=60, ha="right", fontsize=8)
    ax.set_title("Error per corruption (mean over severities), mean ± std over seeds")
    ax.set_ylabel("top-1 error (%)")
    ax.legend(fontsize=8)
    return _png(fig)


def _severity(summary: dict[str, Any]) -> bytes:
    fig, ax = _figure(6, 4)
    ax = ax[0, 0]
    sev = summary["severities"]
    for m in summary["methods"]:
        pm = summary["per_method"][m]
        mean = [100 * pm["per_severity"][s][0] for s in sev]
        std = [100 * pm["per_severity"][s][1] for s in sev]
        ax.errorbar([0, *sev], [100 * pm["clean_error"][0], *mean], yerr=[100 * pm["clean_error"][1], *std], marker="o", capsize=3, label=m)
    ax.set_xticks([0, *sev], ["clean", *map(str, sev)])
    ax.set_title("Error vs severity (mean over ImageNet-C corruptions)")
    ax.set_xlabel("severity")
    ax.set_ylabel("top-1 error (%)")
    ax.legend(fontsize=8)
    return _png(fig)


def _filtered(summary: dict[str, Any]) -> bytes:
    fig, axes = _figure(10, 4, 1, 2)
    for ax, key, title in ((axes[0, 0], "lowpass", "low-pass filtered"), (axes[0, 1], "highpass", "high-pass filtered")):
        for m in summary["methods"]:
            pm = summary["per_method"][m]
            if not pm["cutoffs"]:
                continue
            mean = [100 * p[0] for p in pm[key]]
            std = [100 * p[1] for p in pm[key]]
            ax.errorbar(pm["cutoffs"], mean, yerr=std, marker="o", ms=3, capsize=2, label=m)
        ax.set_title(title)
        ax.set_xlabel("cutoff (fraction of DCT indices per axis)")
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize=8)
    return _png(fig)


def _heatmaps(summary: dict[str, Any]) -> bytes:
    methods = [m for m in summary["methods"] if summary["per_method"][m]["heatmap"] is not None]
    fig, axes = _figure(3.2 * len(methods) + 0.8, 3.4, 1, len(methods))
    image = None
    for ax, m in zip(axes[0], methods):
        heat = summary["per_method"][m]["heatmap"]
        h, w = len(heat), len(heat[0])
        extent = (-(w // 2) - 0.5, w - w // 2 - 0.5, h - h // 2 - 0.5, -(h // 2) - 0.5)
        image = ax.imshow([[100 * (v if v is not None else math.nan) for v in row] for row in heat], vmin=0, vmax=100, cmap="viridis", extent=extent)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("v")
        ax.set_ylabel("u")
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), label="error (%)", shrink=0.8)
    return _png(fig)


def _cue(summary: dict[str, Any]) -> bytes:
    fig, ax = _figure(5, 3.5)
    ax = ax[0, 0]
    methods = summary["methods"]
    pairs = [summary["per_method"][m]["cue_conflict"] for m in methods]
    ax.bar(range(len(methods)), [p[0] for p in pairs], yerr=[p[1] for p in pairs], capsize=3, color="tab:purple")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylim(0, 1)
    ax.set_title("Frequency cue conflict (dashed: no preference)")
    ax.set_xlabel("method")
    ax.set_ylabel("decisions following the low band")
    return _png(fig)


def _spectrum(dataset: dict[str, Any]) -> bytes:
    from robustmix.functional import _uniform_share

    fig, axes = _figure(10, 4, 1, 2)
    spec = dataset["energy_spectrum"]
    image = axes[0, 0].imshow([[math.log10(max(v, 1e-12)) for v in row] for row in spec], cmap="magma")
    axes[0, 0].set_title("log10 mean |DCT|² per (u, v)")
    axes[0, 0].set_xlabel("v (DCT index)")
    axes[0, 0].set_ylabel("u (DCT index)")
    fig.colorbar(image, ax=axes[0, 0], shrink=0.8)
    cutoffs = dataset["cutoffs"]
    sizes = (len(spec), len(spec[0]))  # the DCT box keeps floor(c*n + 0.5) indices per axis
    axes[0, 1].plot(cutoffs, dataset["lambda_c"], marker="o", ms=3, label="lam_c (energy share of the data)")
    axes[0, 1].plot(
        cutoffs, [_uniform_share(c, sizes) for c in cutoffs], color="grey", lw=0.8, ls="--", marker=".",
        label='energy="uniform": share of DCT coefficients (≈ cutoff²)',
    )  # fmt: skip
    axes[0, 1].set_title("Low-band share per cutoff")
    axes[0, 1].set_xlabel("cutoff")
    axes[0, 1].set_ylabel("lam_c (low-band energy share)")
    axes[0, 1].set_ylim(0, 1.02)
    axes[0, 1].legend(fontsize=8)
    return _png(fig)


def all_figures(summary: dict[str, Any], results: dict[str, Any]) -> dict[str, bytes]:
    """caption -> PNG bytes for every figure the saved results allow."""
    figs: dict[str, bytes] = {}
    pm = summary["per_method"]
    if summary["corruptions"] or summary["extra_corruptions"]:
        figs["Error per corruption (mean over severities), mean ± std over seeds"] = _bars(summary)
    if summary["severities"] and summary["corruptions"]:
        figs["Error vs severity (mean over ImageNet-C corruptions)"] = _severity(summary)
    if any(pm[m]["cutoffs"] for m in summary["methods"]):
        figs["Accuracy on low-pass and high-pass filtered test images"] = _filtered(summary)
    if any(pm[m]["heatmap"] is not None for m in summary["methods"]):
        figs["Fourier heat maps of error (Yin et al. 2019), centre = zero frequency"] = _heatmaps(summary)
    if any(not math.isnan(pm[m]["cue_conflict"][0]) for m in summary["methods"]):
        figs["Frequency cue conflict: share of decisions following the low band"] = _cue(summary)
    ds = results.get("dataset")
    if ds and ds.get("energy_spectrum"):
        figs["Dataset energy spectrum (normalised images) and lam_c per cutoff"] = _spectrum(ds)
    return figs
