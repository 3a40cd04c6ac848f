"""Self-speculative decoding inside transformers' own ``model.generate``: a lens as the draft head.

:class:`LensAssistant` is an assistant model for transformers' assisted generation
(``model.generate(..., assistant_model=...)``, public API): it is the same model cut after block E,
its next token read by a lens at level E. It holds no weights of its own: its forward runs the
target model's blocks 1..E (the forward is stopped after block E, as :class:`.stages.ModelStages`
does) on the assistant's own KV cache and applies the lens. ``generate`` drafts with it and verifies
the drafts with the full model, so greedy output equals plain greedy decoding token for token (up
to float ties between batched and one-token forwards).

What transformers' machinery cannot do without private hooks: share one KV cache between draft and
verification. Its assistant keeps its own cache and the verification reruns blocks 1..E on the
drafted tokens; :func:`.speculative.generate_speculative` (LayerSkip's cache reuse) avoids both, so
its bound is higher at the same acceptance. A candidate generator object would need
``GenerationMixin._get_candidate_generator``, which is private.

:func:`generate_assisted` runs ``model.generate`` with the assistant and returns a
:class:`.common.GenerationResult` whose counters and timings feed the same speed-up bound
(:mod:`.bound`): the assistant counts its rounds and drafts, and forward hooks time the model's
verification calls.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import torch
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..errors import ConfigError
from .common import GenerationResult, cache_kwarg, check_common, check_lens, check_levels, new_cache
from .stages import ModelStages

_CACHE_FIELD = "cache" if "cache" in {f.name for f in fields(CausalLMOutputWithPast)} else "past_key_values"


class LensAssistant(PreTrainedModel, GenerationMixin):
    """Blocks 1..``draft_level`` of ``lm``'s model + ``lens`` at that level, as a transformers assistant model.

    ``draft_len``: tokens drafted per round (transformers' ``num_assistant_tokens``, constant schedule);
    ``draft_threshold``: optional lens probability below which a round's drafting stops
    (``assistant_confidence_threshold``). Use with batch size 1 (transformers' assisted generation
    requires it). Call :meth:`close` (or use it as a context manager) to remove its hook from the model.
    """

    base_model_prefix = ""
    # attention runs in the model's own blocks, with whatever implementation the model was loaded with
    _supports_sdpa = _supports_flash_attn = _supports_flex_attn = _supports_attention_backend = True

    def __init__(self, lm: Any, lens: Any, draft_level: int, *, draft_len: int = 4,
                 draft_threshold: float | None = None):
        check_levels([draft_level], lm.num_blocks, "draft level")
        check_lens(lm, lens)
        if isinstance(draft_len, bool) or not isinstance(draft_len, int) or draft_len < 1:
            raise ConfigError(f"draft length must be an integer >= 1, got {draft_len!r}")
        if draft_threshold is not None and not 0.0 <= draft_threshold < 1.0:
            raise ConfigError(f"draft threshold must be in [0, 1), got {draft_threshold}")
        super().__init__(copy.deepcopy(lm.model.config))
        object.__setattr__(self, "lm", lm)  # not a submodule: the assistant owns no weights
        object.__setattr__(self, "lens", lens)
        self.level = int(draft_level)
        self.generation_config = copy.deepcopy(lm.model.generation_config)
        self.generation_config.num_assistant_tokens = draft_len
        self.generation_config.num_assistant_tokens_schedule = "constant"
        self.generation_config.assistant_confidence_threshold = draft_threshold or 0.0
        self._stages = ModelStages(lm, self.level)
        self.stats = _Stats()

    @property
    def device(self) -> torch.device:
        return self.lm.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.lm.model.parameters()).dtype

    def close(self) -> None:
        self._stages.close()

    def __enter__(self) -> LensAssistant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Any = None, past_key_values: Any = None,
                logits_to_keep: int = 0, **kwargs: Any) -> CausalLMOutputWithPast:
        """Logits of the lens at level E for the last of ``input_ids`` (after the cached tokens).

        ``generate`` reads this signature: taking ``attention_mask`` and ``position_ids`` makes it slice
        the inputs to the uncached tokens. With one unpadded sequence the positions follow the cache,
        so neither is used here; the cache is ``cache`` (or ``past_key_values``, where transformers passes it
        under that name).
        """
        if input_ids.shape[0] != 1:
            raise ConfigError("a lens assistant drafts for one sequence at a time (batch size 1)")
        cache = cache if cache is not None else past_key_values
        t0 = time.perf_counter()
        hidden = self._stages.lower(input_ids[0].tolist(), cache)
        logits = self.lens(hidden[-1:], self.level).float()
        self.stats.forward(time.perf_counter() - t0, input_ids.shape[1])
        return CausalLMOutputWithPast(logits=logits.unsqueeze(0), **{_CACHE_FIELD: cache})

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """One drafting round (transformers calls this with the whole sequence so far)."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        name = cache_kwarg(self.lm.model)
        if kwargs.get(name) is None:  # the first round: the assistant's own cache, kept across rounds
            kwargs[name] = _draft_cache(self.lm)
        self.stats.round_starts(int(ids.shape[-1]))
        out = super().generate(*args, **kwargs)
        self.stats.round_ends(int(out.sequences.shape[-1]))
        return out


def _draft_cache(lm: Any) -> Any:
    """A KV cache like :func:`.common.new_cache`'s whose cropping skips the layers above the draft level.

    Only blocks 1..E ever write to the assistant's cache; transformers' sliding-window layers cannot be
    cropped before they hold anything, and the assisted-generation loop crops every layer each round.
    """
    return new_cache(lm, _DraftCache)


class _DraftCache(DynamicCache):
    def crop(self, *args: Any, **kwargs: Any) -> None:
        for layer in self.layers:
            if getattr(layer, "is_initialized", True):
                layer.crop(*args, **kwargs)


class _Stats:
    """Drafting rounds as the assistant sees them: where each starts, how many tokens it drafts, its seconds."""

    def __init__(self) -> None:
        self.starts: list[int] = []  # sequence length when round i begins
        self.drafted: list[int] = []
        self.seconds: list[float] = []  # the assistant's forwards in round i (round 0: the prompt's too)
        self.forwards = 0

    def round_starts(self, length: int) -> None:
        self.starts.append(length)
        self.seconds.append(0.0)

    def round_ends(self, length: int) -> None:
        self.drafted.append(length - self.starts[-1])

    def forward(self, seconds: float, tokens: int) -> None:
        self.seconds[-1] += seconds
        self.forwards += 1

    def accepted(self, end: int) -> list[int]:
        """Accepted drafts per round: a round keeps its accepted drafts and the model's token, so the next
        round starts that much later (``end``: where the last drafting round's tokens end)."""
        nexts = self.starts[1:] + [end]
        return [max(0, min(n, nxt - s - 1)) for s, n, nxt in zip(self.starts, self.drafted, nexts)]


class _Timer:
    """Seconds spent in the model's own forward calls (the verification), kept per call."""

    def __init__(self, model: Any):
        self.calls: list[float] = []
        self._t0: float | None = None
        self._handles = [model.register_forward_pre_hook(self._pre), model.register_forward_hook(self._post)]

    def _pre(self, *_args: Any) -> None:
        self._t0 = time.perf_counter()

    def _post(self, *_args: Any) -> None:
        if self._t0 is not None:
            self.calls.append(time.perf_counter() - self._t0)
        self._t0 = None

    def close(self) -> None:
        for h in self._handles:
            h.remove()


@torch.no_grad()
def generate_assisted(lm: Any, lens: Any, prompt_ids: Sequence[int], max_new_tokens: int, *, draft_level: int,
                      draft_len: int = 4, draft_threshold: float | None = None) -> GenerationResult:
    """Greedy ``model.generate`` with a :class:`LensAssistant` drafting (transformers' assisted generation).

    The first round is the prefill (the assistant's blocks 1..E on the prompt and its first drafts,
    the model's first call on the prompt and those drafts); the tokens it kept are
    ``prefill_tokens``. The counters (rounds, drafted, accepted, tested) and ``draft_seconds`` /
    ``verify_seconds`` (the assistant's and the model's calls) are those of the later rounds; the rest
    of ``generate``'s time is its own loop.
    """
    check_common(lm, prompt_ids, max_new_tokens)
    x = torch.tensor([list(prompt_ids)], device=lm.device)
    with LensAssistant(lm, lens, draft_level, draft_len=draft_len, draft_threshold=draft_threshold) as assistant:
        timer = _Timer(lm.model)
        t0 = time.perf_counter()
        try:
            out = lm.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                    max_new_tokens=max_new_tokens, assistant_model=assistant,
                                    pad_token_id=lm.tokenizer.pad_token_id, top_p=None, top_k=None, temperature=None)
        finally:
            timer.close()
        seconds = time.perf_counter() - t0
        stats = assistant.stats
    tokens = out[0, len(prompt_ids):].tolist()
    R = len(stats.starts)
    if R == 0 or not timer.calls:  # a single new token: the model's one call, nothing drafted
        return GenerationResult(tokens, seconds, _mode_name(draft_level, draft_len, draft_threshold),
                                exit_levels=[lm.num_blocks] * len(tokens), forwards=len(timer.calls),
                                prefill_seconds=seconds, prefill_tokens=len(tokens))
    # a last model call without drafting (one token left to make) adds its token after the last round
    end = int(out.shape[-1]) - (len(timer.calls) - R)
    accepted = stats.accepted(end)
    res = GenerationResult(tokens, seconds, _mode_name(draft_level, draft_len, draft_threshold))
    # round 0 is the prefill: the prompt's passes, whose model call also checks the first drafts
    res.prefill_seconds = stats.seconds[0] + timer.calls[0]
    res.prefill_tokens = min(len(tokens), accepted[0] + 1)
    res.draft_seconds = sum(stats.seconds[1:])
    res.verify_seconds = sum(timer.calls[1:])
    res.rounds = len(timer.calls) - 1
    res.drafted = sum(stats.drafted[1:])
    res.accepted = sum(accepted[1:])
    res.tested = sum(min(a + 1, n) for a, n in zip(accepted[1:], stats.drafted[1:]))
    res.checks = res.drafted
    res.forwards = stats.forwards + len(timer.calls)
    K, E = lm.num_blocks, draft_level
    res.layer_work = E * (len(prompt_ids) + sum(stats.drafted)) + K * (len(prompt_ids) + sum(stats.drafted) + R)
    res.exit_levels = [K] * len(tokens)
    return res


def _mode_name(draft_level: int, draft_len: int, draft_threshold: float | None) -> str:
    length = f"n<={draft_len},p>={draft_threshold}" if draft_threshold is not None else f"n={draft_len}"
    return f"generate+assistant(E={draft_level},{length})"


__all__ = ["LensAssistant", "generate_assisted"]
