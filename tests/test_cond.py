"""The level-conditioned single jump: a gain and a shift per exit level in the rank-r code of one shared jump."""

import json

import numpy as np
import pytest
import torch

from onejump.errors import ConfigError, LensFileError
from onejump.evaluation.evaluator import evaluate
from onejump.lenses import CondJump, CondJumpBank, Lens, OneJump
from onejump.lenses.jumps import JumpBank, jump_parameter_count
from onejump.training.config import TrainConfig
from onejump.training.lenses import train_cond_jump, train_joint_jump
from onejump.training.objectives import HeadKL, head_targets

from .test_objectives import _setup
from .test_selection import random_bank


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return _setup("llama", tmp_path_factory.mktemp("cond"), n=40)


def _jump(lm, residual):
    bank = random_bank(1, lm.hidden_size, 3, seed=5)
    bank.residual = residual
    return OneJump(lm, bank)


def _perturbed(lens, seed=0):
    """The same lens with random gains and shifts (every level different)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lens.bank.gain.copy_(1 + 0.5 * torch.randn(lens.bank.gain.shape, generator=gen))
        lens.bank.shift.copy_(0.5 * torch.randn(lens.bank.shift.shape, generator=gen))
    lens._head = None
    return lens


@pytest.mark.parametrize("residual", [False, True])
@torch.no_grad()
def test_unit_gains_and_zero_shifts_are_the_unconditioned_jump(llama, residual):
    lm, store = llama
    jump = _jump(lm, residual)
    cond = CondJump.from_jump(jump)
    assert (cond.bank.gain == 1).all() and (cond.bank.shift == 0).all() and cond.residual == residual
    h = torch.randn(6, lm.hidden_size) * 3
    for k in range(lm.num_blocks):
        assert torch.equal(cond(h, k), jump(h, k))
        assert torch.equal(cond.transform(h, k), jump.transform(h, k))
    # a freshly built conditioned bank starts at the unconditioned bank of the same seed, in train mode too
    plain = JumpBank(1, lm.hidden_size, 3, seed=7, residual=residual).train()
    fresh = CondJumpBank(1, lm.hidden_size, 3, lm.num_blocks, seed=7, residual=residual).train()
    x = torch.randn(16, 1, lm.hidden_size)
    levels = torch.randint(0, lm.num_blocks, (16,))
    assert torch.equal(fresh(x, levels), plain(x))
    # and so is the KL objective through the head
    targets = head_targets(store, lm.adapter, top_k=5, progress=False)
    loss = HeadKL(lm.adapter, targets, negatives=0)
    rows = torch.from_numpy(store.indices("train"))[:16]
    xs = store.read_rows(rows.numpy())
    inp, tgt = xs[torch.arange(16), levels].unsqueeze(1), xs[:, -1]
    assert torch.equal(loss(fresh.eval(), inp, tgt, rows, levels), loss(plain.eval(), inp, tgt, rows))


@pytest.mark.parametrize("residual", [False, True])
@torch.no_grad()
def test_conditioned_logits_are_the_head_of_the_conditioned_transform(llama, residual):
    lm, _ = llama
    cond = _perturbed(CondJump.from_jump(_jump(lm, residual)))
    bank = cond.bank
    h = torch.randn(5, lm.hidden_size) * 3
    outs = []
    for k in range(lm.num_blocks):
        # by hand: (BN(h) A * g_k + s_k) B (+ h)
        z = torch.nn.functional.batch_norm(h, bank.running_mean[0], bank.running_var[0], bank.bn_weight[0],
                                           bank.bn_bias[0], eps=bank.eps) @ bank.A[0]
        y = (z * bank.gain[0, k] + bank.shift[0, k]) @ bank.B[0] + (h if residual else 0)
        torch.testing.assert_close(cond.transform(h, k), y, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cond(h, k), lm.adapter.head(y), atol=1e-4, rtol=1e-4)
        outs.append(cond(h, k))
        # the training path (batched codes) agrees with the eval path
        levels = torch.full((5,), k)
        torch.testing.assert_close(bank(h[:, None], levels)[:, 0], y, atol=1e-5, rtol=1e-5)
    assert not torch.equal(outs[0], outs[1])
    assert cond(h[None], 0).shape == (1, 5, lm.adapter.vocab_size)


def test_parameter_count_is_the_bank_plus_2rK(llama):
    lm, _ = llama
    K, H = lm.num_blocks, lm.hidden_size
    for residual in (False, True):
        cond = CondJump.from_jump(_jump(lm, residual))
        assert cond.num_parameters == jump_parameter_count(H, 3) + 2 * 3 * K
        assert cond.num_parameters == sum(t.numel() for t in cond.state_dict().values())
    assert cond.logits_cost() > cond.transform_cost() > 0
    plain = CondJump.from_jump(_jump(lm, False))
    assert plain.logits_cost() < cond.logits_cost()  # the plain form keeps the rank-r head


@torch.no_grad()
def test_save_load_round_trip_is_exact(llama, tmp_path):
    lm, _ = llama
    h = torch.randn(4, lm.hidden_size)
    for residual in (False, True):
        cond = _perturbed(CondJump.from_jump(_jump(lm, residual)), seed=int(residual))
        cond.extra = {"note": "kept"}
        folder = cond.save_pretrained(tmp_path / f"cond-{residual}")
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["kind"] == "jump-cond" and cfg["num_levels"] == lm.num_blocks
        assert cfg["parameters"] == cond.num_parameters
        again = Lens.load(folder, lm)
        assert type(again) is CondJump and again.residual == residual and again.extra == {"note": "kept"}
        assert CondJump.from_pretrained(folder, lm).num_parameters == cond.num_parameters
        for k in range(lm.num_blocks):
            assert torch.equal(again(h, k), cond(h, k))
    with pytest.raises(LensFileError, match="not a OneJump"):
        OneJump.load(folder, lm)


def test_bad_levels_and_banks_are_refused(llama):
    lm, _ = llama
    cond = CondJump.from_jump(_jump(lm, True))
    h = torch.randn(2, lm.hidden_size)
    with pytest.raises(LensFileError, match="exit level"):
        cond(h, lm.num_blocks)
    with pytest.raises(LensFileError, match="exit level"):
        cond.bank(h[:, None])  # no levels
    with pytest.raises(LensFileError, match="exit levels must be in"):
        cond.bank(h[:, None], torch.tensor([0, lm.num_blocks]))
    with pytest.raises(LensFileError, match="exactly one"):
        CondJump(lm, random_bank(1, lm.hidden_size, 3))
    with pytest.raises(LensFileError, match="exit levels, the model has"):
        CondJump(lm, CondJumpBank(1, lm.hidden_size, 3, lm.num_blocks + 1))


def _train_kl(store, lm, lens, levels_of=None):
    """Mean exact KL (top-k partition) over every (train sample, level) pair."""
    targets = head_targets(store, lm.adapter, top_k=4, progress=False)
    loss = HeadKL(lm.adapter, targets, negatives=0)
    rows = torch.from_numpy(store.indices("train"))
    x = store.hidden("train")
    bank = lens.bank.eval()
    with torch.no_grad():
        per = []
        for k in range(store.num_blocks):
            extra = (torch.full((len(rows),), k),) if bank.conditioned else ()
            per.append(float(loss(bank, x[:, k:k + 1], x[:, -1], rows, *extra)))
    return float(np.mean(per))


def test_training_lowers_the_kl_and_learns_per_level_gains(llama):
    lm, store = llama
    # the plain form: on a tiny random model the residual form starts at a near-perfect logit lens
    config = TrainConfig(objective="kl", batch_size=4, max_epochs=4, patience=4, rank=2, kl_top_k=4,
                         kl_negatives=32, val_fraction=0.2, lr=3e-2)
    start = CondJump(lm, CondJumpBank(1, lm.hidden_size, 2, lm.num_blocks, levels=[-1], seed=config.seed))
    before = _train_kl(store, lm, start)
    cond = train_cond_jump(store, lm, config, device="cpu", progress=False)
    assert isinstance(cond, CondJump) and cond.rank == 2 and not cond.residual
    hist = cond.extra["history"]
    assert hist["kind"] == "joint-cond" and hist["epochs_run"] >= 1
    assert _train_kl(store, lm, cond) < before
    gain, shift = cond.bank.gain[0], cond.bank.shift[0]
    assert not torch.allclose(gain, torch.ones_like(gain)) and not torch.allclose(shift, torch.zeros_like(shift))
    assert not torch.allclose(gain[0], gain[-1]) and not torch.allclose(shift[0], shift[-1])
    # the evaluation on any rows (a lens without a fast path of its own: through its call; a plain jump:
    # through its rank-r head) equals the full head on the jump's output
    joint = train_joint_jump(store, lm, config, device="cpu", progress=False)
    rows = store.indices("train")[:10]
    on_rows = evaluate(store, {"joint": joint, "cond": cond}, rows=rows, progress=False)
    x = store.read_rows(rows).float()
    with torch.no_grad():
        direct = torch.stack([(lm.adapter.head(joint.bank.apply(x[:, k], 0)).argmax(-1) ==
                               lm.adapter.head(x[:, -1]).argmax(-1)).double().mean() for k in range(store.num_blocks)])
    torch.testing.assert_close(on_rows.metric("joint", "precision@1"), direct)
    assert on_rows.metric("cond", "precision@1").shape == (store.num_blocks,) and on_rows.num_samples == 10


def test_warm_start_begins_at_the_trained_joint_jump(llama):
    from dataclasses import replace

    lm, store = llama
    config = TrainConfig(objective="kl", batch_size=4, max_epochs=2, patience=2, rank=2, kl_top_k=4,
                         kl_negatives=32, val_fraction=0.2, residual=True, lr=3e-2)
    joint = train_joint_jump(store, lm, config, device="cpu", progress=False)
    fresh = JumpBank(1, lm.hidden_size, 2, seed=config.seed, residual=True)
    assert (fresh.A - joint.bank.A).abs().max() > 1e-2  # training moved the joint jump away from its init
    # a negligible learning rate: the warm-started jump stays where the joint jump is
    cond = train_cond_jump(store, lm, replace(config, lr=1e-7, max_epochs=1), init=joint, device="cpu",
                           progress=False)
    assert cond.extra["warm_start"]["kind"] == "jump"
    torch.testing.assert_close(cond.bank.A, joint.bank.A, atol=1e-5, rtol=0)
    torch.testing.assert_close(cond.bank.B, joint.bank.B, atol=1e-5, rtol=0)
    assert abs(_train_kl(store, lm, cond) / _train_kl(store, lm, joint) - 1) < 0.1
    with pytest.raises(ConfigError, match="warm start"):
        train_cond_jump(store, lm, TrainConfig(objective="kl", rank=3, residual=True), init=joint, progress=False)
    with pytest.raises(LensFileError, match="already"):
        CondJumpBank.from_bank(cond.bank, lm.num_blocks)


def test_conditioning_fits_what_one_shared_jump_cannot():
    """Levels that are the same latent at other scales and signs: one shared linear jump cannot undo a
    sign flip between levels; a per-level gain in the code can."""
    from onejump.training.fit import train_joint

    from .test_selection import FakeStore

    gen = torch.Generator().manual_seed(0)
    n, H = 160, 8
    latent = torch.randn(n, H, generator=gen)
    scales = (1.0, -2.0, 0.5)
    final = latent @ torch.randn(H, 1, generator=gen) @ torch.randn(1, H, generator=gen)
    store = FakeStore(torch.stack([latent * s for s in scales] + [final], 1))
    config = TrainConfig(rank=1, max_epochs=40, patience=40, batch_size=16, lr=1e-2)
    _, plain = train_joint(store, config, progress=False)
    trained, cond = train_joint(store, config, progress=False,
                                bank=CondJumpBank(1, H, 1, len(scales), levels=[-1], seed=config.seed))
    assert trained.conditioned and cond.kind == "joint-cond" and plain.kind == "joint"
    energy = float(final.var(0).sum())
    assert plain.best_val_loss[0] > 0.5 * energy  # the shared jump explains little of h^K
    assert cond.best_val_loss[0] < 0.05 * energy
    undone = trained.gain[0, :, 0].detach() * torch.tensor(scales)  # the gains learn 1 / scale (up to a constant)
    assert (undone.sign() == undone[0].sign()).all() and float(undone.abs().max() / undone.abs().min()) < 1.5


@torch.no_grad()
def test_exports_as_per_level_affine_translators(llama):
    from onejump.lenses.tuned_format import lens_translators

    lm, _ = llama
    cond = _perturbed(CondJump.from_jump(_jump(lm, True)), seed=3)
    weight, bias = lens_translators(cond)
    h = torch.randn(5, lm.hidden_size)
    for k in range(lm.num_blocks):
        torch.testing.assert_close(h + h @ weight[k].T + bias[k], cond.transform(h, k), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(weight[0], weight[1])


def test_a_warm_start_no_epoch_improves_is_returned_as_it_came():
    """keep_start: the starting weights compete as epoch -1 (an already optimal jump stays put)."""
    from onejump.training.fit import train_joint

    from .test_selection import FakeStore

    gen = torch.Generator().manual_seed(1)
    latent = torch.randn(120, 6, generator=gen)
    store = FakeStore(torch.stack([latent, latent * 2, latent @ torch.randn(6, 6, generator=gen)], 1))
    config = TrainConfig(rank=2, max_epochs=3, patience=2, batch_size=16, lr=1.0)  # a rate that only makes it worse
    start, _ = train_joint(store, TrainConfig(rank=2, max_epochs=30, patience=30, batch_size=16), progress=False)
    warm = CondJumpBank.from_bank(start, 2)
    before = {k: v.clone() for k, v in warm.tensors().items()}
    trained, hist = train_joint(store, config, progress=False, bank=warm, keep_start=True)
    assert hist.best_epoch == [-1] and hist.best_val_loss[0] < min(v[0] for v in hist.val_loss)
    assert all(torch.equal(v, before[k]) for k, v in trained.tensors().items())
    _, cold = train_joint(store, config, progress=False, bank=CondJumpBank.from_bank(start, 2))
    assert hist.best_val_loss[0] <= cold.best_val_loss[0]
