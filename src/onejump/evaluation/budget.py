"""The evaluation's working set, sized from a memory budget.

Everything an evaluation holds over the vocabulary V is one of two things: the model's own
distribution for a chunk of n store samples (log p_final and p_final, and the head's output while
they are made: :data:`REFERENCE_COPIES` (n, V) float32 arrays, :mod:`onejump.evaluation.reference`),
and one block of b lens rows' logits (b, V) at a time with the scoring's slice temporaries. Half the
budget goes to each, so the peak is about the budget whatever the number of test rows, levels and
lenses; per-sample results (K x N numbers per metric) are all that grows with the rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError

#: MiB of vocabulary-sized arrays an evaluation holds at once (a GPU's blocks are larger: fewer launches).
DEFAULT_MEMORY_MIB = {"cpu": 256.0, "cuda": 1024.0}
#: (n, V) float32 arrays per chunk of n samples: the head's logits (then log p_final in place) and p_final,
#: and one temporary while p_final is taken.
REFERENCE_COPIES = 3
#: Samples per chunk when the budget allows more (the lenses' own per-chunk products want a few hundred rows).
MAX_CHUNK = 128


def default_blocks(vocab: int, device: torch.device) -> tuple[int, int]:
    """Rows per logits block for (full-head lenses, low-rank jumps), before the budget's cap.

    On CPU the full head is GEMM-bound and wants large blocks (~64 MB of logits); the low-rank
    head is bound by the passes over the logits and is faster when a block stays in cache (~4 MB).
    On a GPU large blocks (fewer kernel launches) win for both.
    """
    v = max(vocab, 1)
    if device.type == "cuda":
        return max(4, (1 << 26) // v), max(4, (1 << 26) // v)
    return max(4, (1 << 24) // v), max(1, (1 << 20) // v)


@dataclass(frozen=True)
class WorkingSet:
    """Store samples per chunk and rows per block of logits (full head, rank-r head)."""

    chunk: int
    full_block: int
    low_block: int


def working_set(vocab: int, device: torch.device, memory_mib: float | None = None, chunk_size: int | None = None,
                block_rows: int | None = None) -> WorkingSet:
    """The chunk and block sizes that keep an evaluation's vocabulary-sized arrays within ``memory_mib``
    (default :data:`DEFAULT_MEMORY_MIB` for the device). ``chunk_size`` and ``block_rows``, when given,
    are upper limits the budget may lower; at least one row of each is always taken."""
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError("chunk_size must be >= 1")
    if block_rows is not None and block_rows < 1:
        raise ConfigError("block_rows must be >= 1")
    if memory_mib is None:
        memory_mib = DEFAULT_MEMORY_MIB.get(device.type, DEFAULT_MEMORY_MIB["cpu"])
    if not memory_mib > 0:
        raise ConfigError(f"memory_mib must be > 0, got {memory_mib!r}")
    half = memory_mib * 2**20 / 2
    row = 4.0 * max(vocab, 1)  # bytes of one float32 row of logits
    full, low = (block_rows, block_rows) if block_rows else default_blocks(vocab, device)
    cap = max(1, int(half // row))
    chunk = max(1, min(chunk_size or MAX_CHUNK, int(half // (REFERENCE_COPIES * row))))
    return WorkingSet(chunk, min(full, cap), min(low, cap))


__all__ = ["DEFAULT_MEMORY_MIB", "MAX_CHUNK", "REFERENCE_COPIES", "WorkingSet", "default_blocks", "working_set"]
