"""A lens card's ``evaluation`` entry, read off an evaluation of that lens (:mod:`onejump.lenses.card` writes it)."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .statistics import bootstrap_ci


def evaluation_card(result: Any, method: str, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The ``evaluation`` card entry of lens ``method`` in an :class:`~onejump.evaluation.result.EvalResult`.

    Per level: precision@1 and (where evaluated) KL(p_final || p_lens) in nats; over levels: the mean
    precision@1 with a 95% bootstrap interval over sentences (each sentence's mean over levels), the
    interval a shipped lens's check compares against.
    """
    if method not in result.methods:
        raise ConfigError(f"'{method}' is not in this evaluation ({', '.join(result.methods)})")
    correct = result.samples(method, "precision@1").double()
    ci = bootstrap_ci(correct.mean(0).numpy(), n_boot=n_boot, seed=seed)
    out: dict[str, Any] = {
        "split": result.split, "sentences": int(result.num_samples), "levels": list(range(result.num_blocks)),
        "precision@1": [round(float(v), 4) for v in correct.mean(-1)],
        "precision@1_mean": {"mean": round(float(ci.mean), 4), "low": round(float(ci.low), 4),
                             "high": round(float(ci.high), 4), "confidence": 0.95, "method": "bootstrap"},
    }
    if result.has(method, "kl"):
        kl = result.metric(method, "kl")
        out["kl"] = [round(float(v), 4) for v in kl]
        out["kl_mean"] = round(float(kl.mean()), 4)
    return out


__all__ = ["evaluation_card"]
