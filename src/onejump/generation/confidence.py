"""Confidence early exit: emit each token from the first exit level whose lens is sure enough.

The model runs its own forward (so every architecture the adapter knows works); forward hooks
after the chosen exit levels read the newest position through the lens, and an exception ends
the forward when the confidence reaches lambda. Only the levels in ``exit_levels`` are checked,
so a lens that is rarely confident at shallow levels costs nothing there.

KV cache strategy: *deferred exact KV*. A token that exits at level k has KV entries only in
blocks 1..k. Its input is kept as *pending*; the next forward runs the pending tokens together
with the new one through the model (the cache is first cut back to the last length that is
complete in every block). So the cache always holds exactly the full model's keys and values for
the emitted text, no approximation; the price is that pending tokens' lower blocks are
recomputed, batched with the next token. ``layer_work_per_token`` counts that recomputation;
``mean_exit_level`` is where tokens exited.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
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

MEASURES = ("prob", "margin")


class _Exit(Exception):
    def __init__(self, level: int, token: int, confidence: float):
        super().__init__(level)
        self.level, self.token, self.confidence = level, token, confidence


def confidence_of(logits: torch.Tensor, measure: str) -> tuple[int, float]:
    """(top-1 token, its confidence): the top probability, or top-1 minus top-2 probability."""
    probs = torch.softmax(logits.float(), -1)
    top = torch.topk(probs, 2)
    conf = float(top.values[0] - top.values[1]) if measure == "margin" else float(top.values[0])
    return int(top.indices[0]), conf


class _ExitHooks:
    """Forward hooks after the chosen blocks that raise :class:`_Exit` when ``decide`` says so."""

    def __init__(self, lm: Any, levels: Sequence[int], decide: Callable[[torch.Tensor, int], tuple[int, float] | None]):
        self.lm, self.levels, self.decide = lm, sorted(set(levels)), decide
        self.active = True
        self.handles: list = []

    def __enter__(self) -> _ExitHooks:
        def make(level: int) -> Callable:
            def hook(_m: Any, _a: Any, output: Any) -> None:
                if not self.active:
                    return
                hidden = output[0] if isinstance(output, (tuple, list)) else output
                verdict = self.decide(hidden[:, -1], level)
                if verdict is not None:
                    raise _Exit(level, verdict[0], verdict[1])

            return hook

        self.handles = [self.lm.adapter.blocks[lv - 1].register_forward_hook(make(lv)) for lv in self.levels]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()


def check_confidence_args(lm: Any, lam: float, measure: str, exit_levels: Sequence[int] | None) -> list[int]:
    """The exit levels to check (default every level 1..K-1), after validating lambda and the measure."""
    if not 0.0 < lam <= 1.0:
        raise ConfigError(f"lambda must be in (0, 1], got {lam}")
    if measure not in MEASURES:
        raise ConfigError(f"unknown confidence measure '{measure}'; use prob or margin")
    levels = list(range(1, lm.num_blocks)) if exit_levels is None else list(exit_levels)
    if not levels:
        raise ConfigError("no exit levels given")
    check_levels(levels, lm.num_blocks, "exit level")
    return sorted(set(levels))


@torch.no_grad()
def generate_confidence(
    lm: Any,
    lens: Any,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    lam: float = 0.9,
    measure: str = "prob",
    exit_levels: Sequence[int] | None = None,
) -> GenerationResult:
    """Greedy decoding that emits each token from the first level in ``exit_levels`` whose confidence reaches ``lam``.

    ``lens(h, level) -> logits`` reads the exit levels. ``measure`` is ``"prob"`` (max softmax
    probability) or ``"margin"`` (top-1 minus top-2 probability). ``exit_levels`` defaults to every
    level 1..K-1. Ctrl-C raises :class:`GenerationInterrupted`.
    """
    check_common(lm, prompt_ids, max_new_tokens)
    check_lens(lm, lens)
    levels = check_confidence_args(lm, lam, measure, exit_levels)
    K, eos = lm.num_blocks, eos_ids(lm)

    res = GenerationResult([], 0.0, f"confidence(lambda={lam},{measure},levels={len(levels)})")

    def decide(h: torch.Tensor, level: int) -> tuple[int, float] | None:
        t = time.perf_counter()
        token, conf = confidence_of(lens(h, level)[-1], measure)
        res.lens_seconds += time.perf_counter() - t
        res.checks += 1
        return (token, conf) if conf >= lam else None

    t0 = time.perf_counter()
    cache = new_cache(lm)
    complete = 0  # cache length that is complete in every block
    inputs = list(prompt_ids)
    try:
        with _ExitHooks(lm, levels, decide) as hooks:
            hooks.active = False  # the prompt's next token comes from the full model
            while len(res.tokens) < max_new_tokens:
                truncate(cache, complete)
                res.forwards += 1
                try:
                    token = int(forward(lm, inputs, cache)[-1].argmax())
                    level = K
                except _Exit as ex:
                    token, level = ex.token, ex.level
                if not res.tokens:
                    res.prefill_seconds = time.perf_counter() - t0
                res.layer_work += level * len(inputs)
                if level == K:
                    complete += len(inputs)
                    inputs = []
                hooks.active = True
                res.tokens.append(token)
                res.exit_levels.append(level)
                if token in eos:
                    break
                inputs = inputs + [token]
    except KeyboardInterrupt:
        res.seconds = time.perf_counter() - t0
        raise GenerationInterrupted(res) from None
    res.seconds = time.perf_counter() - t0
    return res
