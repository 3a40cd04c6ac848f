"""The per-sample results of an evaluation, their summaries, and their files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from ..errors import ConfigError, StoreError
from ..io import atomic_write_text, save_safetensors
from .metrics import METRICS, get_metric

_RESERVED = ("pairs", "final", "targets")


@dataclass
class EvalResult:
    """Per-sample results of :func:`onejump.evaluate` / :func:`onejump.evaluation.reuse_matrix`.

    ``per_sample`` maps ``"<method>/<quantity>"`` to tensors of shape (K, N): one method per named
    lens; ``pairs/<quantity>`` (len(jumps), K, N) is the reuse matrix (jump ``jumps[i]`` at every
    level). Quantities: ``correct1``, ``correct5`` (bool), ``surprisal``, ``reverse_surprisal``,
    and the field's metrics ``kl``, ``entropy``, ``ce`` (float32; ``ce`` is NaN where a sentence has
    no next token). ``final/surprisal`` and ``final/ce`` (N,) are the model's own; ``targets`` (N,)
    the t* used. Besides the named lenses, :meth:`metric` knows ``ojfa`` (jump ``chosen`` of the
    reuse matrix, when not evaluated as a lens), ``full`` (the diagonal) and ``jump:m``.
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
    parameters: dict[str, int] = field(default_factory=dict)

    @property
    def lens_names(self) -> list[str]:
        """The lenses evaluated by name (in evaluation order)."""
        names = []
        for key in self.per_sample:
            name = key.split("/", 1)[0]
            if "/" in key and name not in _RESERVED and name not in names:
                names.append(name)
        return names

    @property
    def methods(self) -> list[str]:
        """Methods available to :meth:`metric`."""
        out = self.lens_names
        if "full/correct1" in self.per_sample and "full" not in out:
            out.append("full")
        if "pairs/correct1" in self.per_sample:
            if "full" not in out and set(range(self.num_blocks)) <= set(self.jumps):
                out.append("full")
            if "ojfa" not in out and self.chosen is not None and self.chosen in self.jumps:
                out.append("ojfa")
        return out

    def has(self, method: str, metric: str) -> bool:
        try:
            self.samples(method, metric)
        except ConfigError:
            return False
        return True

    def samples(self, method: str, metric: str) -> torch.Tensor:
        """Per-sample values (K, N) of registered ``metric`` for ``method`` (see the class doc for names)."""
        m = get_metric(metric)
        if m.derive is not None:
            return m.derive(lambda q: self._quantity(method, q, metric))
        return self._quantity(method, m.quantity, metric)

    def _quantity(self, method: str, q: str, metric: str) -> torch.Tensor:
        key = f"{method}/{q}"
        if key in self.per_sample:
            return self.per_sample[key]
        pairs = self.per_sample.get(f"pairs/{q}")
        if pairs is None or method in self.lens_names:
            raise ConfigError(f"metric '{metric}' of '{method}' was not evaluated")
        if method == "full":
            return torch.stack([pairs[self._row(k), k] for k in range(self.num_blocks)])
        if method == "ojfa":
            if self.chosen is None:
                raise ConfigError("no OJFA jump chosen: pass chosen= or set result.chosen")
            return pairs[self._row(self.chosen)]
        if method.startswith("jump:"):
            return pairs[self._row(int(method.split(":", 1)[1]))]
        raise ConfigError(f"unknown method '{method}'; evaluated: {', '.join(self.methods)}")

    def exit_records(self, name: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        """Lens ``name``'s top-1 token (K, N) and its confidences ``max_prob`` and ``margin`` (K, N) at
        every level, as an early-exit simulation records them; None when this evaluation did not keep them."""
        keys = [f"{name}/{q}" for q in ("top1", "max_prob", "margin")]
        if not all(k in self.per_sample for k in keys):
            return None
        top1, max_prob, margin = (self.per_sample[k] for k in keys)
        return top1.long(), {"max_prob": max_prob.float(), "margin": margin.float()}

    def _row(self, jump: int) -> int:
        try:
            return self.jumps.index(jump)
        except ValueError:
            raise ConfigError(f"jump {jump} was not evaluated (evaluated: {self.jumps})") from None

    def metric(self, method: str, metric: str) -> torch.Tensor:
        """Over test samples, per level: (K,) float64, reduced as the metric says (cross-entropy: the
        mean over rows that have a next token)."""
        values = self.samples(method, metric).double()
        return values.nanmean(-1) if get_metric(metric).reduce == "nanmean" else values.mean(-1)

    def pair_matrix(self, metric: str) -> torch.Tensor:
        """Over test samples (len(jumps), K) of ``metric`` for jump ``jumps[i]`` at level k."""
        m = get_metric(metric)
        if m.derive is not None:
            values = m.derive(lambda q: self.per_sample[f"pairs/{q}"]).double()
        else:
            values = self.per_sample[f"pairs/{m.quantity}"].double()
        return values.nanmean(-1) if m.reduce == "nanmean" else values.mean(-1)

    def has_pairs(self, metric: str) -> bool:
        """Whether the reuse matrix of this result has ``metric``."""
        try:
            self.pair_matrix(metric)
        except KeyError:
            return False
        return True

    @property
    def final_surprisal(self) -> float:
        """The model's own mean surprisal of t* (what a perfect lens would reach)."""
        return float(self.per_sample["final/surprisal"].double().mean())

    @property
    def final_cross_entropy(self) -> float | None:
        """The model's own cross-entropy against the real next token (the floor of every lens's)."""
        ce = self.per_sample.get("final/ce")
        if ce is None or bool(torch.isnan(ce).all()):  # a store without next tokens
            return None
        return float(ce.double().nanmean())

    def merge(self, other: EvalResult) -> EvalResult:
        """This result with another's methods added (same split and samples)."""
        if (other.num_samples, other.num_blocks, other.split) != (self.num_samples, self.num_blocks, self.split):
            raise ConfigError("cannot merge evaluations of different splits or models")
        per_sample = {**self.per_sample, **other.per_sample}
        return EvalResult(self.num_blocks, self.num_samples, self.vocab_size, self.split,
                          other.jumps or self.jumps, per_sample, chosen=self.chosen if self.chosen is not None
                          else other.chosen, hidden_size=self.hidden_size or other.hidden_size,
                          rank=self.rank if self.rank is not None else other.rank,
                          seconds=self.seconds + other.seconds, timings={**self.timings, **other.timings},
                          parameters={**self.parameters, **other.parameters})

    def only(self, names: list[str]) -> EvalResult:
        """The part of this result of the named lenses (with the model's own final values and t*)."""
        missing = [n for n in names if n not in self.lens_names]
        if missing:
            raise ConfigError(f"lens(es) {', '.join(missing)} not in this evaluation ({', '.join(self.lens_names)})")
        keep = {k: v for k, v in self.per_sample.items()
                if k.split("/", 1)[0] in names or k.startswith("final/") or k == "targets"}
        timings = {n: t for n, t in self.timings.items() if n in names}
        return EvalResult(self.num_blocks, self.num_samples, self.vocab_size, self.split, [], keep,
                          chosen=self.chosen, hidden_size=self.hidden_size, rank=self.rank,
                          seconds=float(sum(timings.values())), timings=timings,
                          parameters={n: p for n, p in self.parameters.items() if n in names})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (means per level; no per-sample arrays)."""
        methods = {m: {metric: self.metric(m, metric).tolist() for metric in METRICS if self.has(m, metric)}
                   for m in self.methods}
        out: dict[str, Any] = {
            "split": self.split,
            "num_samples": self.num_samples,
            "num_blocks": self.num_blocks,
            "vocab_size": self.vocab_size,
            "chosen": self.chosen,
            "final_surprisal": self.final_surprisal,
            "final_cross_entropy": self.final_cross_entropy,
            "methods": methods,
            "average_over_levels": {m: {metric: float(np.mean(v)) for metric, v in d.items()}
                                    for m, d in methods.items()},
            "lens_parameters": self.parameters,
            "seconds": self.seconds,
            "timings": self.timings,
        }
        if "pairs/correct1" in self.per_sample:
            out["pairs"] = {"jumps": self.jumps, **{metric: self.pair_matrix(metric).tolist()
                                                    for metric in METRICS if self.has_pairs(metric)}}
        return out

    def save(self, path: str | Path) -> Path:
        """Write the per-sample arrays (safetensors) and the summary (JSON) to a folder."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: (v.to(torch.uint8) if v.dtype == torch.bool else v).contiguous()
                   for k, v in self.per_sample.items()}
        bools = json.dumps([k for k, v in self.per_sample.items() if v.dtype == torch.bool])
        save_safetensors(tensors, folder / "per_sample.safetensors", metadata={"bool_keys": bools})
        meta = {"num_blocks": self.num_blocks, "num_samples": self.num_samples, "vocab_size": self.vocab_size,
                "split": self.split, "jumps": self.jumps, "chosen": self.chosen, "hidden_size": self.hidden_size,
                "rank": self.rank, "seconds": self.seconds, "timings": self.timings, "parameters": self.parameters}
        atomic_write_text(folder / "result.json", json.dumps({"meta": meta, "summary": self.to_dict()}, indent=1))
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
        except (OSError, KeyError, json.JSONDecodeError, SafetensorError) as exc:
            raise StoreError(f"{folder} is not a saved evaluation result: {exc}") from None
        for k in bool_keys:
            per_sample[k] = per_sample[k].bool()
        return cls(per_sample=per_sample, **meta)
