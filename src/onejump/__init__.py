"""onejump: parameter-efficient early exit for transformer LMs with one low-rank jump for all exit levels.

Reproduces "One Jump Is All You Need" (OJFA): N-NJTC low-rank shortcuts from every level to the
final representation, the D_m reuse score, and the single best jump for all exit levels; and goes
beyond it (KL through the frozen head, residual jumps, a head-aware selection rule).
"""

from . import threads as _threads  # noqa: F401  first: sets OpenMP's wait policy before torch loads it
from .errors import (
    ChecksumError,
    ConfigError,
    CorpusError,
    DiskFullError,
    ModelLoadError,
    NumericalError,
    OneJumpError,
    ShortcutError,
    StoreError,
    UnsupportedArchitectureError,
)
from .evaluation.metrics import evaluate
from .evaluation.selection import select_ojfa
from .extract import extract
from .lenses.jumps import JumpBank
from .lenses.onejump import OneJump
from .model.adapter import ArchitectureAdapter
from .model.loading import LoadedModel, from_pretrained_model, load_model
from .store import HiddenStateStore
from .training.config import TrainConfig
from .training.fit import train_joint, train_jumps
from .training.objectives import HeadKL

__version__ = "0.1.0"

__all__ = [
    "ArchitectureAdapter",
    "ChecksumError",
    "ConfigError",
    "CorpusError",
    "DiskFullError",
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
