"""The level-conditioned single jump: one shared jump, plus a gain and a shift per exit level in its rank-r code.

``jump(h, k) = (BN(h) @ A * g_k + s_k) @ B`` (``+ h`` in the residual form). ``A`` (H x r), ``B``
(r x H) and the BatchNorm are shared by every exit level, as in the joint jump; each level k adds
``g_k`` and ``s_k`` (r numbers each), so the lens holds ``2Hr + 4H + 2rK`` numbers. With every
``g_k = 1`` and ``s_k = 0`` (the initial values) it is exactly the unconditioned jump of the same
``A``, ``B`` and BatchNorm, which is what a warm start from a trained joint jump begins from.

The plain form keeps the exact rank-r head: BatchNorm, ``A`` and level k's gain and shift fold
into one (H x r) map and an r-vector, and the head of ``z @ B`` is read from ``z`` alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import LensFileError
from .jumps import _BANK_KEYS, JumpBank
from .onejump import OneJump, _BankLens


class CondJumpBank(JumpBank):
    """J jumps, each with a per-level gain ``gain`` (J, L, r) and shift ``shift`` (J, L, r) in its code.

    ``L = num_levels`` exit levels. :meth:`forward` and :meth:`codes` take the exit level of every
    input (``levels``, (N,) integers in 0..L-1); BatchNorm statistics are shared over levels.
    """

    keys = (*_BANK_KEYS, "gain", "shift")
    conditioned = True

    def __init__(self, num_jumps: int, hidden_size: int, rank: int | None, num_levels: int, *,
                 levels: Sequence[int] | None = None, eps: float = 1e-5, momentum: float = 0.1, seed: int = 0,
                 residual: bool = False):
        super().__init__(num_jumps, hidden_size, rank, levels=levels, eps=eps, momentum=momentum, seed=seed,
                         residual=residual)
        if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
            raise LensFileError(f"a level-conditioned jump needs >= 1 exit level, got {num_levels!r}")
        self.gain = nn.Parameter(torch.ones(self.num_jumps, num_levels, self.rank))
        self.shift = nn.Parameter(torch.zeros(self.num_jumps, num_levels, self.rank))

    @classmethod
    def from_bank(cls, bank: JumpBank, num_levels: int) -> CondJumpBank:
        """A conditioned bank with ``bank``'s A, B and BatchNorm (copied), every gain 1 and shift 0."""
        if bank.conditioned:
            raise LensFileError("the bank is already level-conditioned")
        out = cls(bank.num_jumps, bank.hidden_size, bank.rank, num_levels, levels=bank.levels, eps=bank.eps,
                  momentum=bank.momentum, residual=bank.residual)
        out.load_tensors({**bank.tensors(), "gain": out.gain.detach(), "shift": out.shift.detach()})
        return out.to(bank.A.device)

    @property
    def num_levels(self) -> int:
        return int(self.gain.shape[1])

    def parameters_per_jump(self) -> int:
        """``2Hr + 4H`` of the jump plus ``2rL`` (a gain and a shift per exit level)."""
        return super().parameters_per_jump() + 2 * self.rank * self.num_levels

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, levels={self.num_levels}"

    def _levels(self, levels: torch.Tensor | int | None, n: int) -> torch.Tensor:
        if levels is None:
            raise LensFileError("a level-conditioned jump needs the exit level of its inputs")
        lv = torch.as_tensor(levels, dtype=torch.long, device=self.gain.device)
        if lv.dim() == 0:
            lv = lv.expand(n)
        if lv.shape != (n,):
            raise LensFileError(f"levels must be one exit level per input ({n}), got shape {tuple(lv.shape)}")
        if n and (int(lv.min()) < 0 or int(lv.max()) >= self.num_levels):
            raise LensFileError(f"exit levels must be in 0..{self.num_levels - 1}")
        return lv

    def codes(self, h: torch.Tensor, levels: torch.Tensor | None = None) -> torch.Tensor:
        """``BN_j(h[:, j]) @ A_j * gain[j, level] + shift[j, level]``: (N, J, H) -> (J, N, r)."""
        z = super().codes(h)
        lv = self._levels(levels, h.shape[0])
        return torch.addcmul(self.shift[:, lv], z, self.gain[:, lv])

    def project(self, h: torch.Tensor, jump: int, level: int | None = None) -> torch.Tensor:
        """Eval-mode code of jump ``jump`` at exit ``level``: (..., H) -> (..., r)."""
        lv = self._levels(level, 1)
        z = self._bn_eval(h, jump) @ self.A[jump]
        return torch.addcmul(self.shift[jump, lv], z, self.gain[jump, lv]).reshape(*h.shape[:-1], self.rank)

    def apply(self, h: torch.Tensor, jump: int, level: int | None = None) -> torch.Tensor:
        """Eval-mode jump ``jump`` for inputs ``h`` (..., H) read at exit ``level``: (..., H) -> (..., H)."""
        out = self.project(h, jump, level) @ self.B[jump]
        return out + h.to(out.dtype) if self.residual else out

    def select(self, jumps: int | Sequence[int]) -> CondJumpBank:
        idx = [jumps] if isinstance(jumps, int) else list(jumps)
        idx = [self._jump_index(j) for j in idx]
        out = CondJumpBank(len(idx), self.hidden_size, self.rank, self.num_levels,
                           levels=[self.levels[j] for j in idx], eps=self.eps, momentum=self.momentum,
                           residual=self.residual)
        out.load_tensors({k: v[idx] for k, v in self.tensors().items()})
        return out.to(self.A.device)


class CondJump(_BankLens):
    """One jump at every exit level, with a per-level gain and shift in its rank-r code (see the module doc).

    Holds ``2Hr + 4H + 2rK`` numbers. ``CondJump.from_jump(one_jump)`` starts from a trained
    :class:`OneJump` (gains 1, shifts 0: the same logits).
    """

    kind = "jump-cond"

    def __init__(self, lm: Any, bank: CondJumpBank, *, extra: dict[str, Any] | None = None):
        if not isinstance(bank, CondJumpBank) or bank.num_jumps != 1:
            raise LensFileError("CondJump holds exactly one level-conditioned jump (a CondJumpBank with J = 1)")
        if bank.num_levels != lm.num_blocks:
            raise LensFileError(f"the jump is conditioned on {bank.num_levels} exit levels, the model has "
                                f"{lm.num_blocks}")
        super().__init__(lm, bank, extra)

    @classmethod
    def from_jump(cls, jump: OneJump, extra: dict[str, Any] | None = None) -> CondJump:
        """The conditioned jump that starts from ``jump``'s A, B and BatchNorm (equal logits at every level)."""
        return cls(jump.lm, CondJumpBank.from_bank(jump.bank, jump.num_blocks), extra=extra)

    def _bank_on(self, h: torch.Tensor) -> CondJumpBank:
        """The bank on ``h``'s device (moved there once, as evaluation moves a residual jump's bank)."""
        if self.bank.A.device != h.device:
            self.bank.to(h.device)
        return self.bank

    def transform(self, h: torch.Tensor, level: int) -> torch.Tensor:
        self.check_level(level)
        self.check_hidden(h)
        return self._bank_on(h).apply(h.float(), 0, level).to(h.dtype)

    def forward(self, h: torch.Tensor, level: int) -> torch.Tensor:
        self.check_level(level)
        self.check_hidden(h)
        head = self.lowrank_head()
        if head is None:
            return self.lm.adapter.head(self._bank_on(h).apply(h.float(), 0, level).to(h.dtype))
        shape = h.shape[:-1]
        x = h.reshape(-1, h.shape[-1]).to(head.device, torch.float32)
        z = torch.addmm(head.c_fold[0], x, head.A_fold[0])  # BatchNorm folded into A
        gain, shift = (t[0, level].to(head.device) for t in (self.bank.gain, self.bank.shift))
        z = torch.addcmul(shift, z, gain)
        return head.logits_from_codes(z, 0).reshape(*shape, -1)

    def transform_cost(self) -> int:
        return super().transform_cost() + 2 * self.rank

    def logits_cost(self) -> int:
        return super().logits_cost() + (0 if self.residual else 2 * self.rank)

    def lens_config(self) -> dict[str, Any]:
        return {**super().lens_config(), "num_levels": self.bank.num_levels}

    @classmethod
    def from_config(cls, lm: Any, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> CondJump:
        own = {k[len("bank."):]: v for k, v in tensors.items() if k.startswith("bank.")}
        A, gain = own.get("A"), own.get("gain")
        if A is None or A.dim() != 3 or gain is None or gain.dim() != 3:
            raise LensFileError("lens weights hold no level-conditioned jump ('bank.A' or 'bank.gain' missing)")
        J, H, r = A.shape
        residual = config.get("residual", False)
        if not isinstance(residual, bool):
            raise LensFileError(f"'residual' must be true or false, got {residual!r}")
        bank = CondJumpBank(J, H, r, int(gain.shape[1]), levels=config.get("levels"),
                            eps=float(config.get("bn_eps") or 1e-5), momentum=float(config.get("bn_momentum") or 0.1),
                            residual=residual)
        bank.load_tensors(own)
        if torch.any(bank.running_var < 0):
            raise LensFileError("negative BatchNorm running variance in the lens weights")
        return cls(lm, bank.eval(), extra=config.get("extra"))
