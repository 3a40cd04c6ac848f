"""Lenses inside an nnsight trace: the levels read there are onejump's, and a lens applied there reads them."""

import pytest
import torch

from onejump.errors import ConfigError
from onejump.lenses import LogitLens, OneJump
from onejump.lenses.jumps import JumpBank
from onejump.model.loading import from_pretrained_model

from .tiny import tiny_model, tiny_tokenizer

nnsight = pytest.importorskip("nnsight")
from onejump.integrations.nnsight import lens_logits, level  # noqa: E402


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text"])
def test_levels_and_lenses_inside_a_trace(arch):
    lm = from_pretrained_model(tiny_model(arch), tiny_tokenizer(), name=f"tiny-{arch}")
    bank = JumpBank(1, lm.hidden_size, 4, levels=[-1], residual=True, seed=0).eval()
    jump = OneJump(lm, bank, trained_at=-1)
    ids = torch.tensor([[5, 17, 33, 8, 41]])
    K = lm.num_blocks
    traced = nnsight.NNsight(lm.model)
    levels = []  # nnsight hands back saved values; a list made outside the trace collects them
    with traced.trace(ids):
        for k in range(K + 1):  # in increasing order: nnsight refuses a level the model has run past
            levels.append(nnsight.save(level(traced, lm, k)))
    with traced.trace(ids):
        via_jump = nnsight.save(lens_logits(traced, lm, jump, 1))
        via_logit = nnsight.save(lens_logits(traced, lm, LogitLens(lm), 2))
    states = {}
    handles = lm.adapter.level_hooks(lambda lv, h: states.__setitem__(lv, h.detach().clone()))
    try:
        with torch.no_grad():
            lm.model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    for k in range(K + 1):
        assert torch.equal(levels[k], states[k]), k
    assert torch.allclose(via_jump, jump(states[1], 1), atol=1e-6)
    assert torch.allclose(via_logit, LogitLens(lm)(states[2], 2), atol=1e-6)
    with pytest.raises(ConfigError, match="level must be in"):
        level(traced, lm, K + 1)
