"""Lenses: every way of turning a hidden state at an exit level into next-token logits.

- :class:`LogitLens`: the model's head on the hidden state as it is;
- :class:`OneJump`: one low-rank jump reused at every level (the paper's OJFA jump, a joint jump,
  plain or residual, any objective);
- :class:`CondJump`: one shared jump with a gain and a shift per exit level in its rank-r code;
- :class:`PerLevelLens`: the K per-level jumps of N-NJTC (jump k at level k);
- :class:`LowRankLens`: per-level low-rank residual lenses ``h + BN_k(h) A_k B_k`` (LoRA-Lens form);
- :class:`JTCLens`: the full-rank linear JTC maps;
- :class:`TunedLens`: the tuned lens (full-rank affine translators trained by KL through the head).

``Lens.load(folder, lm)`` reads any of them back.
"""

from types import SimpleNamespace

from . import card, files, hub
from .base import Lens, LogitLens
from .cond import CondJump, CondJumpBank
from .jtc import JTCLens, LinearJTC
from .jumps import JumpBank, default_rank
from .lowrank import LowRankLens
from .onejump import OneJump, PerLevelLens
from .tuned import TunedLens

__all__ = ["CondJump", "CondJumpBank", "JTCLens", "JumpBank", "Lens", "LinearJTC", "LogitLens", "LowRankLens",
           "OneJump", "PerLevelLens", "TunedLens", "default_rank"]

Lens.io = SimpleNamespace(load=files.load_lens, push=hub.push_to_hub, card_info=card.card_info,
                          write_card=card.write_card)
