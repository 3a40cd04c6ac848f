"""Smoke tests of the cost benchmarks on a tiny random-init model's run folder (their numbers are not checked)."""

import importlib
import json
import sys
from pathlib import Path

import pytest

from onejump.cli import main

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def bench(monkeypatch, tmp_path):
    """Import a benchmark script as a module, its results written under tmp_path."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    common = importlib.import_module("common")
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")

    def load(name: str):
        sys.modules.pop(name, None)
        return importlib.import_module(name)

    return load


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_dir, corpus):
    out = tmp_path_factory.mktemp("bench") / "run"
    assert main(["-q", "extract", "--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "48",
                 "--n-test", "16", "--out", str(out), "--device", "cpu"]) == 0
    return out


def test_train_time_runs_on_a_tiny_store(bench, tiny_run, tmp_path, capsys):
    out = bench("train_time").main(["--run", str(tiny_run), "--rows", "30", "--quiet"])
    printed = capsys.readouterr().out
    assert "tuned lens" in printed and "single jump" in printed
    saved = json.loads(next((tmp_path / "results").glob("train-time-cpu-*.json")).read_text())
    assert saved["machine"]["threads"] >= 1 and saved["rows_limit"] == 30
    K, H = saved["num_blocks"], saved["hidden_size"]
    assert saved["train_rows"]["fit"] + saved["train_rows"]["held_out"] == 30
    tuned, single = saved["tuned"], saved["single"]
    assert tuned["parameters"] == K * (H * H + H)
    assert single["rank"] == 2 and single["config"]["residual"] and single["config"]["objective"] == "kl"
    assert tuned["steps"] >= 1 and 1 <= single["epochs"] <= 4 and single["steps"] >= single["epochs"]
    assert tuned["seconds"] > 0 and single["seconds"] > 0 and tuned["peak_rss_mib"] > saved["model_mib"]
    ratios = saved["ratios_tuned_over_single"]
    assert ratios["parameters"] == round(tuned["parameters"] / single["parameters"], 3)
    assert ratios["seconds"] == round(tuned["seconds"] / single["seconds"], 3)
    assert out["tuned"] == tuned and saved["sweep_best"] is None  # this run has no sweep


def _synthetic_run(folder: Path, model: str, K: int, H: int, timings: dict, memory: dict | None = None,
                   results: dict | None = None) -> Path:
    """A run folder holding only the files stage_table reads."""
    (folder / "store").mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"data": {"model": model, "n_train": 9000, "n_test": 3000}}))
    (folder / "store" / "manifest.json").write_text(json.dumps({"num_blocks": K, "hidden_size": H,
                                                                "n_train": 9000, "n_test": 3000}))
    (folder / "timings.json").write_text(json.dumps(timings))
    if memory is not None:
        (folder / "memory.json").write_text(json.dumps(memory))
    if results is not None:
        (folder / "report").mkdir()
        (folder / "report" / "results.json").write_text(json.dumps(results))
    return folder


def test_stage_table_collects_runs(bench, tmp_path, capsys):
    a = _synthetic_run(tmp_path / "a", "smollm2-135m", 30, 576, {"extract": 812.25, "train:nnjtc": 95.0},
                       {"peak_rss_mib": {"extract": 1500.4, "train:nnjtc": 2100.0},
                        "method": {"extract": "stage peak", "train:nnjtc": "process peak so far"}},
                       {"model": {"vocab_size": 49152}, "memory": {"model_mib": 513.1}})
    b = _synthetic_run(tmp_path / "b", "qwen2.5-coder-1.5b", 28, 1536,  # an older run: no memory.json
                       {"extract": 9000.0, "train:joint (kl-res-r30)": 120.0})
    out = bench("stage_table").main([str(a), str(b)])
    printed = capsys.readouterr().out
    assert "| model | smollm2-135m | qwen2.5-coder-1.5b |" in printed
    assert "| K | 30 | 28 |" in printed and "| V | 49,152 | - |" in printed
    assert "| n_train / n_test | 9,000 / 3,000 | 9,000 / 3,000 |" in printed
    assert "| extract | 812.2 s / 1,500 MiB | 9,000.0 s / - MiB |" in printed
    assert "| train:nnjtc | 95.0 s / 2,100 * MiB | - |" in printed and "process's peak" in printed
    lines = printed.splitlines()
    assert lines.index(next(ln for ln in lines if ln.startswith("| train:joint (kl-res-r30)"))) > \
        lines.index(next(ln for ln in lines if ln.startswith("| train:nnjtc")))  # the run's own stages first
    saved = json.loads((tmp_path / "results" / "stage-times.json").read_text())
    assert saved["runs"] == out["runs"] and saved["runs"][0]["model_mib"] == 513.1
    assert saved["runs"][1]["peak_rss_mib"] == {}


def test_stage_table_refuses_a_folder_that_is_no_run(bench, tmp_path):
    with pytest.raises(SystemExit, match="not an onejump run folder"):
        bench("stage_table").main([str(tmp_path)])


def test_extract_benchmark_without_the_naive_baseline(bench, tiny_dir, corpus, tmp_path):
    out = bench("extract").main(["--model", str(tiny_dir), "--corpus", str(corpus), "--n", "20", "--repeats", "1",
                                 "--no-naive"])
    saved = json.loads((tmp_path / "results" / f"extract-cpu-{tiny_dir.name}.json").read_text())
    assert saved["seconds"]["naive"] is None and saved["speedup_vs_naive"] is None
    assert saved["seconds"]["onejump"] > 0 and saved["ratio_vs_bare_forward"] > 0 and saved["sentences"] == 20
    assert set(saved["peak_rss_by_variant_mib"]) >= {"onejump", "bare_forward"}
    assert "naive" not in saved["peak_rss_by_variant_mib"] and out["model_mib"] > 0


def test_extract_benchmark_with_every_position(bench, tiny_dir, corpus, tmp_path):
    bench("extract").main(["--model", str(tiny_dir), "--corpus", str(corpus), "--n", "12", "--repeats", "1",
                           "--positions", "all"])
    saved = json.loads((tmp_path / "results" / f"extract-cpu-{tiny_dir.name}-positions-all.json").read_text())
    versus = saved["all_vs_one"]
    assert saved["positions"] == "all" and saved["rows"] == versus["rows"]["positions"] > 12
    assert versus["rows"]["one"] == 12 and versus["seconds"]["one"] > 0 and versus["rows_ratio"] > 1
    assert saved["seconds"]["naive"] > 0
    assert {"onejump", "onejump_one", "naive"} <= set(saved["peak_rss_by_variant_mib"])


def test_roofline_runs_every_stage_on_a_tiny_store(bench, tiny_run, tmp_path, capsys):
    out = bench("roofline").main(["--run", str(tiny_run), "--tuned-steps", "4", "--kl-epochs", "1",
                                  "--max-epochs", "2", "--quiet", "--test-rows", "8"])
    printed = capsys.readouterr().out
    assert "bound (s)" in printed and "reuse matrix" in printed
    saved = json.loads(next((tmp_path / "results").glob("roofline-cpu-*.json")).read_text())
    assert saved["stages"] == out["stages"] and saved["n_test"] == 8 and saved["n_train"] == 48
    stages = saved["stages"]
    for name in ("per-level MSE jumps", "joint MSE jump", "JTC", "head targets", "tuned lens",
                 "tuned lens: validation", "residual KL joint jump", "selection", "reuse matrix",
                 "evaluation: identity", "evaluation: full", "evaluation: ojfa", "evaluation: tuned"):
        r = stages[name]
        assert r["bound_s"] > 0 and r["seconds"] > 0 and r["limited_by"] in ("compute", "exp", "bytes")
        assert r["ratio"] == pytest.approx(r["seconds"] / r["bound_s"], rel=0.05, abs=0.02)
    assert 1 <= stages["per-level MSE jumps"]["epochs"] <= 2 and stages["tuned lens"]["best_step"]
    assert stages["tuned lens: validation"]["validations"] >= 2
    assert all(v > 0 for v in saved["ceilings"]["gemm_flops_per_s"].values())
    assert saved["ceilings"]["memory_gb_per_s"] > 0 and saved["ceilings"]["exp_per_s"] > 0


def test_vocab_pass_times_the_kernel_and_the_peak_by_budget(bench, tiny_run, tmp_path):
    out = bench("vocab_pass").main(["--run", str(tiny_run), "--rows", "8", "--budgets", "0.01,64",
                                    "--levels", "0,-1", "--kernel-rows", "4"])
    assert [r["level"] for r in out["kernel"]["levels"]] == [0, out["kernel"]["levels"][1]["level"]]
    assert all(r["ms_per_row"] > 0 and r["speedup"] > 0 for r in out["kernel"]["levels"])
    small, large = out["memory"]
    assert small["memory_mib"] == 0.01 and small["chunk"] < large["chunk"] and small["above_start_mib"] >= 0
    assert next((tmp_path / "results").glob("vocab-pass-cpu-*.json"))


def test_roofline_training_only_gives_rows_per_second(bench, tiny_run, tmp_path):
    out = bench("roofline").main(["--run", str(tiny_run), "--tuned-steps", "2", "--max-epochs", "1", "--quiet",
                                  "--only", "training"])
    stages = out["stages"]
    assert "reuse matrix" not in stages and "JTC" not in stages
    for name in ("per-level MSE jumps", "tuned lens: steps"):
        r = stages[name]
        assert r["train_rows"] > 0 and r["rows_per_s"] > 0
        assert r["bound_rows_per_s"] == pytest.approx(r["rows_per_s"] * r["ratio"], rel=0.05)
    assert next((tmp_path / "results").glob("roofline-cpu-*-training.json"))
