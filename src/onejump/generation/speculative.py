"""Lossless self-speculative greedy decoding with a lens as the draft head (LayerSkip style).

A round starts from the newest emitted token t (not yet in the cache). Draft: run t through blocks
1..E, read the next token from the lens at level E, feed it back, and so on, up to ``draft_len``
tokens, stopping early when the lens's top probability falls below ``draft_threshold`` (the
dynamic draft length; the unsure token is dropped). Verify: the drafted tokens' level-E states go
through blocks E+1..K only (their blocks 1..E are already cached), one batched call, and the
longest prefix the full model agrees with is kept, plus the full model's own next token. The
output equals greedy decoding of the full model token for token (up to float ties between
batched and one-token forwards).

With ``reuse_cache=False`` verification reruns the whole model on the drafted tokens after the
cache is cut back (the plain scheme, kept for comparison).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError
from .common import (
    GenerationInterrupted,
    GenerationResult,
    check_common,
    check_lens,
    check_levels,
    eos_ids,
    forward,
    new_cache,
    truncate,
)
from .stages import ModelStages


def _check_draft(lm: Any, lens: Any, draft_level: int, draft_len: int, draft_threshold: float | None) -> None:
    check_levels([draft_level], lm.num_blocks, "draft level")
    if isinstance(draft_len, bool) or not isinstance(draft_len, int) or draft_len < 1:
        raise ConfigError(f"draft length must be an integer >= 1, got {draft_len!r}")
    if draft_threshold is not None and not 0.0 <= draft_threshold < 1.0:
        raise ConfigError(f"draft threshold must be in [0, 1), got {draft_threshold}")
    check_lens(lm, lens)


def _mode_name(draft_level: int, draft_len: int, draft_threshold: float | None, reuse_cache: bool) -> str:
    length = f"n<={draft_len},p>={draft_threshold}" if draft_threshold is not None else f"n={draft_len}"
    return f"speculative(E={draft_level},{length}{'' if reuse_cache else ',no-reuse'})"


@torch.no_grad()
def generate_speculative(
    lm: Any,
    lens: Any,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    draft_level: int,
    draft_len: int = 4,
    draft_threshold: float | None = None,
    reuse_cache: bool = True,
) -> GenerationResult:
    """Self-speculative greedy decoding: draft with blocks 1..E + ``lens`` at level E, verify with the full model.

    ``lens(h, level) -> logits`` reads the draft token; ``draft_len`` is the most tokens drafted per
    round and ``draft_threshold`` (optional) the lens probability below which drafting stops. The
    output equals greedy decoding of the full model. Ctrl-C raises :class:`GenerationInterrupted`.
    """
    check_common(lm, prompt_ids, max_new_tokens)
    _check_draft(lm, lens, draft_level, draft_len, draft_threshold)
    K, E, eos = lm.num_blocks, draft_level, eos_ids(lm)
    clock = time.perf_counter
    t0 = clock()
    cache = new_cache(lm)
    res = GenerationResult([], 0.0, _mode_name(E, draft_len, draft_threshold, reuse_cache))
    try:
        with ModelStages(lm, E) as stages:
            token = int(forward(lm, list(prompt_ids), cache)[-1].argmax())  # the prompt gives the first token
            res.forwards += 1
            res.layer_work += K * len(prompt_ids)
            res.tokens.append(token)
            res.exit_levels.append(K)
            complete = len(prompt_ids)
            res.prefill_seconds = clock() - t0
            while len(res.tokens) < max_new_tokens and token not in eos:
                budget = min(draft_len, max_new_tokens - len(res.tokens) - 1)
                t1 = clock()
                lens_time = [0.0]
                inputs, states = _draft(lens, stages, cache, token, budget, draft_threshold, lens_time)
                t2 = clock()
                greedy = _verify(lm, stages, cache, inputs, states, complete, reuse_cache)
                res.verify_seconds += clock() - t2
                res.draft_seconds += t2 - t1
                res.lens_seconds += lens_time[0]
                res.checks += len(states)
                drafts = inputs[1:]
                accepted = 0
                while accepted < len(drafts) and drafts[accepted] == greedy[accepted]:
                    accepted += 1
                res.rounds += 1
                lower = len(inputs) if reuse_cache else len(states)  # passes through blocks 1..E
                res.forwards += lower + 1
                res.layer_work += E * lower + (K - E if reuse_cache else K) * len(inputs)
                res.drafted += len(drafts)
                res.accepted += accepted
                res.tested += min(accepted + 1, len(drafts))
                complete += 1 + accepted
                truncate(cache, complete)
                for i, t in enumerate(drafts[:accepted] + [greedy[accepted]]):
                    res.tokens.append(int(t))
                    res.exit_levels.append(E if i < accepted else K)
                    if t in eos or len(res.tokens) >= max_new_tokens:
                        break
                token = res.tokens[-1]
    except KeyboardInterrupt:
        res.seconds = clock() - t0
        raise GenerationInterrupted(res) from None
    res.seconds = clock() - t0
    return res


def _draft(lens: Any, stages: ModelStages, cache: Any, token: int, budget: int, threshold: float | None,
           timing: list[float]) -> tuple[list[int], list[torch.Tensor]]:
    """Draft up to ``budget`` tokens after ``token``: (verification inputs [token, d1..dn], their level-E states).

    Each input's level-E state is computed here (blocks 1..E enter the cache) except, when the
    draft ran to its full length, the last one's: verification adds it. An unsure draft is dropped,
    and then every input's state is already known. The lens's time is added to ``timing[0]``.
    """
    E = stages.level
    inputs, states = [token], []
    while len(inputs) - 1 < budget:
        h = stages.lower([inputs[-1]], cache)
        states.append(h)
        t0 = time.perf_counter()
        logits = lens(h, E)[-1].float()
        nxt = int(logits.argmax())
        sure = threshold is None or float(torch.softmax(logits, -1)[nxt]) >= threshold
        timing[0] += time.perf_counter() - t0
        if not sure:
            return inputs, states
        inputs.append(nxt)
    return inputs, states


def _verify(lm: Any, stages: ModelStages, cache: Any, inputs: list[int], states: list[torch.Tensor],
            complete: int, reuse_cache: bool) -> list[int]:
    """The full model's greedy choice after each of ``inputs``."""
    if reuse_cache:
        if len(states) < len(inputs):
            states = [*states, stages.lower([inputs[-1]], cache)]
        logits = stages.upper(torch.cat(states, 0), inputs, cache)
    else:
        truncate(cache, complete)
        logits = forward(lm, inputs, cache, all_logits=True)
    return logits.argmax(-1).tolist()
