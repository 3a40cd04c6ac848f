"""The frontier's two pre-registered bars: chosen on held-out rows before the test split is read, checked once.

- **compact**: a lens with at most 2% of the tuned lens's parameters keeps at least 0.97x its mean
  precision@1, at least 0.9x at every exit level 1..K-1, and at most 1.1x its mean KL;
- **one jump**: one set of parameters for every exit level, at most 2x the paper OJFA's parameters
  (``2Hr + 4H``, r = floor(H/100)), at least 0.9x the mean precision@1, at least 0.8x at every level
  1..K-1, at most 1.25x the mean KL.

Registration (:func:`preregister`) reads only an evaluation on held-out train rows (rows no candidate
trained on): the baseline is the tuned lens with the lowest held-out mean KL (the objective every tuned
lens is trained on, and tuned-lens's headline metric), and each bar's lens is the eligible candidate
(within the bar's parameter budget, and for the one-jump bar one set of parameters at every level)
with the highest held-out mean precision@1 (ties: fewer parameters). The check (:func:`check`) then
reads the test split once per bar, through :func:`~onejump.evaluation.tuned_bar.tuned_bar`: every
part is a paired per-sample test of a margin ``d_i`` (95% bootstrap CI, sign-flip permutation test),
per exit level for the every-level part. Verdict: **held** when every part's CI lies above 0,
**missed** when some part's CI lies below 0 (or no lens is eligible), **inconclusive** otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError
from .tuned_bar import tuned_bar


@dataclass(frozen=True)
class Bar:
    """One bar: its parameter budget and the three ratios to the tuned lens (see the module doc)."""

    name: str
    mean_ratio: float
    level_ratio: float
    kl_ratio: float
    tuned_fraction: float | None = None  # parameters at most this fraction of the tuned lens's
    ojfa_multiple: float | None = None  # parameters at most this multiple of the paper OJFA's
    one_set: bool = False  # one set of parameters for every exit level

    def budget(self, tuned_parameters: int, ojfa_parameters: int) -> float:
        """The most parameters a lens may hold to be a candidate."""
        limits = [float("inf")]
        if self.tuned_fraction is not None:
            limits.append(self.tuned_fraction * tuned_parameters)
        if self.ojfa_multiple is not None:
            limits.append(self.ojfa_multiple * ojfa_parameters)
        return min(limits)


BARS: tuple[Bar, ...] = (
    Bar("compact", mean_ratio=0.97, level_ratio=0.9, kl_ratio=1.1, tuned_fraction=0.02),
    Bar("one-jump", mean_ratio=0.9, level_ratio=0.8, kl_ratio=1.25, ojfa_multiple=2.0, one_set=True),
)


@dataclass(frozen=True)
class Candidate:
    """A lens the bars may choose: its parameters held at inference, and whether it holds one set of
    parameters for every exit level (a single jump) or one per level."""

    name: str
    parameters: int
    one_set: bool


def _held_out_means(result: Any, name: str) -> dict[str, float]:
    out = {"mean_precision@1": float(result.metric(name, "precision@1").mean())}
    if result.has(name, "kl"):
        out["mean_kl"] = float(result.metric(name, "kl").mean())
    return out


def preregister(held_out: Any, candidates: list[Candidate], tuned: list[Candidate], ojfa_parameters: int,
                bars: tuple[Bar, ...] = BARS) -> dict[str, Any]:
    """The baseline and each bar's lens, chosen from ``held_out``, an evaluation of every candidate and
    tuned lens on held-out train rows (``evaluate(store, lenses, rows=...)``; a test-split evaluation
    is refused). Returns the registration :func:`check` reads."""
    if getattr(held_out, "split", None) != "rows":
        raise ConfigError(f"the bars are chosen on held-out rows, not on the '{held_out.split}' split")
    if not tuned:
        raise ConfigError("the bars need a tuned lens to compare with")
    for c in [*candidates, *tuned]:
        if c.name not in held_out.lens_names or not held_out.has(c.name, "kl"):
            raise ConfigError(f"lens '{c.name}' has no held-out precision@1 and KL")
    scores = {c.name: _held_out_means(held_out, c.name) for c in [*candidates, *tuned]}
    base = min(tuned, key=lambda c: (scores[c.name]["mean_kl"], c.parameters, c.name))
    out: dict[str, Any] = {"held_out_rows": int(held_out.num_samples), "baseline": base.name,
                           "baseline_parameters": base.parameters, "ojfa_parameters": int(ojfa_parameters),
                           "baseline_rule": "lowest held-out mean KL among the tuned lenses",
                           "choice_rule": "highest held-out mean precision@1 among eligible lenses "
                                          "(ties: fewer parameters)",
                           "held_out": scores, "bars": {}}
    for bar in bars:
        budget = bar.budget(base.parameters, ojfa_parameters)
        eligible = [c for c in candidates if 0 < c.parameters <= budget and (c.one_set or not bar.one_set)]
        chosen = max(eligible, key=lambda c: (scores[c.name]["mean_precision@1"], -c.parameters, c.name),
                     default=None)
        out["bars"][bar.name] = {**asdict(bar), "budget": budget, "eligible": [c.name for c in eligible],
                                 "chosen": chosen.name if chosen else None,
                                 "chosen_parameters": chosen.parameters if chosen else None}
    return out


def _part_verdict(part: dict[str, Any]) -> str:
    low, high = part["ci"]
    return "held" if low > 0 else "missed" if high < 0 else "inconclusive"


def verdict(parts: list[str]) -> str:
    """held when every part held, missed when one missed, inconclusive otherwise."""
    if "missed" in parts:
        return "missed"
    return "held" if parts and all(p == "held" for p in parts) else "inconclusive"


def check(test: Any, registration: dict[str, Any], *, n_perm: int = 2000) -> dict[str, Any]:
    """Each registered bar checked once on ``test`` (an evaluation of the test split with the field's
    metrics): the parts' margins, CIs and p-values, per level, and the verdict."""
    if getattr(test, "split", None) != "test":
        raise ConfigError(f"the bars are checked on the test split, not on '{test.split}'")
    base = registration["baseline"]
    out: dict[str, Any] = {}
    for name, reg in registration["bars"].items():
        if reg["chosen"] is None:
            out[name] = {**reg, "verdict": "missed", "reason": "no lens within the bar's parameter budget"}
            continue
        t = tuned_bar(test, reg["chosen"], tuned=base, mean_ratio=reg["mean_ratio"], level_ratio=reg["level_ratio"],
                      kl_ratio=reg["kl_ratio"], n_perm=n_perm)
        if "kl" not in t:
            raise ConfigError("the bars' check needs the test evaluation's KL (field metrics)")
        levels = {lv["level"]: _part_verdict(lv) for lv in t["levels"][1:]}
        parts = {"mean_precision@1": _part_verdict(t["mean"]), "kl": _part_verdict(t["kl"])}
        out[name] = {**reg, "verdict": verdict([*parts.values(), *levels.values()]), "parts": parts,
                     "levels_missed": [k for k, v in levels.items() if v == "missed"],
                     "levels_inconclusive": [k for k, v in levels.items() if v == "inconclusive"],
                     "test": t}
    return out


__all__ = ["BARS", "Bar", "Candidate", "check", "preregister", "verdict"]
