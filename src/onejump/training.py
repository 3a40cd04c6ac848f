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
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import ConfigError, NumericalError, StoreError
from .shortcuts import JumpBank

OBJECTIVES = ("mse", "kl")


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
    - ``objective="mse"``: Eq. 2. ``"kl"``: KL from the model's next-token distribution through the
      frozen head (:mod:`onejump.objectives`; needs the model's adapter), beyond the paper.
    - ``kl_top_k=32`` / ``kl_negatives=2048``: the KL objective's target summary (top-k tokens
      + the rest's mass) and the uniform vocabulary samples of its training-time normaliser;
      on SmolLM2 the top 32 tokens hold most of p_final's mass and a step then touches ~3-4k
      of the 49k vocabulary columns.
    - ``residual=False``: the paper's jump ``BN(h) A B``; ``True`` predicts ``h + BN(h) A B``
      (same parameters; starts at the logit lens), beyond the paper.
    - ``rank=None``: ``floor(H/100)`` as in the paper.
    - ``weight_decay=0``: the paper uses none.
    - ``bn_momentum=0.1``, ``bn_eps=1e-5``: ``nn.BatchNorm1d`` defaults.
    - ``eval_chunk=1024``: examples per validation forward pass (memory only, not results).
    - ``buffer_samples=16384``: size of the shuffle buffer, in samples. Training streams the train
      split from the store's memory-mapped shards: each epoch the shards (cut into pieces of at
      most ``buffer_samples`` rows if bigger) are taken in a seeded random order, as many whole
      ones as fit are read into the buffer, its examples are permuted and cut into batches, and
      the fewer than one batch left over are carried into the next buffer. Memory is
      ``buffer_samples x (K+1) x H x 4`` bytes plus one batch and one shard's mapping, whatever
      the store's size. When the whole train split fits (``n_train <= buffer_samples``) it is read
      once and kept, and each epoch is one full random permutation, exactly as in-memory training
      (the same batches, bit for bit). The default is 1.2 GB of float32 at SmolLM2-135M's
      31 x 576 and holds the paper-scale split (9000 samples) whole; lower it for big models
      (Llama-2-7B, 33 x 4096: 8.9 GB) or when memory is short. Must hold one batch.
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
    buffer_samples: int = 16384
    kl_top_k: int = 32
    kl_negatives: int = 2048
    residual: bool = False

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
        if self.kl_top_k < 1 or self.kl_negatives < 0:
            raise ConfigError("kl_top_k must be >= 1 and kl_negatives >= 0")
        if self.buffer_samples < self.batch_size:
            raise ConfigError(f"buffer_samples must hold one batch (>= batch_size {self.batch_size}), "
                              f"got {self.buffer_samples}")

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
# Data: streamed from the store through a shuffle buffer
# --------------------------------------------------------------------------------------------------


def _train_rows(store: Any) -> np.ndarray:
    """Store rows of the train split (ascending); training needs at least two."""
    rows = np.asarray(store.indices("train"), dtype=np.int64)
    if len(rows) < 2:
        raise StoreError(f"store {getattr(store, 'path', '')} has {len(rows)} train samples; training needs >= 2")
    return rows


def _split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 7919)
    perm = torch.randperm(n, generator=gen)
    n_val = int(round(n * val_fraction)) if val_fraction > 0 else 0
    if val_fraction > 0:
        n_val = min(max(n_val, 1), n - 2)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _check_finite(x: torch.Tensor, rows: np.ndarray, chunk: int = 256) -> None:
    """Raise :class:`NumericalError` naming the level and store row of the first non-finite value.

    A chunk whose sum is finite has only finite values (a NaN or inf makes the sum non-finite), so
    only a chunk with a non-finite sum (or a float overflow) is checked value by value.
    """
    for start in range(0, x.shape[0], chunk):
        part = x[start:start + chunk]
        if torch.isfinite(part.sum()):
            continue
        finite = torch.isfinite(part)
        if not finite.all():
            i, level, _ = (~finite).nonzero()[0].tolist()
            raise NumericalError(f"non-finite hidden state in the store at level {level}, "
                                 f"sample row {int(rows[start + i])}; re-extract in float32")


class _Reader:
    """Reads store rows as float32 (n, K+1, H), into one buffer reused from read to read.

    A :class:`~onejump.store.HiddenStateStore` (anything with ``rows_by_shard`` and ``read_rows``)
    is read shard by shard through its memory maps; other store-like objects (in-memory stores of
    the tests) are read through ``hidden()`` and count as one shard.
    """

    def __init__(self, store: Any, capacity: int):
        self.store, self.capacity = store, capacity
        self.mapped = hasattr(store, "rows_by_shard") and hasattr(store, "read_rows")
        self._buffer: torch.Tensor | None = None
        self._all: torch.Tensor | None = None

    def groups(self, rows: np.ndarray) -> list[np.ndarray]:
        """``rows`` grouped by shard, ascending, in store order."""
        return self.store.rows_by_shard(rows) if self.mapped else [np.sort(rows)]

    def read(self, rows: np.ndarray, *, keep: bool = False, check: bool = True) -> torch.Tensor:
        """The rows' hidden states: a view of the shared buffer (valid until the next read), or a
        tensor of their own with ``keep``; checked finite with ``check``."""
        if not self.mapped:
            if self._all is None:
                self._all = self.store.hidden(None).float()
            x = self._all[torch.from_numpy(rows)]
        elif keep:
            x = self.store.read_rows(rows)
        else:
            if self._buffer is None or self._buffer.shape[0] < len(rows):
                self._buffer = None  # free the old one first
                self._buffer = torch.empty(max(len(rows), self.capacity), self.store.num_levels,
                                           self.store.hidden_size)
            x = self.store.read_rows(rows, out=self._buffer)
        if check:
            _check_finite(x, rows)
        return x


class _Source:
    """The store rows of one part of the train split (training or validation), read in buffers.

    The part's rows are cut into blocks (a shard's rows of the part, or an even piece of them when
    a shard holds more than ``buffer_samples``). :meth:`buffers` fills buffers of at most
    ``buffer_samples`` rows with whole blocks, in a shuffled block order when given a generator.
    ``resident``: the part is read once and kept (the whole split fits in the buffer).
    Values are checked finite on the first pass only (the shards do not change).
    """

    def __init__(self, reader: _Reader, rows: np.ndarray, buffer_samples: int, resident: bool):
        self.reader, self.rows, self.cap, self.resident = reader, np.sort(rows), buffer_samples, resident
        self.blocks: list[np.ndarray] = []
        for group in reader.groups(self.rows):
            self.blocks += np.array_split(group, -(-len(group) // buffer_samples))
        self._cache: torch.Tensor | None = None
        self._checked = False

    def __len__(self) -> int:
        return len(self.rows)

    def buffers(self, gen: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, np.ndarray, bool]]:
        """Yield ``(hidden (n, K+1, H), store rows (n,), is_last)`` covering every row once.

        The block order is permuted with ``gen`` unless all rows fit in one buffer (then the single
        buffer holds the rows in store order, whatever the shard layout). A yielded tensor may be
        overwritten by the next read: use it before asking for the next buffer.
        """
        if self.resident:
            if self._cache is None:
                self._cache = self.reader.read(self.rows, keep=True)
            yield self._cache, self.rows, True
            return
        if gen is None or len(self.rows) <= self.cap:
            order: list[int] = list(range(len(self.blocks)))
        else:
            order = torch.randperm(len(self.blocks), generator=gen).tolist()
        rounds: list[list[np.ndarray]] = []
        size = 0
        for b in order:
            if not rounds or size + len(self.blocks[b]) > self.cap:
                rounds.append([])
                size = 0
            rounds[-1].append(self.blocks[b])
            size += len(self.blocks[b])
        for i, blocks in enumerate(rounds):
            rows = np.concatenate(blocks)
            yield self.reader.read(rows, check=not self._checked), rows, i == len(rounds) - 1
        self._checked = True


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class _Task:
    """A bank's examples over a source: ``(inputs (B, J, H), targets h^K (B, H), store rows (B,))``.

    Per-level (``levels`` given): an example is a sample, with inputs at ``levels``. Joint
    (``levels=None``): an example is a (sample, level) pair, level 0..K-1, numbered
    ``sample * K + level`` within a buffer.
    """

    def __init__(self, source: _Source, levels: list[int] | None, K: int):
        self.source, self.levels, self.K = source, levels, K
        self.per_sample = K if levels is None else 1

    @property
    def size(self) -> int:
        return len(self.source) * self.per_sample

    def gather(self, x: torch.Tensor, rows: np.ndarray, idx: torch.Tensor) -> Batch:
        if self.levels is None:
            sample, level = idx // self.K, idx % self.K
            inp = x[sample, level].unsqueeze(1)
        else:
            sample = idx
            if self.levels == list(range(self.K)):
                inp = x[sample, : self.K]
            else:
                inp = x[sample[:, None], torch.tensor(self.levels)[None, :]]
        return inp, x[sample, self.K], torch.from_numpy(rows)[sample]

    def _take(self, x: torch.Tensor, rows: np.ndarray, carry: Batch | None, idx: torch.Tensor) -> Batch:
        """Examples ``idx`` of the pool ``carry + buffer`` (indices below len(carry) are carried ones)."""
        if carry is None:
            return self.gather(x, rows, idx)
        n_carry = len(carry[2])
        old = idx < n_carry
        if old.all():
            return tuple(t[idx] for t in carry)  # type: ignore[return-value]
        new = self.gather(x, rows, idx[~old] - n_carry)
        if not old.any():
            return new
        return tuple(torch.cat([c[idx[old]], t]) for c, t in zip(carry, new))  # type: ignore[return-value]

    def batches(self, batch_size: int, gen: torch.Generator) -> Iterator[Batch]:
        """One epoch of shuffled batches of ``batch_size`` examples (CPU tensors).

        Each buffer's examples, plus the fewer than ``batch_size`` left over from the previous
        buffer, are permuted with ``gen`` and cut into batches; what is left over is carried on.
        The incomplete last batch of the epoch is dropped (BatchNorm statistics), unless there is
        only one batch. When the part fits in one buffer this is one random permutation of all its
        examples, the same batches as in-memory training.
        """
        one_batch = self.size <= batch_size  # then the part fits in one buffer (buffer >= batch)
        carry: Batch | None = None
        for x, rows, last in self.source.buffers(gen):
            n_carry = 0 if carry is None else len(carry[2])
            perm = torch.randperm(n_carry + len(rows) * self.per_sample, generator=gen)
            if one_batch:
                yield self._take(x, rows, carry, perm)
                continue
            full = len(perm) // batch_size * batch_size
            for start in range(0, full, batch_size):
                yield self._take(x, rows, carry, perm[start:start + batch_size])
            carry = None if last else self._take(x, rows, carry, perm[full:])

    def chunks(self, chunk: int) -> Iterator[Batch]:
        """All examples in store order, in chunks of at most ``chunk`` (validation)."""
        for x, rows, _ in self.source.buffers(None):
            n = len(rows) * self.per_sample
            for start in range(0, n, chunk):
                yield self.gather(x, rows, torch.arange(start, min(n, start + chunk)))


LossFn = Callable[[JumpBank, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(bank, inp, tgt, rows) -> (J,)``: the loss of each jump on a batch, averaged over it.

``inp`` (B, J, H) inputs on the training device, ``tgt`` (B, H) the h^K targets (same device),
``rows`` (B,) CPU LongTensor: the store row (``store.indices("train")`` value) of each example's
sample (joint: of the pair's sample). Called in train mode for training batches (with autograd)
and under ``no_grad`` in eval mode for validation chunks.
"""


def mse_loss(bank: JumpBank, inp: torch.Tensor, tgt: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Eq. 2 per jump: ``mean_i ||jump(h_i) - h_i^K||^2`` (the default :data:`LossFn`; ignores ``rows``)."""
    return (bank(inp) - tgt.unsqueeze(1)).pow(2).sum(-1).mean(0)


def _jump_name(levels: list[int] | None, j: int) -> str:
    return "the joint jump" if levels is None else f"jump {levels[j]} (level {levels[j]})"


@torch.no_grad()
def _val_losses(bank: JumpBank, task: _Task, device: torch.device, chunk: int,
                loss_fn: LossFn | None = None) -> torch.Tensor:
    loss_fn = loss_fn or mse_loss
    bank.eval()
    total = torch.zeros(bank.num_jumps, dtype=torch.float64, device=device)
    n = 0
    for inp, tgt, rows in task.chunks(chunk):
        inp, tgt = inp.to(device, non_blocking=True), tgt.to(device, non_blocking=True)
        total += loss_fn(bank, inp, tgt, rows).double() * len(rows)
        n += len(rows)
    return (total / max(n, 1)).cpu()


def _fit(bank: JumpBank, train: _Task, val: _Task | None, config: TrainConfig, device: torch.device,
         progress: bool, desc: str, levels_for_names: list[int] | None,
         on_epoch: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
         loss_fn: LossFn | None = None) -> TrainHistory:
    """Adam on ``sum_j L_j`` (``L = loss_fn``, default :func:`mse_loss`); each jump keeps the
    weights of its own best validation epoch."""
    loss_fn = loss_fn or mse_loss
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
        for inp, tgt, rows in train.batches(config.batch_size, gen):
            inp, tgt = inp.to(device, non_blocking=True), tgt.to(device, non_blocking=True)
            per_jump = loss_fn(bank, inp, tgt, rows)
            if not torch.isfinite(per_jump.detach()).all():
                j = int((~torch.isfinite(per_jump.detach())).nonzero()[0])
                raise NumericalError(f"training loss of {_jump_name(levels_for_names, j)} became "
                                     f"{float(per_jump.detach()[j])} at epoch {epoch}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            per_jump.sum().backward()
            opt.step()
            sums += per_jump.detach().double() * len(rows)
            seen += len(rows)
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
    rows = _train_rows(store)
    tr, va = _split(len(rows), config.val_fraction, config.seed)
    tr_rows, va_rows = rows[tr.numpy()], rows[va.numpy()]
    resident = len(rows) <= config.buffer_samples
    reader = _Reader(store, min(config.buffer_samples, max(len(tr_rows), len(va_rows))))
    train = _Source(reader, tr_rows, config.buffer_samples, resident)
    val = _Source(reader, va_rows, config.buffer_samples, resident) if len(va_rows) else None
    return config, train, val, torch.device(device)


def objective_loss(store: Any, config: TrainConfig, adapter: Any = None, progress: bool = False,
                   device: str | torch.device | None = None, cache: dict[int, Any] | None = None) -> LossFn | None:
    """The loss of ``config.objective``: None for MSE (the default), a :class:`~onejump.objectives.HeadKL`
    for ``"kl"`` on :func:`~onejump.objectives.head_targets` of the store's train split. ``cache``
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


def train_jumps(store: Any, config: TrainConfig | None = None, device: str | torch.device = "cpu",
                progress: bool = True, *, batched: bool = True,
                loss_fn: LossFn | None = None, adapter: Any = None) -> tuple[JumpBank, TrainHistory]:
    """Train the K per-level N-NJTC jumps (jump k maps level k to h^K) on the store's train split.

    With ``batched=True`` all K jumps run in one loop over batched (K, H, r) tensors; with
    ``batched=False`` they are trained one after another on the same data, initial weights and
    batch order (same results up to float rounding; slower). Returns the bank (in eval mode, on
    ``device``; each jump holds its best-validation weights) and the history. ``loss_fn``
    (see :data:`LossFn`) replaces the MSE of Eq. 2 in training and validation; without it,
    ``config.objective`` decides (``"kl"`` needs ``adapter``, the model's head).
    """
    config, tr, va, dev = _prepare(store, config, device)
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
                    progress, "train jumps", levels, loss_fn=loss_fn)
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
                adapter: Any = None) -> tuple[JumpBank, TrainHistory]:
    """Train one jump on inputs pooled from all exit levels 0..K-1 (the paper's joint baseline).

    Every (sample, level) pair of the train part is one example with target h^K of that sample;
    its single BatchNorm therefore normalises with statistics pooled over levels. Validation uses
    the held-out samples at all levels. An epoch is one pass over all N*K pairs in batches of
    ``batch_size * K`` pairs: the same rows per step and the same steps per epoch as the
    per-level bank (whose step holds ``batch_size`` samples at each of the K levels), so both get
    the same compute and the same epoch budget. Pairs are formed within the shuffle buffer (see
    :class:`TrainConfig`). ``loss_fn`` (see :data:`LossFn`; ``rows`` is each pair's sample row)
    replaces the MSE. Returns a bank with J = 1 (``levels == [-1]``).
    """
    config, tr, va, dev = _prepare(store, config, device)
    if loss_fn is None:
        loss_fn = objective_loss(store, config, adapter, progress, dev)
    K, H = store.num_blocks, store.hidden_size
    config = replace(config, batch_size=config.batch_size * K)
    bank = JumpBank(1, H, config.rank, levels=[-1], eps=config.bn_eps, momentum=config.bn_momentum,
                    seed=config.seed, residual=config.residual).to(dev)
    t0 = time.perf_counter()
    hist = _fit(bank, _Task(tr, None, K), _Task(va, None, K) if va is not None else None, config, dev, progress,
                "train joint jump", None, loss_fn=loss_fn)
    hist.kind = "joint"
    hist.levels = [-1]
    hist.target_energy = _target_energy(va, K)
    hist.seconds = time.perf_counter() - t0
    return bank.eval(), hist


__all__ = ["OBJECTIVES", "TrainConfig", "TrainHistory", "LossFn", "mse_loss", "objective_loss", "train_jumps",
           "train_jumps_looped", "train_joint"]
