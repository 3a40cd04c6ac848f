"""Training jumps: the configuration, the streaming reader over the store, the fit loop, the objectives."""

from .config import TrainConfig, TrainHistory
from .fit import train_joint, train_jumps
from .lenses import train_cond_jump, train_joint_jump, train_per_level
from .objectives import HeadKL

__all__ = ["HeadKL", "TrainConfig", "TrainHistory", "train_cond_jump", "train_joint", "train_joint_jump",
           "train_jumps", "train_per_level"]
