"""How each kind of lens of a run is trained (the train stage's computation, for any lens folder)."""

from __future__ import annotations

import copy
from typing import Any

from ..store import HiddenStateStore


def fit_lens(kind: str, lm: Any, store: HiddenStateStore, config: Any, targets_cache: dict, key: str, *,
             device: Any, progress: bool, init: Any = None, ckpt: Any = None):
    """Train the lens of ``kind`` (``nnjtc``, ``joint``, ``jtc``, ``tuned``, ``joint-cond``) with ``config`` on
    ``store``; ``key`` (its stage's) is kept in its ``extra`` as where it came from; ``init``: the lens a
    warm-started training starts from; ``ckpt``: the training's checkpoint (a rerun resumes from it)."""
    from ..lenses.jtc import JTCLens, LinearJTC
    from ..lenses.onejump import OneJump, PerLevelLens
    from ..training.fit import objective_loss, train_joint, train_jumps
    from ..training.lenses import train_cond_jump

    dev = device
    if kind == "jtc":
        return JTCLens(lm, LinearJTC.fit(store, device=dev).cpu(), extra={"key": key})
    if kind == "tuned":
        from ..training.tuned import train_tuned_lens

        lens, history = train_tuned_lens(store, lm, config, device=dev, progress=progress,
                                         targets=targets_cache.get(config.kl_top_k), checkpoint=ckpt)
        lens.extra = {"key": key, "history": history.to_dict()}
        return lens.cpu()
    loss_fn = objective_loss(store, config, lm.adapter, progress, dev, targets_cache)
    if kind == "joint-cond":
        lens = train_cond_jump(store, lm, config, init=init, device=dev, progress=progress, loss_fn=loss_fn,
                               checkpoint=ckpt)
        lens.extra["key"] = key
        return lens
    if kind == "joint" and init is not None:  # trained on from a copy of a joint jump (kept unless beaten)
        bank, history = train_joint(store, config, device=dev, progress=progress, loss_fn=loss_fn,
                                    bank=copy.deepcopy(init.bank), keep_start=True, checkpoint=ckpt)
        history.kind = "joint-warm"
    else:
        trainer = train_jumps if kind == "nnjtc" else train_joint
        bank, history = trainer(store, config, device=dev, progress=progress, loss_fn=loss_fn,
                                checkpoint=ckpt)
    extra = {"key": key, "history": history.to_dict()}
    if kind == "nnjtc":
        return PerLevelLens(lm, bank.cpu(), extra=extra)
    return OneJump(lm, bank.cpu(), trained_at=-1, extra=extra)


__all__ = ["fit_lens"]
