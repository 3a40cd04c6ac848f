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

Model selection: a seeded ``val_fraction`` of the store's *train* split is held out; after every
epoch each jump's validation loss (eval-mode BN, running statistics) is measured and each jump
keeps the weights of its own best epoch. A jump stops improving its best after ``patience``
epochs without a new best; training ends when all have stopped or at ``max_epochs``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import ConfigError, NumericalError, StoreError
from .shortcuts import JumpBank

OBJECTIVES = ("mse",)


@dataclass
class TrainConfig:
    """Hyper-parameters of jump training, with the reason for each default.

    - ``lr=1e-2``: h^K has a large scale (per-dimension variances up to ~5e4 on SmolLM2), so
      Adam's usual 1e-3 was still improving after 200 epochs; on a SmolLM2 store (810 train
      samples) 1e-2 and 3e-2 reached the same validation loss (fraction of variance unexplained
      0.758 vs 0.763, 1e-3: 0.870 after 200 epochs) and 1e-2 was steadier.
    - ``batch_size=128``: ~60 updates per epoch on 9000 samples, large enough for stable
      per-batch BatchNorm statistics; 64 and 256 gave the same validation loss (0.755, 0.761).
    - ``max_epochs=200`` / ``patience=10``: an upper bound only; each jump keeps its best
      validation epoch and stops after 10 epochs without improvement.
    - ``val_fraction=0.1``: 10% of the train split picks the stopping epoch; the test split is
      never seen in training or selection.
    - ``seed=0``: seeds the init, the train/validation split and the batch order (same seed ->
      identical weights on the same device and thread count).
    - ``objective="mse"``: Eq. 2. Kept as a field so that a KL objective can be added later.
    - ``rank=None``: ``floor(H/100)`` as in the paper.
    - ``weight_decay=0``: the paper uses none.
    - ``bn_momentum=0.1``, ``bn_eps=1e-5``: ``nn.BatchNorm1d`` defaults.
    """

    lr: float = 1e-2
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 10
    val_fraction: float = 0.1
    seed: int = 0
    objective: str = "mse"
    rank: int | None = None
    weight_decay: float = 0.0
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    eval_chunk: int = 1024

    def validate(self) -> None:
        """Raise :class:`ConfigError` for out-of-range values."""
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown training objective '{self.objective}'; supported: {', '.join(OBJECTIVES)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"learning rate must be > 0, got {self.lr}")
        if self.batch_size < 2:
            raise ConfigError(f"batch size must be >= 2 (BatchNorm needs batch statistics), got {self.batch_size}")
        if self.max_epochs < 1 or self.patience < 1:
            raise ConfigError("max_epochs and patience must be >= 1")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.eval_chunk < 1:
            raise ConfigError("eval_chunk must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainHistory:
    """Per-epoch losses (Eq. 2 units) of every jump, and the epoch each jump kept.

    ``train_loss[e][j]`` is the mean training loss of jump j over epoch e (train-mode BN),
    ``val_loss[e][j]`` its validation loss after epoch e (eval-mode BN). ``best_epoch[j]`` is the
    epoch whose weights jump j holds (0-based). ``target_energy`` is the validation mean of
    ``||h^K - mean(h^K)||^2``, so ``val_loss / target_energy`` is the fraction of variance left
    unexplained.
    """

    kind: str
    levels: list[int]
    train_loss: list[list[float]] = field(default_factory=list)
    val_loss: list[list[float]] = field(default_factory=list)
    best_epoch: list[int] = field(default_factory=list)
    best_val_loss: list[float] = field(default_factory=list)
    epochs_run: int = 0
    n_train: int = 0
    n_val: int = 0
    target_energy: float = float("nan")
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def _load_train(store: Any) -> tuple[torch.Tensor, np.ndarray]:
    """All levels of the train split in memory, (n, K+1, H) float32, checked finite.

    (9000 x 31 x 576 fp32 = 640 MB for SmolLM2; a streaming variant only needs this function and
    the batch gathers to change.)
    """
    rows = store.indices("train")
    if len(rows) < 2:
        raise StoreError(f"store {getattr(store, 'path', '')} has {len(rows)} train samples; training needs >= 2")
    x = store.hidden("train")
    for start in range(0, x.shape[0], 1024):
        part = x[start:start + 1024]
        finite = torch.isfinite(part)
        if not finite.all():
            i, level, _ = (~finite).nonzero()[0].tolist()
            raise NumericalError(f"non-finite hidden state in the store at level {level}, "
                                 f"sample row {int(rows[start + i])}; re-extract in float32")
    return x, rows


def _split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 7919)
    perm = torch.randperm(n, generator=gen)
    n_val = int(round(n * val_fraction)) if val_fraction > 0 else 0
    if val_fraction > 0:
        n_val = min(max(n_val, 1), n - 2)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """One epoch of shuffled batches; an incomplete last batch is dropped (BN statistics), unless
    there is only one batch."""
    perm = torch.randperm(n, generator=gen)
    if n <= batch_size:
        return [perm]
    return list(perm[: (n // batch_size) * batch_size].split(batch_size))


# --------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------


class _Task:
    """Where a bank's examples come from: ``get(idx)`` -> (inputs (B, J, H), target (B, H))."""

    def __init__(self, x: torch.Tensor, rows: torch.Tensor, levels: list[int] | None, K: int):
        self.x, self.rows, self.levels, self.K = x, rows, levels, K

    @property
    def size(self) -> int:
        return len(self.rows) * (self.K if self.levels is None else 1)

    def get(self, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.levels is None:  # joint: example e = (sample e // K, level e % K)
            sample = self.rows[idx // self.K]
            level = idx % self.K
            inp = self.x[sample, level].unsqueeze(1)
        else:
            sample = self.rows[idx]
            if self.levels == list(range(self.K)):
                inp = self.x[sample, : self.K]
            else:
                inp = self.x[sample[:, None], torch.tensor(self.levels)[None, :]]
        return inp.to(device, non_blocking=True), self.x[sample, self.K].to(device, non_blocking=True)


def _loss_per_jump(bank: JumpBank, inp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (bank(inp) - target.unsqueeze(1)).pow(2).sum(-1).mean(0)


def _jump_name(levels: list[int] | None, j: int) -> str:
    return "the joint jump" if levels is None else f"jump {levels[j]} (level {levels[j]})"


@torch.no_grad()
def _val_losses(bank: JumpBank, task: _Task, device: torch.device, chunk: int) -> torch.Tensor:
    bank.eval()
    total = torch.zeros(bank.num_jumps, dtype=torch.float64, device=device)
    n = task.size
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(n, start + chunk))
        inp, tgt = task.get(idx, device)
        total += _loss_per_jump(bank, inp, tgt).double() * len(idx)
    return (total / max(n, 1)).cpu()


def _fit(bank: JumpBank, train: _Task, val: _Task | None, config: TrainConfig, device: torch.device,
         progress: bool, desc: str, levels_for_names: list[int] | None,
         on_epoch: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> TrainHistory:
    """Adam on ``sum_j L_j``; each jump keeps the weights of its own best validation epoch."""
    J = bank.num_jumps
    opt = torch.optim.Adam(bank.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed + 104729)
    history = TrainHistory(kind="", levels=[], n_train=train.size, n_val=val.size if val else 0,
                           config=config.to_dict())
    best_val = torch.full((J,), math.inf, dtype=torch.float64)
    best_epoch = torch.zeros(J, dtype=torch.long)
    stale = torch.zeros(J, dtype=torch.long)
    active = torch.ones(J, dtype=torch.bool)
    best_state = {k: v.detach().clone() for k, v in bank.tensors_live().items()}
    bar = tqdm(total=config.max_epochs, desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in range(config.max_epochs):
        bank.train()
        sums = torch.zeros(J, dtype=torch.float64, device=device)
        seen = 0
        for idx in _batches(train.size, config.batch_size, gen):
            inp, tgt = train.get(idx, device)
            per_jump = _loss_per_jump(bank, inp, tgt)
            if not torch.isfinite(per_jump.detach()).all():
                j = int((~torch.isfinite(per_jump.detach())).nonzero()[0])
                raise NumericalError(f"training loss of {_jump_name(levels_for_names, j)} became "
                                     f"{float(per_jump.detach()[j])} at epoch {epoch}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            per_jump.sum().backward()
            opt.step()
            sums += per_jump.detach().double() * len(idx)
            seen += len(idx)
        train_loss = (sums / max(seen, 1)).cpu()
        val_loss = _val_losses(bank, val, device, config.eval_chunk) if val is not None else train_loss
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
        if on_epoch is not None:
            on_epoch(epoch, train_loss, val_loss)
        bar.update(1)
        bar.set_postfix(val=f"{float(val_loss.mean()):.4g}", active=int(active.sum()))
        if not active.any():
            break
    bar.close()
    with torch.no_grad():
        for k, v in bank.tensors_live().items():
            v.copy_(best_state[k])
    history.best_epoch = best_epoch.tolist()
    history.best_val_loss = best_val.tolist()
    return history


def _target_energy(x: torch.Tensor, rows: torch.Tensor, K: int) -> float:
    if len(rows) == 0:
        return float("nan")
    t = x[rows, K].double()
    return float((t - t.mean(0)).pow(2).sum(-1).mean())


def _prepare(store: Any, config: TrainConfig | None, device: str | torch.device):
    config = config or TrainConfig()
    config.validate()
    x, _ = _load_train(store)
    tr, va = _split(x.shape[0], config.val_fraction, config.seed)
    return config, x, tr, va, torch.device(device)


def train_jumps(store: Any, config: TrainConfig | None = None, device: str | torch.device = "cpu",
                progress: bool = True, *, batched: bool = True) -> tuple[JumpBank, TrainHistory]:
    """Train the K per-level N-NJTC jumps (jump k maps level k to h^K) on the store's train split.

    With ``batched=True`` all K jumps run in one loop over batched (K, H, r) tensors; with
    ``batched=False`` they are trained one after another on the same data, initial weights and
    batch order (same results up to float rounding; slower). Returns the bank (in eval mode, on
    ``device``; each jump holds its best-validation weights) and the history.
    """
    config, x, tr, va, dev = _prepare(store, config, device)
    K, H = store.num_blocks, store.hidden_size
    levels = list(range(K))
    init = JumpBank(K, H, config.rank, levels=levels, eps=config.bn_eps, momentum=config.bn_momentum,
                    seed=config.seed)
    t0 = time.perf_counter()
    if batched:
        bank = init.to(dev)
        hist = _fit(bank, _Task(x, tr, levels, K), _Task(x, va, levels, K) if len(va) else None, config, dev,
                    progress, "train jumps", levels)
    else:
        bank = init.to(dev)
        parts: list[TrainHistory] = []
        for k in tqdm(levels, desc="train jumps (looped)", disable=not progress, leave=False):
            one = init.select(k).to(dev)
            parts.append(_fit(one, _Task(x, tr, [k], K), _Task(x, va, [k], K) if len(va) else None, config,
                              dev, False, f"jump {k}", [k]))
            with torch.no_grad():
                for name, v in one.tensors_live().items():
                    getattr(bank, name)[k] = v[0]
        hist = _merge_histories(parts)
    hist.kind = "nnjtc"
    hist.levels = levels
    hist.target_energy = _target_energy(x, va, K)
    hist.seconds = time.perf_counter() - t0
    return bank.eval(), hist


def train_jumps_looped(store: Any, config: TrainConfig | None = None, device: str | torch.device = "cpu",
                       progress: bool = True) -> tuple[JumpBank, TrainHistory]:
    """:func:`train_jumps` with the K jumps trained one at a time in a Python loop (for benchmarks)."""
    return train_jumps(store, config, device, progress, batched=False)


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
                progress: bool = True) -> tuple[JumpBank, TrainHistory]:
    """Train one jump on inputs pooled from all exit levels 0..K-1 (the paper's joint baseline).

    Every (sample, level) pair of the train part is one example with target h^K of that sample;
    its single BatchNorm therefore normalises with statistics pooled over levels. Validation uses
    the held-out samples at all levels. An epoch is one pass over all N*K pairs in batches of
    ``batch_size * K`` pairs: the same rows per step and the same steps per epoch as the
    per-level bank (whose step holds ``batch_size`` samples at each of the K levels), so both get
    the same compute and the same epoch budget. Returns a bank with J = 1 (``levels == [-1]``).
    """
    config, x, tr, va, dev = _prepare(store, config, device)
    K, H = store.num_blocks, store.hidden_size
    config = replace(config, batch_size=config.batch_size * K)
    bank = JumpBank(1, H, config.rank, levels=[-1], eps=config.bn_eps, momentum=config.bn_momentum,
                    seed=config.seed).to(dev)
    t0 = time.perf_counter()
    hist = _fit(bank, _Task(x, tr, None, K), _Task(x, va, None, K) if len(va) else None, config, dev, progress,
                "train joint jump", None)
    hist.kind = "joint"
    hist.levels = [-1]
    hist.target_energy = _target_energy(x, va, K)
    hist.seconds = time.perf_counter() - t0
    return bank.eval(), hist


__all__ = ["TrainConfig", "TrainHistory", "train_jumps", "train_jumps_looped", "train_joint"]
