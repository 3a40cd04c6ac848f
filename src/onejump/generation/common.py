"""What every decoding loop shares: the result record, the KV cache, input checks, greedy baselines."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError, LensFileError


@dataclass
class GenerationResult:
    """Tokens and what it cost to produce them.

    Timings are wall-clock seconds: ``prefill_seconds`` is the prompt's forward (which gives the
    first token), ``draft_seconds`` / ``verify_seconds`` the two phases of speculative rounds.
    ``tested`` counts drafts compared with the full model's choice (those after an accepted prefix),
    so ``accepted / tested`` estimates the per-token acceptance of speculative decoding's bound.
    """

    tokens: list[int]
    seconds: float
    mode: str
    exit_levels: list[int] = field(default_factory=list)  # per emitted token (K = full model)
    layer_work: int = 0  # block applications x positions, over the whole run
    drafted: int = 0
    accepted: int = 0
    tested: int = 0
    rounds: int = 0
    forwards: int = 0
    prefill_seconds: float = 0.0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    lens_seconds: float = 0.0  # inside draft_seconds (speculative) or the forwards (confidence)
    checks: int = 0  # lens evaluations
    prefill_tokens: int = 1  # tokens emitted by the prefill (the prompt's forward gives one)

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else float("inf")

    @property
    def decode_seconds(self) -> float:
        """Time after the prompt's forward (the part that early exit can speed up)."""
        return self.seconds - self.prefill_seconds

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted drafts over drafted ones (drafts after a rejection count as not accepted)."""
        return self.accepted / self.drafted if self.drafted else None

    @property
    def acceptance(self) -> float | None:
        """Per-token acceptance a: accepted drafts over drafts that were compared (the bound's a)."""
        return self.accepted / self.tested if self.tested else None

    def summary(self, num_blocks: int) -> dict[str, Any]:
        """The JSON line ``onejump generate`` prints on stderr; every field, where it applies:

        - ``mode``: the decoding that ran (``greedy``, ``confidence`` or ``speculative``);
        - ``new_tokens``: tokens generated; ``seconds``: wall-clock of the whole run, the prompt's
          forward included; ``tokens_per_s``: their ratio; ``forwards``: calls of the model's forward;
        - ``layer_work_per_token``: block applications x positions over the whole run, divided by the
          new tokens. It counts the prefill (K blocks for every prompt token), so it exceeds K even for
          plain greedy decoding, by K x prompt / new tokens;
        - ``mean_exit_level``, ``early_exit_fraction`` (exit modes): the mean level the emitted tokens
          came from (K: the full model) and the share of them that exited before level K;
        - speculative only: ``drafted`` draft tokens proposed, ``accepted`` those the full model
          agreed with, ``tested`` those compared with the full model's choice (a draft after a
          rejection in its round is never compared); ``accepted_per_drafted`` = accepted / drafted;
          ``acceptance`` = accepted / tested, the per-token acceptance a of the speed-up bound
          (:mod:`onejump.generation.bound`); ``mean_draft_length`` = drafted / rounds.
        """
        n = max(1, len(self.tokens))
        out = {
            "mode": self.mode,
            "new_tokens": len(self.tokens),
            "seconds": round(self.seconds, 4),
            "tokens_per_s": round(self.tokens_per_second, 2),
            "forwards": self.forwards,
            "layer_work_per_token": round(self.layer_work / n, 2),
        }
        if self.exit_levels:
            out["mean_exit_level"] = round(sum(self.exit_levels) / len(self.exit_levels), 2)
            out["early_exit_fraction"] = round(sum(lv < num_blocks for lv in self.exit_levels) / n, 3)
        if self.drafted:
            out["drafted"] = self.drafted
            out["accepted"] = self.accepted
            out["tested"] = self.tested
            out["accepted_per_drafted"] = round(self.acceptance_rate or 0.0, 3)
            out["acceptance"] = round(self.acceptance or 0.0, 3)
            out["mean_draft_length"] = round(self.drafted / max(1, self.rounds), 2)
        return out


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C during generation; ``result`` holds the tokens produced until then."""

    def __init__(self, result: GenerationResult):
        super().__init__(f"interrupted after {len(result.tokens)} tokens")
        self.result = result


def new_cache(lm: Any, cache_class: type | None = None) -> Any:
    """An empty KV cache for ``lm`` (a ``DynamicCache``, or the subclass ``cache_class``)."""
    from transformers import DynamicCache

    cache_class = cache_class or DynamicCache
    try:
        cache = cache_class(config=lm.model.config)
    except TypeError:  # a transformers whose caches take no config
        cache = cache_class()
    if CAN_RECORD_PAST:
        for layer in getattr(cache, "layers", []):
            if hasattr(layer, "activate_past_recording"):
                layer.activate_past_recording()
    return cache


def _transformers_at_least(version: str) -> bool:
    import transformers
    from packaging.version import Version

    return Version(transformers.__version__) >= Version(version)


# Sliding-window cache layers can be rolled back past their window only from transformers 5.23 on
# (below 5.23, a 5.x layer that records its past returns more keys than the attention mask expects).
CAN_RECORD_PAST = _transformers_at_least("5.23.0")


def truncate(cache: Any, length: int) -> None:
    """Cut every layer of the cache back to ``length`` tokens (layers may differ after an exit)."""
    for layer in cache.layers:
        extra = layer.get_seq_length() - length
        if extra > 0:
            try:
                layer.crop(-extra)
            except RuntimeError as exc:  # a sliding-window layer past its window (transformers < 5.23)
                raise ConfigError(f"cannot roll back this model's sliding-window KV cache ({exc}); early exit "
                                  "beyond the window needs transformers >= 5.23") from None


def eos_ids(lm: Any) -> set[int]:
    eos = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = lm.tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def max_positions(lm: Any) -> int | None:
    """The model's context length in tokens (None when the config does not say)."""
    config = lm.model.config
    config = getattr(config, "text_config", None) or config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_common(lm: Any, prompt_ids: Sequence[int], max_new_tokens: int) -> None:
    """Refuse an empty prompt, a non-positive budget and a run past the model's context."""
    if len(prompt_ids) == 0:
        raise ConfigError("the prompt is empty")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max new tokens must be an integer >= 1, got {max_new_tokens!r}")
    limit = max_positions(lm)
    if limit is not None and len(prompt_ids) + max_new_tokens > limit:
        room = limit - len(prompt_ids)
        fix = f"use at most {room} new tokens" if room >= 1 else "shorten the prompt"
        raise ConfigError(f"the prompt ({len(prompt_ids)} tokens) + {max_new_tokens} new tokens exceed the model's "
                          f"context of {limit} positions; {fix}")


def check_levels(levels: Sequence[int], num_blocks: int, what: str) -> None:
    bad = [lv for lv in levels if isinstance(lv, bool) or not isinstance(lv, int) or not 1 <= lv <= num_blocks - 1]
    if bad:
        raise ConfigError(f"{what} {bad[0]!r} is outside 1..{num_blocks - 1}")


def check_lens(lm: Any, lens: Any) -> None:
    """Refuse a lens bound to a model with other weights."""
    other = getattr(lens, "lm", None)
    if other is not None and other is not lm and getattr(other, "fingerprint", None) != lm.fingerprint:
        raise LensFileError(f"the lens was made for another model (weights {other.fingerprint}, this model "
                            f"{lm.fingerprint})")


@functools.cache
def _cache_kwarg(model_class: type) -> str:
    import inspect

    try:
        params = inspect.signature(model_class.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - an unusual wrapper
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def cache_kwarg(model: Any) -> str:
    """The name under which ``model.forward`` takes the KV cache (``cache`` in newer transformers)."""
    return _cache_kwarg(type(model))


def run_model(lm: Any, ids: Sequence[int], cache: Any, logits_to_keep: int) -> Any:
    """One call of the model's own forward on ``ids`` after the cached tokens."""
    x = torch.tensor([list(ids)], device=lm.device)
    return lm.model(input_ids=x, use_cache=True, logits_to_keep=logits_to_keep, **{cache_kwarg(lm.model): cache})


def forward(lm: Any, ids: Sequence[int], cache: Any, *, all_logits: bool = False) -> torch.Tensor:
    """The full model on ``ids`` after the cached tokens; logits of the last (or every) position."""
    return run_model(lm, ids, cache, 0 if all_logits else 1).logits[0]


@torch.no_grad()
def generate_greedy(lm: Any, prompt_ids: Sequence[int], max_new_tokens: int) -> GenerationResult:
    """Plain greedy decoding with the same cache mechanics as the early-exit modes (the baseline).

    Ctrl-C raises :class:`GenerationInterrupted` with the tokens produced so far.
    """
    check_common(lm, prompt_ids, max_new_tokens)
    eos, K = eos_ids(lm), lm.num_blocks
    t0 = time.perf_counter()
    cache = new_cache(lm)
    res = GenerationResult([], 0.0, "greedy")
    inputs = list(prompt_ids)
    try:
        while len(res.tokens) < max_new_tokens:
            token = int(forward(lm, inputs, cache)[-1].argmax())
            if not res.tokens:
                res.prefill_seconds = time.perf_counter() - t0
            res.forwards += 1
            res.layer_work += K * len(inputs)
            res.tokens.append(token)
            res.exit_levels.append(K)
            if token in eos:
                break
            inputs = [token]
    except KeyboardInterrupt:
        res.seconds = time.perf_counter() - t0
        raise GenerationInterrupted(res) from None
    res.seconds = time.perf_counter() - t0
    return res


@torch.no_grad()
def generate_reference(lm: Any, prompt_ids: Sequence[int], max_new_tokens: int) -> GenerationResult:
    """``model.generate(do_sample=False)``: the reference for equality and speed."""
    check_common(lm, prompt_ids, max_new_tokens)
    x = torch.tensor([list(prompt_ids)], device=lm.device)
    t0 = time.perf_counter()
    out = lm.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=max_new_tokens,
                            pad_token_id=lm.tokenizer.pad_token_id, top_p=None, top_k=None, temperature=None)
    seconds = time.perf_counter() - t0
    tokens = out[0, len(prompt_ids):].tolist()
    return GenerationResult(tokens, seconds, "model.generate", exit_levels=[lm.num_blocks] * len(tokens),
                            layer_work=lm.num_blocks * (len(prompt_ids) + len(tokens)), forwards=len(tokens))
