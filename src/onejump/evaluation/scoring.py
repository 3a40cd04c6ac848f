"""Per-row scores of a block of logits against the model's own final distribution.

Every quantity of :mod:`onejump.evaluation.metrics` is computed here, in as few passes over the
vocabulary as possible: the logits of a block are shifted by their maximum in place and then
exponentiated, so a (rows, V) block is read about twice (three times with the field's metrics).
The exponentials take the shifted logits at :data:`~onejump.evaluation.reference.EXP_FLOOR` at the
least: a lens far from the model (the logit lens at level 0 spans hundreds of nats) would otherwise
send most of a row through exp's slow underflow path; every value read from the logits themselves
(argmax, ranks, the target's and the next token's logits, the KL's cross term) is read before.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from ..errors import NumericalError
from .reference import EXP_FLOOR, Reference

TOP_K = 5
# Per-sample quantities; the last three are the field's metrics (computed when asked for).
BASIC = ("correct1", "correct5", "surprisal", "reverse_surprisal")
EXTRA = ("kl", "entropy", "ce")
# What an early-exit simulation needs of each row (evaluation keeps them, so exits need no pass of their own):
# the lens's top-1 token, its probability, and top-1 minus top-2 probability.
EXIT = ("top1", "max_prob", "margin")


def require_finite(h: torch.Tensor, rows: Any) -> None:
    """Refuse a chunk of stored hidden states (n, levels, H) holding a NaN or an infinity, naming it.

    A finite sum proves every element finite (a NaN or an infinity reaches the sum) in one pass, where
    ``isfinite`` takes four; only a sum that is not finite (a bad value, or an overflow of good ones) is
    looked at element by element."""
    if torch.isfinite(h.sum()) or torch.isfinite(h).all():
        return
    i, level, _ = (~torch.isfinite(h)).nonzero()[0].tolist()
    raise NumericalError(f"non-finite hidden state in the store at level {level}, sample row {int(rows[i])}")


#: Logits per slice of a block that the reductions take at once (4 MiB of float32): the passes after the
#: first read the slice from cache, whatever the block size the GEMM that wrote it wanted.
SLICE_ELEMENTS = 1 << 20


#: Width of the blocks :func:`_max_argmax` takes the maxima of.
ARGMAX_BLOCK = 64


def _max_argmax(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits.max(1)``: (max, index of its first occurrence) per row, the same values and indices.

    A row's maximum is taken over the maxima of its blocks of :data:`ARGMAX_BLOCK` logits (a reduction
    along contiguous memory, which vectorises; ``max(1)`` with indices does not), then the first block
    holding it is searched alone."""
    n, V = logits.shape
    w = ARGMAX_BLOCK
    full = V // w * w
    if full == 0 or logits.stride(1) != 1:
        return logits.max(1)
    blocks = logits[:, :full].unflatten(1, (full // w, w)).amax(2)  # (n, V // w)
    if full < V:
        blocks = torch.cat([blocks, logits[:, full:].amax(1, keepdim=True)], 1)
    mx, first = blocks.max(1)  # the first block holding the row's maximum
    cols = (first[:, None] * w + torch.arange(w, device=logits.device)).clamp_max_(V - 1)
    return mx, first * w + logits.gather(1, cols).max(1).indices


def _top2(logits: torch.Tensor, second: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(max, first argmax, second largest or None) per row (the second is -inf for a one-token vocabulary).

    The second largest is the maximum once the argmax is masked (in place, then put back): a plain max
    costs a fraction of ``topk``. A tie at the top gives second == max, as ``topk`` does."""
    mx, am = _max_argmax(logits)
    if not second:
        return mx, am, None
    if logits.shape[1] < 2:
        return mx, am, torch.full_like(mx, float("-inf"))
    idx = am[:, None]
    logits.scatter_(1, idx, float("-inf"))
    top2 = logits.amax(1)
    logits.scatter_(1, idx, mx[:, None])
    return mx, am, top2


def _count_above(logits: torch.Tensor, level: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """How many logits of each row are strictly above ``level`` (n, 1), as floats (exact below 2^24).

    A comparison written as floats into ``buf`` (a temporary the caller needs anyway) and summed
    vectorises; a boolean sum does not."""
    return torch.gt(logits, level, out=buf).sum(1)


def _reduce_inplace(logits: torch.Tensor, target: torch.Tensor, second: bool = False) -> tuple[torch.Tensor, ...]:
    """Eager reductions over the vocabulary: (max, sum exp(logits - max), argmax, #logits > logit[t*], logit[t*],
    second largest logit or None).

    Overwrites ``logits`` (the exp is taken in place to spare a (rows, V) temporary).
    """
    mx, am, top2 = _top2(logits, second)
    tl = logits.gather(1, target[:, None])
    above = _count_above(logits, tl, torch.empty_like(logits))
    sumexp = logits.sub_(mx[:, None]).clamp_min_(EXP_FLOOR).exp_().sum(1)
    return mx, sumexp, am, above, tl[:, 0], top2


def _reduce_logits(logits: torch.Tensor, target: torch.Tensor, second: bool = False) -> tuple[torch.Tensor, ...]:
    """The same reductions written for ``torch.compile`` (fused into about two passes over the logits)."""
    tl = logits.gather(1, target[:, None])
    mx = logits.amax(1, keepdim=True)
    sumexp = (logits - mx).clamp_min(EXP_FLOOR).exp().sum(1)
    am = logits.argmax(1)
    above = (logits > tl).sum(1)
    top2 = logits.topk(2, 1).values[:, 1] if second else None
    return mx[:, 0], sumexp, am, above, tl[:, 0], top2


class Reducer:
    """Eager or ``torch.compile``-d vocabulary reductions; falls back to eager if compiling fails."""

    _compiled: Callable | None = None

    def __init__(self, use_compile: bool = False):
        self.use_compile = use_compile

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, second: bool = False) -> tuple[torch.Tensor, ...]:
        if self.use_compile:
            try:
                if Reducer._compiled is None:
                    Reducer._compiled = torch.compile(_reduce_logits)
                return Reducer._compiled(logits, target, second)
            except Exception as exc:  # no C++ compiler, unsupported platform, ...
                warnings.warn(f"torch.compile of the evaluation kernel failed ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); using eager mode", stacklevel=2)
                self.use_compile = False
        return _reduce_inplace(logits, target, second)


def _extras(logits: torch.Tensor, ref: Reference, sample: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(basic reductions..., kl, entropy, ce) in one read of the raw logits and one of their exp.

    KL(p_final || p_lens) = sum p_f log p_f - sum p_f l + logsumexp(l); the lens's entropy is
    logsumexp(l) - sum softmax(l) l; the cross-entropy against the real next token is
    logsumexp(l) - l[next] (NaN where the sentence has no next token). One temporary the size of
    the block serves every pass (p_final's rows, then the exp). The cross term is taken before the
    shifted logits are floored for the exp (p_final may weigh a logit the lens puts far below its top).
    """
    target = ref.target[sample]
    mx, am, second = _top2(logits, ref.exits)
    tl = logits.gather(1, target[:, None])[:, 0]
    buf = torch.empty_like(logits)
    above = _count_above(logits, tl[:, None], buf)
    nxt = ref.next_token[sample] if ref.next_token is not None else None
    nl = logits.gather(1, nxt.clamp_min(0)[:, None])[:, 0] if nxt is not None else None
    shifted = logits.sub_(mx[:, None])
    torch.index_select(ref.final_probs(), 0, sample, out=buf)
    dot_final = buf.mul_(shifted).sum(1)
    e = torch.exp(shifted.clamp_min_(EXP_FLOOR), out=buf)
    sumexp = e.sum(1)
    lse = sumexp.log()
    entropy = lse - e.mul_(shifted).sum(1) / sumexp
    kl = ref.final_negent[sample] - dot_final + lse
    if nl is None:
        ce = torch.full_like(lse, float("nan"))
    else:
        ce = torch.where(nxt >= 0, mx + lse - nl, torch.full_like(lse, float("nan")))
    return mx, sumexp, am, above, tl, second, kl.clamp_min(0), entropy, ce


def score_block(logits: torch.Tensor, ref: Reference, sample: torch.Tensor,
                reducer: Callable | None = None) -> tuple[torch.Tensor, ...]:
    """Per-row quantities (BASIC, then EXTRA when ``ref.extras``, then EXIT when ``ref.exits``) of ``logits``
    (which is overwritten).

    Row i of ``logits`` belongs to sample ``sample[i]`` of the chunk. A block larger than the caches is
    reduced slice by slice (:data:`SLICE_ELEMENTS`); results do not depend on it.
    """
    logits = logits.float()
    step = max(1, SLICE_ELEMENTS // max(logits.shape[1], 1))
    if logits.shape[0] <= step:
        return _score_slice(logits, ref, sample, reducer)
    parts = [_score_slice(logits[i:i + step], ref, sample[i:i + step], reducer)
             for i in range(0, logits.shape[0], step)]
    return tuple(torch.cat([p[i] for p in parts]) for i in range(len(parts[0])))


def _score_slice(logits: torch.Tensor, ref: Reference, sample: torch.Tensor,
                 reducer: Callable | None) -> tuple[torch.Tensor, ...]:
    if ref.extras:
        mx, sumexp, am, above, tl, second, kl, entropy, ce = _extras(logits, ref, sample)
    else:
        mx, sumexp, am, above, tl, second = (reducer or _reduce_inplace)(logits, ref.target[sample], ref.exits)
    lse = mx + sumexp.log()
    surprisal = lse - tl
    reverse = -ref.final_logp[sample, am]
    out = (am == ref.target[sample], above < TOP_K, surprisal, reverse)
    if ref.extras:
        out += (kl, entropy, ce)
    if ref.exits:  # as early exit computes them: exp(top-k logit - logsumexp)
        p1 = (mx - lse).exp()
        out += (am, p1, p1 - (second - lse).exp())
    return out


def score_rows(to_logits: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, ref: Reference,
               sample: torch.Tensor, block: int, reducer: Callable | None = None) -> tuple[torch.Tensor, ...]:
    """Score ``to_logits(x[rows])`` block by block (``block`` rows of logits at a time)."""
    parts = []
    for start in range(0, x.shape[0], block):
        end = min(x.shape[0], start + block)
        parts.append(score_block(to_logits(x[start:end]), ref, sample[start:end], reducer))
    return tuple(torch.cat([p[i] for p in parts]) for i in range(len(parts[0])))


class Sink:
    """Per-sample arrays of one method: shape (*lead, K, N)."""

    def __init__(self, lead: tuple[int, ...], K: int, N: int, extras: bool, exits: bool = False):
        self.names = BASIC + (EXTRA if extras else ()) + (EXIT if exits else ())
        dtypes = {"correct1": torch.bool, "correct5": torch.bool, "top1": torch.int64}
        self.values = {name: torch.zeros(*lead, K, N, dtype=dtypes.get(name, torch.float32)) for name in self.names}

    def put_rows(self, idx: tuple, values: tuple[torch.Tensor, ...], n: int, K: int, offset: int) -> None:
        """Store the results of n*K rows; row r is (sample r // K, level r % K)."""
        for name, v in zip(self.names, values):
            self.values[name][idx + (slice(None), slice(offset, offset + n))] = v.view(n, K).T.cpu()

    def put_level(self, idx: tuple, level: int, values: tuple[torch.Tensor, ...], offset: int) -> None:
        """Store the results of n rows at one level."""
        for name, v in zip(self.names, values):
            self.values[name][idx + (level, slice(offset, offset + v.shape[0]))] = v.cpu()

    def items(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}/{k}": v for k, v in self.values.items()}
