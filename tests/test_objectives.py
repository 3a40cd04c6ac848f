"""The KL objective through the frozen head, its targets, and the head-aware selection rule."""

import numpy as np
import pytest
import torch

from onejump.errors import ConfigError, StoreError
from onejump.evaluation.evaluator import evaluate, reuse_matrix
from onejump.evaluation.selection import holdout_rows, select_ojfa
from onejump.extract import extract
from onejump.lenses import PerLevelLens
from onejump.model.loading import from_pretrained_model
from onejump.training.objectives import HeadKL, HeadTargets, head_targets

from .test_selection import random_bank, random_sentences
from .tiny import tiny_model, tiny_tokenizer


def _setup(arch, tmp_path, n=30, seed=3):
    lm = from_pretrained_model(tiny_model(arch), tiny_tokenizer(), name=f"tiny-{arch}")
    store = extract(lm, random_sentences(n, seed=seed), tmp_path / arch, splits=[0] * (n - 6) + [1] * 6, seed=0,
                    shard_size=8, progress=False)
    return lm, store


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return _setup("llama", tmp_path_factory.mktemp("obj"))


def reference_kl(lm, bank, h, levels_to_jumps, token, logp):
    """KL over the (top-k tokens, rest) partition from the full head applied to the jump outputs."""
    out = []
    for j in levels_to_jumps:
        q = torch.log_softmax(lm.adapter.head(bank.apply(h[:, j], j)).double(), -1)
        logq = q.gather(1, token)
        p = logp.double().exp()
        rest_p = (1 - p.sum(-1)).clamp_min(0)
        rest_q = (1 - logq.exp().sum(-1)).clamp_min(1e-300)
        kl = (p * (logp.double() - logq)).sum(-1)
        kl = kl + torch.where(rest_p > 0, rest_p * (rest_p.clamp_min(1e-300).log() - rest_q.log()), 0.0)
        out.append(kl.mean())
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text", "phi3"])
def test_exact_kl_matches_full_head(arch, tmp_path):
    lm, store = _setup(arch, tmp_path)
    K, H = store.num_blocks, store.hidden_size
    targets = head_targets(store, lm.adapter, top_k=7, progress=False)
    bank = random_bank(K, H, 3, seed=4)
    loss = HeadKL(lm.adapter, targets, negatives=0)
    rows = torch.from_numpy(store.indices("train"))
    x = store.hidden("train")
    with torch.no_grad():
        got = loss(bank.eval(), x[:, :K], x[:, K], rows)
        token, logp = targets.lookup(rows)
        ref = reference_kl(lm, bank, x, range(K), token, logp)
    torch.testing.assert_close(got.double(), ref, atol=2e-4, rtol=2e-3)
    assert (got >= -1e-5).all()


def test_full_vocabulary_targets_give_the_true_kl(llama):
    lm, store = llama
    K, H = store.num_blocks, store.hidden_size
    V = lm.adapter.vocab_size
    targets = head_targets(store, lm.adapter, top_k=V, progress=False)
    bank = random_bank(K, H, 2, seed=5)
    x = store.hidden("train")
    rows = torch.from_numpy(store.indices("train"))
    with torch.no_grad():
        got = HeadKL(lm.adapter, targets, negatives=0)(bank.eval(), x[:, :K], x[:, K], rows)
        p_final = torch.log_softmax(lm.adapter.head(x[:, K]).double(), -1)
        for k in range(K):
            q = torch.log_softmax(lm.adapter.head(bank.apply(x[:, k], k)).double(), -1)
            true = (p_final.exp() * (p_final - q)).sum(-1).mean()
            assert abs(float(got[k]) - float(true)) < 1e-4 * (1 + float(true))


def test_sampled_normaliser_is_close_and_trains(llama):
    lm, store = llama
    K, H = store.num_blocks, store.hidden_size
    targets = head_targets(store, lm.adapter, top_k=4, progress=False)
    x = store.hidden("train")
    rows = torch.from_numpy(store.indices("train"))
    bank = random_bank(K, H, 3, seed=6)
    exact = HeadKL(lm.adapter, targets, negatives=0)
    sampled = HeadKL(lm.adapter, targets, negatives=lm.adapter.vocab_size * 4, seed=1)
    bank.train()
    with torch.no_grad():
        a = exact(bank, x[:, :K], x[:, K], rows)
        b = sampled(bank, x[:, :K], x[:, K], rows)
    # with many uniform negatives the estimate of the partition function is close to exact
    torch.testing.assert_close(a, b, atol=0.05 * (1 + float(a.abs().max())), rtol=0.05)
    # a few Adam steps on the sampled loss lower the exact loss
    small = HeadKL(lm.adapter, targets, negatives=16, seed=2)
    opt = torch.optim.Adam(bank.parameters(), lr=3e-2)
    bank.eval()
    with torch.no_grad():
        before = exact(bank, x[:, :K], x[:, K], rows).sum()
    for _ in range(40):
        bank.train()
        loss = small(bank, x[:, :K], x[:, K], rows).sum()
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    bank.eval()
    with torch.no_grad():
        after = exact(bank, x[:, :K], x[:, K], rows).sum()
    assert after < before


def test_head_targets_are_the_final_top_k(llama):
    lm, store = llama
    K = store.num_blocks
    t = head_targets(store, lm.adapter, split="train", top_k=3, chunk_size=5, progress=False)
    rows = store.indices("train")
    assert t.rows.tolist() == sorted(rows.tolist()) and t.top_k == 3
    x = store.hidden("train")
    with torch.no_grad():
        ref = torch.log_softmax(lm.adapter.head(x[:, K]).float(), -1).topk(3, -1)
    tok, lp = t.lookup(torch.from_numpy(rows))
    assert torch.equal(tok[:, 0], ref.indices[:, 0])
    assert torch.equal(tok[:, 0], store.targets("train"))
    torch.testing.assert_close(lp, ref.values, atol=1e-5, rtol=1e-5)
    with pytest.raises(StoreError):
        t.lookup(torch.tensor([int(store.indices("test")[0])]))
    with pytest.raises(ConfigError):
        head_targets(store, lm.adapter, top_k=0, progress=False)
    with pytest.raises(ConfigError):
        HeadKL(lm.adapter, HeadTargets(t.rows, t.token, t.logp), negatives=-1)


def test_head_rule_scores_match_direct_head(llama):
    """The head rule's matrix is the evaluation on the held-out rows (its reuse matrix): jump m at level k
    through the head, as the full head computes it (and the evaluation's KL of each jump alone)."""
    lm, store = llama
    K, H = store.num_blocks, store.hidden_size
    bank = random_bank(K, H, 3, seed=8)
    rows = holdout_rows(store, 0.25, 0)
    assert set(rows.tolist()) <= set(store.indices("train").tolist()) and len(rows) >= 1
    lens = PerLevelLens(lm, bank)
    precision = reuse_matrix(store, lens, rows=rows, chunk_size=2, progress=False).pair_matrix("precision@1")
    singles = evaluate(store, {f"jump{m}": lens.jump(m) for m in range(K)}, rows=rows, chunk_size=2, progress=False)
    head = select_ojfa(store, bank, rule="head", model=lm, holdout=rows)
    assert torch.equal(head.matrix, precision) and head.num_samples == len(rows)
    all_rows = store.indices("train")
    pick = torch.from_numpy(np.searchsorted(all_rows, rows))
    x = store.hidden("train")[pick]
    with torch.no_grad():
        final = torch.log_softmax(lm.adapter.head(x[:, K]).double(), -1)
        for m in range(K):
            assert torch.equal(singles.metric(f"jump{m}", "precision@1"), precision[m])
            for k in range(K):
                q = torch.log_softmax(lm.adapter.head(bank.apply(x[:, k], m)).double(), -1)
                p1 = float((q.argmax(-1) == final.argmax(-1)).double().mean())
                kl = float((final.exp() * (final - q)).sum(-1).mean())
                assert abs(float(precision[m, k]) - p1) < 1e-9
                assert abs(float(singles.metric(f"jump{m}", "kl")[k]) - kl) < 1e-3 * (1 + kl)


def test_head_rule_selection(llama):
    lm, store = llama
    K, H = store.num_blocks, store.hidden_size
    bank = random_bank(K, H, 3, seed=9)
    paper = select_ojfa(store, bank)
    head = select_ojfa(store, bank, rule="head", model=lm, holdout=holdout_rows(store, 0.25, 0))
    assert head.rule == "head" and head.others["paper_chosen"] == paper.chosen
    assert head.chosen == int(head.scores.argmax())
    d = head.to_dict()
    assert d["rule"] == "head" and len(d["paper_matrix"]) == K
    with pytest.raises(ConfigError, match="holdout"):
        select_ojfa(store, bank, rule="head")
    with pytest.raises(ConfigError, match="model="):
        select_ojfa(store, bank, rule="head", holdout=holdout_rows(store, 0.25, 0))
    with pytest.raises(ConfigError):
        select_ojfa(store, bank, rule="vibes", model=lm)


def test_a_lens_without_held_out_rows_is_refused_by_the_head_rule(llama):
    from onejump.errors import LensFileError
    from onejump.evaluation.selection import held_out_record, trained_holdout

    lm, store = llama
    with pytest.raises(LensFileError, match="does not record"):
        trained_holdout(store, None)
    with pytest.raises(LensFileError, match="held no rows out"):
        trained_holdout(store, held_out_record(store, 0.0, 0))
    record = held_out_record(store, 0.25, 1)
    assert len(trained_holdout(store, record)) == record["num_rows"] > 0
    with pytest.raises(LensFileError, match="differ"):
        trained_holdout(store, {**record, "rows_sha256": "0" * 16})


# ---- residual jumps: h + BN(h) A B --------------------------------------------------------------


def residual_bank(K, H, r, seed=0):
    from onejump.lenses.jumps import JumpBank

    bank = random_bank(K, H, r, seed=seed)
    res = JumpBank(K, H, r, residual=True)
    res.load_tensors(bank.tensors())
    with torch.no_grad():
        res.B.mul_(0.3)
    return res.eval()


def test_residual_bank_forward_apply_and_files(tmp_path):
    from onejump.lenses import Lens
    from onejump.lenses.onejump import OneJump, PerLevelLens

    K, H, r = 3, 16, 2
    bank = residual_bank(K, H, r, seed=1)
    plain = random_bank(K, H, r, seed=1)
    with torch.no_grad():
        plain.B.mul_(0.3)
    h = torch.randn(5, H)
    with torch.no_grad():
        for m in range(K):
            torch.testing.assert_close(bank.apply(h, m), h + plain.apply(h, m))
        torch.testing.assert_close(bank(h[:, None].expand(5, K, H)), h[:, None] + plain(h[:, None].expand(5, K, H)))
    lm = from_pretrained_model(tiny_model("llama"), tiny_tokenizer(), name="tiny-llama")
    per_level = PerLevelLens(lm, residual_bank(lm.num_blocks, lm.hidden_size, r, seed=1))
    per_level.save(tmp_path / "b")
    loaded = Lens.load(tmp_path / "b", lm)
    assert isinstance(loaded, PerLevelLens) and loaded.bank.residual
    assert loaded.bank.parameter_count() == per_level.bank.parameter_count()
    joint = residual_bank(1, lm.hidden_size, r, seed=1)
    jump = OneJump(lm, joint)
    jump.save(tmp_path / "j")
    again = OneJump.load(tmp_path / "j", lm)
    assert again.trained_at == -1 and again.residual
    hm = torch.randn(5, lm.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(again.transform(hm, 1), joint.apply(hm, 0), atol=1e-5, rtol=1e-5)
    # a fresh residual bank starts near the identity (the logit lens)
    fresh = type(bank)(1, H, r, residual=True).eval()
    with torch.no_grad():
        assert float((fresh.apply(h, 0) - h).norm() / h.norm()) < 0.05


def test_residual_kl_matches_full_head(llama):
    lm, store = llama
    K, H = store.num_blocks, store.hidden_size
    targets = head_targets(store, lm.adapter, top_k=5, progress=False)
    bank = residual_bank(K, H, 3, seed=2)
    x = store.hidden("train")
    rows = torch.from_numpy(store.indices("train"))
    with torch.no_grad():
        got = HeadKL(lm.adapter, targets, negatives=0)(bank, x[:, :K], x[:, K], rows)
        token, logp = targets.lookup(rows)
        ref = reference_kl(lm, bank, x, range(K), token, logp)
    torch.testing.assert_close(got.double(), ref, atol=2e-4, rtol=2e-3)


def test_residual_evaluation_selection_and_generation(llama):
    from onejump.evaluation.evaluator import evaluate
    from onejump.evaluation.selection import reuse_scores
    from onejump.lenses.lowrank_head import LowRankHead
    from onejump.lenses.onejump import OneJump, PerLevelLens

    lm, store = llama
    K, H = store.num_blocks, store.hidden_size
    bank = residual_bank(K, H, 2, seed=3)
    joint = residual_bank(1, H, 2, seed=4)
    with pytest.raises(ConfigError):
        LowRankHead(lm.adapter, bank)
    result = evaluate(store, {"full": PerLevelLens(lm, bank), "joint": OneJump(lm, joint)}, progress=False)
    x = store.hidden("test")
    t = store.targets("test")
    with torch.no_grad():
        for k in range(K):
            direct = lm.adapter.head(bank.apply(x[:, k], k)).argmax(-1) == t
            assert torch.equal(result.samples("full", "precision@1")[k].bool(), direct)
            direct = lm.adapter.head(joint.apply(x[:, k], 0)).argmax(-1) == t
            assert torch.equal(result.samples("joint", "precision@1")[k].bool(), direct)
    D = reuse_scores(store, bank)
    xt = store.hidden("train")
    with torch.no_grad():
        for m in range(K):
            for k in range(K):
                c = torch.nn.functional.cosine_similarity(bank.apply(xt[:, k], m).double(), xt[:, K].double(), dim=-1)
                assert abs(float((c * c.abs()).mean()) - float(D[m, k])) < 1e-6
    jump = OneJump(lm, joint)
    with torch.no_grad():
        torch.testing.assert_close(jump(x[:3, 1], 1).float(),
                                   lm.adapter.head(joint.apply(x[:3, 1], 0)).float(),
                                   atol=1e-4, rtol=1e-4)


def test_kl_training_through_train_jumps_and_joint(llama):
    from onejump.training.config import TrainConfig
    from onejump.training.fit import train_joint, train_jumps

    lm, store = llama
    config = TrainConfig(objective="kl", batch_size=8, max_epochs=3, patience=3, rank=2, kl_top_k=4,
                         kl_negatives=16, val_fraction=0.25)
    with pytest.raises(ConfigError, match="adapter"):
        train_jumps(store, config, progress=False)
    bank, hist = train_jumps(store, config, progress=False, adapter=lm.adapter)
    assert bank.num_jumps == store.num_blocks and hist.epochs_run >= 1
    assert all(np.isfinite(v) for row in hist.val_loss for v in row)
    assert hist.val_loss[-1][0] <= hist.val_loss[0][0] + 1e-6 or min(r[0] for r in hist.val_loss) < hist.val_loss[0][0]
    joint, jh = train_joint(store, replace_residual(config), progress=False, adapter=lm.adapter)
    assert joint.residual and joint.num_jumps == 1 and np.isfinite(jh.best_val_loss[0])


def replace_residual(config):
    from dataclasses import replace

    return replace(config, residual=True)
