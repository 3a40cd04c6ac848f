"""Speculative decoding's speed-up bound and the measured quantities that enter it.

Greedy speculative decoding (Leviathan et al. 2023) with per-token acceptance a, draft length g,
draft cost c per drafted token and verification cost v per round, both as fractions of one step
of plain greedy decoding, speeds decoding up by at most

    S = (1 - a^(g+1)) / ((1 - a) (g c + v)).

Here every quantity is measured on the run itself: a = accepted / compared drafts, c = time in
drafting per drafted token, v = time in verification per round, against the time per token of our
own greedy loop on the same prompts. The bound is what the run would reach if nothing but its
forwards cost time and acceptances were independent; ``achieved / bound`` is what the
implementation delivers of it.
"""

from __future__ import annotations

from typing import Any

from .common import GenerationResult


def speculative_bound(a: float, g: int | float, c: float, v: float) -> float:
    """S = (1 - a^(g+1)) / ((1 - a)(g c + v)) (expected tokens per round over cost per round)."""
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"acceptance must be in [0, 1], got {a}")
    tokens = g + 1 if a >= 1.0 else (1.0 - a ** (g + 1)) / (1.0 - a)
    return tokens / (g * c + v)


def greedy_step_seconds(greedy: GenerationResult) -> float:
    """Seconds per token of plain greedy decoding after the prompt's forward."""
    steps = len(greedy.tokens) - 1
    if steps < 1:
        raise ValueError("need at least two greedy tokens to time a decoding step")
    return greedy.decode_seconds / steps


def decode_seconds_per_token(res: GenerationResult) -> float:
    return res.decode_seconds / max(1, len(res.tokens) - res.prefill_tokens)


def speculative_costs(runs: list[GenerationResult], step: float, draft_len: int | None) -> dict[str, Any]:
    """a, c, v, the bound and the achieved speed-up of speculative runs against a greedy step of ``step`` s.

    ``draft_len`` is the fixed draft length g (the formula's); ``None`` for a dynamic draft length,
    whose bound counts the measured rounds instead (tokens per round over cost per round).
    """
    drafted = sum(r.drafted for r in runs)
    rounds = sum(r.rounds for r in runs)
    tested = sum(r.tested for r in runs)
    accepted = sum(r.accepted for r in runs)
    emitted = sum(len(r.tokens) - r.prefill_tokens for r in runs)  # after the prefill's token(s)
    checks = sum(r.checks for r in runs)
    draft_s = sum(r.draft_seconds for r in runs)
    verify_s = sum(r.verify_seconds for r in runs)
    lens_s = sum(r.lens_seconds for r in runs)
    decode_s = sum(r.decode_seconds for r in runs)
    a = accepted / tested if tested else 0.0
    c = draft_s / max(1, drafted) / step
    v = verify_s / max(1, rounds) / step
    bound_rounds = emitted / ((draft_s + verify_s) / step) if draft_s + verify_s > 0 else 0.0
    bound = speculative_bound(a, draft_len, c, v) if draft_len is not None else bound_rounds
    achieved = (emitted * step) / decode_s if decode_s > 0 else 0.0
    return {
        "acceptance": round(a, 4), "accepted_per_drafted": round(accepted / max(1, drafted), 4),
        "mean_draft_length": round(drafted / max(1, rounds), 3),
        "tokens_per_round": round(emitted / max(1, rounds), 3),
        "c": round(c, 4), "v": round(v, 4),
        "c_lens": round(lens_s / max(1, checks) / step, 4),
        "bound": round(bound, 4), "bound_rounds": round(bound_rounds, 4),
        "achieved": round(achieved, 4),
        "achieved_of_bound": round(achieved / bound, 4) if bound > 0 else None,
        "overhead_fraction": round(1 - (draft_s + verify_s) / decode_s, 4) if decode_s > 0 else None,
    }
