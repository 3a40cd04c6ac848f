import pytest
import torch

from onejump.errors import ConfigError, NumericalError
from onejump.shortcuts import JumpBank
from onejump.training import TrainConfig, train_joint, train_jumps, train_jumps_looped

from .test_selection import FakeStore


def linear_store(n=96, K=3, H=10, seed=0) -> FakeStore:
    """Levels are noisy linear images of a latent; h^K is a rank-3 function of it (learnable)."""
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, H, generator=gen)
    levels = [latent @ torch.randn(H, H, generator=gen) + 0.1 * torch.randn(n, H, generator=gen) + k
              for k in range(K)]
    final = latent @ torch.randn(H, 3, generator=gen) @ torch.randn(3, H, generator=gen) * 2
    return FakeStore(torch.stack([*levels, final], 1))


FAST = dict(rank=2, max_epochs=6, patience=3, batch_size=16, lr=1e-2)


def bank_val_loss(store, bank, config):
    """Recompute each jump's validation loss (Eq. 2) with the returned bank."""
    from onejump.training import _split

    x = store.hidden("train")
    _, va = _split(x.shape[0], config.val_fraction, config.seed)
    K = store.num_blocks
    with torch.no_grad():
        out = bank.eval()(x[va, :K]) if bank.num_jumps == K else None
    return ((out - x[va, K][:, None]) ** 2).sum(-1).mean(0)


def test_training_is_deterministic_and_seeded():
    store = linear_store()
    a, ha = train_jumps(store, TrainConfig(**FAST), progress=False)
    b, hb = train_jumps(store, TrainConfig(**FAST), progress=False)
    c, _ = train_jumps(store, TrainConfig(**FAST, seed=1), progress=False)
    for k, v in a.tensors().items():
        assert torch.equal(v, b.tensors()[k])
    assert ha.val_loss == hb.val_loss
    assert not torch.equal(a.A, c.A)


def test_each_jump_keeps_its_best_epoch():
    store = linear_store()
    cfg = TrainConfig(**{**FAST, "max_epochs": 8})
    bank, hist = train_jumps(store, cfg, progress=False)
    assert bank.num_jumps == 3 and bank.rank == 2 and not bank.training
    assert len(hist.val_loss) == hist.epochs_run and len(hist.val_loss[0]) == 3
    val = torch.tensor(hist.val_loss)
    for j in range(3):
        best = hist.best_epoch[j]
        assert hist.best_val_loss[j] == pytest.approx(float(val[: best + 1, j].min()))
        assert float(val[best, j]) == hist.best_val_loss[j]
    torch.testing.assert_close(bank_val_loss(store, bank, cfg).double(), torch.tensor(hist.best_val_loss,
                               dtype=torch.float64), rtol=1e-4, atol=1e-4)
    # training helped: better than the initial bank
    init = JumpBank(3, store.hidden_size, 2, seed=cfg.seed)
    init_loss = bank_val_loss(store, init, cfg)
    assert (bank_val_loss(store, bank, cfg) < init_loss).all()
    assert hist.target_energy > 0 and hist.n_train + hist.n_val == 96
    assert set(hist.to_dict()) >= {"train_loss", "val_loss", "best_epoch", "config"}


def test_batched_equals_looped():
    store = linear_store()
    cfg = TrainConfig(**FAST)
    batched, hb = train_jumps(store, cfg, progress=False)
    looped, hl = train_jumps_looped(store, cfg, progress=False)
    for k, v in batched.tensors().items():
        torch.testing.assert_close(v, looped.tensors()[k], rtol=1e-4, atol=1e-5)
    assert hb.best_epoch == hl.best_epoch
    torch.testing.assert_close(torch.tensor(hb.best_val_loss), torch.tensor(hl.best_val_loss), rtol=1e-4, atol=1e-6)


def test_joint_jump():
    store = linear_store()
    bank, hist = train_joint(store, TrainConfig(**FAST), progress=False)
    assert bank.num_jumps == 1 and bank.levels == [-1] and hist.kind == "joint"
    assert hist.n_train == 86 * 3 and hist.n_val == 10 * 3
    assert all(len(v) == 1 for v in hist.val_loss)


def test_nan_input_names_level_and_sample():
    store = linear_store()
    store._hidden[5, 1, 2] = float("nan")
    with pytest.raises(NumericalError, match="level 1, sample row 5"):
        train_jumps(store, TrainConfig(**FAST), progress=False)
    with pytest.raises(NumericalError, match="level 1"):
        train_joint(store, TrainConfig(**FAST), progress=False)


def test_diverging_loss_is_caught():
    store = linear_store()
    with pytest.raises(NumericalError, match="loss of jump"):
        train_jumps(store, TrainConfig(**{**FAST, "lr": 1e30}), progress=False)


@pytest.mark.parametrize("bad", [dict(objective="kl"), dict(batch_size=1), dict(lr=0), dict(val_fraction=1.0),
                                 dict(max_epochs=0)])
def test_bad_config(bad):
    with pytest.raises(ConfigError):
        train_jumps(linear_store(), TrainConfig(**{**FAST, **bad}), progress=False)


def test_without_validation_split():
    store = linear_store()
    bank, hist = train_jumps(store, TrainConfig(**{**FAST, "val_fraction": 0.0, "max_epochs": 3}), progress=False)
    assert hist.n_val == 0 and hist.epochs_run == 3
