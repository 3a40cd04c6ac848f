"""How close one single jump comes to the tuned lens: the three-part bar, per level, with paired tests.

The bar (pre-registered): the single jump's mean precision@1 over exit levels is at least
``mean_ratio`` (0.9) of the tuned lens's; its precision@1 is at least ``level_ratio`` (0.8) of the
tuned lens's at every exit level 1..K-1; its mean KL(p_final || p_lens) is at most ``kl_ratio``
(1.25) of the tuned lens's.

Each part is a statement about a mean over test samples, so each is tested on paired per-sample
differences: ``d_i = x_jump,i - ratio * x_tuned,i`` (for KL, ``ratio * KL_tuned,i - KL_jump,i``), the
part claiming ``mean(d) >= 0``. The report gives ``mean(d)`` (the margin, in precision or nats), its 95%
bootstrap CI and the two-sided sign-flip permutation p-value of ``mean(d) = 0``. The verdict is
:func:`~onejump.evaluation.verdict.verdict` of that CI (widened where it has zero width): a part is
held when its CI lies at or above 0, not held when it lies below 0, inconclusive when it straddles 0;
``held`` is true only for a held part, and the bar is met only when every part is held.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from .statistics import paired_test
from .verdict import HELD, at_least, sample_interval, verdict


def _test(d: np.ndarray, n_perm: int, value_range: tuple[float, float]) -> dict[str, Any]:
    """The paired test of ``mean(d) >= 0``; ``value_range``: the range a per-sample ``d`` can take."""
    t = paired_test(d, np.zeros_like(d), n_perm=n_perm)
    v = verdict(sample_interval((t.low, t.high), t.n, value_range), at_least(0.0))
    return {"margin": float(t.mean_diff), "ci": [float(t.low), float(t.high)], "p_value": float(t.p_value),
            "held": v == HELD, "verdict": v}


def tuned_bar(result: Any, single: str, *, tuned: str = "tuned", mean_ratio: float = 0.9,
              level_ratio: float = 0.8, kl_ratio: float = 1.25, n_perm: int = 2000) -> dict[str, Any]:
    """The bar for lens ``single`` against lens ``tuned`` of an :class:`~onejump.evaluation.result.EvalResult`."""
    for name in (single, tuned):
        if name not in result.lens_names:
            raise ConfigError(f"lens '{name}' was not evaluated; evaluated: {', '.join(result.lens_names)}")
    c_s = result.samples(single, "precision@1").double().numpy()  # (K, N)
    c_t = result.samples(tuned, "precision@1").double().numpy()
    K = c_s.shape[0]
    levels = []
    for k in range(K):
        p_s, p_t = float(c_s[k].mean()), float(c_t[k].mean())
        levels.append({"level": k, "single": p_s, "tuned": p_t, "ratio": p_s / p_t if p_t > 0 else None,
                       **_test(c_s[k] - level_ratio * c_t[k], n_perm, (-level_ratio, 1.0))})
    mean = {"single": float(c_s.mean()), "tuned": float(c_t.mean()),
            **_test(c_s.mean(0) - mean_ratio * c_t.mean(0), n_perm, (-mean_ratio, 1.0))}
    mean["ratio"] = mean["single"] / mean["tuned"] if mean["tuned"] > 0 else None
    out: dict[str, Any] = {"single": single, "tuned": tuned, "mean_ratio": mean_ratio, "level_ratio": level_ratio,
                           "kl_ratio": kl_ratio, "mean": mean, "levels": levels}
    exit_levels = levels[1:]
    out["every_level"] = {"held": all(lv["held"] for lv in exit_levels),
                          "lowest_ratio": min((lv["ratio"] for lv in exit_levels if lv["ratio"] is not None),
                                              default=None),
                          "levels_not_held": [lv["level"] for lv in exit_levels if not lv["held"]]}
    if result.has(single, "kl") and result.has(tuned, "kl"):
        kl_s = result.samples(single, "kl").double().numpy().mean(0)
        kl_t = result.samples(tuned, "kl").double().numpy().mean(0)
        out["kl"] = {"single": float(kl_s.mean()), "tuned": float(kl_t.mean()),
                     "ratio": float(kl_s.mean() / kl_t.mean()) if kl_t.mean() > 0 else None,
                     **_test(kl_ratio * kl_t - kl_s, n_perm, (-np.inf, np.inf))}
    parts = [out["mean"]["held"], out["every_level"]["held"]] + ([out["kl"]["held"]] if "kl" in out else [])
    out["met"] = bool(all(parts)) and "kl" in out
    return out


__all__ = ["tuned_bar"]
