"""A lens as transformers' assistant model: ``model.generate`` itself drafts with it, greedy output unchanged."""

import pytest
import torch

from onejump.errors import ConfigError
from onejump.generation import generate_reference
from onejump.generation.assistant import LensAssistant, generate_assisted
from onejump.generation.bound import speculative_costs
from onejump.lenses.base import LogitLens

from .test_generation import PROMPT, BankLens, OracleLens, _lm


@pytest.fixture(scope="module", params=["llama", "gpt2", "gemma3_text"])
def lm(request):
    return _lm(request.param)


@pytest.mark.parametrize("draft_level,draft_len,threshold", [(1, 1, None), (2, 3, None), (1, 4, 0.02)])
def test_generate_with_a_lens_assistant_equals_plain_greedy(lm, draft_level, draft_len, threshold):
    ref = generate_reference(lm, PROMPT, 16).tokens
    for lens in (LogitLens(lm), BankLens(lm)):
        res = generate_assisted(lm, lens, PROMPT, 16, draft_level=draft_level, draft_len=draft_len,
                                draft_threshold=threshold)
        assert res.tokens == ref
        assert res.drafted >= res.accepted >= 0 and res.tested <= res.drafted
        assert res.draft_seconds > 0 and res.verify_seconds > 0 and res.rounds >= 1


def test_the_assistant_is_an_ordinary_assistant_model(lm):
    """What a user writes: ``model.generate(..., assistant_model=LensAssistant(...))``."""
    x = torch.tensor([PROMPT])
    kwargs = dict(attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=12,
                  pad_token_id=lm.tokenizer.pad_token_id)
    plain = lm.model.generate(x, **kwargs)
    hooks = dict(lm.adapter.blocks[1]._forward_hooks)  # transformers' own output-recording hooks stay
    with LensAssistant(lm, BankLens(lm), 2, draft_len=3) as assistant:
        assisted = lm.model.generate(x, assistant_model=assistant, **kwargs)
        assert assistant.stats.forwards > 0  # it drafted
    assert torch.equal(assisted, plain)
    assert dict(lm.adapter.blocks[1]._forward_hooks) == hooks  # closing removed the stop hook


def test_acceptance_is_counted_from_the_rounds(lm):
    E, n = 2, 18
    ref = generate_reference(lm, PROMPT, n).tokens
    perfect = OracleLens(lm, PROMPT, ref, E, wrong_every=10**6)
    res = generate_assisted(lm, perfect, PROMPT, n, draft_level=E, draft_len=3)
    assert res.tokens == ref
    assert res.accepted == res.drafted > 0  # every draft right: all kept
    assert res.prefill_tokens == 4  # the first round kept its 3 drafts and the model's token
    flawed = OracleLens(lm, PROMPT, ref, E, wrong_every=3)
    res = generate_assisted(lm, flawed, PROMPT, n, draft_level=E, draft_len=4)
    assert res.tokens == ref and 0 < res.accepted < res.drafted
    costs = speculative_costs([res], step=res.verify_seconds / max(1, res.rounds), draft_len=4)
    assert 0 < costs["acceptance"] < 1 and costs["bound"] > 0


@pytest.mark.parametrize("kwargs,needle", [({"draft_level": 0}, "draft level"), ({"draft_len": 0}, "draft length"),
                                           ({"draft_threshold": 1.0}, "draft threshold")])
def test_bad_assistant_settings(lm, kwargs, needle):
    args = {"draft_level": 1, "draft_len": 2, **kwargs}
    with pytest.raises(ConfigError, match=needle):
        LensAssistant(lm, LogitLens(lm), args.pop("draft_level"), **args)
