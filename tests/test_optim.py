"""Muon: torch's update on 2-D parameters, the same update per matrix of a batch, Adam on the rest."""

from __future__ import annotations

import pytest
import torch

from onejump.errors import ConfigError
from onejump.lenses.jumps import JumpBank
from onejump.training.config import TrainConfig
from onejump.training.optim import MuonAdam, bank_optimizer, orthogonalise
from onejump.training.tuned import TunedTrainConfig


@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (6, 6)])
def test_muon_equals_torch_on_a_matrix(shape):
    torch.manual_seed(0)
    w = torch.randn(*shape)
    a, b = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    ours = MuonAdam([a], [], lr=0.02, weight_decay=0.1, momentum=0.95)
    ref = torch.optim.Muon([b], lr=0.02, weight_decay=0.1, momentum=0.95)
    for _ in range(3):
        g = torch.randn(*shape)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.equal(a, b)


def test_batched_matrices_each_get_their_own_update():
    torch.manual_seed(1)
    g = torch.randn(3, 9, 4)
    batched = orthogonalise(g).float()
    for i in range(3):
        assert torch.allclose(batched[i], orthogonalise(g[i]).float(), atol=1e-2)
        s = torch.linalg.svdvals(batched[i])
        assert s.min() > 0.4 and s.max() < 1.6  # approximately orthogonal, as Muon's iteration leaves it


def test_adam_group_matches_torch_adam():
    torch.manual_seed(2)
    w = torch.randn(5)
    a, b = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    ours = MuonAdam([], [a], adam_lr=1e-2)
    ref = torch.optim.AdamW([b], lr=1e-2, weight_decay=0.0)
    for _ in range(4):
        g = torch.randn(5)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(a, b, atol=1e-6)


def test_bank_optimizer_puts_A_and_B_under_muon():
    bank = JumpBank(3, 16, 2)
    opt = bank_optimizer(bank, "muon", lr=1e-2, muon_lr=0.05)
    muon, adam = opt.param_groups
    assert muon["muon"] and {id(p) for p in muon["params"]} == {id(bank.A), id(bank.B)}
    assert muon["lr"] == 0.05 and adam["lr"] == 1e-2 and len(adam["params"]) == 2
    assert isinstance(bank_optimizer(bank, "adam", lr=1e-2), torch.optim.Adam)
    with pytest.raises(ConfigError):
        bank_optimizer(bank, "sgd", lr=1e-2)


def test_defaults_keep_the_recorded_settings():
    assert "optimizer" not in TrainConfig().to_dict() and "muon_lr" not in TrainConfig().to_dict()
    assert TrainConfig(optimizer="muon").to_dict()["optimizer"] == "muon"
    assert "optimizer" not in TunedTrainConfig().to_dict()
    assert TunedTrainConfig(optimizer="muon").to_dict()["muon_lr"] == 0.02
    with pytest.raises(ConfigError):
        TunedTrainConfig(optimizer="adam").validate()
    with pytest.raises(ConfigError):
        TrainConfig(optimizer="sgd").validate()


def test_muon_jumps_resume_to_the_same_result(tmp_path):
    from onejump.training.fit import train_jumps

    from .test_checkpoints import CFG, Stop, _stopping_loss
    from .test_training import linear_store

    store = linear_store()
    config = TrainConfig(**CFG, optimizer="muon")
    ref, ref_hist = train_jumps(store, config, progress=False)
    adam, _ = train_jumps(store, TrainConfig(**CFG), progress=False)
    assert not torch.equal(ref.A, adam.A)
    assert ref_hist.best_val_loss[0] < ref_hist.val_loss[0][0] * 10  # trained, finite
    ckpt = tmp_path / "jumps.ckpt"
    with pytest.raises(Stop):
        train_jumps(store, config, progress=False, loss_fn=_stopping_loss(11), checkpoint=ckpt)
    got, hist = train_jumps(store, config, progress=False, checkpoint=ckpt)
    assert all(torch.equal(v, got.tensors()[k]) for k, v in ref.tensors().items())
    assert hist.val_loss == ref_hist.val_loss


def test_muon_benchmark_runs_on_a_tiny_store(tmp_path, tiny_dir, corpus, monkeypatch):
    import importlib
    import json
    import sys
    from pathlib import Path

    from onejump.cli import main

    out = tmp_path / "run"
    assert main(["-q", "extract", "--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "20",
                 "--n-test", "8", "--train-positions", "all", "--out", str(out), "--device", "cpu"]) == 0
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    common = importlib.import_module("common")
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    sys.modules.pop("muon", None)
    bench = importlib.import_module("muon")
    got = bench.main(["--store", str(out / "store"), "--model", str(tiny_dir), "--train-sentences", "12",
                      "--test-rows", "6", "--steps", "3", "--tokens-per-step", "32", "--epochs", "1", "--quiet"])
    assert got["tuned"]["muon"]["steps"] == 3 and got["test_rows"] == 6
    assert set(got["joint"]["muon_vs_adam"]) == {"kl_ratio", "precision_at_1_difference", "seconds_ratio"}
    assert json.loads((tmp_path / "results" / "muon-cpu.json").read_text())["train_sentences"] == 12


def test_train_command_takes_the_optimisers(tmp_path, tiny_dir, corpus, capsys):
    """`train --jump-optimizer muon --tuned-optimizer muon`: the lenses record it; --muon-lr alone is refused."""
    import json

    from onejump.cli import main

    out = tmp_path / "r"
    data = ["--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "40", "--n-test", "20", "--device", "cpu"]
    assert main(["-q", "extract", *data, "--out", str(out)]) == 0
    common = ["-q", "train", "--out", str(out), "--max-epochs", "1", "--no-jtc", "--tuned-steps", "4"]
    assert main([*common, "--muon-lr", "0.01"]) != 0
    assert "--muon-lr" in capsys.readouterr().err
    assert main([*common, "--jump-optimizer", "muon", "--tuned-optimizer", "muon", "--muon-lr", "0.01"]) == 0
    for name in ("nnjtc", "joint", "tuned"):
        config = json.loads((out / "lenses" / name / "config.json").read_text())
        assert "muon" in json.dumps(config), name
        assert "0.01" in json.dumps(config), name
