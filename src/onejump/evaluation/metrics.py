"""Evaluation of shortcuts through the model head (Section 5-6), statistics and parameter accounting.

Metrics, per exit level k = 0..K-1, on the test split, with t* the model's own top-1 token:

- ``precision@1``: ``argmax head(shortcut(h^k)) == t*``;
- ``precision@5``: t* among the 5 largest logits, counted as "fewer than 5 logits are strictly
  larger than the logit of t*" (the same as ``t* in topk(5)`` up to ties);
- ``surprisal`` (the paper's): ``-log softmax(head(shortcut(h^k)))[t*]``;
- ``reverse_surprisal`` (the ``mat`` code's): ``-log p_final(argmax head(shortcut(h^k)))`` with
  ``p_final = softmax(head(h^K))``.

Every (jump m, level k) pair of a per-level bank is evaluated (the full reuse matrix: row m is
"jump m at every level", the diagonal is full N-NJTC, the OJFA row is one of them), as well as
the identity shortcut (logit lens), a linear JTC map and a joint jump. Low-rank jumps go through
:class:`LowRankHead`, the exact head in rank-r form, so a (rows x r) @ (r x V) product replaces the
(rows x H) @ (H x V) one. Per-sample results are kept, so that means, confidence intervals and
paired tests are computed afterwards and do not depend on chunk sizes.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import ConfigError, NumericalError, StoreError
from ..lenses.jtc import LinearJTC
from ..lenses.jumps import JumpBank, jump_parameter_count
from ..lenses.lowrank_head import LowRankHead

METRICS = ("precision@1", "precision@5", "surprisal", "reverse_surprisal")
_SAMPLE_KEYS = {"precision@1": "correct1", "precision@5": "correct5", "surprisal": "surprisal",
                "reverse_surprisal": "reverse_surprisal"}


TOP_K = 5


def _reduce_inplace(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Eager reductions over the vocabulary: (max, sum exp(logits - max), argmax, #logits > logit[t*], logit[t*]).

    Overwrites ``logits`` (the exp is taken in place to spare a (rows, V) temporary).
    """
    mx, am = logits.max(1)
    tl = logits.gather(1, target[:, None])
    above = torch.gt(logits, tl).sum(1, dtype=torch.int32)
    sumexp = logits.sub_(mx[:, None]).exp_().sum(1)
    return mx, sumexp, am, above, tl[:, 0]


def _reduce_logits(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same reductions written for ``torch.compile`` (fused into about two passes over the logits)."""
    tl = logits.gather(1, target[:, None])
    mx = logits.amax(1, keepdim=True)
    sumexp = (logits - mx).exp().sum(1)
    am = logits.argmax(1)
    above = (logits > tl).sum(1)
    return mx[:, 0], sumexp, am, above, tl[:, 0]


class _Reducer:
    """Eager or ``torch.compile``-d vocabulary reductions; falls back to eager if compiling fails."""

    _compiled: Callable | None = None

    def __init__(self, use_compile: bool):
        self.use_compile = use_compile

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.use_compile:
            try:
                if _Reducer._compiled is None:
                    _Reducer._compiled = torch.compile(_reduce_logits)
                return _Reducer._compiled(logits, target)
            except Exception as exc:  # no C++ compiler, unsupported platform, ...
                warnings.warn(f"torch.compile of the evaluation kernel failed ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); using eager mode", stacklevel=2)
                self.use_compile = False
        return _reduce_inplace(logits, target)


def _score_block(logits: torch.Tensor, target: torch.Tensor, final_logp: torch.Tensor, sample: torch.Tensor,
                 reducer: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(correct@1, correct@5, surprisal, reverse surprisal) of each row of ``logits`` (which may be overwritten)."""
    mx, sumexp, am, above, tl = (reducer or _reduce_inplace)(logits.float(), target)
    surprisal = mx + sumexp.log() - tl
    reverse = -final_logp[sample, am]
    return am == target, above < TOP_K, surprisal, reverse


class _Sink:
    """Per-sample arrays of one method: shape (*lead, K, N)."""

    def __init__(self, lead: tuple[int, ...], K: int, N: int):
        self.correct1 = torch.zeros(*lead, K, N, dtype=torch.bool)
        self.correct5 = torch.zeros(*lead, K, N, dtype=torch.bool)
        self.surprisal = torch.zeros(*lead, K, N, dtype=torch.float32)
        self.reverse_surprisal = torch.zeros(*lead, K, N, dtype=torch.float32)

    def put(self, idx: tuple, values: tuple[torch.Tensor, ...], n: int, K: int, offset: int) -> None:
        """Store row results of a chunk; row r is (sample r // K, level r % K)."""
        for name, v in zip(("correct1", "correct5", "surprisal", "reverse_surprisal"), values):
            getattr(self, name)[idx + (slice(None), slice(offset, offset + n))] = v.view(n, K).T.cpu()

    def items(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}/{k}": getattr(self, k) for k in ("correct1", "correct5", "surprisal", "reverse_surprisal")}


def _score_rows(to_logits: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, target: torch.Tensor,
                sample: torch.Tensor, final_logp: torch.Tensor, block: int,
                reducer: Callable | None = None) -> tuple[torch.Tensor, ...]:
    """Score ``to_logits(x[rows])`` block by block (``block`` rows of logits at a time)."""
    parts = []
    for start in range(0, x.shape[0], block):
        end = min(x.shape[0], start + block)
        parts.append(_score_block(to_logits(x[start:end]), target[start:end], final_logp, sample[start:end],
                                  reducer))
    return tuple(torch.cat([p[i] for p in parts]) for i in range(4))


@dataclass
class _Chunk:
    """One chunk of n samples x K levels (row r = sample r // K, level r % K)."""

    n: int
    K: int
    offset: int
    row_target: torch.Tensor
    row_sample: torch.Tensor
    final_logp: torch.Tensor
    block: int
    reducer: Callable | None = None

    def run(self, sink: _Sink, to_logits: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
            timings: dict[str, float], name: str, idx: tuple = ()) -> None:
        t0 = time.perf_counter()
        values = _score_rows(to_logits, x, self.row_target, self.row_sample, self.final_logp, self.block,
                             self.reducer)
        sink.put(idx, values, self.n, self.K, self.offset)
        timings[name] += time.perf_counter() - t0


@dataclass
class EvalResult:
    """Per-sample results of :func:`evaluate` and their summaries.

    ``per_sample`` maps ``"<method>/<quantity>"`` to tensors. ``method``: ``identity``, ``jtc``,
    ``joint`` and ``full`` (the last only when ``jumps`` did not cover the diagonal), each of
    shape (K, N); ``pairs`` of shape (len(jumps), K, N) (jump ``jumps[i]`` at every level).
    ``quantity``: ``correct1``, ``correct5`` (bool), ``surprisal``, ``reverse_surprisal``
    (float32). ``final/surprisal`` (N,) is the model's own surprisal of t* and ``targets`` (N,)
    the t* used. Method names for :meth:`metric`: ``identity``, ``jtc``, ``joint``, ``full``
    (jump k at level k), ``ojfa`` (the chosen jump, see ``chosen``), ``jump:m``.
    """

    num_blocks: int
    num_samples: int
    vocab_size: int
    split: str
    jumps: list[int]
    per_sample: dict[str, torch.Tensor]
    chosen: int | None = None
    hidden_size: int = 0
    rank: int | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        """Methods available to :meth:`metric`."""
        out = [m for m in ("identity", "jtc", "joint") if f"{m}/correct1" in self.per_sample]
        if "full/correct1" in self.per_sample:
            out.append("full")
        if "pairs/correct1" in self.per_sample:
            if "full" not in out and set(range(self.num_blocks)) <= set(self.jumps):
                out.append("full")
            if self.chosen is not None and self.chosen in self.jumps:
                out.append("ojfa")
        return out

    def samples(self, method: str, metric: str) -> torch.Tensor:
        """Per-sample values (K, N) of ``metric`` for ``method`` (see the class doc for names)."""
        if metric not in _SAMPLE_KEYS:
            raise ConfigError(f"unknown metric '{metric}'; use one of {', '.join(METRICS)}")
        q = _SAMPLE_KEYS[metric]
        if method in ("identity", "jtc", "joint"):
            key = f"{method}/{q}"
            if key not in self.per_sample:
                raise ConfigError(f"method '{method}' was not evaluated")
            return self.per_sample[key]
        if method == "full" and f"full/{q}" in self.per_sample:
            return self.per_sample[f"full/{q}"]
        pairs = self.per_sample.get(f"pairs/{q}")
        if pairs is None:
            raise ConfigError(f"method '{method}' needs the jump bank, which was not evaluated")
        if method == "full":
            rows = [self._row(k) for k in range(self.num_blocks)]
            return torch.stack([pairs[rows[k], k] for k in range(self.num_blocks)])
        if method == "ojfa":
            if self.chosen is None:
                raise ConfigError("no OJFA jump chosen: pass chosen= to evaluate or set result.chosen")
            return pairs[self._row(self.chosen)]
        if method.startswith("jump:"):
            return pairs[self._row(int(method.split(":", 1)[1]))]
        raise ConfigError(f"unknown method '{method}'; use identity, jtc, joint, full, ojfa or jump:M")

    def _row(self, jump: int) -> int:
        try:
            return self.jumps.index(jump)
        except ValueError:
            raise ConfigError(f"jump {jump} was not evaluated (evaluated: {self.jumps})") from None

    def metric(self, method: str, metric: str) -> torch.Tensor:
        """Mean over test samples, per level: (K,) float64."""
        return self.samples(method, metric).double().mean(-1)

    def pair_matrix(self, metric: str) -> torch.Tensor:
        """Means (len(jumps), K) of ``metric`` for jump ``jumps[i]`` at level k."""
        return self.per_sample[f"pairs/{_SAMPLE_KEYS[metric]}"].double().mean(-1)

    @property
    def final_surprisal(self) -> float:
        """The model's own mean surprisal of t* (what a perfect shortcut would reach)."""
        return float(self.per_sample["final/surprisal"].double().mean())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (means per level; no per-sample arrays)."""
        methods = {m: {metric: self.metric(m, metric).tolist() for metric in METRICS} for m in self.methods}
        out: dict[str, Any] = {
            "split": self.split,
            "num_samples": self.num_samples,
            "num_blocks": self.num_blocks,
            "vocab_size": self.vocab_size,
            "chosen": self.chosen,
            "final_surprisal": self.final_surprisal,
            "methods": methods,
            "average_over_levels": {m: {metric: float(np.mean(v)) for metric, v in d.items()}
                                    for m, d in methods.items()},
            "seconds": self.seconds,
            "timings": self.timings,
        }
        if "pairs/correct1" in self.per_sample:
            out["pairs"] = {"jumps": self.jumps, **{metric: self.pair_matrix(metric).tolist() for metric in METRICS}}
        if self.rank is not None and self.hidden_size:
            out["parameters"] = parameter_counts(self.num_blocks, self.hidden_size, self.rank)
        return out

    def save(self, path: str | Path) -> Path:
        """Write the per-sample arrays (safetensors) and the summary (JSON) to a folder."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: (v.to(torch.uint8) if v.dtype == torch.bool else v).contiguous()
                   for k, v in self.per_sample.items()}
        save_file(tensors, str(folder / "per_sample.safetensors"),
                  metadata={"bool_keys": json.dumps([k for k, v in self.per_sample.items() if v.dtype == torch.bool])})
        meta = {"num_blocks": self.num_blocks, "num_samples": self.num_samples, "vocab_size": self.vocab_size,
                "split": self.split, "jumps": self.jumps, "chosen": self.chosen, "hidden_size": self.hidden_size,
                "rank": self.rank, "seconds": self.seconds, "timings": self.timings}
        (folder / "result.json").write_text(json.dumps({"meta": meta, "summary": self.to_dict()}, indent=1))
        return folder

    @classmethod
    def load(cls, path: str | Path) -> EvalResult:
        """Read a folder written by :meth:`save`."""
        folder = Path(path)
        try:
            meta = json.loads((folder / "result.json").read_text())["meta"]
            with safe_open(str(folder / "per_sample.safetensors"), framework="pt") as fh:
                bool_keys = set(json.loads((fh.metadata() or {}).get("bool_keys", "[]")))
                per_sample = {k: fh.get_tensor(k) for k in fh.keys()}
        except (OSError, KeyError, json.JSONDecodeError) as exc:
            raise StoreError(f"{folder} is not a saved evaluation result: {exc}") from None
        for k in bool_keys:
            per_sample[k] = per_sample[k].bool()
        return cls(per_sample=per_sample, **meta)


def _default_blocks(vocab: int, device: torch.device) -> tuple[int, int]:
    """Rows per logits block for (full-head methods, low-rank jumps).

    Measured on 2 CPU cores with V=49152: the full head is GEMM-bound and wants large blocks
    (~340 rows, 64 MB of logits); the low-rank head is bound by the passes over the logits and is
    ~1.6x faster when a block stays in L2/L3 (~20 rows, 4 MB). On a GPU large blocks (fewer
    kernel launches) win for both.
    """
    v = max(vocab, 1)
    if device.type == "cuda":
        return max(4, (1 << 26) // v), max(4, (1 << 26) // v)
    return max(4, (1 << 24) // v), max(1, (1 << 20) // v)


@torch.no_grad()
def evaluate(store: Any, adapter: Any, bank: JumpBank | None = None, *, joint: JumpBank | None = None,
             jtc: LinearJTC | None = None, identity: bool = True, jumps: Sequence[int] | None = None,
             chosen: int | None = None, split: str = "test", chunk_size: int = 128,
             block_rows: int | None = None, device: str | torch.device | None = None,
             compile: bool | None = None, progress: bool = True) -> EvalResult:
    """Evaluate shortcuts at every exit level on a store split through the model head.

    ``bank`` is the per-level N-NJTC bank: every jump in ``jumps`` (default all) is evaluated at
    every level (the reuse matrix; row k at level k is full N-NJTC). With a subset of ``jumps``
    the diagonal (jump k at level k, full N-NJTC) is evaluated on its own, so e.g.
    ``jumps=[chosen]`` gives full N-NJTC and OJFA for 2/K of the cost of the whole matrix. ``joint`` is a J=1 bank,
    ``jtc`` a :class:`LinearJTC`; ``identity`` adds the logit lens. ``chosen`` records the OJFA
    jump for :meth:`EvalResult.metric` (``"ojfa"``). Memory is bounded by ``chunk_size`` samples
    and ``block_rows`` rows of logits; results do not depend on either. Everything runs on the
    device of the model's unembedding (``device``, if given, must be of the same type).

    ``compile=True`` runs the reductions over the vocabulary (max, argmax, count, log-sum-exp) as
    one ``torch.compile``-d kernel: about 1.3x faster on 2 CPU cores for the full reuse matrix
    (SmolLM2, N=300: 26 s vs 34 s), but the first call compiles (seconds with a warm inductor
    cache, up to ~1.5 min cold) and needs a C++ compiler; if compiling fails it warns and falls
    back to eager. Default (``None``): eager. On a GPU the whole K x K evaluation at N=3000 takes
    a few seconds.

    Cost on CPU: the full K x K matrix is K*K*N rows of V logits (SmolLM2, N=3000: 2.7M rows x
    49152); the low-rank head makes each row an r-dim product, so the time goes into the passes
    over the logits (max/argmax, count, exp-sum). Pass ``jumps=[...]`` to evaluate only some
    jumps at every level.
    """
    K, H = store.num_blocks, store.hidden_size
    if chunk_size < 1:
        raise ConfigError("chunk_size must be >= 1")
    w_u = adapter.unembedding_matrix()
    dev = w_u.device  # the head runs where the model's unembedding is (e.g. a device_map's last GPU)
    if device is not None and torch.device(device).type != dev.type:
        raise ConfigError(f"evaluate runs where the model's head is: the model is on {dev}, device={device} "
                          "was asked for; move the model or leave device unset")
    V = int(w_u.shape[0])
    model_dtype = w_u.dtype
    if block_rows is not None and block_rows < 1:
        raise ConfigError("block_rows must be >= 1")
    full_block, lowrank_block = (block_rows, block_rows) if block_rows else _default_blocks(V, dev)
    for name, b in (("bank", bank), ("joint", joint)):
        if b is not None and b.hidden_size != H:
            raise ConfigError(f"{name} has H={b.hidden_size} but the store has H={H}")
    if jtc is not None and (jtc.hidden_size != H or jtc.num_levels != K):
        raise ConfigError(f"JTC maps have K={jtc.num_levels}, H={jtc.hidden_size}; the store has K={K}, H={H}")
    jump_list = list(range(bank.num_jumps)) if bank is not None and jumps is None else list(jumps or [])
    if bank is not None and any(not 0 <= m < bank.num_jumps for m in jump_list):
        raise ConfigError(f"jumps must be in 0..{bank.num_jumps - 1}")
    targets_all = store.targets(split)
    N = int(targets_all.shape[0])
    if N == 0:
        raise StoreError(f"store split '{split}' is empty; nothing to evaluate")

    if compile is None:
        compile = False
    reducer = _Reducer(bool(compile))

    sinks: dict[str, _Sink] = {}
    if identity:
        sinks["identity"] = _Sink((), K, N)
    if jtc is not None:
        sinks["jtc"] = _Sink((), K, N)
        jtc = LinearJTC(jtc.W.to(dev))  # a copy: the caller's module stays where it is
    if joint is not None:
        sinks["joint"] = _Sink((), K, N)
        joint_head = None if joint.residual else LowRankHead(adapter, joint, dev)
        joint_dev = copy.deepcopy(joint).to(dev) if joint.residual else None
    if bank is not None and jump_list:
        sinks["pairs"] = _Sink((len(jump_list),), K, N)
    if bank is not None and bank.num_jumps == K and not set(range(K)) <= set(jump_list):
        sinks["full"] = _Sink((), K, N)  # jump k at level k, when the pairs do not hold the diagonal
    residual_bank = bank is not None and bank.residual
    if bank is not None:
        bank_head = None if residual_bank else LowRankHead(adapter, bank, dev)
        bank_dev = copy.deepcopy(bank).to(dev) if residual_bank else None
    final_surprisal = torch.zeros(N, dtype=torch.float32)
    timings = dict.fromkeys(["final", *sinks], 0.0)

    def full_head(x: torch.Tensor) -> torch.Tensor:
        return adapter.head(x.to(model_dtype)).float()

    t_start = time.perf_counter()
    offset = 0
    bar = tqdm(total=N, desc="evaluate", unit="sample", disable=not progress)
    for rows, chunk in store.iter_chunks(split, chunk_size=chunk_size):
        n = chunk.shape[0]
        h = chunk.to(dev, torch.float32)
        if not torch.isfinite(h).all():
            i, level, _ = (~torch.isfinite(h)).nonzero()[0].tolist()
            raise NumericalError(f"non-finite hidden state in the store at level {level}, sample row {rows[i]}")
        t0 = time.perf_counter()
        target = targets_all[offset:offset + n].to(dev)
        final_logp = torch.log_softmax(full_head(h[:, K]), -1)
        final_surprisal[offset:offset + n] = -final_logp.gather(1, target[:, None])[:, 0].cpu()
        levels_h = h[:, :K].reshape(n * K, H)
        row_target = target.repeat_interleave(K)
        row_sample = torch.arange(n, device=dev).repeat_interleave(K)
        timings["final"] += time.perf_counter() - t0

        ctx = _Chunk(n, K, offset, row_target, row_sample, final_logp, full_block, reducer)
        low = dataclasses.replace(ctx, block=lowrank_block)
        if identity:
            ctx.run(sinks["identity"], full_head, levels_h, timings, "identity")
        if jtc is not None:
            mapped = jtc.apply_all(h[:, :K]).reshape(n * K, H)
            ctx.run(sinks["jtc"], full_head, mapped, timings, "jtc")
        if joint is not None and joint_head is None:  # residual: full head on h + correction
            ctx.run(sinks["joint"], full_head, joint_dev.apply(levels_h, 0), timings, "joint")
        elif joint is not None:
            u_joint = joint_head.scaled_codes(joint_head.project_all(levels_h)[:, 0], 0)
            low.run(sinks["joint"], functools.partial(joint_head.logits_from_scaled, jump=0), u_joint, timings,
                    "joint")
        if residual_bank:
            if "full" in sinks:
                t1 = time.perf_counter()
                for k in range(K):
                    values = _score_rows(full_head, bank_dev.apply(h[:, k], k), target, torch.arange(n, device=dev),
                                         final_logp, full_block, reducer)
                    for name, v in zip(("correct1", "correct5", "surprisal", "reverse_surprisal"), values):
                        getattr(sinks["full"], name)[k, offset:offset + n] = v.cpu()
                timings["full"] += time.perf_counter() - t1
            if "pairs" in sinks:
                for i, m in enumerate(jump_list):
                    ctx.run(sinks["pairs"], full_head, bank_dev.apply(levels_h, m), timings, "pairs", (i,))
        elif "pairs" in sinks or "full" in sinks:
            t1 = time.perf_counter()
            z_all = bank_head.project_all(levels_h)  # (n*K, J, r)
            timings["pairs" if "pairs" in sinks else "full"] += time.perf_counter() - t1
        if "full" in sinks and not residual_bank:
            t1 = time.perf_counter()
            z_levels = z_all.view(n, K, -1, z_all.shape[-1])
            for k in range(K):
                u_k = bank_head.scaled_codes(z_levels[:, k, k], k).contiguous()
                values = _score_rows(functools.partial(bank_head.logits_from_scaled, jump=k), u_k, target,
                                     torch.arange(n, device=dev), final_logp, lowrank_block, reducer)
                for name, v in zip(("correct1", "correct5", "surprisal", "reverse_surprisal"), values):
                    getattr(sinks["full"], name)[k, offset:offset + n] = v.cpu()
            timings["full"] += time.perf_counter() - t1
        if "pairs" in sinks and not residual_bank:
            for i, m in enumerate(jump_list):
                u_m = bank_head.scaled_codes(z_all[:, m], m).contiguous()
                low.run(sinks["pairs"], functools.partial(bank_head.logits_from_scaled, jump=m), u_m, timings,
                        "pairs", (i,))
        offset += n
        bar.update(n)
    bar.close()
    per_sample: dict[str, torch.Tensor] = {}
    for name, sink in sinks.items():
        per_sample.update(sink.items(name))
    per_sample["final/surprisal"] = final_surprisal
    per_sample["targets"] = targets_all.clone()
    for key, value in per_sample.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise NumericalError(f"non-finite {key} in the evaluation (overflowing logits?)")
    return EvalResult(num_blocks=K, num_samples=N, vocab_size=V, split=split, jumps=jump_list,
                      per_sample=per_sample, chosen=chosen, hidden_size=H,
                      rank=bank.rank if bank is not None else (joint.rank if joint is not None else None),
                      seconds=time.perf_counter() - t_start, timings=timings)


def parameter_counts(num_blocks: int, hidden_size: int, rank: int) -> dict[str, Any]:
    """Shortcut parameters held at inference by each method, and the OJFA reduction factor.

    identity 0; full N-NJTC ``K (2Hr + 4H)``; OJFA and joint ``2Hr + 4H``; JTC ``K (H^2 + H)``;
    ``reduction_factor`` = full / OJFA = K.
    """
    per_jump = jump_parameter_count(hidden_size, rank)
    full = num_blocks * per_jump
    return {
        "identity": 0,
        "full_nnjtc": full,
        "ojfa": per_jump,
        "joint": per_jump,
        "jtc": num_blocks * (hidden_size * hidden_size + hidden_size),
        "per_jump": per_jump,
        "reduction_factor": full / per_jump,
        "num_blocks": num_blocks,
        "hidden_size": hidden_size,
        "rank": rank,
    }
