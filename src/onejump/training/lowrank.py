"""Training the lenses of the frontier that the jump trainers do not already train: the per-level
low-rank residual lens, and the tuned lens from its least-squares start trained with Adam.

Both are K per-level translators trained with KL(p_final || p_lens) through the frozen head
(:class:`~onejump.training.objectives.HeadKL`: top-32 summary of p_final, sampled normaliser in
training, exact in validation), all levels at once, by the jump trainers' own loop
(:mod:`onejump.training.fit`: Adam on the sum of the levels' losses, each level keeping the weights
of its own best validation epoch, early stopping per level). The start competes as epoch -1, so a
level that no epoch improves on held-out rows keeps its start (the logit lens, or the least-squares map).

Recipes (written down here, the frontier's file records them with every point):

- **low-rank residual lens** (:data:`LOWRANK_RECIPE`): the settings the sweep's residual KL joint
  jump (``kl-res``, :data:`JOINT_RECIPE`) was tuned with: batch 64 store rows per step (x K levels),
  Adam at 3e-3, patience 2, but at most 16 epochs instead of 4; A seeded, B zero (the lens starts at
  the logit lens).
- **tuned lens, Adam** (:data:`TUNED_ADAM_RECIPE`): the alternative to tuned-lens's SGD schedule
  (:mod:`onejump.training.tuned`) from the same least-squares start (each level's affine map to h^K,
  fitted in closed form on the training rows only): batch 64, Adam at 1e-4 (a full-rank translator
  has H^2 weights per level and starts close to a good solution: larger steps undo the start), no
  weight decay, at most 4 epochs, patience 2. Held-out rows and seed as the SGD recipe's
  (``val_fraction`` 0.1, seed 0), so both hold out the same rows and compete on them.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..lenses.lowrank import LowRankLens
from ..lenses.tuned import TunedLens
from .config import TrainConfig
from .fit import _fit, _prepare, _target_energy, objective_loss
from .objectives import HeadKL
from .reader import _Task

#: The residual KL joint jump's recipe (the sweep's ``kl-res``; rank given per point).
JOINT_RECIPE: dict[str, Any] = {"objective": "kl", "residual": True, "batch_size": 64, "lr": 3e-3,
                                "max_epochs": 4, "patience": 2}
#: The low-rank residual lens's recipe: ``kl-res``'s settings with a cap of 16 epochs, because each level's
#: pair sees only the store's rows, not the K times as many (row, level) pairs of a joint jump: on SmolLM2
#: (1,800 train rows) every level still improved at epoch 4 and at epoch 12 (held-out KL 3.79 -> 2.68 nats,
#: rank 8); early stopping per level (patience 2) ends it sooner where it stops helping.
LOWRANK_RECIPE: dict[str, Any] = {**JOINT_RECIPE, "max_epochs": 16}
#: The Adam alternative of the tuned lens, from the least-squares start.
TUNED_ADAM_RECIPE: dict[str, Any] = {"objective": "kl", "batch_size": 64, "lr": 1e-4, "max_epochs": 4,
                                     "patience": 2, "weight_decay": 0.0}


def lowrank_config(rank: int, base: TrainConfig | None = None) -> TrainConfig:
    """The low-rank residual lens's training settings at ``rank`` (``base``'s held-out part and seed)."""
    return replace(base or TrainConfig(), **LOWRANK_RECIPE, rank=int(rank))


def tuned_adam_config(base: TrainConfig | None = None) -> TrainConfig:
    """The tuned lens's Adam settings (``base``'s held-out part and seed)."""
    return replace(base or TrainConfig(), **TUNED_ADAM_RECIPE)


def _device(lm: Any, device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else lm.adapter.unembedding_matrix().device


def _check(store: Any, lm: Any, config: TrainConfig) -> None:
    if (store.num_blocks, store.hidden_size) != (lm.num_blocks, lm.hidden_size):
        raise ConfigError(f"the store holds K={store.num_blocks}, H={store.hidden_size}; the model has "
                          f"K={lm.num_blocks}, H={lm.hidden_size}")
    if config.objective != "kl":
        raise ConfigError(f"these lenses are trained with KL through the head, not '{config.objective}'")


def train_lowrank_lens(store: Any, lm: Any, config: TrainConfig | None = None, *,
                       device: str | torch.device | None = None, progress: bool = True,
                       targets_cache: dict[int, Any] | None = None) -> LowRankLens:
    """A :class:`LowRankLens` trained on ``store``'s train split (default: :data:`LOWRANK_RECIPE` at
    rank floor(H/100)); its history (per-epoch losses, seconds) is in ``lens.extra["history"]``.
    ``targets_cache``: as :func:`~onejump.training.fit.objective_loss`'s (shared by trainings on one store)."""
    config = config or lowrank_config(max(1, store.hidden_size // 100))
    if not config.residual:
        raise ConfigError("a low-rank residual lens is trained with residual=True")
    _check(store, lm, config)
    config, tr, va, dev = _prepare(store, config, _device(lm, device))
    loss_fn = objective_loss(store, config, lm.adapter, progress, dev, targets_cache)
    K = store.num_blocks
    lens = LowRankLens.start(lm, config.rank or max(1, store.hidden_size // 100), seed=config.seed,
                             eps=config.bn_eps, momentum=config.bn_momentum)
    bank = lens.bank.to(dev)
    levels = list(range(K))
    t0 = time.perf_counter()
    hist = _fit(bank, _Task(tr, levels, K), _Task(va, levels, K) if va is not None else None, config, dev,
                progress, "train low-rank lens", levels, loss_fn=loss_fn, keep_start=va is not None)
    hist.kind, hist.levels = "lowrank", levels
    hist.target_energy = _target_energy(va, K)
    hist.seconds = time.perf_counter() - t0
    return LowRankLens(lm, bank.cpu().eval(), extra={"history": hist.to_dict()})


class _Translators(nn.Module):
    """A tuned lens seen by the jump trainers' loop as a bank of K jumps (one per level): its
    ``weight`` (K, H, H) and ``bias`` (K, H) are the per-level tensors each level's best epoch keeps."""

    conditioned = False

    def __init__(self, lens: TunedLens):
        super().__init__()
        self.lens = lens

    @property
    def num_jumps(self) -> int:
        return self.lens.num_blocks

    def tensors_live(self) -> dict[str, torch.Tensor]:
        return {"weight": self.lens.weight, "bias": self.lens.bias}

    def translate(self, h: torch.Tensor) -> torch.Tensor:
        return self.lens.translate(h)


class _TranslatorsKL(HeadKL):
    """:class:`HeadKL` on the translated states of :class:`_Translators`: ``(K, B, H)``, full rank."""

    def _outputs(self, bank: _Translators, inp: torch.Tensor, levels: torch.Tensor | None = None) -> torch.Tensor:
        return bank.translate(inp).transpose(0, 1)


def _least_squares_start(lm: Any, store: Any, rows: Any) -> TunedLens:
    """Each level's least-squares affine map to h^K on ``rows``, in residual form (``h + h (M - I) + c``)."""
    from ..lenses.jtc import LinearJTC

    W = LinearJTC.fit(store, rows=rows).W  # (K, H+1, H)
    H = W.shape[2]
    return TunedLens(lm, weight=(W[:, :H] - torch.eye(H)).transpose(1, 2), bias=W[:, H])


def train_tuned_adam(store: Any, lm: Any, config: TrainConfig | None = None, *,
                     device: str | torch.device | None = None, progress: bool = True,
                     targets_cache: dict[int, Any] | None = None) -> TunedLens:
    """A :class:`TunedLens` from the least-squares start (fitted on the training rows only) trained with
    Adam (default :data:`TUNED_ADAM_RECIPE`); its history is in ``lens.extra["history"]``."""
    config = config or tuned_adam_config()
    _check(store, lm, config)
    config, tr, va, dev = _prepare(store, config, _device(lm, device))
    cache = {} if targets_cache is None else targets_cache
    objective_loss(store, config, lm.adapter, progress, dev, cache)  # fills the cache with the head targets
    loss_fn = _TranslatorsKL(lm.adapter, cache[config.kl_top_k], negatives=config.kl_negatives, seed=config.seed,
                             device=dev)
    K = store.num_blocks
    t0 = time.perf_counter()
    lens = _least_squares_start(lm, store, tr.rows)
    bank = _Translators(lens).to(dev)
    levels = list(range(K))
    hist = _fit(bank, _Task(tr, levels, K), _Task(va, levels, K) if va is not None else None, config, dev,
                progress, "train tuned lens (Adam)", levels, loss_fn=loss_fn, keep_start=va is not None)
    hist.kind, hist.levels = "tuned-adam", levels
    hist.seconds = time.perf_counter() - t0  # the least-squares start included
    out = bank.lens.cpu().eval()
    out.extra = {"history": hist.to_dict(), "recipe": "adam, least-squares start"}
    return out


__all__ = ["JOINT_RECIPE", "LOWRANK_RECIPE", "TUNED_ADAM_RECIPE", "lowrank_config", "train_lowrank_lens",
           "train_tuned_adam", "tuned_adam_config"]
