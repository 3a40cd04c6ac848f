"""Streaming the store's train split: memory-mapped shards through a seeded shuffle buffer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..errors import NumericalError, StoreError


def _train_rows(store: Any) -> np.ndarray:
    """Store rows of the train split (ascending); training needs at least two."""
    rows = np.asarray(store.indices("train"), dtype=np.int64)
    if len(rows) < 2:
        raise StoreError(f"store {getattr(store, 'path', '')} has {len(rows)} train samples; training needs >= 2")
    return rows


def _split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded split of ``n`` units into (kept, held out), each ascending."""
    gen = torch.Generator().manual_seed(seed + 7919)
    perm = torch.randperm(n, generator=gen)
    n_val = int(round(n * val_fraction)) if val_fraction > 0 else 0
    if val_fraction > 0:
        n_val = max(0, min(max(n_val, 1), n - 2))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _sentence_units(store: Any, rows: np.ndarray) -> np.ndarray:
    """Each row's sentence, numbered 0.. in the order of the sentences' first rows in ``rows``.

    A store-like object without sentence ids (the tests' in-memory stores) counts each row as a
    sentence of its own.
    """
    sentence_ids = getattr(store, "sentence_ids", None)
    if sentence_ids is None:
        return np.arange(len(rows))
    ids = np.asarray(sentence_ids(None))[rows]
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    number = np.empty(len(first), dtype=np.int64)
    number[np.argsort(first, kind="stable")] = np.arange(len(first))
    return number[inverse.reshape(-1)]


def holdout_split(store: Any, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Store rows of the train split: (trained on, held out), each ascending; the one split every
    consumer (training, the tuned lens, the held-out selection) draws.

    Whole sentences are held out: a seeded ``val_fraction`` of the train split's sentences, with
    every row of each. Sentences are numbered in store order of their first row, so in a store of
    one position per sentence a sentence is a row and the split is the seeded split of the rows.
    """
    rows = _train_rows(store)
    unit = _sentence_units(store, rows)
    _, held_units = _split(int(unit.max()) + 1, val_fraction, seed)
    held = np.zeros(int(unit.max()) + 1, dtype=bool)
    held[held_units.numpy()] = True
    return rows[~held[unit]], rows[held[unit]]


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


Batch = tuple[torch.Tensor, ...]  # inputs, targets, store rows (and exit levels, see _Task)


class _Task:
    """A bank's examples over a source: ``(inputs (B, J, H), targets h^K (B, H), store rows (B,))``.

    Per-level (``levels`` given): an example is a sample, with inputs at ``levels``. Joint
    (``levels=None``): an example is a (sample, level) pair, level 0..K-1, numbered
    ``sample * K + level`` within a buffer; with ``with_levels`` its batches carry a fourth tensor,
    the exit level (B,) of each pair (for level-conditioned jumps).
    """

    def __init__(self, source: _Source, levels: list[int] | None, K: int, with_levels: bool = False):
        if with_levels and levels is not None:
            raise ValueError("exit levels per example exist for the joint task (levels=None) only")
        self.source, self.levels, self.K, self.with_levels = source, levels, K, with_levels
        self.per_sample = K if levels is None else 1
        self._batch: torch.Tensor | None = None  # the reused batch of batches(reuse=True)

    @property
    def size(self) -> int:
        return len(self.source) * self.per_sample

    def gather(self, x: torch.Tensor, rows: np.ndarray, idx: torch.Tensor, reuse: bool = False) -> Batch:
        """Examples ``idx`` of the buffer ``x``; ``reuse``: the whole rows of a per-level batch go into one
        buffer kept from call to call (valid until the next such call), so no batch is allocated anew."""
        if self.levels is None:
            sample, level = idx // self.K, idx % self.K
            inp = x[sample, level].unsqueeze(1)
            if self.with_levels:
                return inp, x[sample, self.K], torch.from_numpy(rows)[sample], level
        else:
            sample = idx
            if self.levels == list(range(self.K)):  # one gather of whole rows serves inputs and target
                if not reuse:
                    picked = x.index_select(0, sample)
                else:
                    buf = self._batch
                    if buf is None or buf.shape[0] < len(sample) or buf.shape[1:] != x.shape[1:] \
                            or buf.dtype != x.dtype:
                        self._batch = torch.empty(len(sample), *x.shape[1:], dtype=x.dtype)
                    picked = torch.index_select(x, 0, sample, out=self._batch[: len(sample)])
                return picked[:, : self.K], picked[:, self.K], torch.from_numpy(rows)[sample]
            inp = x[sample[:, None], torch.tensor(self.levels)[None, :]]
        return inp, x[sample, self.K], torch.from_numpy(rows)[sample]

    def _take(self, x: torch.Tensor, rows: np.ndarray, carry: Batch | None, idx: torch.Tensor,
              reuse: bool = False) -> Batch:
        """Examples ``idx`` of the pool ``carry + buffer`` (indices below len(carry) are carried ones)."""
        if carry is None:
            return self.gather(x, rows, idx, reuse)
        n_carry = len(carry[2])
        old = idx < n_carry
        if old.all():
            return tuple(t[idx] for t in carry)  # type: ignore[return-value]
        new = self.gather(x, rows, idx[~old] - n_carry, reuse)  # a mixed batch is concatenated: a copy
        if not old.any():
            return new
        return tuple(torch.cat([c[idx[old]], t]) for c, t in zip(carry, new))  # type: ignore[return-value]

    def batches(self, batch_size: int, gen: torch.Generator, reuse: bool = False) -> Iterator[Batch]:
        """One epoch of shuffled batches of ``batch_size`` examples (CPU tensors).

        Each buffer's examples, plus the fewer than ``batch_size`` left over from the previous
        buffer, are permuted with ``gen`` and cut into batches; what is left over is carried on.
        The incomplete last batch of the epoch is dropped (BatchNorm statistics), unless there is
        only one batch. When the part fits in one buffer this is one random permutation of all its
        examples, the same batches as in-memory training. ``reuse``: a yielded batch may be overwritten
        by the next one (see :meth:`gather`): use it before asking for the next.
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
                yield self._take(x, rows, carry, perm[start:start + batch_size], reuse)
            carry = None if last else self._take(x, rows, carry, perm[full:])

    def chunks(self, chunk: int) -> Iterator[Batch]:
        """All examples in store order, in chunks of at most ``chunk`` (validation). A chunk of the per-level
        task at every level is a view of the buffer (valid until the next buffer is read), not a copy."""
        whole_rows = self.levels is not None and self.levels == list(range(self.K))
        for x, rows, _ in self.source.buffers(None):
            n = len(rows) * self.per_sample
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                if whole_rows:
                    yield x[start:stop, : self.K], x[start:stop, self.K], torch.from_numpy(rows[start:stop])
                else:
                    yield self.gather(x, rows, torch.arange(start, stop))
