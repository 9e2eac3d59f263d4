"""The report: every number equals the one computed (here, independently) from the results JSON,
and report.html renders in a real headless browser with its images."""

from __future__ import annotations

import base64
import html.parser
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from robustmix import report
from robustmix.cli import main as cli_main

BENCH = [
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression",
]  # fmt: skip
EXTRA = ["saturate", "speckle_noise"]
SEEDS = {"none": [0, 1], "mixup": [0], "robustmix": [0, 1, 2]}
CUTOFFS = [0.0, 0.25, 0.5, 1.0]


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    """A results folder with made-up numbers in the experiment layout."""
    root = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(0)
    for method, seeds in SEEDS.items():
        for seed in seeds:
            run = root / "runs" / method / f"seed{seed}"
            corrupted = {
                c: {str(s): float(np.clip(0.1 + 0.08 * s + rng.normal(0, 0.03), 0, 1)) for s in range(1, 6)}
                for c in [*BENCH, *EXTRA]
            }
            _write(run / "eval.json", {"clean": {"error": float(rng.uniform(0.08, 0.12)), "loss": 0.3, "n": 100}, "corrupted": corrupted})
            heat = rng.uniform(0, 1, (4, 4))
            heat = (heat + heat[::-1, ::-1]) / 2
            _write(
                run / "diagnostics.json",
                {
                    "filtered_accuracy": {
                        "cutoffs": CUTOFFS,
                        "lowpass_accuracy": rng.uniform(0, 1, 4).tolist(),
                        "highpass_accuracy": rng.uniform(0, 1, 4).tolist(),
                    },
                    "cue_conflict": {"low_band_fraction": float(rng.uniform()), "high_band_fraction": 0.0, "n": 10, "n_pairs": 12},
                    "fourier_heatmap": {"eps": 2.0, "map": heat.tolist()},
                },
            )
            _write(run / "run.json", {"method": method, "seed": seed, "timings": {"train_s": 1.5, "eval_s": 2.25, "diagnostics_s": 0.5}})
    spectrum = (1.0 / (1 + np.add.outer(np.arange(6), np.arange(6)))).tolist()
    _write(root / "dataset.json", {"dataset": "toy", "energy_spectrum": spectrum, "cutoffs": CUTOFFS, "lambda_c": [0.0, 0.61, 0.87, 1.0]})
    _write(
        root / "experiment.json",
        {
            "preset": {"name": "toy"},
            "methods": list(SEEDS),
            "seeds": [0, 1, 2],
            "environment": {"torch": "9.9.9", "python": "3.x", "commit": "abc123"},
            "wall_time_s": 12.0,
        },
    )
    # an unfinished run (no eval.json) must be ignored
    (root / "runs" / "cutmix" / "seed0").mkdir(parents=True)
    report.write_report(root)
    return root


# --------------------------------------------------------------------------------------------
# Independent reference numbers


def _load(root: Path):
    out = {}
    for method, seeds in SEEDS.items():
        out[method] = [json.loads((root / "runs" / method / f"seed{s}" / "eval.json").read_text()) for s in seeds]
        for ev, s in zip(out[method], seeds):
            ev["diag"] = json.loads((root / "runs" / method / f"seed{s}" / "diagnostics.json").read_text())
    return out


def _ms(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _arr(ev, names) -> np.ndarray:  # (corruptions, severities)
    return np.array([[ev["corrupted"][c][str(s)] for s in range(1, 6)] for c in names])


def _expected(root: Path) -> dict:
    runs = _load(root)
    base = np.mean([_arr(ev, BENCH) for ev in runs["none"]], axis=0)
    base_clean = np.mean([ev["clean"]["error"] for ev in runs["none"]])
    exp = {}
    for m, evs in runs.items():
        arrs = [_arr(ev, BENCH) for ev in evs]
        cleans = [ev["clean"]["error"] for ev in evs]
        ce = [np.mean(a.sum(1) / base.sum(1)) for a in arrs]
        rce = [np.mean((a - c).sum(1) / (base - base_clean).sum(1)) for a, c in zip(arrs, cleans)]
        exp[m] = {
            "clean error": _ms(cleans),
            "mCE": _ms(ce),
            "relative mCE": _ms(rce),
            "mean corruption error": _ms([a.mean() for a in arrs]),
            "extra-4 error": _ms([_arr(ev, EXTRA).mean() for ev in evs]),
            "cue": _ms([ev["diag"]["cue_conflict"]["low_band_fraction"] for ev in evs]),
            "per_corruption": {c: _ms([np.mean(list(ev["corrupted"][c].values())) for ev in evs]) for c in [*BENCH, *EXTRA]},
            "per_severity": {s: _ms([a[:, s - 1].mean() for a in arrs]) for s in range(1, 6)},
            "low": [_ms([ev["diag"]["filtered_accuracy"]["lowpass_accuracy"][i] for ev in evs]) for i in range(4)],
            "high": [_ms([ev["diag"]["filtered_accuracy"]["highpass_accuracy"][i] for ev in evs]) for i in range(4)],
        }
    return exp


# --------------------------------------------------------------------------------------------
# Parsing the rendered report


def _md_tables(text: str) -> dict[str, list[list[str]]]:
    tables, title, rows = {}, None, []
    for line in text.splitlines():
        if line.startswith("### "):
            title, rows = line[4:], []
            tables[title] = rows
        elif line.startswith("|") and title is not None and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return tables


class _HtmlTables(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.imgs: list[dict] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.imgs.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _num(cell: str, scale: float) -> tuple[float, float]:
    """'mean ± std', or a bare 'mean' for a single seed (whose std is 0)."""
    m = re.fullmatch(r"(-?[\d.]+)(?: ± ([\d.]+))?", cell)
    assert m, f"not a 'mean ± std' or 'mean' cell: {cell!r}"
    return float(m.group(1)) / scale, float(m.group(2) or 0.0) / scale


def _close(cell: str, pair: tuple[float, float], *, scale: float, digits: int) -> None:
    got = _num(cell, scale)
    tol = 0.5 * 10.0**-digits / scale + 1e-12
    assert abs(got[0] - pair[0]) <= tol and abs(got[1] - pair[1]) <= tol, (cell, pair)


def _table(tables: dict, prefix: str) -> list[list[str]]:
    (key,) = [k for k in tables if k.startswith(prefix)]
    return tables[key]


# --------------------------------------------------------------------------------------------
# Tests


def test_every_number_in_markdown_matches_results_json(results_dir):
    exp = _expected(results_dir)
    tables = _md_tables((results_dir / "report.md").read_text())
    head = _table(tables, "Headline")
    header = head[0]
    rows = {r[0]: dict(zip(header, r)) for r in head[1:]}
    assert list(rows) == list(SEEDS)  # the unfinished cutmix run is not reported
    for m, e in exp.items():
        assert rows[m]["seeds"] == str(len(SEEDS[m]))
        for col in ("clean error", "mCE", "relative mCE", "mean corruption error", "extra-4 error"):
            _close(rows[m][col], e[col], scale=100, digits=2)
        _close(rows[m]["cue-conflict low-band fraction"], e["cue"], scale=1, digits=3)

    per_corr = _table(tables, "Error per corruption")
    assert per_corr[0] == ["corruption", *SEEDS]
    assert [r[0] for r in per_corr[1:]] == [*BENCH, *EXTRA]
    for r in per_corr[1:]:
        for m, cell in zip(SEEDS, r[1:]):
            _close(cell, exp[m]["per_corruption"][r[0]], scale=100, digits=2)

    per_sev = _table(tables, "Error vs severity")
    assert [r[0] for r in per_sev[1:]] == ["1", "2", "3", "4", "5"]
    for r in per_sev[1:]:
        for m, cell in zip(SEEDS, r[1:]):
            _close(cell, exp[m]["per_severity"][int(r[0])], scale=100, digits=2)

    filt = _table(tables, "Accuracy in % on low-pass")
    assert [float(r[0]) for r in filt[1:]] == CUTOFFS
    k = len(SEEDS)
    for i, r in enumerate(filt[1:]):
        for j, m in enumerate(SEEDS):
            _close(r[1 + j], exp[m]["low"][i], scale=100, digits=2)
            _close(r[1 + k + j], exp[m]["high"][i], scale=100, digits=2)

    lam = _table(tables, "lam_c per cutoff")
    assert [[float(x) for x in r] for r in lam[1:]] == [[0.0, 0.0], [0.25, 0.61], [0.5, 0.87], [1.0, 1.0]]
    env = {r[0]: r[1] for r in _table(tables, "Environment")[1:]}
    assert env == {"torch": "9.9.9", "python": "3.x", "commit": "abc123"}


def test_baseline_mce_is_near_100_and_mixup_std_zero(results_dir):
    summary = report.summarize_experiment(report.load_results(results_dir))
    # Each baseline seed against the seed average: a mean of ratios, close to (not exactly) 1.
    assert abs(summary["per_method"]["none"]["mce"][0] - 1.0) < 0.05
    assert summary["per_method"]["mixup"]["clean_error"][1] == 0.0
    assert summary["baseline"] == "none"
    no_base = report.summarize_experiment(report.load_results(results_dir), baseline="absent")
    assert no_base["baseline"] is None and np.isnan(no_base["per_method"]["mixup"]["mce"][0])


def test_html_has_same_tables_and_embedded_pngs(results_dir):
    md = _md_tables((results_dir / "report.md").read_text())
    parser = _HtmlTables()
    parser.feed((results_dir / "report.html").read_text())
    assert [t for t in parser.tables] == list(md.values())
    assert len(parser.imgs) == 6
    for img in parser.imgs:
        assert img["src"].startswith("data:image/png;base64,")
        png = base64.b64decode(img["src"].split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # markdown references the same figures as files
    figs = re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", (results_dir / "report.md").read_text())
    assert len(figs) == 6 and all((results_dir / f).is_file() for f in figs)
    assert "<script" not in (results_dir / "report.html").read_text()


def test_cli_report_and_errors(results_dir, tmp_path, capsys):
    copy = shutil.copytree(results_dir, tmp_path / "copy")  # keep the shared fixture's figures
    assert cli_main(["report", str(copy), "--no-plots"]) == 0
    assert "report.html" in capsys.readouterr().out
    assert "<img" not in (copy / "report.html").read_text()
    tmp_path = tmp_path / "empty"
    tmp_path.mkdir()
    assert cli_main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="has no runs/ folder"):
        report.load_results(tmp_path)
    (tmp_path / "runs" / "none" / "seed0").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no finished run"):
        report.load_results(tmp_path)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _chrome_args(profile: Path) -> list[str]:
    return [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}",
    ]  # fmt: skip


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (apt-get install chromium; CI installs it)")
def test_report_renders_in_headless_chromium(results_dir, tmp_path):
    browser = _chromium()
    url = (results_dir / "report.html").as_uri()
    dom = subprocess.run(
        [browser, *_chrome_args(tmp_path / "p1"), "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "Robustmix experiment report" in dom
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', dom)) == 6
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *_chrome_args(tmp_path / "p2"), f"--screenshot={shot}", "--window-size=1200,2400", url],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    from PIL import Image

    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("L"), dtype=float)
    assert pixels.shape == (2400, 1200)
    assert pixels.std() > 5  # text, tables and plots: not a blank page


# --------------------------------------------------------------------------------------------
# Coverage notes, errors and bookkeeping (from an audit)


def _copy(results_dir: Path, tmp_path: Path) -> Path:
    return shutil.copytree(results_dir, tmp_path / "copy")


def _headline_and_note(root: Path) -> tuple[dict[str, dict[str, str]], str]:
    """Headline rows by method, and the report's text between the headline table and the figures."""
    text = (root / "report.md").read_text()
    head = _table(_md_tables(text), "Headline")
    rows = {r[0]: dict(zip(head[0], r)) for r in head[1:]}
    after = text.split("### Headline", 1)[1].split("\n## ", 1)[0]
    return rows, " ".join(line for line in after.splitlines() if line and not line.startswith(("|", "###")))


def test_diagnostics_from_fewer_seeds_show_their_own_count(results_dir, tmp_path):
    root = _copy(results_dir, tmp_path)
    (root / "runs" / "none" / "seed1" / "diagnostics.json").unlink()
    report.write_report(root, plots=False)
    rows, note = _headline_and_note(root)
    diag0 = json.loads((root / "runs" / "none" / "seed0" / "diagnostics.json").read_text())
    # one seed behind the value: its bare mean, marked, not "± 0.000" over the run's 2 seeds
    assert rows["none"]["seeds"] == "2"
    assert rows["none"]["cue-conflict low-band fraction"] == f"{diag0['cue_conflict']['low_band_fraction']:.3f} (n=1)"
    assert "`none`: cue conflict from 1 of 2, filtered accuracy from 1 of 2, Fourier heat map from 1 of 2 seeds (seed1 without diagnostics)" in note
    filt = _table(_md_tables((root / "report.md").read_text()), "Accuracy in % on low-pass")
    col = filt[0].index("none low-pass")
    assert [r[col] for r in filt[1:]] == [f"{100 * a:.2f} (n=1)" for a in diag0["filtered_accuracy"]["lowpass_accuracy"]]
    # methods with every seed's diagnostics are unmarked
    assert "(n=" not in rows["robustmix"]["cue-conflict low-band fraction"]


def test_unfinished_and_missing_runs_are_named(results_dir, tmp_path):
    root = _copy(results_dir, tmp_path)
    (root / "runs" / "mixup" / "seed0" / "run.json").unlink()  # evaluated, not finished
    report.write_report(root, plots=False)
    _, note = _headline_and_note(root)
    assert "Unfinished runs (no run.json), reported from their eval.json: mixup/seed0." in note
    # experiment.json lists seeds 0-2 for every method; cutmix/seed0 has a folder but no eval.json
    assert (
        "Runs not in this report: none/seed2 (no run folder), mixup/seed1 (no run folder), mixup/seed2 (no run folder), "
        "cutmix/seed0 (started, not evaluated (no eval.json))." in note
    )
    assert "The baseline `none` lacks seed 2: every method's mCE and relative mCE" in note


def test_corruptions_and_severities_some_runs_lack_are_named(results_dir, tmp_path):
    root = _copy(results_dir, tmp_path)
    path = root / "runs" / "robustmix" / "seed1" / "eval.json"
    ev = json.loads(path.read_text())
    del ev["corrupted"]["fog"]
    del ev["corrupted"]["snow"]["5"]
    path.write_text(json.dumps(ev))
    report.write_report(root, plots=False)
    _, note = _headline_and_note(root)
    assert "Corruptions left out of every table and of mCE because some runs lack them: fog (missing in robustmix/seed1)." in note
    assert "Severities left out of every table and of mCE because some runs lack them: 5 (missing in robustmix/seed1)." in note
    assert "over 14 ImageNet-C corruptions" in note
    tables = _md_tables((root / "report.md").read_text())
    assert "fog" not in [r[0] for r in _table(tables, "Error per corruption")]
    assert [r[0] for r in _table(tables, "Error vs severity")[1:]] == ["1", "2", "3", "4"]


def test_relative_mce_na_says_which_corruptions(results_dir, tmp_path):
    root = _copy(results_dir, tmp_path)
    for seed in SEEDS["none"]:  # the baseline does not degrade on fog, barely on snow
        path = root / "runs" / "none" / f"seed{seed}" / "eval.json"
        ev = json.loads(path.read_text())
        clean = ev["clean"]["error"]
        ev["corrupted"]["fog"] = {str(s): clean - 0.01 for s in range(1, 6)}
        ev["corrupted"]["snow"] = {str(s): clean + 0.001 for s in range(1, 6)}
        path.write_text(json.dumps(ev))
    report.write_report(root, plots=False)
    rows, note = _headline_and_note(root)
    assert {rows[m]["relative mCE"] for m in SEEDS} == {"n/a"}
    assert "Relative mCE is n/a: the `none` baseline's degradation Σ_s E_s,c − E_clean" in note
    assert "is <= 0 for fog (-5.00), where relative CE is undefined." in note
    assert "It is under 1 point per severity for snow (+0.50)." in note
    assert "near-zero denominators make relative mCE unstable" in note


def test_corrupt_json_error_names_the_file(results_dir, tmp_path, capsys):
    root = _copy(results_dir, tmp_path)
    bad = root / "runs" / "robustmix" / "seed1" / "eval.json"
    bad.write_text('{"clean": {"error": 0.1, "loss')
    assert cli_main(["report", str(root), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert f"error: {str(bad)!r} is not valid JSON: Unterminated string" in err


def _invocation(commit: str, elapsed: float, status: str) -> dict:
    return {"started": "2030-01-01T00:00:00", "command": "robustmix experiment", "environment": {"commit": commit, "torch": "9"},
            "elapsed_s": elapsed, "status": status}  # fmt: skip


def test_wall_times_over_invocations_and_commits(results_dir, tmp_path):
    root = _copy(results_dir, tmp_path)
    exp = json.loads((root / "experiment.json").read_text())
    exp["invocations"] = [_invocation("aaaa111", 40.0, "interrupted"), _invocation("bbbb222", 2.5, "finished")]
    exp["wall_time_s"] = 42.5
    exp["environment"] = exp["invocations"][-1]["environment"]
    (root / "experiment.json").write_text(json.dumps(exp))

    def stage(seconds, invocation, commit, partial=False):
        return {"seconds": seconds, "partial": partial, "invocation": invocation, "commit": commit}

    stages = {"train": stage(30.0, 2, "bbbb222", partial=True), "eval": stage(5.0, 1, "aaaa111"), "diagnostics": stage(None, None, None)}
    run = {"method": "none", "seed": 0, "timings": {"train_s": 30.0, "eval_s": 5.0, "diagnostics_s": None}, "stages": stages}
    (root / "runs" / "none" / "seed0" / "run.json").write_text(json.dumps(run))
    report.write_report(root, plots=False)
    text = (root / "report.md").read_text()
    assert (
        "Total wall time: at least 42 s, summed over 2 invocations; invocation 1 stopped early (interrupted, or still running) "
        "and counts only up to its last completed run." in text
    )
    assert "Results come from 2 commits (aaaa111, bbbb222): see the Invocations table." in text
    tables = _md_tables(text)
    timing = _table(tables, "Wall time per run")
    assert timing[0] == ["method", "seed", "train", "evaluate", "diagnostics", "invocation", "commit"]
    assert timing[1] == ["none", "0", "≥ 30.0", "5.0", "unknown", "2, 1, ?", "bbbb222, aaaa111, ?"]
    assert "≥: training resumed after an interrupted invocation" in text
    assert "unknown: the stage was done by a version, or an interrupted invocation, that recorded no time for it." in text
    inv = _table(tables, "Invocations")
    assert [r[:3] + r[5:7] for r in inv[1:]] == [["1", "2030-01-01T00:00:00", "aaaa111", "40", "interrupted"], ["2", "2030-01-01T00:00:00", "bbbb222", "2", "finished"]]  # fmt: skip
    assert "2 commits contributed: aaaa111: invocation 1, runs none/seed0; bbbb222: invocation 2, runs none/seed0." in text
    assert _table(tables, "Environment of the last invocation")[1:] == [["commit", "bbbb222"], ["torch", "9"]]


def test_no_plots_removes_only_stale_figures_of_the_report(results_dir, tmp_path):
    root = _copy(results_dir, tmp_path)
    assert sorted(p.name for p in (root / "figures").iterdir()) == [f"fig{i}.png" for i in range(1, 7)]
    (root / "figures" / "mine.png").write_bytes(b"kept")
    (root / "dataset.json").unlink()  # one figure fewer
    report.write_report(root)
    assert sorted(p.name for p in (root / "figures").iterdir()) == [*(f"fig{i}.png" for i in range(1, 6)), "mine.png"]
    report.write_report(root, plots=False)
    assert [p.name for p in (root / "figures").iterdir()] == ["mine.png"]
    assert "figures/" not in (root / "report.md").read_text()


def test_figures_have_titles_labels_and_the_uniform_share(results_dir, monkeypatch):
    from robustmix import _plots

    drawn = []
    monkeypatch.setattr(_plots, "_png", lambda fig: drawn.append(fig) or b"")
    results = report.load_results(results_dir)
    _plots.all_figures(report.summarize_experiment(results), results)
    assert len(drawn) == 6
    for k, fig in enumerate(drawn, 1):
        for ax in fig.axes:
            if ax.get_label() != "<colorbar>":
                assert ax.get_title(), f"figure {k} has an axis without a title"
    assert drawn[4].axes[0].get_xlabel() == "method"
    right = [ax for ax in drawn[5].axes if ax.get_label() != "<colorbar>"][1]
    legend = right.get_legend()
    assert legend is not None
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["lam_c (energy share of the data)", 'energy="uniform": share of DCT coefficients (≈ cutoff²)']
    (line,) = [ln for ln in right.get_lines() if ln.get_label() == labels[1]]
    n = 6  # the fixture's spectrum is 6 x 6: the DCT box keeps floor(c*n + 0.5) indices per axis
    assert list(line.get_xdata()) == CUTOFFS
    assert np.allclose(line.get_ydata(), [(np.floor(c * n + 0.5) / n) ** 2 for c in CUTOFFS])
