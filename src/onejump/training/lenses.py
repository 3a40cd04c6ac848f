"""Training that returns lenses: the K per-level jumps (full N-NJTC) and one joint jump, for a model.

These wrap :func:`~onejump.training.fit.train_jumps` / :func:`~onejump.training.fit.train_joint` (which
work on bare jump banks) with the model's head bound, so the objective (MSE to h^K, or KL through
the head) needs nothing else.
"""

from __future__ import annotations

from typing import Any

import torch

from ..lenses.onejump import OneJump, PerLevelLens
from .config import TrainConfig
from .fit import objective_loss, train_joint, train_jumps


def _device(lm: Any, device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else lm.adapter.unembedding_matrix().device


def train_per_level(store: Any, lm: Any, config: TrainConfig | None = None, *,
                    device: str | torch.device | None = None, progress: bool = True) -> PerLevelLens:
    """The K per-level jumps of N-NJTC (jump k trained at level k), as one lens."""
    config = config or TrainConfig()
    dev = _device(lm, device)
    loss_fn = objective_loss(store, config, lm.adapter, progress, dev)
    bank, history = train_jumps(store, config, device=dev, progress=progress, loss_fn=loss_fn)
    return PerLevelLens(lm, bank.cpu(), extra={"history": history.to_dict()})


def train_joint_jump(store: Any, lm: Any, config: TrainConfig | None = None, *,
                     device: str | torch.device | None = None, progress: bool = True) -> OneJump:
    """One jump trained on inputs pooled from every exit level (plain or residual: ``config.residual``)."""
    config = config or TrainConfig()
    dev = _device(lm, device)
    loss_fn = objective_loss(store, config, lm.adapter, progress, dev)
    bank, history = train_joint(store, config, device=dev, progress=progress, loss_fn=loss_fn)
    return OneJump(lm, bank.cpu(), trained_at=-1, extra={"history": history.to_dict()})
