"""Evaluation and exit simulation are one stage per lens: a lens added later is the only one read again,
and the combined numbers equal those of one pass over every lens."""

import json
import shutil

import pytest
import torch

import onejump.evaluation.early_exit as early_exit
import onejump.evaluation.evaluator as metrics
from onejump.cli import main
from onejump.evaluation.early_exit import ExitSimulation
from onejump.evaluation.result import EvalResult
from onejump.experiment.run import Run

COMMON = ["--device", "cpu"]


def _args(tiny_dir, corpus, out):
    return ["-q", "run", "--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "40", "--n-test", "20",
            "--max-epochs", "2", "--batch-size", "16", "--rank", "2", "--out", str(out), *COMMON]


@pytest.fixture()
def spies(monkeypatch):
    seen = {"eval": [], "exits": [], "read": []}
    real_eval, real_exits, real_read = metrics.evaluate, early_exit.simulate_exits, early_exit._read_lenses

    def spy_eval(store, lenses, **kw):
        seen["eval"].append(sorted(lenses))
        return real_eval(store, lenses, **kw)

    def spy_exits(store, lenses, **kw):
        seen["exits"].append(sorted(lenses))
        return real_exits(store, lenses, **kw)

    def spy_read(store, split, lenses, *a, **kw):
        seen["read"].append(sorted(lenses))
        return real_read(store, split, lenses, *a, **kw)

    monkeypatch.setattr(metrics, "evaluate", spy_eval)
    monkeypatch.setattr(early_exit, "_read_lenses", spy_read)
    monkeypatch.setattr(early_exit, "simulate_exits", spy_exits)
    return seen


def test_a_lens_added_later_is_the_only_one_evaluated(tmp_path, tiny_dir, corpus, spies):
    out = tmp_path / "r"
    assert main(_args(tiny_dir, corpus, out) + ["--no-tuned"]) == 0
    assert spies["eval"] == [["full", "identity", "joint", "jtc", "ojfa"]]
    assert "tuned" not in spies["exits"][0]
    assert spies["read"] == []  # the evaluation kept what the exit simulation reads
    spies["eval"].clear()
    spies["exits"].clear()
    assert main(_args(tiny_dir, corpus, out)) == 0  # now with the tuned lens
    assert spies["eval"] == [["tuned"]]
    assert spies["exits"] == [["tuned"]]
    timings = json.loads((out / "timings.json").read_text())  # the whole stages' times are kept
    assert {"evaluation", "exits", "evaluation: tuned", "exits: tuned"} <= set(timings)

    run = Run(out, device="cpu", progress=False)
    combined = run.evaluation()
    assert set(combined.lens_names) == {"identity", "full", "ojfa", "joint", "jtc", "tuned"}
    fresh = metrics.evaluate(run.store(), run.run_lenses(best=False), chosen=combined.chosen, progress=False)
    for key, value in fresh.per_sample.items():
        torch.testing.assert_close(combined.per_sample[key], value, rtol=0, atol=0, equal_nan=True, msg=key)
    sim = run.exits()
    fresh_sim = early_exit.simulate_exits(run.store(), run.run_lenses(), progress=False)
    assert sim.to_dict() == fresh_sim.to_dict()

    # nothing changed: nothing is read again, and the report still accepts the evaluation
    spies["eval"].clear()
    spies["exits"].clear()
    assert main(["-q", "evaluate", "--out", str(out), *COMMON]) == 0
    assert spies["eval"] == [] and spies["exits"] == []
    assert main(["-q", "report", "--out", str(out), *COMMON]) == 0


def test_exits_read_the_store_for_lenses_whose_evaluation_kept_no_records(tmp_path, tiny_dir, corpus, spies):
    """An evaluation written before it kept exit records: the exit simulation reads those lenses itself."""
    from onejump.io import save_safetensors

    out = tmp_path / "r"
    assert main(_args(tiny_dir, corpus, out) + ["--no-tuned"]) == 0
    part = out / "evaluation" / "joint"
    old = EvalResult.load(part)
    old.per_sample = {k: v for k, v in old.per_sample.items() if not k.endswith(("/top1", "/max_prob", "/margin"))}
    tensors = {k: (v.to(torch.uint8) if v.dtype == torch.bool else v) for k, v in old.per_sample.items()}
    save_safetensors(tensors, part / "per_sample.safetensors", metadata={"bool_keys": json.dumps(
        [k for k, v in old.per_sample.items() if v.dtype == torch.bool])})
    run = Run(out, device="cpu", progress=False)
    before = run.exits()
    shutil.rmtree(out / "early_exit")
    spies["read"].clear()
    sim = run.simulate_exits()
    assert spies["read"] == [["joint"]]
    for name in before.lenses:
        assert torch.equal(sim.lenses[name].top1, before.lenses[name].top1), name


def test_a_damaged_part_is_computed_again(tmp_path, tiny_dir, corpus, spies):
    out = tmp_path / "r"
    assert main(_args(tiny_dir, corpus, out) + ["--no-tuned"]) == 0
    (out / "evaluation" / "joint" / "per_sample.safetensors").write_bytes(b"not a tensor file")
    spies["eval"].clear()
    assert main(["-q", "evaluate", "--out", str(out), *COMMON]) == 0
    assert spies["eval"] == [["joint"]]


def test_only_and_combine_refuse_what_they_do_not_hold(tmp_path, tiny_dir, corpus):
    from onejump.errors import ConfigError

    out = tmp_path / "r"
    assert main(_args(tiny_dir, corpus, out) + ["--no-tuned"]) == 0
    run = Run(out, device="cpu", progress=False)
    result = run.evaluation()
    with pytest.raises(ConfigError, match="tuned"):
        result.only(["tuned"])
    sim = run.exits()
    with pytest.raises(ConfigError, match="tuned"):
        sim.only(["tuned"])
    other = sim.only(["full"])
    other.lambdas = [0.5]
    with pytest.raises(ConfigError, match="cannot combine"):
        ExitSimulation.combine([sim.only(["identity"]), other])
