"""What an extraction computes, decided before any forward: the positions kept per sentence (the rows
of the store), the forwards that produce them, their batches and shards, and the disk they need.

A split's positions setting is ``"one"`` (one position per sentence, uniform over 1..n-1: the
paper's protocol), ``"all"`` (every position 1..n-1) or an integer N (N distinct positions per
sentence, all of them when it has fewer). Position 0 is never kept: it is the BOS token where the
tokenizer adds one, and has no context otherwise. The ``one`` draws are made for every sentence
in sentence order whatever the settings, so a split kept at ``one`` holds exactly the positions of
a store extracted with ``one`` everywhere (the paper's test split beside an ``all`` train split);
the N-per-sentence draws come from a stream of their own.

A forward runs one sentence up to its last kept position: every kept position of the sentence is
read from that one forward (causal attention: the hidden state at position p depends on tokens
0..p only, so it equals the forward of the prefix ending at p). With ``one`` a forward is the
prefix of its single position, as it always was.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .defaults import SHARD_SIZE, TOKENS_PER_BATCH
from .errors import ConfigError, CorpusError, StoreError

SPLIT_NAMES = ("train", "test")
#: Bytes per row besides its hidden states: sample_id, position, target, next_token, token_offsets
#: (int64 each) and split (int8); its prefix tokens (int32) are counted apart.
_ROW_META_BYTES = 5 * 8 + 1
#: Room kept free beside the store: the manifest, the plan, the sidecars, the safetensors headers.
_DISK_MARGIN = 1 << 20


@dataclass(frozen=True)
class Sample:
    """One row of the store: position ``position`` of sentence ``sample_id`` (token ids ``ids``)."""

    sample_id: int
    split: int
    position: int
    ids: tuple[int, ...]

    @property
    def tokens(self) -> tuple[int, ...]:
        """The prefix ending at the position (what the row's hidden states were computed from)."""
        return self.ids[: self.position + 1]

    @property
    def length(self) -> int:
        return self.position + 1

    @property
    def next_token(self) -> int:
        """The sentence's real next token after the position; -1 at its last token."""
        return self.ids[self.position + 1] if self.position + 1 < len(self.ids) else -1


def parse_positions(value: Any) -> str | int:
    """``"one"``, ``"all"`` or a positive integer N (also given as text) for one split."""
    if isinstance(value, str) and value.strip().lower() in ("one", "all"):
        return value.strip().lower()
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"positions must be one, all or a positive integer, got {value!r}") from None
    if isinstance(value, float) or n < 1 or isinstance(value, bool):
        raise ConfigError(f"positions must be one, all or a positive integer, got {value!r}")
    return n


def positions_per_split(positions: Mapping[str, Any] | str | int | None) -> dict[str, str | int]:
    """The setting of each split: one value for every split, or a mapping (absent splits keep ``one``)."""
    if positions is None:
        return {name: "one" for name in SPLIT_NAMES}
    if isinstance(positions, Mapping):
        unknown = [k for k in positions if k not in SPLIT_NAMES]
        if unknown:
            raise ConfigError(f"unknown split {unknown[0]!r} in positions; use train or test")
        return {name: parse_positions(positions.get(name, "one")) for name in SPLIT_NAMES}
    value = parse_positions(positions)
    return {name: value for name in SPLIT_NAMES}


def _kept(setting: str | int, n: int, one: int, rng: np.random.Generator) -> list[int]:
    if setting == "one":
        return [one]
    if setting == "all" or int(setting) >= n - 1:
        return list(range(1, n))
    return sorted(int(p) for p in rng.choice(np.arange(1, n), size=int(setting), replace=False))


def sample_positions(tokenizer: Any, sentences: Sequence[str], splits: Sequence[int], seed: int,
                     positions: Mapping[str, Any] | str | int | None = None) -> list[Sample]:
    """Tokenize every sentence and keep its positions per its split's setting (seeded), as rows
    ordered by sentence, then position."""
    if len(sentences) == 0:
        raise CorpusError("no sentences to extract")
    settings = positions_per_split(positions)
    encoded = tokenizer(list(sentences), add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    rng = np.random.default_rng(seed)
    several = np.random.default_rng([seed, 1])  # N per sentence: a stream apart from the one-position draws
    samples = []
    for i, ids in enumerate(encoded):
        n = len(ids)
        real = n - (1 if n and bos is not None and ids[0] == bos else 0)
        if n < 2 or real < 1:
            raise CorpusError(
                f"sentence {i} has fewer than 2 tokens ({sentences[i][:60]!r}); filter such sentences out"
            )
        one = int(rng.integers(1, n))
        split = int(splits[i])
        if split not in (0, 1):
            raise ConfigError(f"split labels are 0 (train) or 1 (test), got {split} for sentence {i}")
        shared = tuple(int(t) for t in ids)
        samples += [Sample(i, split, pos, shared) for pos in _kept(settings[SPLIT_NAMES[split]], n, one, several)]
    return samples


def forwards(samples: Sequence[Sample]) -> list[list[int]]:
    """The samples (indices) read from each forward: consecutive samples of one sentence."""
    groups: list[list[int]] = []
    for i, s in enumerate(samples):
        if groups and samples[groups[-1][0]].sample_id == s.sample_id:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def forward_tokens(samples: Sequence[Sample], indices: Sequence[int]) -> int:
    """Tokens forwarded to compute these samples (listed forward after forward, as batches list them)."""
    indices = list(indices)
    return sum(samples[i].length for j, i in enumerate(indices)
               if j + 1 == len(indices) or samples[indices[j + 1]].sample_id != samples[i].sample_id)


def plan_batches(samples: Sequence[Sample], tokens_per_batch: int = TOKENS_PER_BATCH,
                 max_batch_size: int = 64) -> list[list[int]]:
    """Group samples (indices into ``samples``) into length-bucketed batches of forwards within a
    token budget; a batch lists its samples forward after forward.

    Sorting forwards by length keeps padding small; a batch holds at most ``max_batch_size``
    forwards and ``forwards * longest`` stays within ``tokens_per_batch``.
    """
    if tokens_per_batch < 1 or max_batch_size < 1:
        raise ConfigError("the token budget and the batch size of extraction must be >= 1")
    groups = forwards(samples)
    length = [max(samples[i].length for i in g) for g in groups]
    order = sorted(range(len(groups)), key=lambda g: (length[g], groups[g][0]))
    batches: list[list[int]] = []
    current: list[int] = []
    count = 0
    for g in order:
        if count and (count + 1 > max_batch_size or (count + 1) * length[g] > tokens_per_batch):
            batches.append(current)
            current, count = [], 0
        current += groups[g]
        count += 1
    if current:
        batches.append(current)
    return batches


def plan_shards(batches: list[list[int]], shard_size: int = SHARD_SIZE) -> list[list[list[int]]]:
    """Group consecutive batches into shards of about ``shard_size`` samples."""
    shards: list[list[list[int]]] = []
    current: list[list[int]] = []
    count = 0
    for batch in batches:
        current.append(batch)
        count += len(batch)
        if count >= shard_size:
            shards.append(current)
            current, count = [], 0
    if current:
        shards.append(current)
    return shards


def collate(samples: Sequence[Sample], batch: Sequence[int], pad_id: int,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` of the batch's forwards, and ``at`` (S, 2):
    the forward row and the position of each of its S samples."""
    rows: list[tuple[int, ...]] = []
    at = []
    for i in batch:
        s = samples[i]
        if not rows or samples[batch[len(at) - 1]].sample_id != s.sample_id:
            rows.append(s.tokens)
        elif s.length > len(rows[-1]):
            rows[-1] = s.tokens
        at.append((len(rows) - 1, s.position))
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for row, toks in enumerate(rows):
        ids[row, : len(toks)] = torch.tensor(toks)
        mask[row, : len(toks)] = 1
    return ids.to(device), mask.to(device), torch.tensor(at, dtype=torch.long).reshape(-1, 2).to(device)


def store_bytes(samples: Sequence[Sample], num_levels: int, hidden: int, dtype: torch.dtype) -> int:
    """Bytes a store of these rows takes on disk (hidden states, prefix tokens, per-row metadata)."""
    element = torch.tensor([], dtype=dtype).element_size()
    tokens = sum(s.length for s in samples)
    return len(samples) * (num_levels * hidden * element + _ROW_META_BYTES) + 4 * tokens


def check_disk(out: Path, needed: int, *, rows: int, num_levels: int, hidden: int, dtype_name: str) -> None:
    """Refuse an extraction whose store (less the shards already written) cannot fit the free disk."""
    done = sum(p.stat().st_size for p in out.glob("shard-*.safetensors")) if out.is_dir() else 0
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed - done + _DISK_MARGIN > free:
        raise StoreError(
            f"the store needs {needed / 1e9:.2f} GB ({rows} rows x {num_levels} levels x {hidden} in {dtype_name}"
            f"{f', {done / 1e9:.2f} GB of it already written' if done else ''}) but {probe} has "
            f"{free / 1e9:.2f} GB free: free space, extract fewer sentences or positions, or use "
            "--store-dtype float16"
        )
