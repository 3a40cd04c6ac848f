"""Lenses: every way of turning a hidden state at an exit level into next-token logits."""

from .base import Lens, LogitLens
from .tuned import TunedLens

__all__ = ["Lens", "LogitLens", "TunedLens"]
