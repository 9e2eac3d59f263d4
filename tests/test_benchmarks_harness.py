"""The benchmark harness: statistics, timing loop (with a fake clock), metadata, result files, tables.

No timing thresholds: every time here comes from a scripted clock.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str, filename: str):
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# The scripts import the harness as the top-level module ``_harness`` (their folder is on sys.path
# when run as scripts); load it under that name so they find it here too.
H = sys.modules.get("_harness") or _load("_harness", "_harness.py")
mixing = _load("bench_mixing", "mixing.py")
corruptions = _load("bench_corruptions", "corruptions.py")
table = _load("bench_table", "table.py")
sys.modules.setdefault("corruptions", corruptions)  # agreement.py imports it as a script sibling
agreement = _load("bench_agreement", "agreement.py")
cuda_overhead = _load("bench_cuda_overhead", "cuda_overhead.py")
jpeg_stages = _load("bench_jpeg_stages", "jpeg_stages.py")
cpu_ops = _load("bench_cpu_ops", "cpu_ops.py")
motion_route = _load("bench_motion_route", "motion_route.py")
mixers_bench = _load("bench_mixers", "mixers.py")
peer_memory = _load("bench_peer_memory", "peer_memory.py")
op_faults = _load("bench_op_faults", "op_faults.py")


class ScriptedClock:
    """A clock that only moves when the measured work (or setup) says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --------------------------------------------------------------------------------------------
# Statistics


def test_summarize_even_count_matches_hand_quartiles():
    # numpy linear interpolation: positions 0.75, 1.5, 2.25 of the sorted list [1, 2, 3, 4].
    s = H.summarize_times([4.0, 1.0, 3.0, 2.0])
    assert s["median_s"] == pytest.approx(2.5)
    assert s["q25_s"] == pytest.approx(1.75)
    assert s["q75_s"] == pytest.approx(3.25)
    assert s["iqr_s"] == pytest.approx(1.5)
    assert (s["min_s"], s["max_s"]) == (1.0, 4.0)


def test_summarize_odd_count_and_single_value():
    s = H.summarize_times([5.0, 1.0, 3.0])
    assert (s["median_s"], s["q25_s"], s["q75_s"]) == (3.0, 2.0, 4.0)
    one = H.summarize_times([0.25])
    assert one["median_s"] == 0.25 and one["iqr_s"] == 0.0


def test_summarize_rejects_bad_input():
    with pytest.raises(ValueError, match="times_s must hold at least one"):
        H.summarize_times([])
    with pytest.raises(ValueError, match="finite non-negative"):
        H.summarize_times([1.0, -0.5])
    with pytest.raises(ValueError, match="finite non-negative"):
        H.summarize_times([1.0, float("nan")])


def test_geometric_mean_matches_hand_values():
    assert H.geometric_mean([2.0, 8.0]) == pytest.approx(4.0)
    assert H.geometric_mean([1.0, 10.0, 100.0]) == pytest.approx(10.0)
    assert H.geometric_mean([0.5, 2.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one ratio"):
        H.geometric_mean([])
    with pytest.raises(ValueError, match="finite positive ratios"):
        H.geometric_mean([1.0, 0.0])
    with pytest.raises(ValueError, match="finite positive ratios"):
        H.geometric_mean([math.inf])


# --------------------------------------------------------------------------------------------
# Timing loop


def test_measure_excludes_warmup_and_setup_from_times():
    clock = ScriptedClock()
    durations = iter([100.0, 100.0, 1.0, 3.0, 2.0])  # two warm-up calls, then three timed ones
    calls = []

    def setup():
        clock.advance(1000.0)  # outside the timed region: must not show up
        return len(calls)

    def fn(arg):
        calls.append(arg)
        clock.advance(next(durations))

    timing = H.measure(fn, setup=setup, warmup=2, repeats=3, clock=clock)
    assert timing.times_s == (1.0, 3.0, 2.0)
    assert timing.warmup == 2
    assert timing.median_s == 2.0
    assert calls == [0, 1, 2, 3, 4]  # setup ran once per call, warm-up included


def test_measure_stops_at_time_budget_after_min_repeats():
    clock = ScriptedClock()
    timing = H.measure(lambda: clock.advance(5.0), warmup=0, repeats=10, max_time_s=9.0, min_repeats=2, clock=clock)
    assert timing.times_s == (5.0, 5.0)
    # min_repeats wins over the budget
    timing = H.measure(lambda: clock.advance(5.0), warmup=0, repeats=10, max_time_s=1.0, min_repeats=3, clock=clock)
    assert len(timing.times_s) == 3
    # without a budget every repeat runs
    timing = H.measure(lambda: clock.advance(5.0), warmup=1, repeats=4, clock=clock)
    assert len(timing.times_s) == 4


def test_measure_rejects_bad_counts():
    with pytest.raises(ValueError, match="repeats must be an int >= 1"):
        H.measure(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="warmup must be an int >= 0"):
        H.measure(lambda: None, warmup=-1)
    with pytest.raises(ValueError, match="min_repeats must be an int >= 1"):
        H.measure(lambda: None, min_repeats=0)
    with pytest.raises(ValueError, match="max_time_s must be a positive"):
        H.measure(lambda: None, max_time_s=0.0)


def test_measure_interleaved_runs_round_robin_and_attributes_times():
    clock = ScriptedClock()
    order = []

    def case(name, seconds):
        def run():
            order.append(name)
            clock.advance(seconds)

        return run

    timings = H.measure_interleaved({"a": case("a", 1.0), "b": case("b", 2.0)}, warmup=1, repeats=3, clock=clock)
    assert order == ["a", "b"] * 4
    assert timings["a"].times_s == (1.0, 1.0, 1.0)
    assert timings["b"].times_s == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="cases must name at least one"):
        H.measure_interleaved({})


def test_measure_blocks_times_each_case_in_whole_blocks_round_robin():
    order = []
    cases = {"a": lambda: order.append("a"), "b": lambda arg: order.append(("b", arg))}
    blocks = H.measure_blocks(cases, rounds=2, repeats=3, warmup=1, setups={"b": lambda: 7})
    # a's block (1 warm-up + 3 timed calls), then b's with its setup's argument, twice
    assert order == (["a"] * 4 + [("b", 7)] * 4) * 2
    assert [len(b.times_s) for b in blocks["a"] + blocks["b"]] == [3, 3, 3, 3]
    assert all(b.warmup == 1 for b in blocks["a"] + blocks["b"])
    with pytest.raises(ValueError, match="rounds must be an int >= 1"):
        H.measure_blocks(cases, rounds=0, repeats=1, warmup=0)


def test_timing_to_dict_reports_milliseconds_and_raw_times():
    d = H.Timing(times_s=(0.001, 0.003, 0.002), warmup=2).to_dict()
    assert d["median_ms"] == pytest.approx(2.0)
    assert d["iqr_ms"] == pytest.approx(1.0)  # q75 2.5 ms - q25 1.5 ms
    assert d["repeats"] == 3 and d["warmup"] == 2
    assert d["times_s"] == [0.001, 0.003, 0.002]
    json.dumps(d)  # JSON-serialisable


def test_sync_accepts_cpu_and_is_a_no_op():
    H.sync("cpu")
    H.sync(torch.device("cpu"))


# --------------------------------------------------------------------------------------------
# Metadata, devices, result files


def test_collect_metadata_records_versions_threads_and_date():
    meta = H.collect_metadata("cpu", extra={"note": "x"})
    assert meta["torch"] == torch.__version__
    assert meta["numpy"] == np.__version__
    assert meta["python"] == ".".join(map(str, sys.version_info[:3]))
    assert meta["torch_threads"] == torch.get_num_threads()
    assert meta["device"] == "cpu" and meta["device_name"].startswith("cpu: ")
    assert meta["note"] == "x"
    assert dt.datetime.fromisoformat(meta["date"]).tzinfo is not None
    assert meta["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", meta["commit"])
    json.dumps(meta)


def test_dist_version_of_installed_and_missing_distributions():
    assert H.dist_version("numpy") == np.__version__
    assert H.dist_version("no-such-distribution-robustmix") is None


def test_cpu_model_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Fake CPU 9000 @ 1GHz\nflags\t: avx2\n")
    assert H._cpu_model(info) == "Fake CPU 9000 @ 1GHz"


def test_cpu_isa_names_the_vector_extensions(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: X\nflags\t: fpu avx avx2 fma avx512f avx512bw avx512_bf16\n")
    assert H._cpu_isa(info) == "AVX2, AVX-512, AVX512-BF16"
    info.write_text("flags\t: fpu sse4_2 avx avx2\n")
    assert H._cpu_isa(info) == "AVX2"
    info.write_text("flags\t: fpu sse2\n")
    assert H._cpu_isa(info) == "none of AVX2/AVX-512"
    assert H._cpu_isa(tmp_path / "missing") is None


def test_resolve_device_validates():
    assert H.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        H.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"cuda.*is_available"):
            H.resolve_device("cuda")


def test_out_paths_and_atomic_result_round_trip(tmp_path):
    assert H.default_out_path("mixing", "cpu") == H.RESULTS_DIR / "mixing-cpu.json"
    quick = H.default_out_path("mixing", "cpu", quick=True)
    assert quick.parent.parent == Path(tempfile.gettempdir()) and quick.name == "mixing-cpu.json"
    path = H.write_result(tmp_path / "sub" / "r.json", {"benchmark": "x", "value": 1.5})
    assert json.loads(path.read_text()) == {"benchmark": "x", "value": 1.5}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp file left behind


def test_common_args_parse():
    import argparse

    parser = H.add_common_args(argparse.ArgumentParser(), repeats=7)
    args = parser.parse_args([])
    assert (args.device, args.repeats, args.quick, args.out, args.threads) == ("cpu", 7, False, None, None)
    args = parser.parse_args(["--quick", "--repeats", "2", "--out", "x.json"])
    assert args.quick and args.repeats == 2 and args.out == Path("x.json")


# --------------------------------------------------------------------------------------------
# Script helpers


def test_matmul_flops_matches_hand_count():
    # (2, 3, 8, 8), cutoff 0.5 -> k = 4 per side, N*C = 6:
    # forward 2*6*8*8*4 + 2*6*4*8*4 = 3072 + 1536; inverse 2*6*8*4*4 + 2*6*8*4*8 = 1536 + 3072.
    assert mixing.matmul_flops((2, 3, 8, 8), 0.5) == (3072 + 1536, 1536 + 3072)
    assert mixing.matmul_flops((2, 3, 8, 8), 0.0) == (0, 0)


def test_paired_floor_takes_the_ratio_per_round(monkeypatch):
    """Round r's ratio is the op's time over the floor from round r's GEMM rates."""
    shape = (2, 3, 8, 8)  # k = 4: GEMM (48x8)@(8x4) = 3072 FLOPs; op forward + inverse 4608 + 4608
    op_s, gemm_s = [0.010, 0.020, 0.040], [0.001, 0.001, 0.004]

    def fake(cases, **kw):
        assert list(cases) == ["op", "torch.float32"]  # float32 input: one product dtype, after the op
        return {"op": H.Timing(tuple(op_s), 2), "torch.float32": H.Timing(tuple(gemm_s), 2)}

    monkeypatch.setattr(H, "measure_interleaved", fake)
    got = mixing.measure_floor_paired(lambda: None, shape, torch.float32, torch.device("cpu"), 3)
    floors = [9216 / (3072 / g) for g in gemm_s]  # 3x the GEMM's time each round
    want = sorted(o / f for o, f in zip(op_s, floors))
    assert got["ratios"] == pytest.approx([o / f for o, f in zip(op_s, floors)])
    assert got["time_over_floor"] == pytest.approx(want[1])  # median of 3.33, 6.67, 3.33
    assert got["time_over_floor_q1"] == pytest.approx(np.percentile(want, 25))
    assert got["floor_ms"] == pytest.approx(3.0) and got["flops"] == 9216
    assert got["matmul_dtype"] == "float32" and got["paired_rounds"] == 3


def test_floor_cell_shows_median_and_quartiles():
    assert table._floor_cell(None) == ""
    assert table._floor_cell({"time_over_floor": 1.234}) == "1.23"
    cell = table._floor_cell({"time_over_floor": 1.2, "time_over_floor_q1": 1.1, "time_over_floor_q3": 1.35})
    assert cell == "1.20 (1.10-1.35)"


def test_matmul_precision_block_restores_the_global_and_float32_stays_accurate():
    before = torch.get_float32_matmul_precision()
    with mixing.matmul_precision("medium"):
        assert torch.get_float32_matmul_precision() == "medium"
        x = torch.randn(16, 3, 40, 40, generator=torch.Generator().manual_seed(0))
        err = mixing.error_vs_float64(x, torch.arange(16) % 4, torch.randperm(16), 4)
    assert torch.get_float32_matmul_precision() == before
    assert err["max_abs_err_images_vs_float64"] < 1e-3 and err["max_abs_err_targets_vs_float64"] < 1e-4


def test_corruption_summary_geomean_and_slowest():
    rows = [
        {"corruption": "a", "image_size": 32, "speedup": 2.0},
        {"corruption": "b", "image_size": 32, "speedup": 8.0},
        {"corruption": "c", "image_size": 32, "speedup": 0.5},
        {"corruption": "d", "image_size": 32},  # one side unavailable: not compared
    ]
    summary = corruptions.summarize(rows)["32"]
    assert summary["compared"] == 3
    assert summary["geomean_speedup"] == pytest.approx(2.0)  # (2 * 8 * 0.5) ** (1/3)
    assert summary["min_speedup"]["corruption"] == "c"
    assert summary["slower_than_reference"] == ["c"]


def test_corruption_bench_alternates_batches_of_ours_and_the_reference_and_reports_failures(monkeypatch):
    calls = []

    def ours(x, name, severity, generator=None):
        calls.append(("ours", name))
        return x

    class FakeReference:
        @staticmethod
        def corrupt(image, corruption_name, severity):
            calls.append(("ref", corruption_name))
            if corruption_name == "broken":
                raise RuntimeError("no such corruption here")
            return image

    monkeypatch.setattr(corruptions, "corrupt", ours)
    rows = corruptions.bench_size(32, 2, torch.device("cpu"), 5, FakeReference(), names=("fine", "broken"))
    fine, broken = rows
    assert fine["ours"]["timing"]["repeats"] == fine["reference"]["timing"]["repeats"] == 5
    assert fine["speedup"] == pytest.approx(fine["ours"]["images_per_s"] / fine["reference"]["images_per_s"])
    # Warm-up, then 5 rounds side by side: ours on the batch of 2, the reference on each image.
    assert calls[:18] == [("ours", "fine"), ("ref", "fine"), ("ref", "fine")] * 6
    for side in ("ours", "reference"):  # both sides: images of the batch per median round
        assert fine[side]["images_per_s"] == pytest.approx(2 / (fine[side]["timing"]["median_ms"] / 1e3))
    assert "no such corruption here" in broken["reference"]["unavailable"] and "speedup" not in broken
    assert broken["ours"]["timing"]["repeats"] == 5 and calls[18:] == [("ours", "broken"), ("ref", "broken")] + [
        ("ours", "broken")] * 5


def _recording_sides(monkeypatch, ref_entry):
    """Ours and a fake reference for ``bench_size`` that log their calls into one list."""
    calls = []
    monkeypatch.setattr(corruptions, "corrupt", lambda x, name, severity, generator=None: calls.append("ours"))

    class FakeReference:
        @staticmethod
        def corrupt(image, corruption_name, severity):
            calls.append(ref_entry(image))

    return calls, FakeReference()


def test_corruption_bench_can_time_one_reference_image_per_round(monkeypatch):
    calls, reference = _recording_sides(monkeypatch, lambda image: "ref")
    (row,) = corruptions.bench_size(32, 2, torch.device("cpu"), 5, reference, names=("fine",),
                                    reference_rounds="one")
    assert calls == ["ours", "ref"] * 6  # warm-up, then 5 rounds: one reference image each
    assert row["reference"]["images_per_s"] == pytest.approx(1 / (row["reference"]["timing"]["median_ms"] / 1e3))
    assert row["ours"]["images_per_s"] == pytest.approx(2 / (row["ours"]["timing"]["median_ms"] / 1e3))


def test_corruption_bench_can_give_the_reference_the_first_images_of_the_batch(monkeypatch):
    calls, reference = _recording_sides(monkeypatch, lambda image: ("ref", int(image[0, 0, 0])))
    first = corruptions.to_uint8_hwc(corruptions.smooth_images(3, 32))[0]
    (row,) = corruptions.bench_size(32, 3, torch.device("cpu"), 4, reference, names=("fine",),
                                    reference_images=1)
    assert calls == ["ours", ("ref", int(first[0, 0, 0]))] * 5  # warm-up, then 4 rounds: the first image only
    assert row["reference_images"] == 1 and row["batch"] == 3
    assert row["reference"]["images_per_s"] == pytest.approx(1 / (row["reference"]["timing"]["median_ms"] / 1e3))
    assert row["ours"]["images_per_s"] == pytest.approx(3 / (row["ours"]["timing"]["median_ms"] / 1e3))
    for bad in (0, 4):
        with pytest.raises(ValueError, match="reference_images must be in"):
            corruptions.bench_size(32, 3, torch.device("cpu"), 4, reference, names=("fine",),
                                   reference_images=bad)


def test_cuda_corruption_cases_give_the_reference_part_of_the_batch_and_the_cpu_the_whole():
    assert corruptions.REFERENCE_IMAGES["cpu"] == {}
    for size, batch in corruptions.FULL_CASES["cuda"]:
        assert 1 <= corruptions.REFERENCE_IMAGES["cuda"][size] <= batch


def test_corruption_runs_keep_the_median_run_per_row():
    def row(name, speedup=None):
        r = {"corruption": name, "image_size": 32, "ours": {"images_per_s": speedup}}
        return r if speedup is None else {**r, "speedup": speedup}

    runs = [[row("a", 3.0), row("b", 1.0), row("c")], [row("a", 1.0), row("b", 2.0), row("c")],
            [row("a", 2.0), row("b", 5.0), row("c")]]
    a, b, c = corruptions.median_run_rows(runs)
    assert a["speedup"] == 2.0 and a["ours"]["images_per_s"] == 2.0 and a["speedups_over_runs"] == [3.0, 1.0, 2.0]
    assert b["speedup"] == 2.0 and "speedup" not in c
    assert corruptions.median_run_rows(runs[:2])[0]["speedup"] == 1.0  # even count: the lower median


def test_reference_shims_map_old_keywords():
    seen = {}

    def fake_gaussian(image, sigma=None, **kwargs):
        seen.update(kwargs, sigma=sigma)
        return image

    patched = corruptions._gaussian_compat(fake_gaussian)
    patched("img", sigma=2.0, multichannel=True)
    assert seen == {"channel_axis": -1, "sigma": 2.0}
    seen.clear()
    patched("img", sigma=1.0)
    assert seen == {"sigma": 1.0}
    compat = corruptions._NumpyCompat()
    assert compat.float_ is np.float64 and compat.zeros is np.zeros


def test_corruption_sizes_option_parses_and_rejects_bad_items():
    import argparse

    parser = argparse.ArgumentParser()
    assert corruptions.parse_sizes(parser, None) is None
    assert corruptions.parse_sizes(parser, "64:32, 128:16") == ((64, 32), (128, 16))
    for bad in ("64", "64:x", "0:8", "64:0"):
        with pytest.raises(SystemExit):
            corruptions.parse_sizes(parser, bad)


def test_smooth_images_are_deterministic_and_in_range():
    a, b = corruptions.smooth_images(2, 32), corruptions.smooth_images(2, 32)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    hwc = corruptions.to_uint8_hwc(a)
    assert hwc[0].shape == (32, 32, 3) and hwc[0].dtype == np.uint8


def test_table_section_replacement_and_empty_render(tmp_path):
    text = f"intro\n{table.BEGIN}\nold\n{table.END}\nend\n"
    assert table.replace_section(text, "new") == f"intro\n{table.BEGIN}\nnew\n{table.END}\nend\n"
    with pytest.raises(ValueError, match="readme must contain"):
        table.replace_section("no markers", "new")
    assert "No results yet" in table.render(tmp_path)


def test_table_renders_train_step_overhead_and_skips_quick(tmp_path):
    timing = H.Timing(times_s=(0.1, 0.1), warmup=0).to_dict()
    result = {
        "benchmark": "train_step", "quick": False,
        "meta": {"device": "cpu", "device_name": "cpu: X", "torch": "t", "numpy": "n", "python": "p",
                 "torch_threads": 2, "commit": None, "date": "d"},
        "cases": [{"image_size": 32, "batch": 8, "rows": [
            {"case": "step none", "timing": timing},
            {"case": "step robustmix", "timing": timing, "overhead_pct": 1.25},
        ]}],
    }
    H.write_result(tmp_path / "train_step-cpu.json", result)
    H.write_result(tmp_path / "mixing-cpu.json", {"benchmark": "mixing", "quick": True})
    text = table.render(tmp_path)
    assert "| 32² | 8 | step robustmix | 100.00 |" in text and "1.25 %" in text
    assert "Mixing" not in text  # the quick result is skipped


def test_table_headings_name_the_cpu_kind_and_put_a_scripts_own_file_first(tmp_path):
    timing = H.Timing(times_s=(0.1, 0.1), warmup=0).to_dict()

    def result(isa):
        return {
            "benchmark": "train_step", "quick": False,
            "meta": {"device": "cpu", "device_name": "cpu: X", "torch": "t", "numpy": "n", "python": "p",
                     "torch_threads": 2, "commit": None, "date": "d", "cpu_isa": isa},
            "cases": [{"image_size": 32, "batch": 8, "rows": [{"case": "step none", "timing": timing}]}],
        }

    # the variant's name sorts first; the script's own file still leads
    H.write_result(tmp_path / "train_step-cpu-avx512.json", result("AVX2, AVX-512, AVX512-BF16"))
    H.write_result(tmp_path / "train_step-cpu.json", result("AVX2"))
    text = table.render(tmp_path)
    first, second = text.index("(cpu, AVX2)"), text.index("(cpu, AVX512-BF16)")
    assert 0 < first < second
    assert table._where({"device": "cuda", "cpu_isa": "AVX2"}) == "cuda"
    assert table._where({"device": "cpu"}) == "cpu"  # older results without the ISA


def test_mixers_quick_run_times_ours_against_each_installed_peer(tmp_path):
    out = tmp_path / "mixers.json"
    assert mixers_bench.main(["--quick", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["benchmark"] == "mixers" and res["quick"] is True
    kinds, missing = mixers_bench.mixers()
    for kind, methods in kinds.items():
        rows = [r for r in res["cases"] if r["kind"] == kind]
        assert [r["method"] for r in rows] == list(methods)  # ours first, then every installed peer
        ours, peers = rows[0], rows[1:]
        assert ours["side"] == "ours" and all(r["side"] == "peer" for r in peers)
        assert all(r["timing"]["repeats"] == mixers_bench.ROUNDS for r in rows)
        for peer in peers:  # the ratio is of the two medians
            want = ours["timing"]["median_ms"] / peer["timing"]["median_ms"]
            assert ours["time_over_peer"][peer["method"]] == pytest.approx(want)
    assert set(res["unavailable"]) == set(missing)
    text = table.render(tmp_path, include_quick=True)
    assert "MixUp and CutMix vs their peers" in text and "| MixUp (ours) |" in text


def test_mixers_timing_gives_in_place_peers_a_fresh_clone():
    x = torch.ones(4, 2)
    calls = []

    def mutate(images):
        calls.append(float(images.sum()))
        images.mul_(2)

    timings = mixers_bench.timed_in_blocks({"timm Mixup": (mutate, lambda: x.clone())}, torch.device("cpu"), 10)
    assert len(timings["timm Mixup"].times_s) == 10 and set(calls) == {8.0}  # every call saw the original
    assert mixers_bench.in_place("timm Mixup (cutmix)") and not mixers_bench.in_place("MixUp (ours)")


def test_corruption_samplers_measured_and_rendered(tmp_path):
    rows = corruptions.bench_samplers(16, 2, 3)
    assert [r["sampler"] for r in rows] == list(corruptions.SAMPLERS)
    assert all(r["torch_ns_per_draw"] > 0 and r["ratio"] == pytest.approx(r["numpy_ns_per_draw"] / r["torch_ns_per_draw"])
               for r in rows)
    timing = H.Timing(times_s=(0.1, 0.1), warmup=0).to_dict()
    result = {
        "benchmark": "corruptions", "quick": False, "config": {"severity": 3, "runs": 3},
        "meta": {"device": "cpu", "device_name": "cpu: X", "torch": "t", "numpy": "n", "python": "p",
                 "torch_threads": 2, "commit": None, "date": "d"},
        "rows": [{"corruption": "gaussian_noise", "image_size": 224, "batch": 64, "reference_images": 8,
                  "ours": {"timing": timing, "images_per_s": 80.0},
                  "reference": {"timing": timing, "images_per_s": 10.0}, "speedup": 8.0,
                  "speedups_over_runs": [7.0, 8.0, 9.5]}],
        "summary": {"224": {"compared": 1, "geomean_speedup": 8.0}},
        "samplers": [{"sampler": "normal", "image_size": 224, "torch_ns_per_draw": 2.5, "numpy_ns_per_draw": 10.0,
                      "ratio": 4.0}],
    }
    H.write_result(tmp_path / "corruptions-cpu.json", result)
    text = table.render(tmp_path)
    assert "| gaussian_noise | 80.0 | 10.0 | 8.00 | 7.00-9.50 |" in text and "| normal | 2.50 | 10.00 | 4.00 |" in text
    assert "median speed-up of 3 whole-suite runs" in text
    assert "the reference corrupted the first 8 of 64 images at 224 px" in text


def test_agreement_summary_and_table(tmp_path):
    rows = [
        {"corruption": "contrast", "severity": 1, "strength_ratio": 1.0, "mean_abs_diff_levels": 0.25},
        {"corruption": "contrast", "severity": 5, "strength_ratio": 0.98, "mean_abs_diff_levels": 0.5},
        {"corruption": "elastic_transform", "severity": 1, "strength_ratio": 0.9, "note": "redefined"},
        {"corruption": "elastic_transform", "severity": 5, "strength_ratio": 1.5, "note": "redefined"},
    ]
    summary = agreement.summarize(rows)
    assert summary["contrast"]["ratios"] == [1.0, 0.98] and summary["contrast"]["max_mean_abs_diff_levels"] == 0.5
    assert summary["elastic_transform"]["worst_ratio"] == 1.5  # |log 1.5| > |log 0.9|
    assert "max_mean_abs_diff_levels" not in summary["elastic_transform"]
    result = {
        "benchmark": "agreement", "quick": False,
        "meta": {"device": "cpu", "device_name": "cpu: X", "torch": "t", "numpy": "n", "python": "p",
                 "torch_threads": 2, "commit": None, "date": "d"},
        "config": {"image_size": 224, "severities": [1, 5], "images": 8, "images_override": {"contrast": 3}},
        "rows": rows, "summary": summary,
    }
    H.write_result(tmp_path / "agreement-cpu.json", result)
    text = table.render(tmp_path)
    assert "| contrast | 1.00 | 0.98 | 0.50 |" in text
    assert "| elastic_transform † | 0.90 | 1.50 |  |" in text and "† elastic_transform: redefined." in text
    assert "Images per cell where not 8: contrast 3." in text


def test_agreement_truncates_like_the_reference():
    x = torch.tensor([0.0, 0.5 / 255, 1.99 / 255, 1.0]).view(1, 1, 1, 4)
    assert agreement._as_uint8(x).reshape(-1).tolist() == [0, 0, 1, 255]


def test_machine_probe_rates_are_positive_and_rendered():
    probe = H.machine_probe(repeats=1)
    assert set(probe) == {"gemm_fp32_gflops_per_s", "copy_gb_per_s"}
    assert all(math.isfinite(v) and v > 0 for v in probe.values())
    meta = {"device_name": "cpu", "commit": "abc", "probe_start": {"gemm_fp32_gflops_per_s": 170.4,
            "copy_gb_per_s": 12.25}, "probe_end": None}
    line = table._meta_line(meta)
    assert "start fp32 GEMM 170 GFLOP/s, copy 12.2 GB/s" in line and "end" not in line.split("machine state")[1]


def test_mixing_table_renders_the_buffer_pool_rows():
    timing = H.Timing((0.010, 0.012, 0.014), 2).to_dict()
    res = {"meta": {"device": "cpu", "device_name": "cpu: X"}, "gemm": [], "cases": [],
           "buffer_pool": [{"shape": [2, 3, 8, 8], "case": "RobustMix batch, pool on", "timing": timing}]}
    text = "\n".join(table.render_mixing(res))
    assert "| 2x3x8x8 | RobustMix batch, pool on | 12.00 | 2.00 | 3 |" in text
    assert "buffer pool on and off" in text
    assert "buffer pool" not in "\n".join(table.render_mixing({**res, "buffer_pool": []}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where there is no GPU")
def test_cuda_overhead_says_it_needs_cuda(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cuda_overhead.py"])
    with pytest.raises(SystemExit, match="needs a CUDA device; none is available here"):
        cuda_overhead.main()


def test_jpeg_stages_old_forms_give_the_same_bytes_and_levels_as_the_path_now():
    # The diagnosis times the forms the JPEG path replaced next to it: they must do the same work.
    from robustmix.corruptions import digital

    x = corruptions.smooth_images(3, 16).mul(255).round().div(255)
    assert torch.equal(jpeg_stages.old_bytes_hwc(x), digital._bytes_hwc(x))
    codec_in = digital._bytes_hwc(x).permute(0, 3, 1, 2)
    decoded = digital._jpeg_roundtrip(codec_in, 15)
    assert torch.equal(jpeg_stages.old_roundtrip(codec_in, 15), decoded)
    assert torch.equal(jpeg_stages.old_levels(decoded, x), digital._levels_from_bytes(decoded, x))


def test_jpeg_stages_prints_each_stage_and_needs_a_gpu_for_cuda(capsys):
    assert jpeg_stages.main(["--batch", "2", "--size", "16", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for stage in ("bytes to the host", "codec round trip", "levels back", "whole call"):
        assert stage in out
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            jpeg_stages.main(["--device", "cuda"])
        assert "needs a GPU" in capsys.readouterr().err


def test_cpu_ops_pairs_give_the_same_values():
    """Each printed pair times two forms of one result: they must agree to the bit."""
    for name, slow, fast in cpu_ops.cases(2, 16, torch.Generator().manual_seed(3)):
        assert torch.equal(slow(), fast()), name


def test_cpu_ops_prints_every_pair(capsys):
    assert cpu_ops.main(["--batch", "1", "--size", "8", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("x\n") == len(cpu_ops.cases(1, 8, torch.Generator())) and "ns per value" in out


def test_motion_route_forces_each_route_and_restores_the_threshold(monkeypatch):
    from robustmix.corruptions import _common, blur

    calls = []
    direct = _common._motion_blur_direct
    monkeypatch.setattr(_common, "_motion_blur_direct", lambda *a: calls.append(1) or direct(*a))
    images = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(4))
    before = _common.MOTION_DIRECT_MIN_PIXELS
    for name, want in (("fft", 0), ("taps", 1)):
        calls.clear()
        with motion_route.route(name):
            blur.motion_blur(images, 3, torch.Generator().manual_seed(1))
        assert len(calls) == want, name
    assert _common.MOTION_DIRECT_MIN_PIXELS == before


def test_motion_route_prints_each_case_and_the_library_choice(capsys):
    assert motion_route.main(["--cases", "40:1,72:1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "B1x3x40^2" in out and "(library: fft;" in out
    assert "B1x3x72^2" in out and "(library: taps;" in out
    with pytest.raises(SystemExit):
        motion_route.main(["--cases", "72"])


def test_peer_memory_runs_each_loop_in_its_own_process_and_prints_it(capsys):
    pytest.importorskip("timm", reason="peer_memory.py times timm's Mixup (a benchmark extra)")
    r = peer_memory.run_loop((4, 3, 8, 8), rounds=1, calls=2, with_ours=True)
    assert set(r) == {"timm_ms", "timm_faults", "ours_ms", "ours_faults"} and r["timm_ms"] > 0
    assert set(peer_memory.run_loop((4, 3, 8, 8), rounds=1, calls=1, with_ours=False)) == {"timm_ms", "timm_faults"}
    assert peer_memory.main(["--shape", "4,3,8,8", "--rounds", "1", "--calls", "1"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name}" in out for name in peer_memory.LOOPS) and out.count(" ours ") == 2
    with pytest.raises(SystemExit):
        peer_memory.main(["--shape", "4,3,8"])


def test_op_faults_times_and_counts_each_shape_in_fresh_processes(capsys):
    r = op_faults.run_child([(4, 3, 8, 8), (2, 1, 6, 6)], None, rounds=2, per_sample=True)
    assert set(r) == {"B4x3x8x8", "B2x1x6x6"}
    assert all(set(sides) == {"tree"} and sides["tree"][0] > 0 and sides["tree"][1] >= 0 for sides in r.values())
    r = op_faults.run_child([(2, 3, 16, 16)], None, rounds=1, per_sample=False, corruptions=["gaussian_noise", "contrast"])
    assert set(r) == {"B2x3x16x16 gaussian_noise", "B2x3x16x16 contrast"}
    assert op_faults.main(["--shapes", "4x3x8x8", "--runs", "2", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "c=0.5" in out and "run 1  B4x3x8x8" in out and "run 2  B4x3x8x8" in out and " faults" in out
    assert op_faults.main(["--corruptions", "contrast", "--shapes", "2x3x16x16", "--runs", "1", "--rounds", "1"]) == 0
    assert "run 1  B2x3x16x16 contrast" in capsys.readouterr().out
    for bad in (["--shapes", "4x3x8"], ["--shapes", "4x3xAx8"], ["--runs", "0"], ["--corruptions", "fig"]):
        with pytest.raises(SystemExit):
            op_faults.main(bad)


def test_large_batch_rows_time_both_ways_and_say_which_corrupt_uses():
    from robustmix.corruptions import registry

    before = (registry.CPU_CHUNK_ELEMENTS, registry.UNCHUNKED)
    rows = corruptions.bench_large_batch(16, 3, 1, ("jpeg_compression", "contrast"))
    assert [(r["corruption"], r["shipped"]) for r in rows] == [("jpeg_compression", "one_call"), ("contrast", "chunked")]
    assert all(r["ratio"] == pytest.approx(r["chunked_images_per_s"] / r["one_call_images_per_s"]) for r in rows)
    assert (registry.CPU_CHUNK_ELEMENTS, registry.UNCHUNKED) == before  # the switch is put back


def test_cuda_overhead_ranks_kernels_by_gpu_time_per_call():
    from types import SimpleNamespace as Event

    n = cuda_overhead.PROFILED_CALLS
    events = [Event(key="gemm", count=2 * n, self_device_time_total=400.0 * n),
              Event(key="host only", count=n, self_device_time_total=0.0),
              Event(key="lerp", count=n, self_device_time_total=100.0 * n)]
    assert cuda_overhead.gpu_ms_per_call(events) == pytest.approx(0.5)
    assert cuda_overhead.top_kernels(events) == [("gemm", 2, pytest.approx(0.4)), ("lerp", 1, pytest.approx(0.1))]
    # The names the script reads exist on torch.profiler's averaged events (here on the CPU).
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.ones(4).add(1)
    first = prof.key_averages()[0]
    assert isinstance(first.key, str) and first.count >= 1 and first.self_device_time_total >= 0


def test_gpu_checks_script_says_it_needs_a_gpu():
    import subprocess

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the script would run the checks")
    done = subprocess.run(["bash", str(BENCH_DIR / "gpu_checks.sh"), "unused-out"], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr


def _in_git_checkout() -> bool:
    import subprocess

    root = BENCH_DIR.parent
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, check=False)
    return done.returncode == 0


@pytest.mark.skipif(not _in_git_checkout(), reason="revisions.py reads git revisions: needs a git checkout")
def test_revisions_imports_a_revision_beside_the_tree_and_compares_like_for_like(tmp_path, capsys):
    import robustmix

    revisions = _load("bench_revisions", "revisions.py")
    base = revisions.import_revision("HEAD", tmp_path)
    assert base.__name__ == "robustmix_base" and base is not robustmix
    assert Path(base.functional.__file__).is_relative_to(tmp_path)  # not the tree's module
    assert base.functional.freq.__name__ == "robustmix_base.freq"  # its own imports renamed too
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    kw = dict(lam_low=0.7, lam_high=0.2, cutoff=0.5, num_classes=4)
    assert revisions.same(base.functional.robustmix(x, y, **kw), robustmix.functional.robustmix(x, y, **kw))
    assert not revisions.same(base.functional.robustmix(x, y, **kw), robustmix.functional.mixup(x, y, lam=0.7, num_classes=4))
    ticks = iter(range(1000))
    r = revisions.paired(lambda: next(ticks), lambda: None, rounds=4, calls=1)
    assert set(r) == {"base_ms", "head_ms", "speedup", "q1", "q3"} and r["q1"] <= r["speedup"] <= r["q3"]
    assert revisions.main(["--base", "HEAD", "--quick", "--calls", "1"]) == 0
    printed = capsys.readouterr().out
    assert "vs HEAD on cpu" in printed and "RobustMix B8x3x32^2" in printed and "DIFFERENT VALUES" not in printed
    waits = []
    revisions.paired(lambda: None, lambda: None, rounds=2, calls=3, sync=lambda: waits.append(1))
    assert len(waits) == 1 + 2 * 2 * 3 * 2  # after the warm-up, then before and after each timed call
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            revisions.main(["--base", "HEAD", "--quick", "--device", "cuda"])
    assert revisions.main(["--base", "HEAD", "--quick", "--calls", "1", "--corruptions", "pixelate,shot_noise"]) == 0
    printed = capsys.readouterr().out
    assert "pixelate B2 32px" in printed and "shot_noise B2 32px" in printed and "op B" not in printed
    assert "DIFFERENT VALUES" not in printed  # the random one draws the same from its seeded generator
    with pytest.raises(SystemExit):
        revisions.main(["--base", "HEAD", "--quick", "--corruptions", "pixelat"])


def test_train_step_gpu_cases_compare_loops_with_loops_and_name_the_unchecked_mixers():
    train_step = _load("bench_train_step", "train_step.py")
    case = train_step.bench_case(8, 2, torch.device("cpu"), 1, gpu_cases=True)
    rows = {r["case"]: r for r in case["rows"]}
    loops = f"{train_step.LOOP_STEPS}steps"
    assert {"step robustmix check_values=False", f"{loops} robustmix check_values=False",
            "mixer mixup check_values=False", f"{loops} none"} <= set(rows)
    # a loop's overhead is against the loop without mixing, not against one step
    loop, lone = rows[f"{loops} robustmix"], rows[f"{loops} none"]
    want = 100.0 * (loop["timing"]["median_ms"] / lone["timing"]["median_ms"] - 1.0)
    assert loop["overhead_pct"] == pytest.approx(want)
    assert "overhead_pct" not in lone and "share_of_step_pct" in rows["mixer robustmix"]
    plain = {r["case"] for r in train_step.bench_case(8, 2, torch.device("cpu"), 1)["rows"]}
    assert plain == {"step none", "step mixup", "step robustmix", "mixer mixup", "mixer robustmix"}


@pytest.mark.parametrize("script", ["mixing", "train_step", "corruptions", "agreement"])
def test_each_result_script_runs_its_quick_mode_end_to_end(tmp_path, script):
    """What benchmarks/README.md says to run, in its smoke mode: a result file with the run's
    facts, which the table renders. Peers that are not installed are skipped (the agreement
    script has nothing to compare without its reference)."""
    if script == "agreement":
        pytest.importorskip("imagecorruptions", reason="agreement.py compares against imagecorruptions (a benchmark extra)")
    module = {"mixing": mixing, "corruptions": corruptions, "agreement": agreement}.get(script) or _load(
        "bench_train_step", "train_step.py")
    out = tmp_path / f"{script}-cpu.json"
    extra = ["--only", "contrast,pixelate"] if script in ("corruptions", "agreement") else []
    assert module.main(["--quick", "--out", str(out), *extra]) == 0
    res = json.loads(out.read_text())
    assert res["benchmark"] == script and res["quick"] is True
    meta = res["meta"]
    assert meta["device"] == "cpu" and meta["torch"] == torch.__version__ and meta["torch_threads"] >= 1
    assert {"numpy", "python", "commit", "date", "cpu_isa"} <= set(meta)
    text = table.render(tmp_path, include_quick=True)
    heading = {"mixing": "### Mixing (cpu", "train_step": "### Training step, ResNet-18 (cpu",
               "corruptions": "### Corruptions, severity", "agreement": "### Agreement with the reference"}[script]
    assert heading in text and "| " in text.split(heading, 1)[1]
