"""Per-level low-rank residual lenses: ``lens_k(h) = head(h + BN_k(h) A_k B_k)``, one pair per exit level.

The LoRA-Lens form (Trimigno et al. 2026), which is a tuned-lens translator of rank r per level once
the BatchNorm is folded (``W_k = diag(gamma_k / sigma_k) A_k B_k``, the bias from the BatchNorm's
shift), and which is the N-NJTC per-level bank in residual form: so it is a :class:`PerLevelLens`
whose bank is residual, and exports to tuned-lens's folder format like one. It holds
``K (2Hr + 4H)`` numbers (A, B and each level's BatchNorm affine and running statistics).

Start: ``A_k`` drawn as every jump bank draws it (seeded, uniform in +-1/sqrt(H)) and ``B_k = 0``
(LoRA's convention), so an untrained lens *is* the logit lens, bit for bit, and training moves it
away only as far as the KL gains; with B zero the first gradient reaches B (A's is zero until B
moves). Train one with :func:`onejump.training.lowrank.train_lowrank_lens`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..errors import LensFileError
from .base import LevelLogits
from .jumps import JumpBank, jump_parameter_count
from .onejump import PerLevelLens


def lowrank_parameter_count(num_blocks: int, hidden_size: int, rank: int) -> int:
    """Numbers held by a per-level low-rank residual lens: ``K (2Hr + 4H)``."""
    return int(num_blocks) * jump_parameter_count(hidden_size, rank)


class LowRankLens(PerLevelLens):
    """K residual rank-r corrections ``h + BN_k(h) A_k B_k`` feeding the frozen head, one per exit level."""

    kind = "lowrank"

    def __init__(self, lm: Any, bank: JumpBank, extra: dict[str, Any] | None = None):
        if not bank.residual:
            raise LensFileError("a low-rank residual lens needs a residual jump bank (h + BN(h) A B)")
        super().__init__(lm, bank, extra)

    @classmethod
    def start(cls, lm: Any, rank: int, *, seed: int = 0, eps: float = 1e-5, momentum: float = 0.1) -> LowRankLens:
        """The untrained lens of rank ``rank``: A seeded, B zero, i.e. exactly the logit lens."""
        bank = JumpBank(lm.num_blocks, lm.hidden_size, rank, eps=eps, momentum=momentum, seed=seed, residual=True)
        with torch.no_grad():
            bank.B.zero_()
        return cls(lm, bank)

    def translate(self, h: torch.Tensor) -> torch.Tensor:
        """All levels at once: (N, K, H) -> (N, K, H), level k's correction added to ``h[:, k]`` (eval mode)."""
        if h.dim() != 3 or h.shape[1:] != (self.num_blocks, self.hidden_size):
            raise LensFileError(f"translate needs inputs (N, {self.num_blocks}, {self.hidden_size}), "
                                f"got {tuple(h.shape)}")
        bank = self.bank.to(h.device).eval()
        return bank(h.float())

    def level_logits(self, h: torch.Tensor, full_head: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[LevelLogits]:
        """Every level's correction in one batched product, then one pass of all rows through the head."""
        n, K, H = h.shape
        yield LevelLogits(full_head, self.translate(h).reshape(n * K, H))


__all__ = ["LowRankLens", "lowrank_parameter_count"]
