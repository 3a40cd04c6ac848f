"""Integration tests on the real offline models and corpus (installed by `make setup`)."""

import pytest
import torch

from onejump.corpus.loaders import load_sentences, split_sentences
from onejump.extract import extract
from onejump.generation import generate_reference, generate_speculative
from onejump.lenses.base import LogitLens
from onejump.model.loading import load_model

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smol():
    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="module")
def sentences():
    split = split_sentences(load_sentences("wikipedia-offline"), n_train=24, n_test=8, seed=0)
    return [s.text for s in split.train + split.test]


def _head_check(lm, text):
    ids = lm.tokenizer([text], return_tensors="pt").input_ids
    caps = {}
    handles = lm.adapter.level_hooks(lambda k, h: caps.__setitem__(k, h.detach()))
    try:
        out = lm.model(ids, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    K = lm.num_blocks
    torch.testing.assert_close(lm.adapter.head(caps[K]), out.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(caps[0], out.hidden_states[0])
    return K


def test_smollm2_head_and_levels(smol, sentences):
    assert _head_check(smol, sentences[0]) == 30
    assert smol.hidden_size == 576 and smol.adapter.vocab_size == 49152


def test_gemma3_head_and_levels(sentences):
    lm = load_model("gemma3-270m", device="cpu")
    assert _head_check(lm, sentences[1]) == 18
    assert lm.hidden_size == 640 and lm.adapter.vocab_size == 262144
    assert lm.adapter.logit_softcap is None or lm.adapter.logit_softcap > 0
    # the BOS token Gemma's tokenizer adds is never a sampled position
    from onejump.extract import sample_positions

    samples = sample_positions(lm.tokenizer, sentences[:8], [0] * 8, seed=0)
    assert all(s.position >= 1 for s in samples)


def test_real_extraction_matches_full_forward(smol, sentences, tmp_path):
    store = extract(smol, sentences, tmp_path / "s", splits=[0] * 24 + [1] * 8, seed=0, progress=False)
    hidden = store.hidden()
    for row in (0, 7, 31):
        sid, pos = int(store.meta("sample_id")[row]), int(store.meta("position")[row])
        ids = torch.tensor([smol.tokenizer(sentences[sid])["input_ids"]])
        out = smol.model(ids, output_hidden_states=True)
        for k in (0, 15, 29):
            torch.testing.assert_close(hidden[row, k], out.hidden_states[k][0, pos], rtol=1e-3, atol=1e-3)
        assert int(store.meta("target")[row]) == int(out.logits[0, pos].argmax())


def test_real_speculative_equals_generate(smol, sentences):
    ids = smol.tokenizer(" ".join(sentences[3].split()[:8]))["input_ids"]
    ref = generate_reference(smol, ids, 20).tokens
    for level, n in ((20, 4), (10, 2)):
        res = generate_speculative(smol, LogitLens(smol), ids, 20, draft_level=level, draft_len=n)
        assert res.tokens == ref
