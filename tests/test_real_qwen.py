"""The Qwen2.5-Coder aliases on their real weights (skipped unless `onejump prepare --model ...` cached them)."""

from __future__ import annotations

import gc

import pytest
import torch

from onejump.io import DEFAULT_CACHE
from onejump.model.chunked import CHUNKED_ALIASES
from onejump.model.loading import load_model

pytestmark = pytest.mark.real

TEXT = "The Amazon is the largest rainforest on Earth, and the river that runs through it"
# alias -> (K, H, FFN, attention heads, KV heads), from the SPEC
SHAPES = {"qwen2.5-coder-0.5b": (24, 896, 4864, 14, 2), "qwen2.5-coder-1.5b": (28, 1536, 8960, 12, 2)}


def _cached(alias: str) -> bool:
    spec = CHUNKED_ALIASES[alias]
    return (DEFAULT_CACHE / "models" / alias / "onejump.json").is_file() or (
        DEFAULT_CACHE / "gguf" / spec.filename).is_file()


@pytest.mark.parametrize("alias", list(SHAPES))
def test_qwen_head_and_levels(alias):
    if not _cached(alias):
        size = CHUNKED_ALIASES[alias].size / 1e9
        pytest.skip(f"{alias} is not in {DEFAULT_CACHE} (a {size:.1f} GB download): "
                    f"run `onejump prepare --model {alias}`")
    lm = load_model(alias, device="cpu", progress=False)
    K, H, ffn, heads, kv = SHAPES[alias]
    config = lm.model.config
    assert (lm.num_blocks, lm.hidden_size, config.intermediate_size) == (K, H, ffn)
    assert (config.num_attention_heads, config.num_key_value_heads, lm.adapter.vocab_size) == (heads, kv, 151936)
    # the untied output head is a weight of its own, and is what the adapter's head uses
    embed = lm.model.get_input_embeddings().weight
    assert lm.adapter.unembed is lm.model.lm_head and not config.tie_word_embeddings
    assert lm.model.lm_head.weight.data_ptr() != embed.data_ptr()
    assert not torch.equal(lm.model.lm_head.weight, embed)

    ids = lm.tokenizer([TEXT], return_tensors="pt").input_ids
    caps = {}
    handles = lm.adapter.level_hooks(lambda k, h: caps.__setitem__(k, h.detach()))
    try:
        with torch.no_grad():
            out = lm.model(ids, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    assert sorted(caps) == list(range(K + 1)) and len(out.hidden_states) == K + 1
    for k in range(K):
        torch.testing.assert_close(caps[k], out.hidden_states[k], rtol=0, atol=0)
    with torch.no_grad():
        logits = lm.adapter.head(caps[K])
        via_embedding = lm.adapter.apply_norm(caps[K]) @ embed.T
    torch.testing.assert_close(logits, out.logits, rtol=1e-5, atol=1e-5)
    # the test can tell the heads apart: the embedding as head gives other logits
    assert (via_embedding - out.logits).abs().max() > 1e-2
    caps.clear()
    del lm, out
    gc.collect()
