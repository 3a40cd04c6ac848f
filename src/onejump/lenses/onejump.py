"""One-Jump-Fits-All: a single jump reused at every exit level (Eq. 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ShortcutError
from .files import load_shortcuts, save_shortcuts
from .jumps import FoldedJump, JumpBank


class OneJump:
    """One-Jump-Fits-All: a single N-NJTC jump reused at every exit level 0..K-1 (Eq. 3).

    Build it from a trained per-level bank and the OJFA choice (:func:`onejump.selection.select_ojfa`)
    with :meth:`from_bank`, or load a saved one with :meth:`load`. ``.jump`` is the chosen jump in
    folded inference form; ``.shortcut(h, level)`` estimates h^K from ``h^level`` and
    ``.logits(h, level, adapter)`` runs the model's head on it. Holds
    ``2Hr + 4H`` parameters (see :meth:`parameter_count`), K times fewer than the full N-NJTC bank.
    """

    def __init__(self, bank: JumpBank, *, chosen_jump: int, num_blocks: int, model: str = "",
                 fingerprint: str = "", extra: dict[str, Any] | None = None):
        if bank.num_jumps != 1:
            raise ShortcutError(f"OneJump holds exactly one jump, got a bank of {bank.num_jumps}")
        if not -1 <= chosen_jump < num_blocks:  # -1: a joint jump, trained on all levels
            raise ShortcutError(f"chosen jump {chosen_jump} is not an exit level of a {num_blocks}-block model")
        self.bank = bank.eval()
        self.chosen_jump = int(chosen_jump)
        self.num_blocks = int(num_blocks)
        self.model = model
        self.fingerprint = fingerprint
        self.extra = dict(extra or {})
        self.jump: FoldedJump = bank.fold(0)

    @classmethod
    def from_bank(cls, bank: JumpBank, chosen: int, *, num_blocks: int | None = None, model: str = "",
                  fingerprint: str = "", extra: dict[str, Any] | None = None) -> OneJump:
        """Keep jump ``chosen`` of a per-level bank (J = K; jump m trained at level m), discard the rest."""
        k = bank.num_jumps if num_blocks is None else int(num_blocks)
        if not 0 <= chosen < bank.num_jumps:
            raise ShortcutError(f"chosen jump {chosen} is not in the bank (0..{bank.num_jumps - 1})")
        return cls(bank.select(chosen), chosen_jump=chosen, num_blocks=k, model=model, fingerprint=fingerprint,
                   extra=extra)

    @property
    def hidden_size(self) -> int:
        return self.bank.hidden_size

    @property
    def rank(self) -> int:
        return self.bank.rank

    def parameter_count(self) -> int:
        """Shortcut parameters held at inference: ``2Hr + 4H``."""
        return self.bank.parameters_per_jump()

    def to(self, device: str | torch.device) -> OneJump:
        self.bank = self.bank.to(device)
        self.jump = self.jump.to(device)
        return self

    def _check_level(self, level: int) -> None:
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < self.num_blocks:
            raise ShortcutError(f"exit level must be in 0..{self.num_blocks - 1}, got {level!r}")

    def shortcut(self, h: torch.Tensor, level: int) -> torch.Tensor:
        """Estimate of h^K from ``h`` = h^level, shape (..., H); computed in float32, returned in h's dtype."""
        self._check_level(level)
        if h.shape[-1] != self.hidden_size:
            raise ShortcutError(f"hidden width {h.shape[-1]} does not match the jump's H={self.hidden_size}")
        return self.jump(h.to(self.jump.A.dtype)).to(h.dtype)

    def logits(self, h: torch.Tensor, level: int, adapter: Any) -> torch.Tensor:
        """``adapter.head(shortcut(h, level))``: next-token logits predicted from level ``level``."""
        return adapter.head(self.shortcut(h, level))

    def save(self, path: str | Path) -> Path:
        """Write as kind ``ojfa`` (the unfolded jump, so it reloads exactly)."""
        return save_shortcuts(path, self.bank, kind="ojfa", model=self.model, fingerprint=self.fingerprint,
                              levels=[self.chosen_jump], rank=self.rank, chosen_jump=self.chosen_jump,
                              num_blocks=self.num_blocks, extra=self.extra)

    @classmethod
    def from_joint(cls, joint: JumpBank, *, num_blocks: int, model: str = "", fingerprint: str = "",
                   extra: dict[str, Any] | None = None) -> OneJump:
        """A joint jump (trained on all exit levels) as the single jump; ``chosen_jump`` is -1."""
        return cls(joint, chosen_jump=-1, num_blocks=num_blocks, model=model, fingerprint=fingerprint, extra=extra)

    @classmethod
    def load(cls, path: str | Path, fingerprint: str | None = None) -> OneJump:
        """Load an ``ojfa`` or ``joint`` file, or an ``nnjtc`` file that records its ``chosen_jump``."""
        bank, cfg = load_shortcuts(path, fingerprint=fingerprint)
        if cfg["kind"] not in ("ojfa", "nnjtc", "joint"):
            raise ShortcutError(f"{path} holds '{cfg['kind']}' shortcuts, not an OJFA jump")
        chosen = -1 if cfg["kind"] == "joint" else cfg.get("chosen_jump")
        if not isinstance(chosen, int):
            raise ShortcutError(f"{path} records no chosen jump: run the OJFA selection first")
        num_blocks = cfg.get("num_blocks")
        if not isinstance(num_blocks, int):
            raise ShortcutError(f"{path} does not record the model's number of blocks")
        if cfg["kind"] == "nnjtc":
            bank = bank.select(chosen)
        return cls(bank, chosen_jump=chosen, num_blocks=num_blocks, model=cfg.get("model", ""),
                   fingerprint=cfg.get("fingerprint", ""), extra=cfg.get("extra") or {})
