import json
import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from onejump.errors import ConfigError, NumericalError
from onejump.evaluation.budget import REFERENCE_COPIES, working_set
from onejump.evaluation.evaluator import evaluate, parameter_counts, reuse_matrix
from onejump.evaluation.result import EvalResult
from onejump.evaluation.scoring import Reference, _reduce_inplace, _reduce_logits, score_block
from onejump.evaluation.statistics import bootstrap_ci, bootstrap_counts, bootstrap_intervals, paired_test
from onejump.extract import extract
from onejump.lenses import JTCLens, LinearJTC, LogitLens, OneJump, PerLevelLens
from onejump.lenses.lowrank_head import LowRankHead
from onejump.model.loading import from_pretrained_model

from .test_selection import random_bank, random_sentences
from .tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    lm = from_pretrained_model(tiny_model("llama"), tiny_tokenizer(), name="tiny-llama")
    store = extract(lm, random_sentences(40, seed=2), tmp_path_factory.mktemp("ev") / "s",
                    splits=[0] * 16 + [1] * 24, seed=0, shard_size=10, progress=False)
    bank = PerLevelLens(lm, random_bank(store.num_blocks, store.hidden_size, 4, seed=1))
    joint = OneJump(lm, random_bank(1, store.hidden_size, 4, seed=2))
    jtc = JTCLens(lm, LinearJTC.fit(store, ridge=1e-3))
    return lm, store, bank, joint, jtc


def _lenses(lm, bank, joint, jtc):
    return {"identity": LogitLens(lm), "full": bank, "ojfa": bank.jump(1), "joint": joint, "jtc": jtc}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2", "gemma3_text", "opt", "gpt_neox", "phi3"])
def test_low_rank_head_is_exact(arch):
    lm = from_pretrained_model(tiny_model(arch), tiny_tokenizer(), name=f"tiny-{arch}")
    H = lm.hidden_size
    bank = random_bank(3, H, 5, seed=7)
    if arch == "opt":  # tiny OPT has a projection-free head; still check the norm kind is handled
        assert lm.adapter.norm_params().kind in ("layernorm", "identity")
    head = LowRankHead(lm.adapter, bank)
    h = torch.randn(9, H) * 4 + 1
    z_all = head.project_all(h)
    torch.set_grad_enabled(False)
    for m in range(3):
        ref = lm.adapter.head(bank.apply(h, m))
        got = head.logits(h, m)
        scale = float(ref.abs().max())
        torch.testing.assert_close(got, ref, atol=2e-5 * (1 + scale), rtol=1e-4)
        torch.testing.assert_close(head.logits_from_codes(z_all[:, m], m), ref, atol=2e-5 * (1 + scale), rtol=1e-4)
    torch.set_grad_enabled(True)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 12), st.integers(6, 50), st.booleans())
def test_score_block_matches_reference(seed, rows, V, extras):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, V, generator=gen) * 5
    final_logp = torch.log_softmax(torch.randn(3, V, generator=gen), -1)
    per_sample_target = torch.randint(0, V, (3,), generator=gen)
    next_token = torch.tensor([int(torch.randint(0, V, (1,), generator=gen)), -1, 0])
    sample = torch.randint(0, 3, (rows,), generator=gen)
    negent = (final_logp.exp() * final_logp).sum(1) if extras else None
    ref = Reference(per_sample_target, final_logp, negent, next_token if extras else None)
    out = score_block(logits.clone(), ref, sample)
    target = per_sample_target[sample]
    c1, c5, s, rev = out[:4]
    assert torch.equal(c1, logits.argmax(1) == target)
    assert torch.equal(c5, (logits.topk(min(5, V), 1).indices == target[:, None]).any(1))
    logq = torch.log_softmax(logits, 1)
    torch.testing.assert_close(s, -logq.gather(1, target[:, None])[:, 0])
    torch.testing.assert_close(rev, -final_logp[sample, logits.argmax(1)])
    assert (s >= -1e-5).all()
    if not extras:
        assert len(out) == 4
        return
    kl, entropy, ce = out[4:]
    p_final = final_logp[sample].exp()
    torch.testing.assert_close(kl, (p_final * (final_logp[sample] - logq)).sum(1).clamp_min(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(entropy, -(logq.exp() * logq).sum(1), atol=1e-4, rtol=1e-4)
    nxt = next_token[sample]
    want = torch.where(nxt >= 0, -logq.gather(1, nxt.clamp_min(0)[:, None])[:, 0], torch.tensor(float("nan")))
    torch.testing.assert_close(ce, want, equal_nan=True)


def test_evaluate_shapes_ranges_and_json(setup, tmp_path):
    lm, store, bank, joint, jtc = setup
    K, N = store.num_blocks, 24
    res = evaluate(store, _lenses(lm, bank, joint, jtc), chosen=1, progress=False)
    res = res.merge(reuse_matrix(store, bank, chosen=1, progress=False))
    assert res.num_samples == N and res.num_blocks == K and res.jumps == list(range(K))
    assert set(res.methods) == {"identity", "jtc", "joint", "full", "ojfa"}
    assert res.per_sample["pairs/correct1"].shape == (K, K, N)
    assert res.per_sample["identity/surprisal"].shape == (K, N)
    for method in res.methods:
        for metric in ("precision@1", "precision@5"):
            v = res.metric(method, metric)
            assert v.shape == (K,) and ((v >= 0) & (v <= 1)).all()
        assert (res.metric(method, "surprisal") >= 0).all() and (res.metric(method, "kl") >= 0).all()
        assert (res.metric(method, "precision@5") >= res.metric(method, "precision@1")).all()
    # a lens evaluated on its own agrees with the reuse matrix's row / diagonal
    torch.testing.assert_close(res.metric("full", "precision@1"), torch.diagonal(res.pair_matrix("precision@1")))
    torch.testing.assert_close(res.metric("ojfa", "surprisal"), res.pair_matrix("surprisal")[1], atol=1e-4,
                               rtol=1e-5)
    torch.testing.assert_close(res.metric("jump:2", "surprisal"), res.pair_matrix("surprisal")[2])
    d = json.loads(json.dumps(res.to_dict()))
    assert d["lens_parameters"]["ojfa"] == bank.jump(1).num_parameters and "per_sample" not in json.dumps(d)
    assert set(d["methods"]["identity"]) >= {"precision@1", "kl", "entropy", "surprisal"}
    res.save(tmp_path / "r")
    again = EvalResult.load(tmp_path / "r")
    for k, v in res.per_sample.items():
        assert torch.equal(v.nan_to_num(), again.per_sample[k].nan_to_num()) and v.dtype == again.per_sample[k].dtype
    with pytest.raises(ConfigError):
        res.metric("magic", "surprisal")
    with pytest.raises(ConfigError):
        res.metric("identity", "accuracy")


def test_every_lens_matches_its_own_call(setup):
    """evaluate's fast paths give what lens(h, level) gives, level by level."""
    lm, store, bank, joint, jtc = setup
    lenses = _lenses(lm, bank, joint, jtc)
    res = evaluate(store, lenses, progress=False)
    h = store.hidden("test")
    t = store.targets("test")
    final_logp = torch.log_softmax(lm.adapter.head(h[:, -1]), -1).detach()
    torch.set_grad_enabled(False)
    for name, lens in lenses.items():
        for k in range(store.num_blocks):
            logits = lens(h[:, k], k)
            logq = torch.log_softmax(logits, -1)
            torch.testing.assert_close(res.per_sample[f"{name}/surprisal"][k], -logq.gather(1, t[:, None])[:, 0],
                                       atol=1e-4, rtol=1e-4)
            kl = (final_logp.exp() * (final_logp - logq)).sum(1)
            torch.testing.assert_close(res.per_sample[f"{name}/kl"][k], kl.clamp_min(0), atol=1e-4, rtol=1e-3)
            assert torch.equal(res.per_sample[f"{name}/correct1"][k], logits.argmax(1) == t), (name, k)
    torch.set_grad_enabled(True)


def test_reuse_matrix_matches_direct_head(setup):
    lm, store, bank, _, _ = setup
    res = reuse_matrix(store, bank, jumps=[0, 2], progress=False)
    h = store.hidden("test")
    t = store.targets("test")
    for i, m in enumerate([0, 2]):
        for k in range(store.num_blocks):
            logits = lm.adapter.head(bank.bank.apply(h[:, k], m)).detach()
            logp = torch.log_softmax(logits, -1)
            torch.testing.assert_close(res.per_sample["pairs/surprisal"][i, k], -logp.gather(1, t[:, None])[:, 0],
                                       atol=1e-4, rtol=1e-4)
            assert torch.equal(res.per_sample["pairs/correct1"][i, k], logits.argmax(1) == t)
    assert res.methods == []  # neither the diagonal nor an OJFA choice
    with_choice = reuse_matrix(store, bank, jumps=[2], chosen=2, progress=False)
    assert with_choice.methods == ["ojfa"]
    torch.testing.assert_close(with_choice.metric("ojfa", "surprisal"), res.metric("jump:2", "surprisal"))


class FinalEverywhere:
    """A store view in which every level holds h^K: lenses that return their input are perfect."""

    def __init__(self, store):
        self.store = store
        self.num_blocks, self.hidden_size, self.fingerprint = store.num_blocks, store.hidden_size, store.fingerprint

    def targets(self, split):
        return self.store.targets(split)

    def indices(self, split):
        return self.store.indices(split)

    def iter_chunks(self, split, chunk_size, levels=None):
        for rows, h in self.store.iter_chunks(split, chunk_size=chunk_size):
            yield rows, h[:, -1:].expand_as(h).clone()


def test_perfect_lens_gets_precision_one_and_model_surprisal(setup):
    lm, store, _, _, _ = setup
    K, H = store.num_blocks, store.hidden_size
    identity_jtc = JTCLens(lm, LinearJTC(torch.cat([torch.eye(H), torch.zeros(1, H)])[None].repeat(K, 1, 1)))
    res = evaluate(FinalEverywhere(store), {"identity": LogitLens(lm), "jtc": identity_jtc}, progress=False)
    h_final = store.hidden("test")[:, K]
    own = -torch.log_softmax(lm.adapter.head(h_final), -1).gather(1, store.targets("test")[:, None])[:, 0]
    for method in ("identity", "jtc"):
        assert (res.metric(method, "precision@1") == 1).all()
        assert (res.metric(method, "precision@5") == 1).all()
        assert (res.metric(method, "kl") < 1e-4).all()
        torch.testing.assert_close(res.metric(method, "surprisal"), torch.full((K,), float(own.double().mean()),
                                   dtype=torch.float64), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(res.metric(method, "reverse_surprisal"), res.metric(method, "surprisal"),
                                   atol=1e-4, rtol=1e-5)
    assert res.final_surprisal == pytest.approx(float(own.double().mean()), rel=1e-5)


def test_results_do_not_depend_on_chunking(setup):
    lm, store, bank, joint, jtc = setup
    lenses = _lenses(lm, bank, joint, jtc)
    a = evaluate(store, lenses, chunk_size=5, block_rows=7, progress=False).merge(
        reuse_matrix(store, bank, chunk_size=5, block_rows=7, progress=False))
    b = evaluate(store, lenses, chunk_size=1000, progress=False).merge(reuse_matrix(store, bank, progress=False))
    for k, v in a.per_sample.items():
        if v.dtype == torch.bool or not v.is_floating_point():
            assert torch.equal(v, b.per_sample[k]), k
        else:
            torch.testing.assert_close(v, b.per_sample[k], atol=1e-4, rtol=1e-5, equal_nan=True)


def test_any_rows_of_any_split_score_as_their_split_does(setup):
    lm, store, bank, joint, jtc = setup
    lenses = _lenses(lm, bank, joint, jtc)
    test = store.indices("test")
    whole = evaluate(store, lenses, progress=False).merge(reuse_matrix(store, bank, progress=False))
    picked = test[[5, 0, 17, 3]]  # any order
    part = evaluate(store, lenses, rows=picked, progress=False).merge(
        reuse_matrix(store, bank, rows=picked, progress=False))
    at = torch.as_tensor([5, 0, 17, 3])
    for k, v in part.per_sample.items():
        ref = whole.per_sample[k].index_select(-1, at)
        if v.dtype == torch.bool or not v.is_floating_point():
            assert torch.equal(v, ref), k
        else:
            torch.testing.assert_close(v, ref, atol=1e-5, rtol=1e-5, equal_nan=True)
    train = evaluate(store, {"identity": LogitLens(lm)}, rows=store.indices("train"), progress=False)
    assert train.num_samples == len(store.indices("train")) and train.split == "rows"


def test_evaluate_checks_inputs(setup):
    lm, store, bank, _, _ = setup
    with pytest.raises(ConfigError):
        evaluate(store, {}, progress=False)
    with pytest.raises(ConfigError):
        evaluate(store, {"pairs": LogitLens(lm)}, progress=False)
    with pytest.raises(ConfigError):
        reuse_matrix(store, bank, jumps=[99], progress=False)
    with pytest.raises(ConfigError):
        reuse_matrix(store, LogitLens(lm), progress=False)

    class NaNStore(FinalEverywhere):
        def iter_chunks(self, split, chunk_size, levels=None):
            for rows, h in self.store.iter_chunks(split, chunk_size=chunk_size):
                h = h.clone()
                h[0, 1, 0] = float("nan")
                yield rows, h

    with pytest.raises(NumericalError, match="level 1"):
        evaluate(NaNStore(store), {"full": bank}, progress=False)


# ---- statistics -----------------------------------------------------------------------------------


def test_bootstrap_ci():
    x = np.random.default_rng(0).normal(1.0, 1.0, 500)
    ci = bootstrap_ci(x, n_boot=500, seed=1)
    assert ci.low < ci.mean < ci.high and ci.low < 1.0 < ci.high
    assert bootstrap_ci(x, n_boot=500, seed=1) == ci
    const = bootstrap_ci(torch.ones(10, dtype=torch.bool))
    assert const == (1.0, 1.0, 1.0)
    with pytest.raises(ConfigError):
        bootstrap_ci([])


def _index_draw_ci(x, n_boot, seed, alpha=0.05):
    """The percentile bootstrap as index draws: resample i is ``x[rng.integers(0, n, n)]``, drawn in
    blocks of ``max(1, 2^22 // n)`` resamples (the stream the shipped cards, the sweep and the frontier
    were computed with); the counts of :func:`bootstrap_counts` must give the same resamples."""
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, (1 << 22) // x.size)
    for start in range(0, n_boot, step):
        count = min(step, n_boot - start)
        means[start:start + count] = x[rng.integers(0, x.size, size=(count, x.size))].mean(1)
    return np.quantile(means, [alpha / 2, 1 - alpha / 2])


@pytest.mark.parametrize("n, n_boot, seed, alpha", [(1, 10, 0, 0.05), (7, 1000, 0, 0.05), (300, 500, 3, 0.1),
                                                    (10_001, 1000, 0, 0.05)])  # the last: 3 blocks of draws
def test_bootstrap_ci_is_the_index_draw_bootstrap(n, n_boot, seed, alpha):
    x = np.random.default_rng(n).normal(0.5, 1.0, n)
    for values in (x, x > 0.5):
        ci = bootstrap_ci(values, n_boot=n_boot, seed=seed, alpha=alpha)
        low, high = _index_draw_ci(np.asarray(values, dtype=np.float64), n_boot, seed, alpha)
        assert abs(ci.low - low) < 1e-12 and abs(ci.high - high) < 1e-12


def test_bootstrap_counts_are_resample_counts_in_bounded_blocks():
    n, n_boot = 10_001, 1000
    blocks = list(bootstrap_counts(n, n_boot, seed=2))
    assert [b.shape for b in blocks] == [(419, n), (419, n), (162, n)]  # at most 2^22 draws a block
    counts = np.concatenate(blocks)
    assert np.array_equal(counts.sum(1), np.full(n_boot, n)) and np.array_equal(counts, np.round(counts))
    # many rows under the same resamples: row by row equals all at once
    values = np.random.default_rng(0).random((3, n))
    together = bootstrap_intervals(values, n_boot, seed=2)
    for row, interval in zip(values, together):
        np.testing.assert_allclose(bootstrap_intervals(row[None], n_boot, seed=2)[0], interval, rtol=0, atol=1e-15)
    with pytest.raises(ConfigError):
        next(bootstrap_counts(0, 10))


def test_paired_test():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 300)
    same = paired_test(a, a)
    assert same.mean_diff == 0 and same.p_value == 1.0
    shifted = paired_test(a + 0.5, a, n_perm=2000)
    assert shifted.p_value < 0.01 and shifted.low > 0 and shifted.test == "sign-flip-permutation"
    noise = paired_test(a, a + rng.normal(0, 0.01, 300) - 0.0, n_perm=2000)
    assert noise.p_value > 0.001
    # McNemar exact: 5 discordant pairs all one way -> p = 2 / 2^5
    x = torch.tensor([True] * 5 + [False] * 5)
    y = torch.tensor([False] * 5 + [False] * 5)
    mc = paired_test(x, y)
    assert mc.test == "mcnemar-exact" and mc.p_value == pytest.approx(2 / 32) and mc.mean_diff == 0.5
    with pytest.raises(ConfigError):
        paired_test(a, a[:5])


def test_parameter_counts():
    p = parameter_counts(48, 1600, 16)
    assert p["ojfa"] == p["joint"] == 57_600 and p["full"] == 2_764_800 and p["identity"] == 0
    assert p["reduction_factor"] == 48 and p["jtc"] == 48 * (1600 * 1600 + 1600)
    assert parameter_counts(32, 4096, 40)["full"] == 11_010_048


def test_compile_kernel_source_equals_eager_reductions():
    """The function evaluate(compile=True) compiles computes what the eager in-place path computes."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(13, 300, generator=gen) * 4
    target = torch.randint(0, 300, (13,), generator=gen)
    target[0] = int(logits[0].argmax())
    for second in (False, True):
        a = _reduce_logits(logits.clone(), target, second)
        b = _reduce_inplace(logits.clone(), target, second)
        assert (a[-1] is None) == (b[-1] is None) == (not second)
        for x, y in zip(a, b):
            if x is not None:
                torch.testing.assert_close(x.to(y.dtype), y)
    assert torch.equal(b[-1], logits.topk(2, 1).values[:, 1])


@pytest.mark.skipif(not os.environ.get("ONEJUMP_TEST_COMPILE"),
                    reason="compiling takes ~5 s warm but up to ~1 min cold; set ONEJUMP_TEST_COMPILE=1")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_compiled_kernel_equals_eager(setup):
    lm, store, bank, _, _ = setup
    a = reuse_matrix(store, bank, jumps=[0, 1], compile=False, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = reuse_matrix(store, bank, jumps=[0, 1], compile=True, progress=False)
    assert not [w for w in caught if "evaluation kernel failed" in str(w.message)]  # no fallback to eager
    for k, v in a.per_sample.items():
        if v.dtype == torch.bool:
            assert torch.equal(v, b.per_sample[k]), k
        else:
            torch.testing.assert_close(v, b.per_sample[k], atol=1e-4, rtol=1e-5)


def _assert_same(a, b, rtol=1e-5):
    """Tokens, hits and ranks identical; values to float rounding (the head's GEMM over fewer rows rounds
    its last bit differently: a few ulps of the log-sum-exp, which a KL near 0 holds as absolute error)."""
    assert a.keys() == b.keys()
    for k, v in a.items():
        if v.dtype in (torch.bool, torch.int64):
            assert torch.equal(v, b[k]), k
        else:
            torch.testing.assert_close(v, b[k], rtol=rtol, atol=1e-5, equal_nan=True, msg=k)


def test_evaluation_does_not_depend_on_the_memory_budget(setup):
    lm, store, bank, joint, jtc = setup
    lenses = _lenses(lm, bank, joint, jtc)
    large = evaluate(store, lenses, memory_mib=4096, progress=False)
    tiny = evaluate(store, lenses, memory_mib=1e-3, progress=False)  # one sample per chunk, one row per block
    _assert_same(large.per_sample, tiny.per_sample)
    _assert_same(reuse_matrix(store, bank, memory_mib=4096, progress=False).per_sample,
                 reuse_matrix(store, bank, memory_mib=1e-3, progress=False).per_sample)


def test_working_set_is_bounded_by_the_budget():
    cpu = torch.device("cpu")
    for V in (96, 49_152, 262_144, 10**7):
        for mib in (1e-3, 16, 256, 4096):
            w = working_set(V, cpu, mib, chunk_size=10**6, block_rows=10**6)
            assert w.chunk >= 1 and w.full_block >= 1 and w.low_block >= 1
            if mib * 2**20 >= 2 * REFERENCE_COPIES * 4 * V:  # room for one sample: the budget holds
                assert (REFERENCE_COPIES * w.chunk + w.full_block) * 4 * V <= mib * 2**20
    assert working_set(262_144, cpu).chunk < working_set(49_152, cpu).chunk == 128
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ConfigError):
            working_set(96, cpu, bad)
    with pytest.raises(ConfigError):
        working_set(96, cpu, chunk_size=0)


def test_score_block_over_a_wide_logit_range():
    """Logits spanning hundreds of nats (the logit lens at level 0): the exp's floor changes nothing read."""
    gen = torch.Generator().manual_seed(5)
    V, rows = 3000, 6
    logits = torch.randn(rows, V, generator=gen) * 300
    final_logp = torch.log_softmax(torch.randn(2, V, generator=gen) * 3, -1)
    target, nxt = torch.randint(0, V, (2,), generator=gen), torch.tensor([7, -1])
    sample = torch.arange(rows) % 2
    ref = Reference(target, final_logp, (final_logp.exp() * final_logp).sum(1), nxt, exits=True)
    c1, c5, s, rev, kl, ent, ce, top1, p1, margin = score_block(logits.clone(), ref, sample)
    logq = torch.log_softmax(logits.double(), 1)
    t = target[sample]
    assert torch.equal(top1, logits.argmax(1)) and torch.equal(c1, top1 == t)
    assert torch.equal(c5, (logits.topk(5, 1).indices == t[:, None]).any(1))
    torch.testing.assert_close(s.double(), -logq.gather(1, t[:, None])[:, 0], rtol=1e-5, atol=1e-5)
    p_final = final_logp[sample].double().exp()
    want_kl = (p_final * (final_logp[sample].double() - logq)).sum(1)
    torch.testing.assert_close(kl.double(), want_kl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent.double(), -(logq.exp() * logq).sum(1), rtol=1e-5, atol=1e-5)
    want_ce = torch.where(nxt[sample] >= 0, -logq[:, 7], torch.tensor(float("nan"), dtype=torch.float64))
    torch.testing.assert_close(ce.double(), want_ce, rtol=1e-5, atol=1e-5, equal_nan=True)
