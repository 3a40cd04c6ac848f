"""Evaluation of lenses at every exit level through the model head (Section 5-6).

:func:`evaluate` reads every named lens at every level of a store split, or of any store rows (the
rows a training held out, say); :func:`reuse_matrix` reads every jump of a per-level bank at every
level the same way (the K x K matrix behind OJFA: row m is "jump m everywhere", the diagonal is full
N-NJTC; tuned-lens calls this ``--layer_transfer``). The metrics are those of the registry
(:mod:`onejump.evaluation.metrics`), computed per sample by :mod:`onejump.evaluation.scoring`.
Each lens says how its logits are read (:meth:`~onejump.lenses.Lens.level_logits`): low-rank
jumps go through the exact rank-r head, so a (rows x r) @ (r x V) product replaces the
(rows x H) @ (H x V) one. Per-sample results are kept, so means, confidence intervals and paired
tests are computed afterwards and do not depend on chunk sizes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, NumericalError, StoreError
from ..lenses.base import Lens
from ..lenses.jumps import jump_parameter_count
from ..lenses.onejump import PerLevelLens
from .budget import working_set
from .metrics import METRICS
from .reference import Reference, make_reference
from .result import EvalResult
from .scoring import Reducer, Sink, require_finite, score_rows

__all__ = ["METRICS", "EvalResult", "evaluate", "parameter_counts", "reuse_matrix"]


class _Pass:
    """One pass over a store split: the chunks, their references, and the per-sample sinks."""

    def __init__(self, store: Any, lm: Any, split: str, chunk_size: int | None, block_rows: int | None,
                 extras: bool, use_compile: bool, exits: bool = False, rows: Any = None,
                 memory_mib: float | None = None):
        self.store, self.lm, self.split = store, lm, split
        self.K, self.H = store.num_blocks, store.hidden_size
        if (self.K, self.H) != (lm.num_blocks, lm.hidden_size):
            raise ConfigError(f"the store has K={self.K}, H={self.H}; the model K={lm.num_blocks}, H={lm.hidden_size}")
        w_u = lm.adapter.unembedding_matrix()
        self.device, self.dtype, self.V = w_u.device, w_u.dtype, int(w_u.shape[0])
        work = working_set(self.V, self.device, memory_mib, chunk_size, block_rows)
        self.chunk_size, self.full_block, self.low_block = work.chunk, work.full_block, work.low_block
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        if self.rows is None:
            self.targets = store.targets(split)
        else:
            self.split = split = "rows"
            self.targets = torch.from_numpy(store.meta("target")[self.rows].astype(np.int64))
        self.N = int(self.targets.shape[0])
        if self.N == 0:
            raise StoreError(f"store split '{split}' is empty; nothing to evaluate")
        self.extras, self.exits = extras, exits
        self.next_tokens = _next_tokens(store, split, self.rows) if extras else None
        self.reducer = Reducer(use_compile)
        self.final = {"surprisal": torch.zeros(self.N)}
        if extras:
            self.final["ce"] = torch.full((self.N,), float("nan"))

    def full_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm.adapter.head(x.to(self.dtype)).float()

    def chunks(self, progress: bool, desc: str):
        """Yield (offset, h (n, K+1, H) on the head's device, Reference) per chunk."""
        offset = 0
        bar = tqdm(total=self.N, desc=desc, unit="sample", disable=not progress)
        for rows, chunk in self._iter_chunks():
            n = chunk.shape[0]
            h = chunk.to(self.device, torch.float32)
            require_finite(h, rows)
            yield offset, h, self._reference(h, offset, n)
            offset += n
            bar.update(n)
        bar.close()

    def _iter_chunks(self):
        if self.rows is None:
            yield from self.store.iter_chunks(self.split, chunk_size=self.chunk_size)
            return
        for start in range(0, len(self.rows), self.chunk_size):
            part = self.rows[start:start + self.chunk_size]
            yield part, self.store.read_rows(part)

    def _reference(self, h: torch.Tensor, offset: int, n: int) -> Reference:
        target = self.targets[offset:offset + n].to(self.device)
        nxt = self.next_tokens[offset:offset + n].to(self.device) if self.next_tokens is not None else None
        ref = make_reference(self.full_head(h[:, self.K]), target, nxt, self.extras, self.exits)
        self.final["surprisal"][offset:offset + n] = -ref.final_logp.gather(1, target[:, None])[:, 0].cpu()
        if self.extras and nxt is not None:
            ce = -ref.final_logp.gather(1, nxt.clamp_min(0)[:, None])[:, 0]
            self.final["ce"][offset:offset + n] = torch.where(nxt >= 0, ce, float("nan")).cpu()
        return ref

    def result(self, sinks: dict[str, Sink], **kw: Any) -> EvalResult:
        per_sample: dict[str, torch.Tensor] = {}
        for name, sink in sinks.items():
            per_sample.update(sink.items(name))
        per_sample.update({f"final/{k}": v for k, v in self.final.items()})
        per_sample["targets"] = self.targets.clone()
        for key, value in per_sample.items():
            if key.endswith("/ce") or key == "final/ce":
                continue  # NaN marks rows without a next token
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise NumericalError(f"non-finite {key} in the evaluation (overflowing logits?)")
        return EvalResult(num_blocks=self.K, num_samples=self.N, vocab_size=self.V, split=self.split,
                          per_sample=per_sample, hidden_size=self.H, **kw)


def _next_tokens(store: Any, split: str, rows: np.ndarray | None = None) -> torch.Tensor | None:
    """The sentences' real next tokens (of ``rows`` when given), or None for a store that does not
    record them."""
    getter = getattr(store, "next_tokens", None)
    if getter is None:
        return None
    try:
        return getter(split) if rows is None else getter(None)[torch.from_numpy(rows)]
    except StoreError:
        return None


def _score_lens(p: _Pass, lens: Lens, h: torch.Tensor, ref: Reference, sink: Sink, offset: int) -> None:
    """Score one lens at every level of a chunk, through the path the lens gives
    (:meth:`~onejump.lenses.Lens.level_logits`)."""
    n, K = h.shape[0], p.K
    for part in lens.level_logits(h[:, :K], p.full_head):
        block = p.low_block if part.lowrank else p.full_block
        if part.level is None:
            rows_sample = torch.arange(n, device=p.device).repeat_interleave(K)
            sink.put_rows((), score_rows(part.to_logits, part.x, ref, rows_sample, block, p.reducer), n, K, offset)
        else:
            level_sample = torch.arange(n, device=p.device)
            sink.put_level((), part.level, score_rows(part.to_logits, part.x, ref, level_sample, block, p.reducer),
                           offset)


def _common_model(lenses: Mapping[str, Lens]) -> Any:
    if not lenses:
        raise ConfigError("no lens to evaluate")
    lms = {lens.lm.fingerprint for lens in lenses.values()}
    if len(lms) != 1:
        raise ConfigError("the lenses belong to different models")
    return next(iter(lenses.values())).lm


@torch.no_grad()
def evaluate(store: Any, lenses: Mapping[str, Lens], *, split: str = "test", rows: Any = None,
             chunk_size: int | None = None, block_rows: int | None = None, memory_mib: float | None = None,
             field_metrics: bool = True, compile: bool = False, chosen: int | None = None,
             progress: bool = True) -> EvalResult:
    """Read every lens in ``lenses`` (name -> lens) at every exit level of a store split, or of the store
    ``rows`` given (any rows of any split, in that order: the rows a training held out, say).

    ``field_metrics`` adds KL, entropy and cross-entropy (one more pass over each block of logits).
    ``chosen`` records the OJFA jump in the result. The vocabulary-sized arrays held at once stay within
    ``memory_mib`` (:func:`~onejump.evaluation.budget.working_set`: samples per chunk, at most
    ``chunk_size``, and rows per block of logits, at most ``block_rows``), whatever the number of rows,
    levels and lenses; results do not depend on any of them. Everything runs where the model's
    unembedding is. ``compile=True`` fuses the precision/surprisal reductions with ``torch.compile``
    (only without the field's metrics). Each lens's top-1 token and its two confidences are kept as
    well (``<name>/top1``, ``max_prob``, ``margin``), from which an early-exit simulation needs no
    pass of its own (:meth:`EvalResult.exit_records`).
    """
    lm = _common_model(lenses)
    for name, lens in lenses.items():
        if "/" in name or name in ("pairs", "final", "targets"):
            raise ConfigError(f"'{name}' cannot name a lens (reserved)")
        if lens.lm.fingerprint != store.fingerprint:
            raise ConfigError(f"lens '{name}' is for another model than the store's")
    p = _Pass(store, lm, split, chunk_size, block_rows, field_metrics, compile and not field_metrics, exits=True,
              rows=rows, memory_mib=memory_mib)
    sinks = {name: Sink((), p.K, p.N, field_metrics, exits=True) for name in lenses}
    timings = dict.fromkeys(lenses, 0.0)
    t_start = time.perf_counter()
    for offset, h, ref in p.chunks(progress, "evaluate"):
        for name, lens in lenses.items():
            t0 = time.perf_counter()
            _score_lens(p, lens, h, ref, sinks[name], offset)
            timings[name] += time.perf_counter() - t0
    return p.result(sinks, jumps=[], chosen=chosen, seconds=time.perf_counter() - t_start, timings=timings,
                    parameters={name: lens.num_parameters for name, lens in lenses.items()})


@torch.no_grad()
def reuse_matrix(store: Any, lens: PerLevelLens, *, jumps: Sequence[int] | None = None, split: str = "test",
                 rows: Any = None, chosen: int | None = None, chunk_size: int | None = None,
                 block_rows: int | None = None, memory_mib: float | None = None, compile: bool = False,
                 progress: bool = True) -> EvalResult:
    """Every jump of a per-level bank (or those in ``jumps``) at every exit level: ``pairs/*`` (J, K, N),
    the evaluation's own scoring over jump x level, on a store ``split`` or on store ``rows`` (any split).

    The precision and surprisal metrics only (K^2 N rows: the field's extra passes would double
    the cost). ``result.metric("ojfa", ...)`` reads the row of ``chosen``; ``"full"`` the diagonal.
    Memory as in :func:`evaluate`.
    """
    if not isinstance(lens, PerLevelLens):
        raise ConfigError("the reuse matrix needs a per-level lens (PerLevelLens)")
    K = lens.num_blocks
    jump_list = list(range(K)) if jumps is None else [int(m) for m in jumps]
    if not jump_list or any(not 0 <= m < K for m in jump_list):
        raise ConfigError(f"jumps must be in 0..{K - 1}")
    p = _Pass(store, lens.lm, split, chunk_size, block_rows, False, compile, rows=rows, memory_mib=memory_mib)
    sink = Sink((len(jump_list),), p.K, p.N, False)
    t_start = time.perf_counter()
    for offset, h, ref in p.chunks(progress, "reuse matrix"):
        n = h.shape[0]
        rows_sample = torch.arange(n, device=p.device).repeat_interleave(K)
        for i, part in enumerate(lens.jump_logits(h[:, :K], jump_list, p.full_head)):
            block = p.low_block if part.lowrank else p.full_block
            sink.put_rows((i,), score_rows(part.to_logits, part.x, ref, rows_sample, block, p.reducer), n, K, offset)
    seconds = time.perf_counter() - t_start
    return p.result({"pairs": sink}, jumps=jump_list, chosen=chosen, rank=lens.rank, seconds=seconds,
                    timings={"pairs": seconds})


def parameter_counts(num_blocks: int, hidden_size: int, rank: int) -> dict[str, Any]:
    """Shortcut parameters held at inference by each method, and the OJFA reduction factor.

    identity 0; full N-NJTC ``K (2Hr + 4H)``; OJFA and joint ``2Hr + 4H``; JTC ``K (H^2 + H)``;
    ``reduction_factor`` = full / OJFA = K.
    """
    per_jump = jump_parameter_count(hidden_size, rank)
    full = num_blocks * per_jump
    return {
        "identity": 0,
        "full": full,
        "ojfa": per_jump,
        "joint": per_jump,
        "jtc": num_blocks * (hidden_size * hidden_size + hidden_size),
        "per_jump": per_jump,
        "reduction_factor": full / per_jump,
        "num_blocks": num_blocks,
        "hidden_size": hidden_size,
        "rank": rank,
    }
