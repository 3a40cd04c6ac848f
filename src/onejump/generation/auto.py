"""``--exit auto``: measure early exit on a few prompts for this model and lens, then pick a mode.

Every candidate is run for real on the calibration prompts (the user's prompt and two generic
ones), right after plain greedy decoding of the same prompts, so the figures are this machine's:
speculative decoding at a few draft levels E and lengths g (its acceptance a, draft cost c and
verification cost v give the bound S of :mod:`.bound`), and, when the user accepts output that
may differ from greedy, confidence exits at a few thresholds (their token agreement with greedy).
The fastest candidate that keeps the requested quality wins if it is measurably faster than plain
greedy; otherwise plain greedy, with the best bound as the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError
from .bound import greedy_step_seconds, speculative_costs
from .common import GenerationResult, generate_greedy
from .confidence import generate_confidence
from .speculative import generate_speculative

CALIBRATION_PROMPTS = ("The history of the city begins in", "In mathematics, a group is a set")
#: A candidate must beat plain greedy by this factor: smaller gains are within timing noise.
MIN_GAIN = 1.05


@dataclass
class Candidate:
    """One measured configuration: how to run it, its bound, its measured speed-up and quality."""

    mode: str  # "speculative" or "confidence"
    params: dict[str, Any]
    bound: float
    achieved: float
    agreement: float = 1.0  # token agreement with greedy (1 for speculative: exact)
    acceptance: float | None = None

    def label(self) -> str:
        p = self.params
        if self.mode == "speculative":
            g = (f"g<={p['draft_len']} (p>={p['draft_threshold']})" if p.get("draft_threshold") is not None
                 else f"g={p['draft_len']}")
            return f"speculative E={p['draft_level']} {g}"
        return f"confidence lambda={p['lam']} at levels {','.join(map(str, p['exit_levels']))}"


@dataclass
class Choice:
    """The mode to run (``greedy``, ``speculative`` or ``confidence``), its keyword arguments, and why."""

    mode: str
    params: dict[str, Any]
    reason: str
    candidates: list[Candidate] = field(default_factory=list)


def choose(candidates: Sequence[Candidate], min_agreement: float = 1.0, min_gain: float = MIN_GAIN) -> Choice:
    """The fastest measured candidate whose agreement with greedy is at least ``min_agreement``.

    Speculative decoding is exact (agreement 1); confidence exits qualify only when the user's
    floor allows their measured agreement. Plain greedy wins unless the best is ``min_gain`` faster.
    """
    if not 0.0 < min_agreement <= 1.0:
        raise ConfigError(f"the agreement floor must be in (0, 1], got {min_agreement}")
    allowed = [c for c in candidates if c.agreement >= min_agreement]
    spec = [c for c in candidates if c.mode == "speculative"]
    best = max(allowed, key=lambda c: c.achieved, default=None)
    if best is not None and best.achieved >= min_gain:
        extra = (f"a={best.acceptance:.2f}, bound {best.bound:.2f}x" if best.mode == "speculative"
                 else f"agreement {best.agreement:.2f} >= {min_agreement:.2f}")
        return Choice(best.mode, dict(best.params),
                      f"{best.label()}: {best.achieved:.2f}x over plain greedy measured on "
                      f"calibration prompts ({extra})", list(candidates))
    top = max(spec, key=lambda c: c.bound, default=None)
    if top is None:
        why = "no early-exit candidate was measured"
    else:
        why = (f"no early exit pays on this model (bound {top.bound:.2f}x at best: {top.label()}, "
               f"a={top.acceptance:.2f})")
    inexact = [c for c in candidates if c.achieved >= min_gain and c.agreement < min_agreement]
    if inexact:
        fast = max(inexact, key=lambda c: c.achieved)
        why += (f"; {fast.label()} is {fast.achieved:.2f}x but agrees with greedy on {fast.agreement:.2f} of "
                f"tokens, below the floor {min_agreement:.2f}")
    return Choice("greedy", {}, f"plain greedy: {why}", list(candidates))


def _step(greedy: Sequence[GenerationResult]) -> float:
    steps = sum(len(r.tokens) - 1 for r in greedy)
    return sum(greedy_step_seconds(r) * (len(r.tokens) - 1) for r in greedy) / max(1, steps)


def warm_up(lm: Any, lens: Any, levels: Sequence[int]) -> None:
    """One call of the lens per level, so one-time set-up (a rank-r head built on first use) is not timed."""
    h = torch.zeros(1, lm.hidden_size, dtype=next(lm.model.parameters()).dtype, device=lm.device)
    with torch.no_grad():
        for level in levels:
            lens(h, level)


def default_levels(num_blocks: int) -> list[int]:
    """Draft / exit levels tried by default: two thirds and five sixths of the depth, and K-2."""
    K = num_blocks
    return sorted({lv for lv in ((2 * K) // 3, (5 * K) // 6, K - 2) if 1 <= lv <= K - 1})


def measure(lm: Any, lens: Any, prompts: Sequence[Sequence[int]], *, new_tokens: int = 10,
            levels: Sequence[int] | None = None, draft_lens: Sequence[int] = (1, 3),
            lambdas: Sequence[float] = (0.9, 0.99), with_confidence: bool = False,
            progress: Callable[[str], None] | None = None) -> list[Candidate]:
    """Run every candidate on ``prompts`` (each right after greedy on the same prompts) and measure it."""
    levels = list(levels) if levels is not None else default_levels(lm.num_blocks)
    say = progress or (lambda _msg: None)
    out: list[Candidate] = []

    def greedy_step() -> float:
        return _step([generate_greedy(lm, p, new_tokens) for p in prompts])

    warm_up(lm, lens, levels)
    for E in levels:
        say(f"speculative E={E}, g in {','.join(map(str, draft_lens))}")
        step = greedy_step()  # per level: the candidates are timed right after greedy on the same prompts
        for g in draft_lens:
            runs = [generate_speculative(lm, lens, p, new_tokens, draft_level=E, draft_len=g) for p in prompts]
            cost = speculative_costs(runs, step, g)
            out.append(Candidate("speculative", {"draft_level": E, "draft_len": g}, cost["bound"], cost["achieved"],
                                 1.0, cost["acceptance"]))
    if with_confidence:
        exit_levels = [lv for lv in levels if lv >= lm.num_blocks // 2] or levels
        for lam in lambdas:
            say(f"confidence lambda={lam}")
            greedy = [generate_greedy(lm, p, new_tokens) for p in prompts]
            step = _step(greedy)
            runs = [generate_confidence(lm, lens, p, new_tokens, lam=lam, exit_levels=exit_levels) for p in prompts]
            emitted = sum(len(r.tokens) - 1 for r in runs)
            decode = sum(r.decode_seconds for r in runs)
            same = sum(a == b for r, g in zip(runs, greedy) for a, b in zip(r.tokens, g.tokens))
            agreement = same / max(1, sum(len(g.tokens) for g in greedy))
            achieved = emitted * step / decode if decode > 0 else 0.0
            blocks = sum(r.layer_work for r in runs) / max(1, sum(len(r.tokens) for r in runs))
            out.append(Candidate("confidence", {"lam": lam, "exit_levels": exit_levels},
                                 lm.num_blocks / max(blocks, 1e-9), achieved, agreement))
    return out


def calibration_prompts(lm: Any, prompt_ids: Sequence[int]) -> list[list[int]]:
    """The user's prompt and the generic calibration prompts, as token ids."""
    extra = [list(lm.tokenizer(text)["input_ids"]) for text in CALIBRATION_PROMPTS]
    return [list(prompt_ids)] + [ids for ids in extra if ids]


def pick(lm: Any, lens: Any, prompt_ids: Sequence[int], *, min_agreement: float = 1.0, new_tokens: int = 10,
         progress: Callable[[str], None] | None = None, **kwargs: Any) -> Choice:
    """Measure the candidates on calibration prompts and :func:`choose` among them."""
    if not 0.0 < min_agreement <= 1.0:  # before minutes of measuring, not after
        raise ConfigError(f"the agreement floor must be in (0, 1], got {min_agreement}")
    prompts = calibration_prompts(lm, prompt_ids)
    candidates = measure(lm, lens, prompts, new_tokens=new_tokens, with_confidence=min_agreement < 1.0,
                         progress=progress, **kwargs)
    return choose(candidates, min_agreement)
