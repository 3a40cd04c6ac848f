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
    assert out["tuned"] == tuned
