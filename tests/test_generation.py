"""Early-exit generation on tiny models: lossless speculation, exact deferred KV, bad input."""

import pytest
import torch

from onejump import generation
from onejump.errors import ConfigError
from onejump.generation import (
    generate_confidence,
    generate_greedy,
    generate_reference,
    generate_speculative,
    logit_lens_predictor,
)
from onejump.model.loading import from_pretrained_model

from .tiny import tiny_model, tiny_tokenizer

PROMPT = [5, 17, 33, 8, 41, 12]


@pytest.fixture(scope="module", params=["llama", "gpt2", "gemma3_text"])
def lm(request):
    if request.param == "gemma3_text" and not generation._CAN_RECORD_PAST:
        pytest.skip("rolling back a sliding-window cache past its window needs transformers >= 5.23")
    model = tiny_model(request.param)
    model.generation_config.eos_token_id = None  # random weights: never stop early
    return from_pretrained_model(model, tiny_tokenizer(), name=f"tiny-{request.param}")


def test_own_greedy_equals_generate(lm):
    ref = generate_reference(lm, PROMPT, 20).tokens
    assert generate_greedy(lm, PROMPT, 20).tokens == ref


@pytest.mark.parametrize("draft_level,draft_len", [(1, 1), (1, 4), (2, 3), (2, 8)])
def test_speculative_equals_generate(lm, draft_level, draft_len):
    ref = generate_reference(lm, PROMPT, 24).tokens
    res = generate_speculative(lm, logit_lens_predictor(lm), PROMPT, 24, draft_level=draft_level,
                               draft_len=draft_len)
    assert res.tokens == ref
    assert 0 <= res.accepted <= res.drafted


def test_speculative_with_perfect_drafts_accepts_everything(lm):
    ref = generate_reference(lm, PROMPT, 16).tokens
    full, V, n = PROMPT + ref, lm.adapter.vocab_size, 3
    calls = {"n": 0}

    def oracle(h, level):
        # round j drafts positions after the j bonus tokens: the i-th call proposes full[P + 1 + i + i // n]
        i = calls["n"]
        calls["n"] += 1
        out = torch.full((h.shape[0], V), -1e4)
        out[-1, full[min(len(PROMPT) + 1 + i + i // n, len(full) - 1)]] = 1e4
        return out

    res = generate_speculative(lm, oracle, PROMPT, 16, draft_level=1, draft_len=n)
    assert res.tokens == ref and res.acceptance_rate == 1.0
    assert res.forwards - res.drafted <= 16 // (n + 1) + 1  # one full forward per n + 1 tokens


def test_confidence_lambda_one_is_full_model(lm):
    ref = generate_reference(lm, PROMPT, 12).tokens
    res = generate_confidence(lm, logit_lens_predictor(lm), PROMPT, 12, lam=1.0)
    assert res.tokens == ref


def test_deferred_kv_is_exact(lm):
    """Exit with the right token at every other step: the full-model steps must still match greedy."""
    n = 16
    ref = generate_reference(lm, PROMPT, n).tokens
    V = lm.adapter.vocab_size
    state = {"step": 0}

    def oracle(h, level):
        if level == 1:
            state["step"] += 1
        step = state["step"]
        out = torch.zeros(h.shape[0], V)
        if step % 2 == 0:  # confident and right on even steps
            out[-1, ref[step]] = 1e4
        return out

    res = generate_confidence(lm, oracle, PROMPT, n, lam=0.5, exit_levels=[1])
    assert res.tokens == ref
    assert sum(lv < lm.num_blocks for lv in res.exit_levels) == (n - 1) // 2
    assert res.summary(lm.num_blocks)["layer_work_per_token"] < lm.num_blocks + 2


@pytest.mark.parametrize("kwargs,needle", [
    (dict(draft_level=0), "draft level"),
    (dict(draft_level=3), "draft level"),
    (dict(draft_level=1, draft_len=0), "draft length"),
])
def test_speculative_bad_input(lm, kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        generate_speculative(lm, logit_lens_predictor(lm), PROMPT, 5, **kwargs)


@pytest.mark.parametrize("lam", [0.0, -0.1, 1.5])
def test_confidence_bad_lambda(lm, lam):
    with pytest.raises(ConfigError, match="lambda"):
        generate_confidence(lm, logit_lens_predictor(lm), PROMPT, 5, lam=lam)


def test_empty_prompt_and_zero_tokens(lm):
    with pytest.raises(ConfigError, match="empty"):
        generate_greedy(lm, [], 5)
    with pytest.raises(ConfigError, match="max new tokens"):
        generate_speculative(lm, logit_lens_predictor(lm), PROMPT, 0, draft_level=1)
