"""Render the markdown result tables of ``benchmarks/README.md`` from ``benchmarks/results/*.json``.

``python benchmarks/table.py`` prints them; ``--write-readme`` replaces the part of README.md
between the ``results:begin`` / ``results:end`` markers (atomically), so every number in the
README comes from a result file. Smoke results (``"quick": true``) are skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robustmix._io import atomic_write

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _f(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _meta_line(meta: dict[str, Any]) -> str:
    commit = (meta.get("commit") or "unknown")[:10]
    isa = f" ({meta['cpu_isa']})" if meta.get("cpu_isa") and meta.get("device") == "cpu" else ""
    line = (f"{meta.get('device_name')}{isa}; torch {meta.get('torch')}, numpy {meta.get('numpy')}, "
            f"python {meta.get('python')}; {meta.get('torch_threads')} torch threads; commit `{commit}`; "
            f"{meta.get('date')}")
    probes = [(when, meta[f"probe_{when}"]) for when in ("start", "end") if meta.get(f"probe_{when}")]
    if probes:
        line += ("; machine state (`_harness.machine_probe`): " + ", ".join(
            f"{when} fp32 GEMM {p['gemm_fp32_gflops_per_s']:.0f} GFLOP/s, copy {p['copy_gb_per_s']:.1f} GB/s"
            for when, p in probes))
    return line


def _where(meta: dict[str, Any]) -> str:
    """``cuda``, or ``cpu, AVX2`` / ``cpu, AVX512-BF16``: CPU results from hosts with and without
    native bf16 GEMMs differ in kind (see ``freq.matmul_dtype``), so their headings say which."""
    isa = meta.get("cpu_isa")
    if meta["device"] != "cpu" or not isa:
        return meta["device"]
    return f"cpu, {isa.split(', ')[-1]}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _floor_cell(floor: dict[str, Any] | None) -> str:
    """``1.21 (1.18-1.25)``: the paired ratio's median and quartiles (older results: the median)."""
    if not floor:
        return ""
    if "time_over_floor_q1" not in floor:
        return _f(floor["time_over_floor"])
    return f"{_f(floor['time_over_floor'])} ({_f(floor['time_over_floor_q1'])}-{_f(floor['time_over_floor_q3'])})"


def render_mixing(res: dict[str, Any]) -> list[str]:
    out = [f"### Mixing ({_where(res['meta'])})", "", _meta_line(res["meta"]), ""]
    out += ["GEMM rate of the op's largest product shape (the floor's denominator):", ""]
    out += _table(["batch", "GEMM", "dtype", "median ms", "GFLOP/s"], [
        ["x".join(map(str, g["shape"])), g["gemm"], g["dtype"], _f(g["timing"]["median_ms"]), _f(g["gflops_per_s"], 1)]
        for g in res["gemm"]
    ])
    out += ["", "Time per call; `÷ peer` is our time over the peer's (below 1 = faster), "
            "`torch-dct ×` how many times faster than the torch-dct implementation, `÷ floor` our time over "
            "the matrix-product floor (median and quartiles of the per-round ratio, the op and its GEMMs timed "
            "round-robin).", ""]
    rows = []
    for c in res["cases"]:
        vs = c.get("time_over_peer", {})
        dct = vs.get("torch-dct")
        rows.append([
            "x".join(map(str, c["shape"])), c["dtype"], c["method"], _f(c["timing"]["median_ms"]),
            _f(c["timing"]["iqr_ms"]), str(c["timing"]["repeats"]),
            _f(vs.get("timm Mixup")) if vs else "", _f(vs.get("torchvision v2.MixUp")) if vs else "",
            (_f(1 / dct, 1) if dct else "n/a") if vs else "",
            _floor_cell(c.get("floor")),
        ])
    out += _table(["batch", "dtype", "method", "median ms", "IQR ms", "n", "÷ timm", "÷ v2.MixUp",
                   "torch-dct ×", "÷ floor"], rows)
    errors = [c for c in res["cases"] if "max_abs_err_targets_vs_float64" in c]
    if errors:
        out += ["", "Accuracy of the fixed-cutoff call against the same call in float64 (16 samples): max |Δ| of "
                "images / label weights.", ""]
        out += _table(["batch", "dtype", "method", "images", "label weights"], [
            ["x".join(map(str, c["shape"])), c["dtype"], c["method"], f"{c['max_abs_err_images_vs_float64']:.2e}",
             f"{c['max_abs_err_targets_vs_float64']:.2e}"] for c in errors
        ])
    for chk in res.get("checks_vs_torch_dct", []):
        out.append("")
        out.append(f"Check vs torch-dct at {'x'.join(map(str, chk['shape']))} (8 samples): max |Δ| images "
                   f"{chk['max_abs_diff_images']:.2e}, targets {chk['max_abs_diff_targets']:.2e}.")
    pool = res.get("buffer_pool", [])
    if pool:
        out += ["", "Large CPU buffers (`robustmix._memory`): the op and the batch mixer with the buffer pool on and "
                "off, and one fill of a fresh vs a reused buffer of the batch's size, all round-robin:", ""]
        out += _table(["batch", "case", "median ms", "IQR ms", "n"], [
            ["x".join(map(str, r["shape"])), r["case"], _f(r["timing"]["median_ms"]), _f(r["timing"]["iqr_ms"]),
             str(r["timing"]["repeats"])] for r in pool
        ])
    for name, why in res.get("unavailable", {}).items():
        out.append(f"\nUnavailable peer {name}: {why}")
    return out


def render_train_step(res: dict[str, Any]) -> list[str]:
    out = [f"### Training step, ResNet-18 ({_where(res['meta'])})", "", _meta_line(res["meta"]), ""]
    rows = []
    for case in res["cases"]:
        for r in case["rows"]:
            extra = _f(r["overhead_pct"]) + " %" if "overhead_pct" in r else (
                f"({_f(r['share_of_step_pct'])} % of a step)" if "share_of_step_pct" in r else "")
            paired = r.get("paired_overhead_pct")
            paired_s = (f"{_f(paired['median'])} % [{_f(paired['q1'])}, {_f(paired['q3'])}]" if paired else "")
            rows.append([f"{case['image_size']}²", str(case["batch"]), r["case"], _f(r["timing"]["median_ms"]),
                         _f(r["timing"]["iqr_ms"]), str(r["timing"]["repeats"]), extra, paired_s])
    out += _table(["image", "batch", "case", "median ms", "IQR ms", "n", "overhead vs no mixing",
                   "paired overhead [IQR]"], rows)
    note = ("`overhead` = ratio of the medians − 1; `paired` = median over the interleaved rounds of "
            "(this step / the no-mixing step of the same round) − 1, with its interquartile range.")
    return [*out, "", note]


def render_mixers(res: dict[str, Any]) -> list[str]:
    out = [f"### MixUp and CutMix vs their peers ({_where(res['meta'])})", "", _meta_line(res["meta"]), ""]
    rows = []
    for r in res["cases"]:
        ratios = ", ".join(f"{_f(v)}× {k}" for k, v in r.get("time_over_peer", {}).items())
        rows.append(["×".join(map(str, r["shape"])), r["kind"], r["method"], _f(r["timing"]["median_ms"], 3),
                     _f(r["timing"]["iqr_ms"], 3), str(r["timing"]["repeats"]), ratios])
    out += _table(["batch", "kind", "mixer", "median ms", "IQR ms", "n", "ours ÷ peer"], rows)
    note = ("One call of each mixer class, its draws included, float32; timm mixes in place and gets a fresh "
            "clone outside the timed region. `ours ÷ peer` < 1: ours is faster.")
    return [*out, "", note]


def render_corruptions(res: dict[str, Any]) -> list[str]:
    out = [f"### Corruptions, severity {res['config']['severity']} ({_where(res['meta'])})", "",
           _meta_line(res["meta"]), ""]
    if res["config"].get("timing"):  # the rounds changed at f5c3741: say which ones a result used
        out += [f"Timing: {res['config']['timing']}.", ""]
    part = sorted({(r["image_size"], r["reference_images"], r["batch"]) for r in res["rows"]
                   if r.get("reference_images", r.get("batch")) != r.get("batch")}, reverse=True)
    if part:  # CUDA: the reference corrupts the first images of our large batch
        out += ["Per round the reference corrupted the first " + ", ".join(
            f"{k} of {b} images at {s} px" for s, k, b in part) + " (its images/s count those).", ""]
    sizes = sorted({r["image_size"] for r in res["rows"]}, reverse=True)
    by = {(r["corruption"], r["image_size"]): r for r in res["rows"]}
    names = list(dict.fromkeys(r["corruption"] for r in res["rows"]))
    runs = res.get("config", {}).get("runs", 1)
    header = ["corruption"]
    for s in sizes:
        header += [f"{s}px ours img/s", f"{s}px ref img/s", f"{s}px ×"] + ([f"{s}px × over runs"] if runs > 1 else [])
    rows = []
    for name in names:
        row = [name]
        for s in sizes:
            r = by.get((name, s), {})
            row += [_f(r.get("ours", {}).get("images_per_s"), 1), _f(r.get("reference", {}).get("images_per_s"), 1),
                    _f(r.get("speedup"))]
            if runs > 1:
                spread = r.get("speedups_over_runs")
                row.append(f"{_f(min(spread))}-{_f(max(spread))}" if spread else "")
        rows.append(row)
    geo = ["**geometric mean**"]
    for s in sizes:
        entry = res["summary"].get(str(s), {})
        geo += ["", "", f"**{_f(entry.get('geomean_speedup'))}**"] + ([""] if runs > 1 else [])
    if runs > 1:
        out += [f"Each row is the run with the median speed-up of {runs} whole-suite runs; the last column per "
                "size is the range over the runs.", ""]
    out += _table(header, [*rows, geo])
    for s in sizes:
        entry = res["summary"].get(str(s), {})
        if entry.get("slower_than_reference"):
            out.append(f"\n{s}px: slower than the reference: {', '.join(entry['slower_than_reference'])}.")
    for r in res["rows"]:
        for side in ("ours", "reference"):
            if "unavailable" in r.get(side, {}):
                out.append(f"\n{r['image_size']}px {r['corruption']} ({side}) unavailable: {r[side]['unavailable']}")
    if res.get("samplers"):
        size = res["samplers"][0]["image_size"]
        out += ["", f"Random samplers at {size} px, the bound of the noise corruptions (ns per draw; torch: one "
                "stream over the batch as a corruption draws, NumPy: one image at a time, as the reference):", ""]
        out += _table(["sampler", "torch ns", "NumPy ns", "NumPy / torch"],
                      [[r["sampler"], _f(r["torch_ns_per_draw"]), _f(r["numpy_ns_per_draw"]), _f(r["ratio"])]
                       for r in res["samplers"]])
    if res.get("large_batch"):
        lb = res["large_batch"]
        ratios = [r["ratio"] for r in lb]
        shipped = any("shipped" in r for r in lb)
        out += ["", f"One large batch ({lb[0]['batch']} images at {lb[0]['image_size']} px), ours only: `corrupt` "
                f"in cache-sized chunks ({lb[0]['images_per_call']} images a call, the default on CPU) vs the "
                "whole batch in one call, timed round-robin" + (
                    " (the last column: what `corrupt` does with such a batch)" if shipped else "") + ":", ""]
        out += _table(["corruption", "chunked img/s", "one call img/s", "chunked / one call"]
                      + (["`corrupt` uses"] if shipped else []),
                      [[r["corruption"], _f(r["chunked_images_per_s"], 1), _f(r["one_call_images_per_s"], 1),
                        _f(r["ratio"])] + ([r.get("shipped", "").replace("_", " ")] if shipped else []) for r in lb]
                      + [["**geometric mean**", "", "", f"**{_f(_geomean(ratios))}**"] + ([""] if shipped else [])])
    return out


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def render_agreement(res: dict[str, Any]) -> list[str]:
    cfg = res["config"]
    sevs = cfg["severities"]
    out = [f"### Agreement with the reference, {cfg['image_size']} px ({_where(res['meta'])})", "",
           _meta_line(res["meta"]), "",
           f"Strength ratio = mean |corrupted − clean| of ours / of `imagecorruptions` ({cfg['images']} images per "
           "cell, both as truncated 8-bit images; 1.00 = the same amount of corruption). Last column: mean "
           "|ours − reference| in 8-bit levels, for the deterministic corruptions.", ""]
    by = {(r["corruption"], r["severity"]): r for r in res["rows"]}
    names = list(dict.fromkeys(r["corruption"] for r in res["rows"]))
    rows, counts, notes = [], [], []
    for name in names:
        cells = [_f(by.get((name, s), {}).get("strength_ratio")) for s in sevs]
        diff = res["summary"].get(name, {}).get("max_mean_abs_diff_levels")
        label = name
        note = next((by[(name, s)]["note"] for s in sevs if "note" in by.get((name, s), {})), None)
        if note:
            label += " †"
            notes.append(f"† {name}: {note}.")
        count = cfg.get("images_override", {}).get(name)
        if count and count != cfg["images"]:
            counts.append(f"{name} {count}")
        rows.append([label, *cells, "" if diff is None else _f(diff)])
    out += _table(["corruption", *[f"sev {s}" for s in sevs], "max mean diff (levels)"], rows)
    if counts:
        notes.insert(0, f"Images per cell where not {cfg['images']}: {', '.join(counts)}.")
    return [*out, *(["", *notes] if notes else [])]


RENDERERS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "mixing": render_mixing, "mixers": render_mixers, "train_step": render_train_step, "corruptions": render_corruptions,
    "agreement": render_agreement,
}


def render(results_dir: Path, *, include_quick: bool = False) -> str:
    """All result tables, in a fixed order (script, then device)."""
    loaded = []
    for path in sorted(results_dir.glob("*.json")):
        with open(path, encoding="utf-8") as f:
            res = json.load(f)
        if (res.get("quick") and not include_quick) or res.get("benchmark") not in RENDERERS:
            continue
        loaded.append((path.stem, res))
    if not loaded:
        return "_No results yet: run the scripts above, then `python benchmarks/table.py --write-readme`._"
    order = list(RENDERERS)
    # per script and device, its own result file (e.g. mixing-cpu.json) before its variants
    loaded.sort(key=lambda item: (order.index(item[1]["benchmark"]), item[1]["meta"]["device"],
                                  item[0] != f"{item[1]['benchmark']}-{item[1]['meta']['device']}", item[0]))
    blocks = ["\n".join(RENDERERS[r["benchmark"]](r)) for _, r in loaded]
    return "\n\n".join(blocks)


def replace_section(text: str, body: str) -> str:
    """``text`` with the part between the markers replaced by ``body``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"readme must contain {BEGIN} followed by {END}")
    return text[: start + len(BEGIN)] + "\n" + body + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=HERE / "results", help="folder of result JSON files")
    parser.add_argument("--readme", type=Path, default=HERE / "README.md", help="README to update")
    parser.add_argument("--write-readme", action="store_true", help="replace the README's results section")
    parser.add_argument("--include-quick", action="store_true", help="also render smoke (--quick) results")
    args = parser.parse_args(argv)
    body = render(args.results, include_quick=args.include_quick)
    if not args.write_readme:
        sys.stdout.write(body + "\n")
        return 0
    text = replace_section(args.readme.read_text(encoding="utf-8"), body)
    mode = args.readme.stat().st_mode & 0o777
    atomic_write(args.readme, lambda f: f.write(text.encode()))
    args.readme.chmod(mode)  # the temp file behind the atomic write is created 0600
    print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
