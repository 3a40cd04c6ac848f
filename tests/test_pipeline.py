"""`onejump run` end to end on a tiny model: every stage, the report, and stage reuse."""

import json
from pathlib import Path

import numpy as np
import pytest

from onejump.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_dir, corpus):
    out = tmp_path_factory.mktemp("run") / "r"
    code = main(["-q", "run", "--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "48", "--n-test", "24",
                 "--max-epochs", "3", "--batch-size", "16", "--rank", "2", "--out", str(out), "--device", "cpu"])
    assert code == 0
    return out


def test_run_writes_report(run_dir):
    report = run_dir / "report"
    results = json.loads((report / "results.json").read_text())
    assert results["schema"] == "onejump-results/1"
    K = results["model"]["num_blocks"]
    assert results["levels"] == list(range(K))
    from onejump.experiment.lens_table import LENSES

    assert set(results["methods"]) <= set(LENSES)  # one name per lens: the table's ids, no synonyms
    for name in ("identity", "full", "ojfa", "joint", "jtc", "arbitrary_mean"):
        m = results["methods"][name]
        assert len(m["precision@1"]) == K and all(0 <= p <= 1 for p in m["precision@1"])
    assert len(results["selection"]["scores"]) == K and len(results["selection"]["scores"][0]) == K
    assert abs(sum(results["selection"]["softmax"]) - 1) < 1e-6
    assert results["parameters"]["reduction_factor"] == K
    assert {c["id"] for c in results["claims"]} >= {"ojfa_matches_full", "ojfa_beats_identity_early",
                                                     "ojfa_at_least_joint", "ojfa_beats_arbitrary"}
    md = (report / "report.md").read_text()
    assert "claims" in md and "OJFA choice: jump" in md
    assert results["config"]["optimizers"] == {"full": "adam", "joint": "adam", "tuned": "sgd"}
    assert "optimised with Adam" in md and "SGD with Nesterov momentum" in md
    assert "## Early exit" in md and "## The field's metrics" in md and results["early_exit"]
    assert results["methods"]["ojfa"]["mean_kl"] >= 0 and "mean_cross_entropy" in results["methods"]["identity"]
    assert results["final_cross_entropy"] > 0
    assert "## One jump against the tuned lens" in md and results["methods"]["tuned"]["parameters"] > 0
    assert "## What each level predicts" in md and (report / "trajectory.png").stat().st_size > 1000
    agg = json.loads((report / "aggregate_metrics.json").read_text())
    assert set(agg["tuned"]) >= {"kl", "ce", "entropy"} and "layer_0" in agg["tuned"]["kl"]
    stages = ("extract", "train:nnjtc", "train:tuned", "select", "evaluation", "reuse", "exits", "report")
    memory = results["memory"]
    assert set(memory["peak_rss_mib"]) >= set(stages) and set(results["timings"]) >= set(stages)
    assert all(memory["peak_rss_mib"][s] > memory["model_mib"] > 0 for s in stages)  # the model is resident
    assert json.loads((run_dir / "memory.json").read_text())["peak_rss_mib"] == memory["peak_rss_mib"]
    assert "| extract |" in md and "peak RSS (MiB)" in md and "the model's own weights" in md
    for fig in ("fig2_ojfa_vs_arbitrary_joint.png", "fig3_selection_softmax.png", "fig4_ojfa_vs_identity_full.png",
                "reuse_heatmaps.png", "field_metrics.png", "early_exit_frontier.png"):
        assert (report / fig).stat().st_size > 1000


def test_rerun_reuses_every_stage(run_dir, tiny_dir, corpus, capsys):
    code = main(["-q", "run", "--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "48", "--n-test", "24",
                 "--max-epochs", "3", "--batch-size", "16", "--rank", "2", "--out", str(run_dir), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert "reused: extract, train:nnjtc, train:joint, train:jtc, train:tuned, select, evaluation, reuse, exits" in out


def test_other_settings_in_same_folder_refused(run_dir, tiny_dir, corpus, capsys):
    code = main(["-q", "run", "--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "40", "--n-test", "24",
                 "--out", str(run_dir), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code != 0 and "other settings" in err


def test_stage_commands_and_jump_api(run_dir, tiny_dir, capsys):
    import torch

    from onejump.lenses import Lens, OneJump
    from onejump.model.loading import load_model

    assert main(["-q", "select", "--out", str(run_dir), "--device", "cpu"]) == 0
    assert "OJFA choice" in capsys.readouterr().out
    assert main(["-q", "report", "--out", str(run_dir), "--device", "cpu"]) == 0
    lm = load_model(str(tiny_dir))
    jump = Lens.load(run_dir / "lenses" / "ojfa", lm)
    assert isinstance(jump, OneJump)
    h = torch.randn(3, lm.hidden_size)
    assert jump(h, 1).shape == (3, lm.adapter.vocab_size)
    code = main(["-q", "generate", "--model", str(tiny_dir), "--jump", str(run_dir), "--prompt", "alpha beta",
                 "--max-new-tokens", "6", "--exit", "speculative", "--draft-level", "1", "--compare",
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0 and '"identical_to_generate": true' in err


def test_stage_without_run_folder_is_clear(tmp_path, capsys):
    assert main(["-q", "select", "--out", str(tmp_path / "nothing")]) != 0
    assert "not an onejump run folder" in capsys.readouterr().err


def _results(run: Path) -> dict:
    """results.json without its wall-clock times and memory peaks (all two identical runs may differ in)."""
    r = json.loads((run / "report" / "results.json").read_text())
    r.pop("timings")
    r.pop("memory")
    r["early_exit"].pop("seconds", None)
    return r


def test_same_seed_same_results(run_dir, tiny_dir, corpus, tmp_path):
    """A second run from scratch with the same seeds gives a byte-identical store and the same results."""
    out = tmp_path / "again"
    assert main(["-q", "run", "--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "48", "--n-test", "24",
                 "--max-epochs", "3", "--batch-size", "16", "--rank", "2", "--out", str(out), "--device", "cpu"]) == 0
    for shard in sorted((run_dir / "store").glob("shard-*.safetensors")):
        assert shard.read_bytes() == (out / "store" / shard.name).read_bytes()
    assert _results(run_dir) == _results(out)
    # another seed samples other sentences and positions
    other = tmp_path / "seed1"
    assert main(["-q", "extract", "--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "48",
                 "--n-test", "24", "--seed", "1", "--out", str(other), "--device", "cpu"]) == 0
    assert (other / "store" / "plan.json").read_text() != (out / "store" / "plan.json").read_text()


def test_interrupted_run_says_what_was_kept_and_resumes(run_dir, tiny_dir, corpus, tmp_path):
    """Ctrl-C during training: one line on stderr, the store is kept, a rerun gives the same results."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "int"
    cmd = [sys.executable, "-m", "onejump.cli", "-q", "run", "--model", str(tiny_dir), "--corpus", str(corpus),
           "--n-train", "48", "--n-test", "24", "--max-epochs", "3", "--batch-size", "16", "--rank", "2",
           "--out", str(out), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "store" / "manifest.json").exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert proc.returncode == 130
    lines = [line for line in err.strip().splitlines() if line.strip()]
    # what the step running at that moment kept (a training's epochs), then what the run keeps
    assert len(lines) == 1 and "interrupted: " in lines[0] and "finished stages are kept" in lines[0], err
    assert (out / "store" / "manifest.json").exists()
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert _results(run_dir) == _results(out)


def test_sweep_adds_beyond_section_and_best_jump(run_dir, capsys):
    from onejump.experiment.sweep import load_sweep
    from onejump.lenses import Lens
    from onejump.model.loading import load_model

    timings_before = json.loads((run_dir / "timings.json").read_text())
    code = main(["-q", "sweep", "--out", str(run_dir), "--multipliers", "1,2", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "best single jump:" in out
    # the sweep's trainings are timed under their own names, the run's own times stay
    timings = json.loads((run_dir / "timings.json").read_text())
    assert all(timings[k] == v for k, v in timings_before.items() if k.startswith("train:"))
    assert "train:joint (kl-res-r2)" in timings
    assert "train:joint (kl-res-r2)" in json.loads((run_dir / "memory.json").read_text())["peak_rss_mib"]
    sweep = load_sweep(run_dir)
    K = sweep["num_blocks"]
    variants = {(c["objective"], c["rank"]) for c in sweep["configs"]}
    base = sweep["base_rank"]
    assert variants == {("mse", base), ("mse", 2 * base), ("kl", base), ("kl", 2 * base), ("kl-res", base),
                        ("kl-res", 2 * base)}
    for cfg in sweep["configs"]:
        for name, m in cfg["methods"].items():
            assert len(m["precision@1"]) == K and 0 <= m["mean_precision@1"] <= 1
            lo, hi = m["mean_precision@1_ci"]
            assert lo <= m["mean_precision@1"] <= hi
            single = name != "per-level"
            assert m["parameters"] == (1 if single else K) * (2 * 64 * cfg["rank"] + 4 * 64)
            # the field's metrics of every lens; the KL to the final distribution is never negative
            assert len(m["kl"]) == K and min(m["kl"]) >= 0 and m["mean_kl"] == pytest.approx(np.mean(m["kl"]))
            assert len(m["entropy"]) == K and len(m["cross_entropy"]) == K
    assert set(sweep["references"]) == {"identity", "jtc"}
    best, bar = sweep["best"], sweep["bar"]
    assert best["mean_kl"] == pytest.approx(np.mean(best["kl"]))
    assert best["parameters"] <= 2 * bar["paper_ojfa_parameters"]
    assert "met" not in bar  # the bar is judged on intervals, in results.json
    lm = load_model(json.loads((run_dir / "run.json").read_text())["data"]["model"])
    jump = Lens.load(best["path"], lm)
    assert jump.rank == best["rank"]
    md = (run_dir / "report" / "report.md").read_text()
    assert "Beyond the paper" in md and "Best single jump" in md
    for fig in ("beyond_pareto.png", "beyond_per_level.png", "tuned_vs_single.png"):
        assert (run_dir / "report" / fig).stat().st_size > 1000
    # the best jump joins the run's evaluation, and is measured against the tuned lens by the three-part bar
    results = json.loads((run_dir / "report" / "results.json").read_text())
    # the screen, results.json and the report give the same verdicts, from the bar's 95% intervals
    verdicts = results["beyond"]["bar"]["verdicts"]
    assert set(verdicts) == {"params", "precision", "lens", "bar"} and "met" not in results["beyond"]["bar"]
    said = {v: "NOT HELD" if v == "not held" else v for v in verdicts.values()}
    closing = next(line for line in out.splitlines() if line.startswith("best single jump:"))
    assert f"; bar {said[verdicts['bar']]} (<= 2x parameters {said[verdicts['params']]}, >= 2x precision " \
           f"{said[verdicts['precision']]}, above the logit lens {said[verdicts['lens']]};" in closing, closing
    assert f"| the bar: all three | - | {verdicts['bar'].replace('not held', '**not held**')} |" in md
    tb = results["tuned_bar"]
    assert tb["single"] == "best" and len(tb["levels"]) == K and isinstance(tb["met"], bool)
    assert tb["mean"]["single"] == pytest.approx(best["mean_precision@1"])
    assert [lv["single"] for lv in tb["levels"]] == pytest.approx(best["precision@1"])
    assert "### The bar: one jump against the tuned lens" in md and "tuned_vs_single.png" in md
    # a rerun reuses every configuration (cached summaries): nothing is rewritten
    summaries = sorted((run_dir / "sweep").glob("*/summary.json"))
    before = {p: p.stat().st_mtime_ns for p in summaries}
    code = main(["-q", "sweep", "--out", str(run_dir), "--multipliers", "1,2", "--device", "cpu"])
    assert code == 0 and len(summaries) == 6
    assert {p: p.stat().st_mtime_ns for p in summaries} == before


def test_sweep_bad_arguments(run_dir, capsys):
    assert main(["-q", "sweep", "--out", str(run_dir), "--multipliers", "0,x"]) != 0
    assert "multipliers" in capsys.readouterr().err
    assert main(["-q", "sweep", "--out", str(run_dir), "--objectives", "cosine"]) != 0
    assert "objectives" in capsys.readouterr().err


def test_preset_best_trains_kl_and_a_residual_joint_jump(tmp_path, tiny_dir, corpus, capsys):
    from onejump.lenses import Lens
    from onejump.model.loading import load_model

    out = tmp_path / "best"
    code = main(["-q", "run", "--preset", "best", "--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "48",
                 "--n-test", "24", "--max-epochs", "2", "--out", str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    preset = json.loads((out / "preset.json").read_text())
    assert preset["name"] == "best" and preset["select_rule"] == "head"
    lm = load_model(str(tiny_dir))
    per_level = Lens.load(out / "lenses" / "nnjtc", lm)
    joint = Lens.load(out / "lenses" / "joint", lm)
    assert per_level.extra["history"]["config"]["objective"] == "kl"
    assert joint.residual
    # the joint jump was trained, then trained on from itself (the sweep's kl-res-warm)
    start = Lens.load(out / "lenses" / "joint-start", lm)
    assert joint.extra["history"]["kind"] == "joint-warm" and start.extra["history"]["kind"] != "joint-warm"
    assert start.extra["key"] != joint.extra["key"]
    timings = json.loads((out / "timings.json").read_text())
    assert "train:joint-start" in timings and "train:joint" in timings
    base = max(1, per_level.hidden_size // 100)
    assert per_level.rank == 2 * base
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["selection"]["rule"] == "head" and results["config"]["joint_residual"] is True
    assert "Preset `best`" in (out / "report" / "report.md").read_text()
    assert "trained on from where it stopped" in (out / "report" / "report.md").read_text()
    sel = json.loads((out / "selection.json").read_text())
    assert sel["rule"] == "head" and "paper_chosen" in sel


def test_sweep_per_objective_multipliers(run_dir, capsys):
    from onejump.experiment.sweep import load_sweep

    code = main(["-q", "sweep", "--out", str(run_dir), "--objectives", "mse,kl", "--multipliers", "1,2",
                 "--kl-multipliers", "1", "--residual-multipliers", "none", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    sweep = load_sweep(run_dir)
    base = sweep["base_rank"]
    assert {(c["objective"], c["rank"]) for c in sweep["configs"]} == {("mse", base), ("mse", 2 * base),
                                                                       ("kl", base)}


def test_sweep_val_fraction_is_held_out_for_training_and_choosing(run_dir, capsys):
    from onejump.evaluation.selection import holdout_rows
    from onejump.experiment.run import Run
    from onejump.experiment.sweep import load_sweep

    code = main(["-q", "sweep", "--out", str(run_dir), "--objectives", "mse", "--multipliers", "1",
                 "--residual-multipliers", "none", "--val-fraction", "0.25", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    (cfg,) = load_sweep(run_dir)["configs"]
    assert cfg["config"]["val_fraction"] == 0.25
    store = Run(run_dir).store()
    n_train = len(store.indices("train"))
    assert len(holdout_rows(store, 0.25, 0)) > len(holdout_rows(store, 0.1, 0)) and n_train >= 12
    assert main(["-q", "sweep", "--out", str(run_dir), "--val-fraction", "1.5", "--objectives", "mse",
                 "--multipliers", "1", "--residual-multipliers", "none"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--val-fraction: must be a number in [0, 1)" in err[0]  # refused by its range
