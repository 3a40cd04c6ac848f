"""onejump: parameter-efficient early exit for transformer LMs with one low-rank jump for all exit levels.

Reproduces "One Jump Is All You Need" (OJFA): N-NJTC low-rank shortcuts from every level to the
final representation, the D_m reuse score, and the single best jump for all exit levels.
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
from .extract import extract
from .models import ArchitectureAdapter, LoadedModel, from_pretrained_model, load_model
from .store import HiddenStateStore

__version__ = "0.1.0"

__all__ = [
    "ArchitectureAdapter",
    "ConfigError",
    "CorpusError",
    "HiddenStateStore",
    "LoadedModel",
    "ModelLoadError",
    "NumericalError",
    "OneJumpError",
    "ShortcutError",
    "StoreError",
    "UnsupportedArchitectureError",
    "extract",
    "from_pretrained_model",
    "load_model",
]
