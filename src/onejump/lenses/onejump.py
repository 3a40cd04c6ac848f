"""Lenses built on N-NJTC jumps: one jump at every exit level (OJFA, the joint jump), and the
per-level bank (full N-NJTC, jump k at level k).

A plain low-rank jump reads its logits through the exact rank-r head (:class:`LowRankHead`):
O(rV) per vector instead of O(HV). A residual jump (``h + BN(h) A B``) has no rank-r form and goes
through the full head.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..errors import LensFileError
from .base import Lens, LevelLogits
from .jumps import JumpBank
from .lowrank_head import LowRankHead


def _bank_from(config: dict[str, Any], tensors: dict[str, torch.Tensor], prefix: str = "bank.") -> JumpBank:
    own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    A = own.get("A")
    if A is None or A.dim() != 3:
        raise LensFileError("lens weights hold no jump bank (tensor 'bank.A' missing or not 3-d)")
    J, H, r = A.shape
    bank = JumpBank(J, H, r, levels=config.get("levels"), eps=float(config.get("bn_eps") or 1e-5),
                    momentum=float(config.get("bn_momentum") or 0.1), residual=bool(config.get("residual")))
    bank.load_tensors(own)
    return bank.eval()


class _BankLens(Lens):
    """Shared machinery of lenses that hold a :class:`JumpBank`."""

    def __init__(self, lm: Any, bank: JumpBank, extra: dict[str, Any] | None = None):
        super().__init__(lm)
        if bank.hidden_size != lm.hidden_size:
            raise LensFileError(f"the jumps have H={bank.hidden_size}, the model H={lm.hidden_size}")
        self.bank = bank.eval()
        self.extra = dict(extra or {})
        self._head: LowRankHead | None = None

    @property
    def rank(self) -> int:
        return self.bank.rank

    @property
    def residual(self) -> bool:
        return self.bank.residual

    def lowrank_head(self) -> LowRankHead | None:
        """The exact rank-r head of the bank (built once), or None for a residual jump."""
        if self.residual:
            return None
        if self._head is None or self._head.device != self.lm.adapter.unembedding_matrix().device:
            self._head = LowRankHead(self.lm.adapter, self.bank)
        return self._head

    def _jump_logits(self, h: torch.Tensor, jump: int) -> torch.Tensor:
        self.check_hidden(h)
        head = self.lowrank_head()
        if head is None:
            return self.lm.adapter.head(self.bank.apply(h.float(), jump).to(h.dtype))
        shape = h.shape[:-1]
        x = h.reshape(-1, h.shape[-1]).to(head.device, torch.float32)
        z = torch.addmm(head.c_fold[jump], x, head.A_fold[jump])  # BatchNorm folded into A: one GEMM
        return head.logits_from_codes(z, jump).reshape(*shape, -1)

    def transform_cost(self) -> int:
        H, r = self.hidden_size, self.rank
        return 2 * H * r + (H if self.residual else 0)

    def logits_cost(self) -> int:
        if self.residual:
            return super().logits_cost()
        H, r, V = self.hidden_size, self.rank, self.vocab_size
        return H * r + r * r + r * V

    @property
    def num_parameters(self) -> int:
        return self.bank.parameter_count()

    def lens_config(self) -> dict[str, Any]:
        return {"rank": self.rank, "residual": self.residual, "levels": list(self.bank.levels),
                "bn_eps": self.bank.eps, "bn_momentum": self.bank.momentum, "extra": self.extra}


class OneJump(_BankLens):
    """One jump reused at every exit level 0..K-1 (Eq. 3): the paper's OJFA jump, or a joint jump.

    ``trained_at`` is the level the jump was trained at (``-1`` for a joint jump, trained on all
    levels). Holds ``2Hr + 4H`` numbers, K times fewer than the per-level bank.
    """

    kind = "jump"

    def __init__(self, lm: Any, bank: JumpBank, *, trained_at: int = -1, extra: dict[str, Any] | None = None):
        if bank.num_jumps != 1:
            raise LensFileError(f"OneJump holds exactly one jump, got a bank of {bank.num_jumps}")
        if not -1 <= trained_at < lm.num_blocks:
            raise LensFileError(f"jump trained at level {trained_at} is not an exit level of a "
                                f"{lm.num_blocks}-block model")
        super().__init__(lm, bank, extra)
        self.trained_at = int(trained_at)

    @property
    def chosen_jump(self) -> int:
        return self.trained_at

    def transform(self, h: torch.Tensor, level: int) -> torch.Tensor:
        self.check_level(level)
        self.check_hidden(h)
        return self.bank.apply(h.float(), 0).to(h.dtype)

    def forward(self, h: torch.Tensor, level: int) -> torch.Tensor:
        self.check_level(level)
        return self._jump_logits(h, 0)

    def level_logits(self, h: torch.Tensor, full_head: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[LevelLogits]:
        """One jump at every level at once: through the rank-r head (residual: the full head)."""
        n, K, H = h.shape
        levels_h = h.reshape(n * K, H)
        head = self.lowrank_head()
        if head is None:
            yield LevelLogits(full_head, self.bank.to(h.device).apply(levels_h, 0))
            return
        z = head.project_all(levels_h)  # (n*K, 1, r): the BatchNorm folded, one GEMM
        yield LevelLogits(functools.partial(head.logits_from_scaled, jump=0), head.scaled_codes(z[:, 0], 0),
                          lowrank=True)

    def lens_config(self) -> dict[str, Any]:
        return {**super().lens_config(), "trained_at": self.trained_at}

    @classmethod
    def from_config(cls, lm: Any, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> OneJump:
        return cls(lm, _bank_from(config, tensors), trained_at=int(config.get("trained_at", -1)),
                   extra=config.get("extra"))


class PerLevelLens(_BankLens):
    """The K per-level jumps of N-NJTC: jump k read at level k. ``.jump(m)`` is jump m alone, as a :class:`OneJump`."""

    kind = "per-level"

    def __init__(self, lm: Any, bank: JumpBank, extra: dict[str, Any] | None = None):
        if bank.num_jumps != lm.num_blocks:
            raise LensFileError(f"a per-level bank needs K={lm.num_blocks} jumps, got {bank.num_jumps}")
        super().__init__(lm, bank, extra)

    def transform(self, h: torch.Tensor, level: int) -> torch.Tensor:
        self.check_level(level)
        self.check_hidden(h)
        return self.bank.apply(h.float(), level).to(h.dtype)

    def forward(self, h: torch.Tensor, level: int) -> torch.Tensor:
        self.check_level(level)
        return self._jump_logits(h, level)

    def level_logits(self, h: torch.Tensor, full_head: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[LevelLogits]:
        """Jump k at level k: the codes of every level in one GEMM, then the rank-r head level by level."""
        n, K, H = h.shape
        head = self.lowrank_head()
        if head is None:
            bank = self.bank.to(h.device)
            for k in range(K):
                yield LevelLogits(full_head, bank.apply(h[:, k], k), k)
            return
        z = head.project_all(h.reshape(n * K, H))
        z = z.view(n, K, -1, z.shape[-1])
        for k in range(K):
            yield LevelLogits(functools.partial(head.logits_from_scaled, jump=k),
                              head.scaled_codes(z[:, k, k], k).contiguous(), k, lowrank=True)

    def jump_logits(self, h: torch.Tensor, jumps: list[int],
                    full_head: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[LevelLogits]:
        """Each of ``jumps`` at every level of a chunk ``h`` (n, K, H) (the reuse matrix), one block per
        jump in ``jumps``' order: the codes of every jump and level in one GEMM."""
        n, K, H = h.shape
        levels_h = h.reshape(n * K, H)
        head = self.lowrank_head()
        bank = self.bank.to(h.device) if head is None else None
        z = head.project_all(levels_h) if head is not None else None
        for m in jumps:
            if head is None:
                yield LevelLogits(full_head, bank.apply(levels_h, m))
            else:
                yield LevelLogits(functools.partial(head.logits_from_scaled, jump=m),
                                  head.scaled_codes(z[:, m], m).contiguous(), lowrank=True)

    def jump(self, m: int, extra: dict[str, Any] | None = None) -> OneJump:
        """Jump ``m`` (trained at level m) alone, reused at every level."""
        if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m < self.bank.num_jumps:
            raise LensFileError(f"jump {m!r} is not in the bank (0..{self.bank.num_jumps - 1})")
        return OneJump(self.lm, self.bank.select(m), trained_at=m, extra=extra)

    @classmethod
    def from_config(cls, lm: Any, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> PerLevelLens:
        return cls(lm, _bank_from(config, tensors), extra=config.get("extra"))
