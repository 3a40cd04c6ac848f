"""Per-level low-rank residual lenses: shape, start at the logit lens, files, the fast path, training lowers
the KL; the tuned lens trained with Adam from its least-squares start."""

from dataclasses import replace

import pytest
import torch

from onejump.errors import LensFileError
from onejump.evaluation.evaluator import evaluate
from onejump.extract import extract
from onejump.lenses import Lens, LogitLens, LowRankLens, PerLevelLens
from onejump.lenses.jumps import JumpBank
from onejump.lenses.lowrank import lowrank_parameter_count
from onejump.model.loading import from_pretrained_model
from onejump.training.config import TrainConfig
from onejump.training.lowrank import lowrank_config, train_lowrank_lens, train_tuned_adam, tuned_adam_config

from .test_selection import random_sentences
from .tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def lm():
    return from_pretrained_model(tiny_model("llama"), tiny_tokenizer(), name="tiny-llama")


@pytest.fixture(scope="module")
def store(lm, tmp_path_factory):
    n = 140
    return extract(lm, random_sentences(n, seed=5), tmp_path_factory.mktemp("lowrank") / "s",
                   splits=[0] * (n - 30) + [1] * 30, seed=0, shard_size=48, progress=False)


def trained_like(lm, rank=3, seed=2):
    """A lens whose B is not zero and whose BatchNorm is not the identity (as after training)."""
    lens = LowRankLens.start(lm, rank, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    b = lens.bank
    with torch.no_grad():
        b.B.copy_(torch.randn(b.B.shape, generator=gen) * 0.3)
        b.running_mean.copy_(torch.randn(b.running_mean.shape, generator=gen))
        b.running_var.copy_(torch.rand(b.running_var.shape, generator=gen) + 0.5)
        b.bn_bias.copy_(torch.randn(b.bn_bias.shape, generator=gen) * 0.1)
    return lens


def exact_kl(lm, lens, store, split="train"):
    x = store.hidden(split).float()
    K = lm.num_blocks
    with torch.no_grad():
        logp = torch.log_softmax(lm.adapter.head(x[:, K]), -1)
        return torch.tensor([float((logp.exp() * (logp - torch.log_softmax(lens(x[:, k], k), -1))).sum(-1).mean())
                             for k in range(K)])


def test_starts_at_the_logit_lens_shapes_and_parameters(lm):
    K, H, V = lm.num_blocks, lm.hidden_size, lm.adapter.vocab_size
    lens, logit = LowRankLens.start(lm, 4), LogitLens(lm)
    h = torch.randn(5, H, generator=torch.Generator().manual_seed(0)) * 3
    for k in range(K):
        out = lens(h, k)
        assert out.shape == (5, V)
        assert torch.equal(out, logit(h, k))
    assert lens.num_parameters == lowrank_parameter_count(K, H, 4) == K * (2 * H * 4 + 4 * H)
    assert isinstance(lens, PerLevelLens) and lens.kind == "lowrank"
    with pytest.raises(LensFileError):
        lens(h, K)
    with pytest.raises(LensFileError):
        LowRankLens(lm, JumpBank(K, H, 4))  # not residual


def test_each_level_is_its_own_residual_correction(lm):
    lens = trained_like(lm)
    h = torch.randn(4, lm.hidden_size, generator=torch.Generator().manual_seed(1))
    for k in range(lm.num_blocks):
        expected = lm.adapter.head(h + lens.bank.project(h, k) @ lens.bank.B[k])
        torch.testing.assert_close(lens(h, k), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(lens(h, 0), lens(h, 1))


def test_save_load_round_trip(lm, tmp_path):
    lens = trained_like(lm)
    lens.extra = {"note": "kept"}
    lens.save_pretrained(tmp_path / "lr")
    back = Lens.load(tmp_path / "lr", lm)
    assert type(back) is LowRankLens and back.rank == 3 and back.extra["note"] == "kept"
    for k, v in lens.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    h = torch.randn(3, lm.hidden_size)
    assert torch.equal(back(h, 2), lens(h, 2))


def test_fast_path_equals_the_level_by_level_call(lm, store):
    lens = trained_like(lm)
    fast = evaluate(store, {"lr": lens}, progress=False)
    slow = evaluate(store, {"lr": PerLevelLens(lm, lens.bank)}, progress=False)  # the level-by-level path
    for metric in ("precision@1", "kl", "surprisal"):
        torch.testing.assert_close(fast.metric("lr", metric), slow.metric("lr", metric), rtol=1e-5, atol=1e-5)


def test_training_lowers_the_kl_and_records_its_recipe(lm, store):
    config = lowrank_config(4, TrainConfig(max_epochs=3, batch_size=16, patience=3, kl_negatives=32))
    assert config.residual and config.objective == "kl" and config.rank == 4 and config.lr == 3e-3
    assert config.max_epochs == 16 and config.patience == 2
    # a tiny random model's logit lens is already close (KL ~0.01): a larger step shows the fall in a few epochs
    lens = train_lowrank_lens(store, lm, replace(config, lr=3e-2, max_epochs=4), progress=False)
    before = exact_kl(lm, LogitLens(lm), store)
    after = exact_kl(lm, lens, store)
    assert float(after.mean()) < 0.97 * float(before.mean())
    hist = lens.extra["history"]
    assert hist["kind"] == "lowrank" and hist["config"]["rank"] == 4 and hist["seconds"] > 0
    assert float(lens.bank.B.detach().abs().max()) > 0


def test_tuned_adam_starts_from_least_squares_and_never_loses_on_held_out_rows(lm, store):
    config = tuned_adam_config(TrainConfig(max_epochs=2, batch_size=16, kl_negatives=32))
    assert config.lr == 1e-4 and config.objective == "kl"
    lens = train_tuned_adam(store, lm, config, progress=False)
    hist = lens.extra["history"]
    assert hist["kind"] == "tuned-adam" and len(hist["best_val_loss"]) == lm.num_blocks
    # each level keeps its best held-out epoch, the least-squares start competing as epoch -1
    start = [hist["best_val_loss"][k] for k in range(lm.num_blocks)]
    assert all(b <= min(col[k] for col in hist["val_loss"]) + 1e-12 for k, b in enumerate(start))
    assert float(exact_kl(lm, lens, store).mean()) < float(exact_kl(lm, LogitLens(lm), store).mean())


def test_exports_to_tuned_lens_format_as_a_rank_r_translator_per_level(lm, tmp_path):
    from onejump.lenses.tuned_format import export_tuned_lens, import_tuned_lens

    lens = trained_like(lm)
    export_tuned_lens(lens, tmp_path / "tl", lm)
    tuned = import_tuned_lens(tmp_path / "tl", lm)
    h = torch.randn(4, lm.hidden_size, generator=torch.Generator().manual_seed(3))
    for k in range(lm.num_blocks):
        torch.testing.assert_close(tuned(h, k), lens(h, k), rtol=1e-4, atol=1e-4)
        assert int(torch.linalg.matrix_rank(tuned.weight[k].detach().double(), rtol=1e-4)) <= lens.rank


def test_card_names_the_kind(lm, tmp_path):
    LowRankLens.start(lm, 2).save_pretrained(tmp_path / "c")
    assert "a low-rank residual correction per exit level" in (tmp_path / "c" / "README.md").read_text()
