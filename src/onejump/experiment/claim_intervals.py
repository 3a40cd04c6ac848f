"""Each claim's 95% interval, from what ``results.json`` records, and its verdict.

Every claim of the report is judged by :func:`~onejump.evaluation.verdict.verdict` on one interval:

- a paired comparison that ``results["tests"]`` holds (OJFA against full N-NJTC, against the joint
  jump): the paired bootstrap CI of the per-sample difference, widened where it has zero width;
- a comparison without a paired test (OJFA against the logit lens at early levels, against the
  average arbitrary jump, unless ``tests`` holds ``ojfa_vs_identity_early`` / ``ojfa_vs_arbitrary``):
  the conservative interval of :func:`~onejump.evaluation.verdict.difference_interval` from the
  per-level precisions, which assumes the worst correlation of the two methods and so is wide;
- the highest precision of any low-rank shortcut at any level: from the largest lower end to the
  largest upper end over every (method, level) and every jump of the reuse matrix (a method's
  bootstrap CI where it has one, the Wilson interval of the proportion otherwise);
- a parameter count: exact, the interval [x, x];
- the sweep's bar (:func:`sweep_bar_verdicts`): conservative intervals of the per-level precisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..evaluation.verdict import (
    HELD,
    Region,
    above,
    all_of,
    at_least,
    at_most,
    difference_interval,
    proportion_interval,
    sample_interval,
    verdict,
)


def sample_count(results: dict[str, Any]) -> int | None:
    """How many test rows each mean is over: the paired tests' n where recorded, else the test sentences."""
    for test in (results.get("tests") or {}).values():
        if isinstance(test, dict) and test.get("n"):
            return int(test["n"])
    n = (results.get("data") or {}).get("n_test")
    return int(n) if n else None


def paired_interval(results: dict[str, Any], key: str) -> tuple[float, float] | None:
    """The interval of OJFA minus the other method (precision@1, per-sample means over levels) of test
    ``key``; None where the run recorded no CI for it."""
    test = (results.get("tests") or {}).get(key) or {}
    return sample_interval(test.get("ci"), test.get("n") or sample_count(results), (-1.0, 1.0))


def flipped(interval: tuple[float, float] | None) -> tuple[float, float] | None:
    """The interval of minus the quantity."""
    return None if interval is None else (-interval[1], -interval[0])


def levels_interval(results: dict[str, Any], a: Sequence[float], b: Sequence[float] | np.ndarray
                    ) -> tuple[float, float] | None:
    """The conservative interval of mean(a) - mean(b), per-level precisions of the same test rows."""
    return difference_interval(a, b, sample_count(results))


def ceiling_interval(results: dict[str, Any], methods: Sequence[str]) -> tuple[float, float] | None:
    """An interval of the highest precision@1 over every (method, level) and every reuse-matrix jump."""
    n = sample_count(results)
    if n is None:
        return None
    lows, highs = [], []

    def wilson(p: float) -> tuple[float, float]:
        return proportion_interval(min(float(n), max(0.0, p * n)), n)

    for name in (m for m in methods if m in results["methods"]):
        entry = results["methods"][name]
        cis = entry.get("precision@1_ci")
        for k, p in enumerate(entry["precision@1"]):
            lo, hi = (sample_interval(cis[k], n, (0.0, 1.0)) if cis else None) or wilson(p)
            lows.append(lo)
            highs.append(hi)
    for p in np.asarray((results.get("reuse") or {}).get("precision@1") or [], dtype=np.float64).reshape(-1):
        lo, hi = wilson(float(p))
        lows.append(lo)
        highs.append(hi)
    return (max(lows), max(highs)) if lows else None


def sweep_bar_verdicts(results: dict[str, Any]) -> dict[str, str] | None:
    """The verdicts of the sweep's bar (``results["beyond"]["bar"]``): ``params`` (counted: exact),
    ``precision`` (best >= 2x the paper OJFA's mean precision@1) and ``lens`` (above the logit lens at
    every level 0..K-5), each from conservative intervals of the per-level precisions, and ``bar``, the
    three together (:func:`~onejump.evaluation.verdict.all_of`); None without a bar. The report, the
    ``verdicts`` that results.json records and the line ``onejump sweep`` prints all come from here."""
    beyond = results.get("beyond") or {}
    bar, best = beyond.get("bar"), beyond.get("best")
    if not bar or not best:
        return None
    n = sample_count(results)
    paper = next((c["methods"]["ojfa-paper"] for c in beyond.get("configs", [])
                  if c.get("objective") == "mse" and c.get("rank") == beyond.get("base_rank")
                  and "ojfa-paper" in c.get("methods", {})), None)
    ratio = bar["parameter_ratio"]
    out = {"params": verdict((ratio, ratio), at_most(2.0))}
    out["precision"] = verdict(difference_interval(best["precision@1"], paper["precision@1"], n, weight=2.0)
                               if paper is not None else None, at_least(0.0))
    lens = (beyond.get("references") or {}).get("identity", {}).get("precision@1")
    levels = range(bar["levels_checked"])
    per_level = [difference_interval([best["precision@1"][k]], [lens[k]], n) for k in levels] if lens else []
    out["lens"] = verdict((min(i[0] for i in per_level), min(i[1] for i in per_level))
                          if per_level and all(per_level) else None, above(0.0))
    out["bar"] = all_of([out["params"], out["precision"], out["lens"]])
    return out


def judged(interval: tuple[float, float] | None, region: Region) -> dict[str, Any]:
    """A claim's ``verdict`` and ``held`` (held only when the interval supports it)."""
    v = verdict(interval, region)
    return {"verdict": v, "held": v == HELD}


def points_text(interval: tuple[float, float] | None) -> str:
    """``95% CI [-1.2, +3.4] points`` of a difference in precision, or why there is none."""
    if interval is None:
        return "no 95% CI recorded"
    lo, hi = (100 * v for v in interval)
    return f"95% CI [{lo:+.1f}, {hi:+.1f}] points"


__all__ = ["ceiling_interval", "flipped", "judged", "levels_interval", "paired_interval", "points_text",
           "sample_count", "sweep_bar_verdicts"]
