"""Early-exit generation with one jump: confidence exits and lossless self-speculative decoding.

Both modes run the model's own forward (so every architecture the adapter knows works) and exit it
from a forward hook on the blocks: after block k the exit predictor (the OJFA jump + the head in
rank-r form, or any callable) looks at the newest position, and an exception ends the forward.

KV cache strategy (confidence exits): *deferred exact KV*. A token that exits at level k has KV
entries only in blocks 1..k. Its input is kept as *pending*; the next forward runs the pending
tokens together with the new one through the model (the cache is first cut back to the last
length that is complete in every block). So the cache always holds exactly the full model's keys
and values for the emitted text, no approximation; the price is that pending tokens' lower blocks
are recomputed, batched with the next token (cheap where decoding is memory-bound). The reported
``layer_work_per_token`` counts that recomputation; ``mean_exit_level`` is where tokens exited.

Speculative mode (LayerSkip-style self-speculation): draft ``draft_len`` tokens with blocks 1..E +
jump + head, then verify all of them with one full forward and accept the longest prefix that the
full model agrees with, plus the full model's next token. Greedy output equals ordinary greedy
decoding token for token (up to float ties between batched and one-token forwards).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ConfigError
from .model.loading import LoadedModel

#: An exit predictor maps (hidden states (n, H) at ``level``, level) to logits (n, V).
ExitPredictor = Callable[[torch.Tensor, int], torch.Tensor]


class _Exit(Exception):
    def __init__(self, level: int, token: int, confidence: float):
        super().__init__(level)
        self.level, self.token, self.confidence = level, token, confidence


@dataclass
class GenerationResult:
    """Tokens and what it cost to produce them."""

    tokens: list[int]
    seconds: float
    mode: str
    exit_levels: list[int] = field(default_factory=list)  # per emitted token (K = full model)
    layer_work: int = 0  # block applications x positions, over the whole run
    drafted: int = 0
    accepted: int = 0
    forwards: int = 0

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else float("inf")

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    def summary(self, num_blocks: int) -> dict[str, Any]:
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
            out["acceptance_rate"] = round(self.acceptance_rate or 0.0, 3)
        return out


def _new_cache(lm: LoadedModel) -> Any:
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=lm.model.config)
    except TypeError:  # older transformers
        cache = DynamicCache()
    if _CAN_RECORD_PAST:
        for layer in getattr(cache, "layers", []):
            if hasattr(layer, "activate_past_recording"):
                layer.activate_past_recording()
    return cache


def _transformers_at_least(version: str) -> bool:
    import transformers
    from packaging.version import Version

    return Version(transformers.__version__) >= Version(version)


# Sliding-window cache layers can be rolled back past their window only from transformers 5.23 on
# (earlier 5.x releases return more keys than the attention mask expects once recording is on).
_CAN_RECORD_PAST = _transformers_at_least("5.23.0")


def _truncate(cache: Any, length: int) -> None:
    """Cut every layer of the cache back to ``length`` tokens (layers may differ after an exit)."""
    for layer in cache.layers:
        extra = layer.get_seq_length() - length
        if extra > 0:
            try:
                layer.crop(-extra)
            except RuntimeError as exc:  # a sliding-window layer past its window, older transformers
                raise ConfigError(f"cannot roll back this model's sliding-window KV cache ({exc}); early exit "
                                  "beyond the window needs transformers >= 5.23") from None


def _eos_ids(lm: LoadedModel) -> set[int]:
    eos = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = lm.tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def _check_common(lm: LoadedModel, prompt_ids: Sequence[int], max_new_tokens: int) -> None:
    if len(prompt_ids) == 0:
        raise ConfigError("the prompt is empty")
    if max_new_tokens < 1:
        raise ConfigError(f"max new tokens must be >= 1, got {max_new_tokens}")


def _check_levels(levels: Sequence[int], num_blocks: int, what: str) -> None:
    bad = [lv for lv in levels if not 1 <= lv <= num_blocks - 1]
    if bad:
        raise ConfigError(f"{what} {bad[0]} is outside 1..{num_blocks - 1}")


class _ExitHooks:
    """Forward hooks after the chosen blocks that raise :class:`_Exit` when ``decide`` says so."""

    def __init__(self, lm: LoadedModel, levels: Sequence[int],
                 decide: Callable[[torch.Tensor, int], tuple[int, float] | None]):
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


def _forward(lm: LoadedModel, ids: Sequence[int], cache: Any, *, all_logits: bool = False) -> torch.Tensor:
    x = torch.tensor([list(ids)], device=lm.device)
    out = lm.model(input_ids=x, past_key_values=cache, use_cache=True,
                   logits_to_keep=0 if all_logits else 1)
    return out.logits[0]


@torch.no_grad()
def generate_greedy(lm: LoadedModel, prompt_ids: Sequence[int], max_new_tokens: int) -> GenerationResult:
    """Plain greedy decoding with the same cache mechanics as the early-exit modes (a baseline)."""
    _check_common(lm, prompt_ids, max_new_tokens)
    eos, K = _eos_ids(lm), lm.num_blocks
    t0 = time.perf_counter()
    cache = _new_cache(lm)
    res = GenerationResult([], 0.0, "greedy")
    inputs = list(prompt_ids)
    while len(res.tokens) < max_new_tokens:
        token = int(_forward(lm, inputs, cache)[-1].argmax())
        res.forwards += 1
        res.layer_work += K * len(inputs)
        res.tokens.append(token)
        res.exit_levels.append(K)
        if token in eos:
            break
        inputs = [token]
    res.seconds = time.perf_counter() - t0
    return res


@torch.no_grad()
def generate_confidence(
    lm: LoadedModel,
    predictor: ExitPredictor,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    lam: float = 0.9,
    measure: str = "prob",
    exit_levels: Sequence[int] | None = None,
) -> GenerationResult:
    """Greedy decoding that emits each token from the first exit level whose confidence reaches ``lam``.

    ``measure`` is ``"prob"`` (max softmax probability) or ``"margin"`` (top-1 minus top-2
    probability). ``exit_levels`` defaults to every level 1..K-1. See the module docstring for the
    KV cache strategy.
    """
    _check_common(lm, prompt_ids, max_new_tokens)
    if not 0.0 < lam <= 1.0:
        raise ConfigError(f"lambda must be in (0, 1], got {lam}")
    if measure not in ("prob", "margin"):
        raise ConfigError(f"unknown confidence measure '{measure}'; use prob or margin")
    K = lm.num_blocks
    levels = list(range(1, K)) if exit_levels is None else list(exit_levels)
    _check_levels(levels, K, "exit level")
    eos = _eos_ids(lm)

    def decide(h: torch.Tensor, level: int) -> tuple[int, float] | None:
        probs = torch.softmax(predictor(h.float(), level)[-1], -1)
        top = torch.topk(probs, 2)
        conf = float(top.values[0] - top.values[1]) if measure == "margin" else float(top.values[0])
        return (int(top.indices[0]), conf) if conf >= lam else None

    t0 = time.perf_counter()
    cache = _new_cache(lm)
    res = GenerationResult([], 0.0, f"confidence(lambda={lam},{measure})")
    complete = 0  # cache length that is complete in every block
    inputs = list(prompt_ids)
    with _ExitHooks(lm, levels, decide) as hooks:
        hooks.active = False  # the prompt's next token comes from the full model
        while len(res.tokens) < max_new_tokens:
            _truncate(cache, complete)
            res.forwards += 1
            try:
                token = int(_forward(lm, inputs, cache)[-1].argmax())
                level = K
            except _Exit as ex:
                token, level = ex.token, ex.level
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
    res.seconds = time.perf_counter() - t0
    return res


@torch.no_grad()
def generate_speculative(
    lm: LoadedModel,
    predictor: ExitPredictor,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    draft_level: int,
    draft_len: int = 4,
) -> GenerationResult:
    """Self-speculative greedy decoding: draft with blocks 1..E + jump + head, verify with the full model.

    The output equals greedy decoding of the full model token for token.
    """
    _check_common(lm, prompt_ids, max_new_tokens)
    K = lm.num_blocks
    _check_levels([draft_level], K, "draft level")
    if draft_len < 1:
        raise ConfigError(f"draft length must be >= 1, got {draft_len}")
    eos = _eos_ids(lm)

    def decide(h: torch.Tensor, level: int) -> tuple[int, float]:
        return int(predictor(h.float(), level)[-1].argmax()), 1.0

    t0 = time.perf_counter()
    cache = _new_cache(lm)
    res = GenerationResult([], 0.0, f"speculative(E={draft_level},n={draft_len})")
    # the prompt through the full model gives the first token
    token = int(_forward(lm, list(prompt_ids), cache)[-1].argmax())
    res.forwards += 1
    res.layer_work += K * len(prompt_ids)
    complete = len(prompt_ids)
    res.tokens.append(token)
    res.exit_levels.append(K)
    with _ExitHooks(lm, [draft_level], decide) as hooks:
        while len(res.tokens) < max_new_tokens and token not in eos:
            # draft: blocks 1..E only, one token at a time (each forward stops at the hook)
            hooks.active = True
            drafts: list[int] = []
            last = token
            budget = min(draft_len, max_new_tokens - len(res.tokens))
            for _ in range(budget):
                try:
                    _forward(lm, [last], cache)
                    raise RuntimeError("draft forward did not stop at the draft level")
                except _Exit as ex:
                    last = ex.token
                drafts.append(last)
                res.forwards += 1
                res.layer_work += draft_level
            # verify: the full model on [token, d1..dn] in one forward
            hooks.active = False
            _truncate(cache, complete)
            logits = _forward(lm, [token, *drafts], cache, all_logits=True)
            res.forwards += 1
            res.layer_work += K * (len(drafts) + 1)
            greedy = logits.argmax(-1).tolist()
            accepted = 0
            while accepted < len(drafts) and drafts[accepted] == greedy[accepted]:
                accepted += 1
            res.drafted += len(drafts)
            res.accepted += accepted
            new = drafts[:accepted] + [greedy[accepted]]
            complete += 1 + accepted
            _truncate(cache, complete)
            for i, t in enumerate(new):
                if len(res.tokens) >= max_new_tokens:
                    break
                res.tokens.append(int(t))
                res.exit_levels.append(draft_level if i < accepted else K)
                if t in eos:
                    break
            token = res.tokens[-1]
    res.seconds = time.perf_counter() - t0
    return res


@torch.no_grad()
def generate_reference(lm: LoadedModel, prompt_ids: Sequence[int], max_new_tokens: int) -> GenerationResult:
    """``model.generate(do_sample=False)``: the reference for equality and speed."""
    _check_common(lm, prompt_ids, max_new_tokens)
    x = torch.tensor([list(prompt_ids)], device=lm.device)
    t0 = time.perf_counter()
    out = lm.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=max_new_tokens,
                            pad_token_id=lm.tokenizer.pad_token_id, top_p=None, top_k=None, temperature=None)
    seconds = time.perf_counter() - t0
    tokens = out[0, len(prompt_ids):].tolist()
    return GenerationResult(tokens, seconds, "model.generate", exit_levels=[lm.num_blocks] * len(tokens),
                            layer_work=lm.num_blocks * (len(prompt_ids) + len(tokens)), forwards=len(tokens))


def logit_lens_predictor(lm: LoadedModel) -> ExitPredictor:
    """The identity shortcut as an exit predictor (head(h^k)); mostly for tests and comparisons."""
    return lambda h, level: lm.adapter.head(h.to(next(lm.model.parameters()).dtype)).float()


def jump_predictor(lm: LoadedModel, jump: Any) -> ExitPredictor:
    """A lens (e.g. :class:`onejump.OneJump`) as an exit predictor: ``lens(h, level)`` in float32.

    A plain low-rank jump reads its logits through the exact rank-r head: O(r(H+V)) per vector.
    """
    from .errors import ShortcutError

    if jump.lm.fingerprint != lm.fingerprint:
        raise ShortcutError(f"the lens was trained for another model (weights {jump.lm.fingerprint}, "
                            f"this model {lm.fingerprint})")
    jump = jump.to(lm.device)
    return lambda h, level: jump(h, level).float()


def generate(lm: LoadedModel, prompt: str | Sequence[int], lens: Any = None, *, exit: str = "none",
             max_new_tokens: int = 32, draft_level: int | None = None, draft_len: int = 4, lam: float = 0.9,
             measure: str = "prob") -> tuple[str, GenerationResult]:
    """Greedy generation from a prompt, plain or with early exit through ``lens``.

    ``exit``: ``"none"`` (plain greedy), ``"speculative"`` (draft with blocks 1..draft_level and the
    lens, verify with the whole model: the output equals greedy decoding) or ``"confidence"`` (exit at
    the first level whose lens confidence reaches ``lam``). Returns (the new text, the result).
    """
    ids = list(lm.tokenizer(prompt)["input_ids"]) if isinstance(prompt, str) else list(prompt)
    if exit == "none":
        res = generate_greedy(lm, ids, max_new_tokens)
    elif lens is None:
        raise ConfigError(f"exit='{exit}' needs a lens (e.g. the OJFA jump)")
    elif exit == "speculative":
        level = draft_level if draft_level is not None else max(1, (2 * lm.num_blocks) // 3)
        res = generate_speculative(lm, jump_predictor(lm, lens), ids, max_new_tokens, draft_level=level,
                                   draft_len=draft_len)
    elif exit == "confidence":
        res = generate_confidence(lm, jump_predictor(lm, lens), ids, max_new_tokens, lam=lam, measure=measure)
    else:
        raise ConfigError(f"unknown exit mode '{exit}'; use none, speculative or confidence")
    return lm.tokenizer.decode(res.tokens), res
