"""Early exit simulated offline on the store: one pass records every lens's top-1 token and confidences.

For every lens and checked exit level k, one pass over the store's split (or the records the
evaluation already kept) gives the lens's top-1 token at level k and its confidence under
``max_prob`` and ``margin``; :class:`~onejump.evaluation.exit_simulation.ExitSimulation` holds
them and computes, per threshold, the exit rule, its agreement with the model and its cost (see
that module for the rule and the cost accounting).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, NumericalError, StoreError
from .exit_costs import block_macs, head_macs
from .exit_simulation import (
    AGREEMENTS,
    MEASURES,
    ExitCurve,
    ExitSimulation,
    LensExits,
    SavedAt,
    default_lambdas,
    first_exit,
)

__all__ = ["AGREEMENTS", "MEASURES", "ExitCurve", "ExitSimulation", "LensExits", "SavedAt", "default_lambdas",
           "first_exit", "simulate_exits"]


def _confidences(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top-1 token, its probability, top-1 minus top-2 probability) of each row of logits."""
    logits = logits.float()
    top = logits.topk(2, dim=-1)
    probs = (top.values - torch.logsumexp(logits, -1, keepdim=True)).exp()
    return top.indices[:, 0], probs[:, 0], probs[:, 0] - probs[:, 1]


# --------------------------------------------------------------------------------------------------
# The simulation
# --------------------------------------------------------------------------------------------------


def _default_block_rows(vocab: int, device: torch.device) -> int:
    """Rows of logits per lens call: about 64 MiB of float32 logits on CPU, 256 MiB on a GPU."""
    budget = (1 << 26) if device.type == "cuda" else (1 << 24)
    return max(1, budget // max(vocab, 1))


@torch.no_grad()
def simulate_exits(store: Any, lenses: Mapping[str, Any], *, lambdas: Sequence[float] | None = None,
                   measures: Sequence[str] = MEASURES, split: str = "test", levels: Sequence[int] | None = None,
                   chunk_size: int = 256, block_rows: int | None = None, block_cost: int | None = None,
                   head_cost: int | None = None, records: Mapping[str, tuple] | None = None,
                   progress: bool = True) -> ExitSimulation:
    """Simulate confidence-based early exit for every lens on a store split (see the module doc).

    ``lenses`` maps a display name to a :class:`~onejump.lenses.base.Lens` (``forward(h, level)``
    -> logits, ``logits_cost()``, ``num_blocks``). ``levels``: the exit levels checked (default
    0..K-1); only they are read and run. Memory is bounded by ``chunk_size`` store samples and
    ``block_rows`` rows of logits per lens call (a lens returns whole rows of V logits; by default
    about 64 MiB of them on CPU, 256 MiB on a GPU); the records kept are 3 numbers per lens, level
    and token. ``block_cost`` / ``head_cost`` override the
    multiply-adds per token of one block / of the model's head (default: from the first lens's
    model, :func:`block_macs` and :func:`head_macs`). ``records``: for some lenses, their top-1 tokens and
    confidences at every level 0..K-1 already measured on this split (``EvalResult.exit_records``);
    those lenses are not read again.
    """
    if not lenses:
        raise ConfigError("simulate_exits needs at least one lens")
    bad = [m for m in measures if m not in MEASURES]
    if bad or not measures:
        raise ConfigError(f"unknown confidence measure(s) {bad}; use {', '.join(MEASURES)}")
    if chunk_size < 1 or (block_rows is not None and block_rows < 1):
        raise ConfigError("chunk_size and block_rows must be >= 1")
    K = store.num_blocks
    for name, lens in lenses.items():
        if lens.num_blocks != K:
            raise ConfigError(f"lens '{name}' is for K={lens.num_blocks} blocks but the store has K={K}")
    checked = list(range(K)) if levels is None else sorted(set(int(k) for k in levels))
    if not checked or any(not 0 <= k < K for k in checked):
        raise ConfigError(f"exit levels must be a non-empty list in 0..{K - 1}")
    grid = default_lambdas() if lambdas is None else sorted(float(x) for x in lambdas)
    if not grid or not all(np.isfinite(grid)):
        raise ConfigError("lambdas must be a non-empty list of finite numbers")
    lm = next(iter(lenses.values())).lm
    targets = store.targets(split)
    N, L = int(targets.shape[0]), len(checked)
    if N == 0:
        raise StoreError(f"store split '{split}' is empty; nothing to simulate")

    t0 = time.perf_counter()
    known = _known_records(records or {}, lenses, checked, measures, K, N)
    out = {name: known.get(name) or LensExits(_kind(lens), int(lens.logits_cost()),
                                                int(getattr(lens, "num_parameters", 0)),
                                                torch.zeros(L, N, dtype=torch.int64),
                                                {m: torch.zeros(L, N) for m in measures})
           for name, lens in lenses.items()}
    todo = {name: lens for name, lens in lenses.items() if name not in known}
    if todo:
        _read_lenses(store, split, todo, out, checked, chunk_size, block_rows, lm, N, progress)
    return ExitSimulation(K, split, checked, grid, list(measures),
                          int(block_cost) if block_cost else block_macs(lm),
                          int(head_cost) if head_cost is not None else head_macs(lm), targets, out,
                          seconds=time.perf_counter() - t0, model=str(getattr(lm, "name", "")))


def _kind(lens: Any) -> str:
    return str(getattr(lens, "kind", type(lens).__name__))


def _known_records(records: Mapping[str, tuple], lenses: Mapping[str, Any], checked: list[int],
                   measures: Sequence[str], K: int, N: int) -> dict[str, LensExits]:
    """The lenses whose per-row records were measured already, at the checked levels."""
    known = {}
    for name, (top1, conf) in records.items():
        if name not in lenses:
            continue
        if tuple(top1.shape) != (K, N) or any(tuple(conf[m].shape) != (K, N) for m in measures):
            raise ConfigError(f"the records given for lens '{name}' are not (K, N) = ({K}, {N})")
        lens = lenses[name]
        known[name] = LensExits(_kind(lens), int(lens.logits_cost()), int(getattr(lens, "num_parameters", 0)),
                                top1[checked].clone(), {m: conf[m][checked].clone() for m in measures})
    return known


def _read_lenses(store: Any, split: str, lenses: Mapping[str, Any], records: dict[str, LensExits],
                 checked: list[int], chunk_size: int, block_rows: int | None, lm: Any, N: int,
                 progress: bool) -> None:
    """One pass over the split: every lens's top-1 token and confidences at the checked levels."""
    device = lm.adapter.unembedding_matrix().device
    rows_per_call = block_rows or _default_block_rows(int(lm.adapter.unembedding_matrix().shape[0]), device)
    bar = tqdm(total=N * len(lenses), desc="exit simulation", unit="sample", disable=not progress)
    offset = 0
    for _rows, chunk in store.iter_chunks(split, chunk_size=chunk_size, levels=checked):
        n = chunk.shape[0]
        for name, lens in lenses.items():
            rec = records[name]
            for j, k in enumerate(checked):
                for s in range(0, n, rows_per_call):
                    e = min(n, s + rows_per_call)
                    logits = lens(chunk[s:e, j].to(device), k)
                    top1, p1, margin = _confidences(logits)
                    if not (torch.isfinite(p1).all() and torch.isfinite(margin).all()):
                        raise NumericalError(f"lens '{name}' gave non-finite logits at level {k}")
                    cols = slice(offset + s, offset + e)
                    rec.top1[j, cols] = top1.cpu()
                    if "max_prob" in rec.confidence:
                        rec.confidence["max_prob"][j, cols] = p1.cpu()
                    if "margin" in rec.confidence:
                        rec.confidence["margin"][j, cols] = margin.cpu()
            bar.update(n)
        offset += n
    bar.close()
