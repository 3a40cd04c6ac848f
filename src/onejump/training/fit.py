"""Training of N-NJTC jumps (Eq. 1-2) from a hidden-state store.

- :func:`train_jumps`: the K per-level jumps (jump k: level k -> h^K), trained together in one
  batched loop; ``batched=False`` (or :func:`train_jumps_looped`) trains them one at a time in a
  Python loop on the same data, init and batch order, for comparison.
- :func:`train_joint`: one jump trained on inputs pooled from all exit levels 0..K-1.

Objective (Eq. 2): ``L_k = 1/N sum_i ||jump_k(h_i^k) - h_i^K||^2``, the squared L2 norm is
*summed* over the H dimensions and averaged over samples (exactly Eq. 2; a mean over H would only
divide the gradients by H, which Adam is insensitive to). The batched loop minimises
``sum_k L_k``: jumps share no parameter, so each jump gets exactly the gradient (and Adam update)
it would get alone.

Data: the train split is streamed from the store's memory-mapped shards through a shuffle
buffer of ``TrainConfig.buffer_samples`` samples (validation too, in store order), so a store
larger than memory trains in bounded memory; a split that fits in the buffer is read once and
shuffled as a whole each epoch. A custom objective enters as ``loss_fn`` (:data:`LossFn`).

Model selection: a seeded ``val_fraction`` of the store's *train* split is held out; after every
epoch each jump's validation loss (eval-mode BN, running statistics) is measured and each jump
keeps the weights of its own best epoch. A jump stops improving its best after ``patience``
epochs without a new best; training ends when all have stopped or at ``max_epochs``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, NumericalError
from ..interrupts import on_interrupt
from ..lenses.jumps import JumpBank
from .checkpoint import Checkpoint, generator_tensor, load_generator, load_optimizer, optimizer_tensors
from .config import TrainConfig, TrainHistory
from .objectives import LossFn, mse_loss, release_scratch
from .optim import bank_optimizer
from .reader import _Reader, _Source, _Task, holdout_split

"""``loss_fn(bank, inp, tgt, rows) -> (J,)``: the loss of each jump on a batch, averaged over it.

``inp`` (B, J, H) inputs on the training device, ``tgt`` (B, H) the h^K targets (same device),
``rows`` (B,) CPU LongTensor: the store row (``store.indices("train")`` value) of each example's
sample (joint: of the pair's sample). Called in train mode for training batches (with autograd)
and under ``no_grad`` in eval mode for validation chunks. For a level-conditioned bank
(``bank.conditioned``) a fifth argument follows: the exit level (B,) of each example (device tensor).
"""


def _jump_name(levels: list[int] | None, j: int) -> str:
    return "the joint jump" if levels is None else f"jump {levels[j]} (level {levels[j]})"


def _batch_loss(loss_fn: LossFn, bank: JumpBank, batch: tuple[torch.Tensor, ...],
                device: torch.device) -> tuple[torch.Tensor, int]:
    """``(loss per jump, examples)`` of one batch; its exit levels, when it has them, go to ``loss_fn`` too."""
    inp, tgt, rows, *levels = batch
    inp, tgt = inp.to(device, non_blocking=True), tgt.to(device, non_blocking=True)
    return loss_fn(bank, inp, tgt, rows, *(lv.to(device) for lv in levels)), len(rows)


@torch.no_grad()
def _val_losses(bank: JumpBank, task: _Task, device: torch.device, chunk: int,
                loss_fn: LossFn | None = None) -> torch.Tensor:
    loss_fn = loss_fn or mse_loss
    bank.eval()
    total = torch.zeros(bank.num_jumps, dtype=torch.float64, device=device)
    n = 0
    for batch in task.chunks(chunk):
        loss, size = _batch_loss(loss_fn, bank, batch, device)
        total += loss.double() * size
        n += size
    return (total / max(n, 1)).cpu()


def _fit(bank: JumpBank, train: _Task, val: _Task | None, config: TrainConfig, device: torch.device,
         progress: bool, desc: str, levels_for_names: list[int] | None,
         on_epoch: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
         loss_fn: LossFn | None = None, keep_start: bool = False,
         checkpoint: Checkpoint | None = None) -> TrainHistory:
    """Adam on ``sum_j L_j`` (``L = loss_fn``, default :func:`mse_loss`); each jump keeps the
    weights of its own best validation epoch. ``keep_start`` (a warm start): the starting weights
    compete too, as epoch -1, so a jump that no epoch improves on is returned as it came.
    ``checkpoint``: the state is saved there after every epoch and training resumes from it."""
    with on_interrupt(f"{desc}: nothing kept yet (its state is saved after every epoch)") as kept:
        return _fit_epochs(bank, train, val, config, device, progress, desc, levels_for_names, on_epoch,
                           loss_fn, keep_start, checkpoint, kept)


def _fit_epochs(bank: JumpBank, train: _Task, val: _Task | None, config: TrainConfig, device: torch.device,
                progress: bool, desc: str, levels_for_names: list[int] | None,
                on_epoch: Callable[[int, torch.Tensor, torch.Tensor], None] | None, loss_fn: LossFn | None,
                keep_start: bool, checkpoint: Checkpoint | None, kept: Any) -> TrainHistory:
    loss_fn = loss_fn or mse_loss
    J = bank.num_jumps
    opt = bank_optimizer(bank, config.optimizer, config.lr, config.weight_decay, config.muon_lr)
    gen = torch.Generator().manual_seed(config.seed + 104729)
    history = TrainHistory(kind="", levels=[], n_train=train.size, n_val=val.size if val else 0,
                           config=config.to_dict())
    best_val = torch.full((J,), math.inf, dtype=torch.float64)
    best_epoch = torch.zeros(J, dtype=torch.long)
    if keep_start and val is not None:
        best_val = _val_losses(bank, val, device, config.eval_chunk, loss_fn)
        best_epoch -= 1
    stale = torch.zeros(J, dtype=torch.long)
    active = torch.ones(J, dtype=torch.bool)
    best_state = {k: v.detach().clone() for k, v in bank.tensors_live().items()}
    counters = {"best_val": best_val, "best_epoch": best_epoch, "stale": stale, "active": active}
    start = 0
    if checkpoint is not None and (saved := checkpoint.load()) is not None:
        start = _restore(saved, bank, best_state, counters, opt, gen, loss_fn, history)
        kept.say(_kept_message(desc, start, checkpoint))
    bar = tqdm(total=config.max_epochs, initial=start, desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in range(start, config.max_epochs if active.any() else start):
        bank.train()
        sums = torch.zeros(J, dtype=torch.float64, device=device)
        seen = 0
        # on the CPU each batch is used up before the next is gathered, so one batch buffer serves them all
        for batch in train.batches(config.batch_size, gen, reuse=device.type == "cpu"):
            per_jump, size = _batch_loss(loss_fn, bank, batch, device)
            if not torch.isfinite(per_jump.detach()).all():
                j = int((~torch.isfinite(per_jump.detach())).nonzero()[0])
                raise NumericalError(f"training loss of {_jump_name(levels_for_names, j)} became "
                                     f"{float(per_jump.detach()[j])} at epoch {epoch}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            per_jump.sum().backward()
            opt.step()
            sums += per_jump.detach().double() * size
            seen += size
        train_loss = (sums / max(seen, 1)).cpu()
        val_loss = _val_losses(bank, val, device, config.eval_chunk, loss_fn) if val is not None else train_loss
        if not torch.isfinite(val_loss).all():
            j = int((~torch.isfinite(val_loss)).nonzero()[0])
            raise NumericalError(f"validation loss of {_jump_name(levels_for_names, j)} is {float(val_loss[j])} "
                                 f"at epoch {epoch}; lower the learning rate")
        history.train_loss.append(train_loss.tolist())
        history.val_loss.append(val_loss.tolist())
        improved = active & (val_loss < best_val)
        if improved.any():
            best_val[improved] = val_loss[improved]
            best_epoch[improved] = epoch
            dev_mask = improved.to(device)
            for k, v in bank.tensors_live().items():
                best_state[k][dev_mask] = v.detach()[dev_mask]
        stale[improved] = 0
        stale[active & ~improved] += 1
        active &= stale < config.patience
        history.epochs_run = epoch + 1
        if checkpoint is not None:
            if _save(checkpoint, epoch + 1, bank, best_state, counters, opt, gen, loss_fn, history):
                kept.say(_kept_message(desc, epoch + 1, checkpoint))
            else:
                kept.say(f"{desc}: nothing kept (no room to save its state)")
        if on_epoch is not None:
            on_epoch(epoch, train_loss, val_loss)
        bar.update(1)
        bar.set_postfix(val=f"{float(val_loss.mean()):.4g}", active=int(active.sum()))
        if not active.any():
            break
    bar.close()
    release_scratch(bank)
    with torch.no_grad():
        for k, v in bank.tensors_live().items():
            v.copy_(best_state[k])
    history.best_epoch = best_epoch.tolist()
    history.best_val_loss = best_val.tolist()
    return history


def _kept_message(desc: str, epochs: int, checkpoint: Checkpoint) -> str:
    return f"{desc}: {epochs} finished epoch{'s' if epochs != 1 else ''} kept in {checkpoint.path}"


def _loss_generator(loss_fn: Any) -> torch.Generator | None:
    """The random generator a loss draws from (the KL objective's sampled negatives), if it has one."""
    gen = getattr(loss_fn, "gen", None)
    return gen if isinstance(gen, torch.Generator) else None


def _save(checkpoint: Checkpoint, epochs: int, bank: JumpBank, best_state: dict[str, torch.Tensor],
          counters: dict[str, torch.Tensor], opt: torch.optim.Optimizer, gen: torch.Generator, loss_fn: Any,
          history: TrainHistory) -> bool:
    """Everything the remaining epochs read: weights, best weights, counters, Adam's moments, generators."""
    opt_tensors, opt_rest = optimizer_tensors(opt)
    tensors = {**{f"bank.{k}": v for k, v in bank.tensors_live().items()},
               **{f"best.{k}": v for k, v in best_state.items()},
               **{f"counter.{k}": v for k, v in counters.items()}, **opt_tensors,
               "gen": generator_tensor(gen)}
    if (loss_gen := _loss_generator(loss_fn)) is not None:
        tensors["loss_gen"] = generator_tensor(loss_gen)
    return checkpoint.save(tensors, {"epochs": epochs, "optimizer": opt_rest, "train_loss": history.train_loss,
                                     "val_loss": history.val_loss})


def _restore(saved: tuple[dict[str, torch.Tensor], dict[str, Any]], bank: JumpBank,
             best_state: dict[str, torch.Tensor], counters: dict[str, torch.Tensor], opt: torch.optim.Optimizer,
             gen: torch.Generator, loss_fn: Any, history: TrainHistory) -> int:
    """Put a checkpoint's state back in place; returns the epochs it had finished."""
    tensors, state = saved
    with torch.no_grad():
        for k, v in bank.tensors_live().items():
            v.copy_(tensors[f"bank.{k}"])
        for k, v in best_state.items():
            v.copy_(tensors[f"best.{k}"])
        for k, v in counters.items():
            v.copy_(tensors[f"counter.{k}"])
    load_optimizer(opt, tensors, state["optimizer"])
    load_generator(gen, tensors["gen"])
    if (loss_gen := _loss_generator(loss_fn)) is not None and "loss_gen" in tensors:
        load_generator(loss_gen, tensors["loss_gen"])
    history.train_loss, history.val_loss = state["train_loss"], state["val_loss"]
    history.epochs_run = int(state["epochs"])
    return int(state["epochs"])


def _target_energy(source: _Source | None, K: int) -> float:
    """Mean of ``||h^K - mean(h^K)||^2`` over the source's rows, streamed (Chan's pairwise update)."""
    n, mean, m2 = 0, None, 0.0
    for x, _, _ in source.buffers(None) if source is not None else ():
        t = x[:, K].double()
        nb, mb = t.shape[0], t.mean(0)
        m2b = float((t - mb).pow(2).sum())
        if mean is None:
            mean, m2 = mb, m2b
        else:
            delta = mb - mean
            m2 += m2b + float(delta.pow(2).sum()) * n * nb / (n + nb)
            mean = mean + delta * (nb / (n + nb))
        n += nb
    return m2 / n if n else float("nan")


def _prepare(store: Any, config: TrainConfig | None, device: str | torch.device):
    """Validated config, the training and validation sources (validation None when empty), device."""
    config = config or TrainConfig()
    config.validate()
    tr_rows, va_rows = holdout_split(store, config.val_fraction, config.seed)
    resident = len(tr_rows) + len(va_rows) <= config.buffer_samples
    reader = _Reader(store, min(config.buffer_samples, max(len(tr_rows), len(va_rows))))
    train = _Source(reader, tr_rows, config.buffer_samples, resident)
    val = _Source(reader, va_rows, config.buffer_samples, resident) if len(va_rows) else None
    return config, train, val, torch.device(device)


def objective_loss(store: Any, config: TrainConfig, adapter: Any = None, progress: bool = False,
                   device: str | torch.device | None = None, cache: dict[int, Any] | None = None) -> LossFn | None:
    """The loss of ``config.objective``: None for MSE (the default), a :class:`~onejump.training.objectives.HeadKL`
    for ``"kl"`` on :func:`~onejump.training.objectives.head_targets` of the store's train split. ``cache``
    (a dict, keyed by ``kl_top_k``) keeps those targets, so several trainings on one store (the
    bank and the joint jump) share one pass of the final head over it."""
    if config.objective == "mse":
        return None
    if adapter is None:
        raise ConfigError(f"the '{config.objective}' objective trains through the model's head: pass the model's "
                          "adapter (adapter=lm.adapter)")
    from .objectives import HeadKL, head_targets

    cache = {} if cache is None else cache
    if config.kl_top_k not in cache:
        cache[config.kl_top_k] = head_targets(store, adapter, top_k=config.kl_top_k, progress=progress)
    targets = cache[config.kl_top_k]
    return HeadKL(adapter, targets, negatives=config.kl_negatives, seed=config.seed, device=device)


def _as_checkpoint(checkpoint: str | Path | Checkpoint | None, kind: str, config: TrainConfig,
                   store: Any) -> Checkpoint | None:
    """A :class:`Checkpoint`; a bare path gets the key of this training (kind, config, store identity)."""
    if checkpoint is None or isinstance(checkpoint, Checkpoint):
        return checkpoint
    key = json.dumps([kind, config.to_dict(), str(getattr(store, "identity", "")), store.num_blocks,
                      store.hidden_size], sort_keys=True, default=str)
    return Checkpoint(checkpoint, key)


def train_jumps(store: Any, config: TrainConfig | None = None, device: str | torch.device = "cpu",
                progress: bool = True, *, batched: bool = True,
                loss_fn: LossFn | None = None, adapter: Any = None,
                checkpoint: str | Path | Checkpoint | None = None) -> tuple[JumpBank, TrainHistory]:
    """Train the K per-level N-NJTC jumps (jump k maps level k to h^K) on the store's train split.

    With ``batched=True`` all K jumps run in one loop over batched (K, H, r) tensors; with
    ``batched=False`` they are trained one after another on the same data, initial weights and
    batch order (same results up to float rounding; slower). Returns the bank (in eval mode, on
    ``device``; each jump holds its best-validation weights) and the history. ``loss_fn``
    (see :data:`LossFn`) replaces the MSE of Eq. 2 in training and validation; without it,
    ``config.objective`` decides (``"kl"`` needs ``adapter``, the model's head).

    ``checkpoint`` (a file path, batched training only): the training state is saved there after
    every epoch; a rerun with the same store and config resumes from it to the same result, and
    the file is removed when training ends.
    """
    config, tr, va, dev = _prepare(store, config, device)
    ckpt = _as_checkpoint(checkpoint, "nnjtc", config, store) if batched else None
    if loss_fn is None:
        loss_fn = objective_loss(store, config, adapter, progress, dev)
    K, H = store.num_blocks, store.hidden_size
    levels = list(range(K))
    init = JumpBank(K, H, config.rank, levels=levels, eps=config.bn_eps, momentum=config.bn_momentum,
                    seed=config.seed, residual=config.residual)
    t0 = time.perf_counter()
    if batched:
        bank = init.to(dev)
        hist = _fit(bank, _Task(tr, levels, K), _Task(va, levels, K) if va is not None else None, config, dev,
                    progress, "train jumps", levels, loss_fn=loss_fn, checkpoint=ckpt)
    else:
        bank = init.to(dev)
        parts: list[TrainHistory] = []
        for k in tqdm(levels, desc="train jumps (looped)", disable=not progress, leave=False):
            one = init.select(k).to(dev)
            parts.append(_fit(one, _Task(tr, [k], K), _Task(va, [k], K) if va is not None else None, config,
                              dev, False, f"jump {k}", [k], loss_fn=loss_fn))
            with torch.no_grad():
                for name, v in one.tensors_live().items():
                    getattr(bank, name)[k] = v[0]
        hist = _merge_histories(parts)
    hist.kind = "nnjtc"
    hist.levels = levels
    hist.target_energy = _target_energy(va, K)
    hist.seconds = time.perf_counter() - t0
    if ckpt is not None:
        ckpt.clear()
    return bank.eval(), hist


def train_jumps_looped(store: Any, config: TrainConfig | None = None, device: str | torch.device = "cpu",
                       progress: bool = True, *, loss_fn: LossFn | None = None,
                       adapter: Any = None) -> tuple[JumpBank, TrainHistory]:
    """:func:`train_jumps` with the K jumps trained one at a time in a Python loop (for benchmarks)."""
    return train_jumps(store, config, device, progress, batched=False, loss_fn=loss_fn, adapter=adapter)


def _merge_histories(parts: list[TrainHistory]) -> TrainHistory:
    epochs = max(p.epochs_run for p in parts)

    def column(p: TrainHistory, attr: str, e: int) -> float:
        rows = getattr(p, attr)
        return rows[e][0] if e < len(rows) else float("nan")

    merged = copy.deepcopy(parts[0])
    merged.train_loss = [[column(p, "train_loss", e) for p in parts] for e in range(epochs)]
    merged.val_loss = [[column(p, "val_loss", e) for p in parts] for e in range(epochs)]
    merged.best_epoch = [p.best_epoch[0] for p in parts]
    merged.best_val_loss = [p.best_val_loss[0] for p in parts]
    merged.epochs_run = epochs
    return merged


def train_joint(store: Any, config: TrainConfig | None = None, device: str | torch.device = "cpu",
                progress: bool = True, *, loss_fn: LossFn | None = None,
                adapter: Any = None, bank: JumpBank | None = None,
                keep_start: bool = False,
                checkpoint: str | Path | Checkpoint | None = None) -> tuple[JumpBank, TrainHistory]:
    """Train one jump on inputs pooled from all exit levels 0..K-1 (the paper's joint baseline).

    Every (sample, level) pair of the train part is one example with target h^K of that sample;
    its single BatchNorm therefore normalises with statistics pooled over levels. Validation uses
    the held-out samples at all levels. An epoch is one pass over all N*K pairs in batches of
    ``batch_size * K`` pairs: the same rows per step and the same steps per epoch as the
    per-level bank (whose step holds ``batch_size`` samples at each of the K levels), so both get
    the same compute and the same epoch budget. Pairs are formed within the shuffle buffer (see
    :class:`TrainConfig`). ``loss_fn`` (see :data:`LossFn`; ``rows`` is each pair's sample row)
    replaces the MSE. Returns a bank with J = 1 (``levels == [-1]``).

    ``bank``: the jump to train (trained in place, e.g. a level-conditioned
    :class:`~onejump.lenses.cond.CondJumpBank`, or a warm start); default a new jump from ``config``.
    A conditioned bank gets each pair's exit level (see :data:`LossFn`). ``keep_start``: the given
    bank's starting weights are kept unless an epoch beats their validation loss (``best_epoch``
    -1 when none does). ``checkpoint``: as in :func:`train_jumps`.
    """
    config, tr, va, dev = _prepare(store, config, device)
    ckpt = _as_checkpoint(checkpoint, "joint", config, store)
    if loss_fn is None:
        loss_fn = objective_loss(store, config, adapter, progress, dev)
    K, H = store.num_blocks, store.hidden_size
    config = replace(config, batch_size=config.batch_size * K)
    if bank is None:
        bank = JumpBank(1, H, config.rank, levels=[-1], eps=config.bn_eps, momentum=config.bn_momentum,
                        seed=config.seed, residual=config.residual)
    elif bank.num_jumps != 1 or bank.hidden_size != H:
        raise ConfigError(f"a joint jump is one jump of width H={H}; got {bank.num_jumps} of width {bank.hidden_size}")
    bank = bank.to(dev)
    cond = bank.conditioned
    t0 = time.perf_counter()
    hist = _fit(bank, _Task(tr, None, K, cond), _Task(va, None, K, cond) if va is not None else None, config, dev,
                progress, "train joint jump" + (" (level-conditioned)" if cond else ""), None, loss_fn=loss_fn,
                keep_start=keep_start, checkpoint=ckpt)
    hist.kind = "joint-cond" if cond else "joint"
    hist.levels = [-1]
    hist.target_energy = _target_energy(va, K)
    hist.seconds = time.perf_counter() - t0
    if ckpt is not None:
        ckpt.clear()
    return bank.eval(), hist
