"""onejump: parameter-efficient early exit for transformer LMs with one low-rank jump for all exit levels.

Reproduces "One Jump Is All You Need" (OJFA): N-NJTC low-rank shortcuts from every level to the
final representation, the D_m reuse score, and the single best jump for all exit levels; and goes
beyond it (KL through the frozen head, residual jumps, a head-aware selection rule).
"""

from .errors import (
    ConfigError,
    CorpusError,
    ModelLoadError,
    NumericalError,
    OneJumpError,
    ShortcutError,
    StoreError,
    UnsupportedArchitectureError,
)
from .evaluation import evaluate
from .extract import extract
from .models import ArchitectureAdapter, LoadedModel, from_pretrained_model, load_model
from .objectives import HeadKL
from .selection import select_ojfa
from .shortcuts import JumpBank, OneJump
from .store import HiddenStateStore
from .training import TrainConfig, train_joint, train_jumps

__version__ = "0.1.0"

__all__ = [
    "ArchitectureAdapter",
    "ConfigError",
    "CorpusError",
    "HeadKL",
    "HiddenStateStore",
    "JumpBank",
    "LoadedModel",
    "ModelLoadError",
    "NumericalError",
    "OneJump",
    "OneJumpError",
    "ShortcutError",
    "StoreError",
    "TrainConfig",
    "UnsupportedArchitectureError",
    "evaluate",
    "extract",
    "from_pretrained_model",
    "load_model",
    "select_ojfa",
    "train_joint",
    "train_jumps",
]
