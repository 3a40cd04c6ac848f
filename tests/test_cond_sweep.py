"""`onejump sweep --variants kl-res-cond,kl-res-cond-warm` end to end on a tiny run folder."""

import json

import pytest

from onejump.cli import main
from onejump.errors import StageError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_dir, corpus):
    out = tmp_path_factory.mktemp("cond-run") / "r"
    code = main(["-q", "run", "--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "48", "--n-test", "24",
                 "--max-epochs", "2", "--batch-size", "16", "--rank", "2", "--out", str(out), "--device", "cpu",
                 "--no-tuned"])
    assert code == 0
    return out


SWEEP = ["-q", "sweep", "--multipliers", "1", "--objectives", "mse", "--residual-multipliers", "none",
         "--variants", "kl-res-cond,kl-res-cond-warm", "--device", "cpu"]


def test_sweep_trains_and_evaluates_the_conditioned_jump(run_dir, capsys):
    from onejump.experiment.run import Run
    from onejump.experiment.sweep import _save_best, load_sweep
    from onejump.lenses import CondJump, Lens

    code = main([*SWEEP, "--out", str(run_dir)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    sweep = load_sweep(run_dir)
    K, base = sweep["num_blocks"], sweep["base_rank"]
    configs = {(c["objective"], c["rank"]): c for c in sweep["configs"]}
    assert set(configs) == {("mse", base), ("kl-res-cond", 2 * base), ("kl-res-cond-warm", 2 * base)}
    r = 2 * base
    for name in ("kl-res-cond", "kl-res-cond-warm"):
        cfg = configs[(name, r)]
        assert set(cfg["methods"]) == {"joint"} and cfg["residual"]
        m = cfg["methods"]["joint"]
        assert m["parameters"] == 2 * 64 * r + 4 * 64 + 2 * r * K  # the per-level gains and shifts count
        assert len(m["precision@1"]) == K and 0 <= m["holdout_precision@1"] <= 1
        assert cfg["conditioned"]["per_level_parameters"] == 2 * r
    assert configs[("kl-res-cond-warm", r)]["conditioned"]["warm_start"] == "kl-res"
    # the warm start trained (and cached) the kl-res joint jump it starts from
    source = Lens.load(run_dir / "sweep" / f"kl-res-r{r}" / "joint", Run(run_dir, device="cpu").lm())
    warm = Lens.load(run_dir / "sweep" / f"kl-res-cond-warm-r{r}" / "joint", source.lm)
    assert isinstance(warm, CondJump) and warm.extra["warm_start"]["key"] == source.extra["key"]
    assert sweep["best"]["parameters"] <= 2 * sweep["bar"]["paper_ojfa_parameters"]
    md = (run_dir / "report" / "report.md").read_text()
    assert "kl-res-cond" in md

    # a rerun reuses every configuration
    summaries = sorted((run_dir / "sweep").glob("*/summary.json"))
    before = {p: p.stat().st_mtime_ns for p in summaries}
    assert main([*SWEEP, "--out", str(run_dir)]) == 0
    assert {p: p.stat().st_mtime_ns for p in summaries} == before

    # as the best single jump, it is saved, loaded and read by the early-exit simulation and the report
    run = Run(run_dir, device="cpu", progress=False)
    path = _save_best(run, {"objective": "kl-res-cond", "rank": r, "method": "joint", "holdout_precision@1": 0.5})
    best = Lens.load(path, run.lm())
    assert isinstance(best, CondJump) and best.num_parameters == 2 * 64 * r + 4 * 64 + 2 * r * K
    with pytest.raises(StageError, match="onejump sweep"):  # the sweep did not choose this jump
        run.report()
    run.records.complete(run.stages.sweep(run.records.record("sweep")["settings"]["plan"]))  # as if it had
    with pytest.raises(StageError, match="onejump evaluate"):  # the evaluation lacks the new best jump
        run.report()
    run.evaluate()
    run.simulate_exits()
    assert json.loads((run.report().parent / "results.json").read_text())["methods"]


def test_unknown_variant_is_refused(run_dir, capsys):
    assert main(["-q", "sweep", "--out", str(run_dir), "--variants", "kl-res-nope", "--device", "cpu"]) != 0
    assert "unknown sweep variant 'kl-res-nope'" in capsys.readouterr().err
    assert main(["-q", "sweep", "--out", str(run_dir), "--variants", "kl-res-cond", "--variant-multipliers", "0"]) != 0
    assert "variant-multipliers" in capsys.readouterr().err


def test_choose_best_counts_the_per_level_extras():
    from onejump.experiment.sweep import choose_best

    def cfg(objective, params, held):
        return {"objective": objective, "rank": 2, "methods": {"joint": {"parameters": params,
                                                                         "holdout_precision@1": held}}}

    configs = [cfg("kl-res", 700, 0.30), cfg("kl-res-cond", 769, 0.40)]
    assert choose_best(configs, paper_params=384)["objective"] == "kl-res"  # 769 > 2 x 384: over budget
    configs[1]["methods"]["joint"]["parameters"] = 768
    assert choose_best(configs, paper_params=384)["objective"] == "kl-res-cond"


def test_the_unconditioned_control_trains_on_from_the_kl_res_jump(run_dir, capsys):
    """kl-res-warm: the same warm start and further epochs as kl-res-cond-warm, without the conditioning."""
    from onejump.experiment.run import Run
    from onejump.experiment.sweep import load_sweep
    from onejump.lenses import CondJump, Lens

    code = main(["-q", "sweep", "--multipliers", "1", "--objectives", "mse", "--residual-multipliers", "none",
                 "--variants", "kl-res-warm", "--device", "cpu", "--out", str(run_dir)])
    assert code == 0, capsys.readouterr().err
    sweep = load_sweep(run_dir)
    base = sweep["base_rank"]
    r = 2 * base
    cfg = next(c for c in sweep["configs"] if c["objective"] == "kl-res-warm")
    m = cfg["methods"]["joint"]
    assert m["parameters"] == 2 * 64 * r + 4 * 64  # no per-level numbers
    assert "conditioned" not in cfg
    lm = Run(run_dir, device="cpu").lm()
    source = Lens.load(run_dir / "sweep" / f"kl-res-r{r}" / "joint", lm)
    control = Lens.load(run_dir / "sweep" / f"kl-res-warm-r{r}" / "joint", lm)
    assert not isinstance(control, CondJump) and control.residual
    history = control.extra["history"]
    assert history["kind"] == "joint-warm"
    # kept as it came unless an epoch beat the start on held-out loss
    if history["best_epoch"] == [-1]:
        for name, value in source.bank.tensors_live().items():
            assert (value == control.bank.tensors_live()[name]).all(), name
