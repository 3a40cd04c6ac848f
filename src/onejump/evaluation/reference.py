"""What a chunk's lens rows are scored against: the model's own final distribution, made once per chunk.

Every lens and every level of a chunk's samples shares it. From the head's logits at level K it
holds log p_final and, with the field's metrics, p_final, and ``sum p_final log p_final`` (for the
KL) is a dot product of the two taken a slice of rows at a time: at most three (n, V) arrays at once,
the head's logits included (:data:`onejump.evaluation.budget.REFERENCE_COPIES`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: exp's floor: below it float32 exp underflows (a denormal, then 0) and torch's exp is 10-20x slower
#: on CPU. A value clamped here adds at most V * exp(-87) ~ 1e-33 to a sum of exps that is >= 1.
EXP_FLOOR = -87.0


@dataclass
class Reference:
    """What a chunk's rows are scored against: t*, the final distribution and the real next token."""

    target: torch.Tensor  # (n,) t*, the model's own top-1
    final_logp: torch.Tensor  # (n, V) log p_final
    final_negent: torch.Tensor | None = None  # (n,) sum p_final log p_final (for the KL)
    next_token: torch.Tensor | None = None  # (n,) the sentence's real next token, -1 where there is none
    exits: bool = False  # also score EXIT
    probs: torch.Tensor | None = None  # (n, V) p_final, when made with the reference

    @property
    def extras(self) -> bool:
        return self.final_negent is not None

    def final_probs(self) -> torch.Tensor:
        """p_final (n, V), taken once per chunk: every level's rows of a sample share it."""
        if self.probs is None:
            self.probs = final_probs(self.final_logp)
        return self.probs


def final_probs(final_logp: torch.Tensor) -> torch.Tensor:
    """``exp(log p_final)``, the log-probabilities below :data:`EXP_FLOOR` taken at the floor (exp's fast path)."""
    return torch.clamp_min(final_logp, EXP_FLOOR).exp_()


def make_reference(final_logits: torch.Tensor, target: torch.Tensor, next_token: torch.Tensor | None = None,
                   extras: bool = False, exits: bool = False) -> Reference:
    """The reference of a chunk from the head's float32 logits at level K (n, V).

    With ``extras`` (the field's metrics) p_final and its negative entropy are kept as well; ``next_token``
    (n,) is the sentence's real next token, -1 where there is none.
    """
    logp = torch.log_softmax(final_logits, 1)
    if not extras:
        return Reference(target, logp, exits=exits)
    probs = final_probs(logp)
    return Reference(target, logp, _row_dots(probs, logp), next_token, exits=exits, probs=probs)


#: Elements per slice of :func:`_row_dots` (4 MiB of float32).
SLICE_ELEMENTS = 1 << 20


def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(1)`` a slice of rows at a time: the product's temporary is a slice, not (n, V)."""
    step = max(1, SLICE_ELEMENTS // max(a.shape[1], 1))
    return torch.cat([(a[i:i + step] * b[i:i + step]).sum(1) for i in range(0, a.shape[0], step)])


__all__ = ["EXP_FLOOR", "Reference", "final_probs", "make_reference"]
