"""Training that returns lenses: the K per-level jumps (full N-NJTC), one joint jump and the
level-conditioned joint jump, for a model.

These wrap :func:`~onejump.training.fit.train_jumps` / :func:`~onejump.training.fit.train_joint` (which
work on bare jump banks) with the model's head bound, so the objective (MSE to h^K, or KL through
the head) needs nothing else.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..lenses.cond import CondJump, CondJumpBank
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


def train_cond_jump(store: Any, lm: Any, config: TrainConfig | None = None, *, init: OneJump | None = None,
                    device: str | torch.device | None = None, progress: bool = True,
                    loss_fn: Any = None, checkpoint: Any = None) -> CondJump:
    """The level-conditioned joint jump (:class:`~onejump.lenses.cond.CondJump`), trained like the joint jump.

    Every (sample, level) pair of the train split is one example, exactly as for
    :func:`train_joint_jump`; the shared A, B and BatchNorm and every level's gain and shift are
    trained together. ``init``: a trained joint jump to start from (its A, B and BatchNorm; gains 1,
    shifts 0), which must have ``config``'s rank and form, and which is returned as it came (as a
    conditioned jump) unless an epoch lowers its validation loss; without it the jump starts from
    ``config``'s seed, gains 1 and shifts 0 (at that point exactly the unconditioned joint jump's
    initial weights). ``loss_fn``: the objective, if already built (else from ``config``).
    ``checkpoint``: as in :func:`~onejump.training.fit.train_joint`.
    """
    config = config or TrainConfig()
    dev = _device(lm, device)
    K = store.num_blocks
    if init is not None:
        rank = config.rank if config.rank is not None else init.rank
        if init.rank != rank or init.residual != config.residual or init.bank.num_jumps != 1:
            raise ConfigError(f"the warm start is a rank-{init.rank}{' residual' if init.residual else ''} jump; "
                              f"the configuration asks for rank {rank}{' residual' if config.residual else ''}")
        bank = CondJumpBank.from_bank(init.bank, K)
    else:
        bank = CondJumpBank(1, store.hidden_size, config.rank, K, levels=[-1], eps=config.bn_eps,
                            momentum=config.bn_momentum, seed=config.seed, residual=config.residual)
    if loss_fn is None:
        loss_fn = objective_loss(store, config, lm.adapter, progress, dev)
    bank, history = train_joint(store, config, device=dev, progress=progress, loss_fn=loss_fn, bank=bank,
                                keep_start=init is not None, checkpoint=checkpoint)
    extra = {"history": history.to_dict()}
    if init is not None:
        extra["warm_start"] = {"kind": init.kind, "key": init.extra.get("key")}
    return CondJump(lm, bank.cpu(), extra=extra)
