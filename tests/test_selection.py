import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from onejump.errors import ConfigError, NumericalError
from onejump.evaluation.selection import Selection, reuse_scores, select_ojfa
from onejump.extract import extract
from onejump.lenses.jumps import JumpBank
from onejump.model.loading import from_pretrained_model

from .tiny import tiny_model, tiny_tokenizer

WORDS = "the cat sat on a mat while dogs ran far away under big red blue houses and green trees".split()


def random_sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))) for _ in range(n)]


class FakeStore:
    """An in-memory stand-in for HiddenStateStore: hidden (n, K+1, H), split labels, targets."""

    def __init__(self, hidden: torch.Tensor, split: np.ndarray | None = None, targets: torch.Tensor | None = None):
        self._hidden = hidden.float()
        n = hidden.shape[0]
        self._split = np.zeros(n, dtype=np.int64) if split is None else np.asarray(split)
        self._targets = torch.zeros(n, dtype=torch.long) if targets is None else targets
        self.path = "fake"
        self.fingerprint = "fake"

    @property
    def num_blocks(self) -> int:
        return self._hidden.shape[1] - 1

    @property
    def num_levels(self) -> int:
        return self._hidden.shape[1]

    @property
    def hidden_size(self) -> int:
        return self._hidden.shape[2]

    def indices(self, split=None):
        if split is None:
            return np.arange(self._hidden.shape[0])
        return np.nonzero(self._split == {"train": 0, "test": 1}[split])[0]

    def targets(self, split=None):
        return self._targets[torch.from_numpy(self.indices(split))]

    def hidden(self, split=None, levels=None, dtype=torch.float32):
        x = self._hidden[torch.from_numpy(self.indices(split))]
        return (x if levels is None else x[:, levels]).to(dtype)

    def iter_chunks(self, split=None, chunk_size=4096, levels=None, dtype=torch.float32):
        rows = self.indices(split)
        for start in range(0, len(rows), chunk_size):
            part = rows[start:start + chunk_size]
            x = self._hidden[torch.from_numpy(part)]
            yield part, (x if levels is None else x[:, levels]).to(dtype)


def identity_bn(bank: JumpBank) -> None:
    """Make every jump's eval-mode BatchNorm the identity."""
    with torch.no_grad():
        bank.running_mean.zero_()
        bank.running_var.fill_(1.0 - bank.eps)
        bank.bn_weight.fill_(1.0)
        bank.bn_bias.zero_()


def perfect_setup(n=40, K=3, H=12, r=3, seed=0, sign=1.0):
    """A store whose h^K = x @ A @ B at every level x, and a bank whose every jump is exactly that map."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, H, generator=gen)
    a, b = torch.randn(H, r, generator=gen), torch.randn(r, H, generator=gen)
    hidden = torch.stack([x] * K + [x @ a @ b], 1)
    bank = JumpBank(K, H, r)
    identity_bn(bank)
    with torch.no_grad():
        bank.A.copy_(a.expand(K, H, r))
        bank.B.copy_(sign * b.expand(K, r, H))
    return FakeStore(hidden), bank


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    lm = from_pretrained_model(tiny_model("llama"), tiny_tokenizer(), name="tiny-llama")
    sents = random_sentences(50, seed=1)
    store = extract(lm, sents, tmp_path_factory.mktemp("sel") / "s", splits=[0] * 40 + [1] * 10, seed=0,
                    shard_size=16, progress=False)
    return store


def random_bank(K, H, r, seed=0):
    bank = JumpBank(K, H, r, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        bank.running_mean.copy_(torch.randn(K, H, generator=gen) * 0.1)
        bank.running_var.copy_(torch.rand(K, H, generator=gen) + 0.5)
        bank.bn_weight.add_(torch.randn(K, H, generator=gen) * 0.1)
        bank.bn_bias.copy_(torch.randn(K, H, generator=gen) * 0.1)
    return bank.eval()


def naive_reuse(store, bank, split="train"):
    h = store.hidden(split)
    K = store.num_blocks
    out = torch.zeros(bank.num_jumps, K, dtype=torch.float64)
    for m in range(bank.num_jumps):
        for k in range(K):
            with torch.no_grad():
                c = torch.cosine_similarity(bank.apply(h[:, k], m).double(), h[:, K].double(), dim=-1)
            out[m, k] = (torch.sign(c) * c * c).mean()
    return out


def test_perfect_jump_scores_one_and_negated_minus_one():
    store, bank = perfect_setup()
    torch.testing.assert_close(reuse_scores(store, bank), torch.ones(3, 3, dtype=torch.float64), atol=1e-5, rtol=0)
    store, neg = perfect_setup(sign=-1.0)
    torch.testing.assert_close(reuse_scores(store, neg), -torch.ones(3, 3, dtype=torch.float64), atol=1e-5, rtol=0)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4), st.integers(2, 9))
def test_reuse_matches_naive_cosines(seed, r, chunk):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(23, 4, 10, generator=gen) * (1 + torch.rand(1, 4, 10, generator=gen) * 3)
    store = FakeStore(hidden)
    bank = random_bank(3, 10, r, seed=seed)
    got = reuse_scores(store, bank, chunk_size=chunk)
    torch.testing.assert_close(got, naive_reuse(store, bank), atol=1e-5, rtol=1e-5)
    assert ((got >= -1) & (got <= 1)).all()


def test_reuse_on_real_store_and_chunk_independence(tiny_store):
    bank = random_bank(tiny_store.num_blocks, tiny_store.hidden_size, 4, seed=3)
    a = reuse_scores(tiny_store, bank, chunk_size=5)
    b = reuse_scores(tiny_store, bank, chunk_size=1000)
    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(a, naive_reuse(tiny_store, bank), atol=1e-5, rtol=1e-5)


def test_select_ojfa(tiny_store):
    bank = random_bank(tiny_store.num_blocks, tiny_store.hidden_size, 4, seed=5)
    sel = select_ojfa(tiny_store, bank)
    assert sel.chosen == int(sel.matrix.mean(1).argmax())
    torch.testing.assert_close(sel.scores, sel.matrix.mean(1))
    assert math.isclose(float(sel.probabilities.sum()), 1.0, rel_tol=1e-9)
    assert sel.ranking()[0] == sel.chosen
    assert sel.num_samples == 40 and sel.split == "train"
    d = json.loads(json.dumps(sel.to_dict()))
    assert d["chosen"] == sel.chosen and len(d["matrix"]) == tiny_store.num_blocks


def test_softmax_is_stable_at_figure3_temperature():
    sel = Selection.from_matrix(torch.tensor([[1.0, 1.0], [-1.0, -1.0], [0.99, 0.99]]))
    p = sel.probabilities
    assert torch.isfinite(p).all() and sel.chosen == 0
    assert float(p[0]) > 0.99 and float(p[1]) == 0.0
    with pytest.raises(ConfigError):
        Selection.from_matrix(torch.ones(2, 2), temperature=0)


def test_nan_in_store_is_named():
    hidden = torch.randn(10, 4, 6)
    hidden[7, 2, 3] = float("nan")
    with pytest.raises(NumericalError, match="level 2, sample row 7"):
        reuse_scores(FakeStore(hidden), JumpBank(3, 6, 2))
