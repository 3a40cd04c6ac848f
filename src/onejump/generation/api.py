"""One call for the library: greedy generation from a prompt, plain or with early exit through a lens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from .common import GenerationResult, generate_greedy
from .confidence import generate_confidence
from .speculative import generate_speculative


def generate(lm: Any, prompt: str | Sequence[int], lens: Any = None, *, exit: str = "none",
             max_new_tokens: int = 32, draft_level: int | None = None, draft_len: int = 4,
             draft_threshold: float | None = None, lam: float = 0.9, measure: str = "prob",
             exit_levels: Sequence[int] | None = None) -> tuple[str, GenerationResult]:
    """Generate greedily from ``prompt`` (text or token ids); returns (the new text, the result).

    ``exit``: ``"none"`` (plain greedy), ``"speculative"`` (draft with blocks 1..draft_level and the
    lens, verify with the rest of the model: the output equals greedy decoding) or ``"confidence"``
    (exit at the first of ``exit_levels`` whose lens confidence reaches ``lam``).
    """
    ids = list(lm.tokenizer(prompt)["input_ids"]) if isinstance(prompt, str) else list(prompt)
    if exit == "none":
        res = generate_greedy(lm, ids, max_new_tokens)
    elif lens is None:
        raise ConfigError(f"exit='{exit}' needs a lens (e.g. the OJFA jump)")
    elif exit == "speculative":
        level = draft_level if draft_level is not None else max(1, (2 * lm.num_blocks) // 3)
        res = generate_speculative(lm, lens, ids, max_new_tokens, draft_level=level, draft_len=draft_len,
                                   draft_threshold=draft_threshold)
    elif exit == "confidence":
        res = generate_confidence(lm, lens, ids, max_new_tokens, lam=lam, measure=measure, exit_levels=exit_levels)
    else:
        raise ConfigError(f"unknown exit mode '{exit}'; use none, speculative or confidence")
    return lm.tokenizer.decode(res.tokens), res
