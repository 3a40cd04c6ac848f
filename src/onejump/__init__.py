"""onejump: lenses and parameter-efficient early exit for transformer LMs, with one low-rank jump for all levels.

Reproduces "One Jump Is All You Need" (OJFA): N-NJTC low-rank jumps from every level to the final
representation, the D_m reuse score, and the single best jump for all exit levels; and goes beyond
it (KL through the frozen head, residual jumps, a head-aware selection rule). Everything that turns
a hidden state into logits is a :class:`Lens`.

    import onejump as oj
    lm = oj.load_model("smollm2-135m")
    store = oj.extract(lm, texts, "runs/x/store", splits=labels)
    per_level = oj.train_per_level(store, lm)
    ojfa = oj.select(store, per_level).lens
    result = oj.evaluate(store, {"logit lens": oj.LogitLens(lm), "ojfa": ojfa})
"""

from . import threads as _threads  # noqa: F401, I001  first: sets OpenMP's wait policy before torch loads it
from .corpus import load_sentences, split_sentences
from .errors import (
    ChecksumError,
    ConfigError,
    CorpusError,
    DiskFullError,
    ModelLoadError,
    NumericalError,
    OneJumpError,
    LensFileError,
    StoreError,
    UnsupportedArchitectureError,
)
from .evaluation import EvalResult, evaluate, reuse_matrix
from .evaluation.selection import select_ojfa
from .extract import extract
from .generation import generate
from .lenses import CondJump, JTCLens, Lens, LogitLens, OneJump, PerLevelLens, TunedLens
from .model import ArchitectureAdapter, LoadedModel, from_pretrained_model, load_model
from .store import HiddenStateStore
from .trajectory import PredictionTrajectory, trajectories
from .training import TrainConfig, train_cond_jump, train_joint_jump, train_per_level
from .training.tuned import TunedTrainConfig, train_tuned_lens

select = select_ojfa

__version__ = "0.2.0"

__all__ = [
    "ArchitectureAdapter",
    "ChecksumError",
    "CondJump",
    "ConfigError",
    "CorpusError",
    "DiskFullError",
    "EvalResult",
    "HiddenStateStore",
    "JTCLens",
    "Lens",
    "LoadedModel",
    "LogitLens",
    "ModelLoadError",
    "NumericalError",
    "OneJump",
    "OneJumpError",
    "PerLevelLens",
    "PredictionTrajectory",
    "TunedLens",
    "LensFileError",
    "StoreError",
    "TrainConfig",
    "TunedTrainConfig",
    "UnsupportedArchitectureError",
    "evaluate",
    "extract",
    "from_pretrained_model",
    "generate",
    "load_model",
    "load_sentences",
    "reuse_matrix",
    "select",
    "select_ojfa",
    "split_sentences",
    "train_cond_jump",
    "train_joint_jump",
    "train_per_level",
    "train_tuned_lens",
    "trajectories",
]
