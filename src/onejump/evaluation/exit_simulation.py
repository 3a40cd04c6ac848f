"""What an early-exit simulation measured, and the measures the field reads from it (mat, CALM).

For every lens, checked exit level k and test token, the simulation holds the lens's top-1 token at
level k and its confidence under two measures (gathered by
:func:`~onejump.evaluation.early_exit.simulate_exits`): ``max_prob`` (the largest softmax
probability) and ``margin`` (top-1 minus top-2 probability). The exit rule, for a threshold
lambda: exit at the first checked level whose confidence is >= lambda and predict the lens's top-1
there; a token that never exits runs the full model, whose prediction is t* by definition.
Everything per lambda is then cheap: the exit-level distribution, the agreement of the exited
prediction with t* (the model's own final top-1), and the mean number of blocks computed.

Cost accounting, per token, in multiply-adds (MACs) and in block-equivalents (one block's MACs,
from the weight matrices of the model's blocks; attention over the context is not counted):

- a token exiting at level k computes k blocks (level 0 is the embedding output);
- it pays one exit check (``lens.logits_cost()``) at every checked level up to and including its
  exit level (all checked levels when it never exits);
- an exiting token does not run the model's final head (``head_macs``), whose logits its last check
  replaced. So the compute of a token, beyond the full model's own head, is
  ``blocks + (checks * check_macs - exited * head_macs) / block_macs`` block-equivalents, and the
  full model costs K. "Blocks saved" is K minus the blocks computed (the field's number); "compute
  saved" is K minus that compute (exit checks counted, the skipped head credited). Being net of the
  head, that compute is below 0 for a token that exits early through a check cheaper than the head;
  a token's whole compute is it plus the head's block-equivalents (what the frontier figure plots).

Summaries: for a target agreement (90%, 95%, 99%) the lambda that saves the most among those
whose agreement reaches the target with at least one exit; "not reached" otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from ..errors import ConfigError, StoreError
from ..io import atomic_write_text, save_safetensors

MEASURES = ("max_prob", "margin")
AGREEMENTS = (0.9, 0.95, 0.99)
FORMAT = "onejump-exit-simulation"
VERSION = 1
JSON_NAME = "exits.json"
TENSORS_NAME = "exits.safetensors"


def default_lambdas() -> list[float]:
    """Thresholds from 0 to 1: steps of 0.01 below 0.1 and above 0.9, 0.025 between, then 1 - 5e-3 ... 1 - 1e-4, 1."""
    grid = np.concatenate([np.linspace(0.0, 0.1, 11), np.linspace(0.1, 0.9, 33), np.linspace(0.91, 0.99, 9),
                           1.0 - np.array([5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4]), [1.0]])
    return sorted({round(float(x), 6) for x in grid})


# --------------------------------------------------------------------------------------------------
# The exit rule
# --------------------------------------------------------------------------------------------------


def first_exit(confidence: torch.Tensor, lambdas: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Index of the first checked level whose confidence is >= lambda, per (lambda, row).

    ``confidence`` is (L, N); the result is (len(lambdas), N) in 0..L, L meaning "never exits".
    The first level reaching lambda is the first where the running maximum does, so one sorted
    search per row answers every lambda at once. Lambda is rounded to the confidences' dtype, so
    a stored 0.9 reaches lambda = 0.9.
    """
    L, N = confidence.shape
    lam = torch.as_tensor(lambdas, dtype=torch.float64).reshape(-1).to(confidence.dtype)
    if L == 0:
        return torch.zeros(lam.numel(), N, dtype=torch.int64)
    running = confidence.T.cummax(dim=1).values.contiguous()  # (N, L), nondecreasing
    return torch.searchsorted(running, lam.expand(N, -1).contiguous()).T.contiguous()


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass
class LensExits:
    """Per-row records of one lens: ``top1`` (L, N) and ``confidence[measure]`` (L, N) at the checked levels."""

    kind: str
    check_macs: int
    num_parameters: int
    top1: torch.Tensor
    confidence: dict[str, torch.Tensor]


class ExitCurve(NamedTuple):
    """One lens and measure over the lambda grid (arrays of len(lambdas); ``histogram`` (lambdas, L+1))."""

    lambdas: np.ndarray
    exit_rate: np.ndarray
    agreement: np.ndarray
    mean_blocks: np.ndarray
    mean_checks: np.ndarray
    mean_cost: np.ndarray  # block-equivalents: blocks + exit checks - the head an exiting token skips
    histogram: np.ndarray  # exits per checked level, last column: no exit


class SavedAt(NamedTuple):
    """The best lambda reaching an agreement target, and what it saves."""

    lam: float
    agreement: float
    blocks_saved: float
    fraction_saved: float  # of K
    mean_blocks: float
    mean_cost: float
    exit_rate: float


@dataclass
class ExitSimulation:
    """What :func:`simulate_exits` measured; curves and summaries are computed from the per-row records."""

    num_blocks: int
    split: str
    levels: list[int]
    lambdas: list[float]
    measures: list[str]
    block_macs: int
    head_macs: int
    targets: torch.Tensor
    lenses: dict[str, LensExits]
    seconds: float = 0.0
    model: str = ""
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_samples(self) -> int:
        return int(self.targets.shape[0])

    def check_blocks(self, name: str) -> float:
        """One exit check of lens ``name`` in block-equivalents."""
        return self.lenses[name].check_macs / self.block_macs

    def _rows(self, levels: Sequence[int] | None) -> tuple[list[int], list[int]]:
        if levels is None:
            return list(self.levels), list(range(len(self.levels)))
        chosen = sorted(set(int(k) for k in levels))
        missing = [k for k in chosen if k not in self.levels]
        if missing:
            raise ConfigError(f"levels {missing} were not simulated (simulated: {self.levels})")
        return chosen, [self.levels.index(k) for k in chosen]

    def curve(self, name: str, measure: str, levels: Sequence[int] | None = None) -> ExitCurve:
        """The exit rule over the lambda grid for lens ``name``, checking only ``levels`` (default: all simulated)."""
        if name not in self.lenses:
            raise ConfigError(f"unknown lens '{name}'; simulated: {', '.join(self.lenses)}")
        if measure not in self.measures:
            raise ConfigError(f"unknown measure '{measure}'; simulated: {', '.join(self.measures)}")
        chosen, rows = self._rows(levels)
        key = (name, measure, tuple(chosen))
        if key not in self._cache:
            rec = self.lenses[name]
            self._cache[key] = _curve(rec.confidence[measure][rows], rec.top1[rows] == self.targets, chosen,
                                      self.num_blocks, self.lambdas, rec.check_macs, self.head_macs,
                                      self.block_macs)
        return self._cache[key]

    def saved_at(self, name: str, measure: str, agreement: float, *, include_checks: bool = True,
                 levels: Sequence[int] | None = None) -> SavedAt | None:
        """The lambda saving the most while its agreement is >= ``agreement`` (None: not reached)."""
        c = self.curve(name, measure, levels)
        ok = (c.agreement >= agreement - 1e-12) & (c.exit_rate > 0)
        if not ok.any():
            return None
        spent = c.mean_cost if include_checks else c.mean_blocks
        saved = np.where(ok, self.num_blocks - spent, -np.inf)
        i = int(np.argmax(saved))
        K = self.num_blocks
        return SavedAt(float(c.lambdas[i]), float(c.agreement[i]), float(saved[i]), float(saved[i] / K),
                       float(c.mean_blocks[i]), float(c.mean_cost[i]), float(c.exit_rate[i]))

    def summary(self, agreements: Sequence[float] = AGREEMENTS) -> list[dict[str, Any]]:
        """Blocks saved at each agreement target, per lens and measure, with and without the checks' cost."""
        out = []
        for name, rec in self.lenses.items():
            for measure in self.measures:
                for target in agreements:
                    row = {"lens": name, "kind": rec.kind, "measure": measure, "agreement": float(target),
                           "check_macs": rec.check_macs, "check_blocks": self.check_blocks(name)}
                    for label, inc in (("checks_excluded", False), ("checks_included", True)):
                        best = self.saved_at(name, measure, target, include_checks=inc)
                        row[label] = best._asdict() if best is not None else None
                    out.append(row)
        return out

    def frontier(self, name: str, *, include_checks: bool = True) -> list[dict[str, Any]]:
        """Pareto front of (mean compute, agreement) over both measures and every lambda, full model included."""
        points = [(float(self.num_blocks), 1.0, None, None)]
        for measure in self.measures:
            c = self.curve(name, measure)
            spent = c.mean_cost if include_checks else c.mean_blocks
            points += [(float(s), float(a), measure, float(lam))
                       for s, a, lam, r in zip(spent, c.agreement, c.lambdas, c.exit_rate) if r > 0]
        points.sort(key=lambda p: (p[0], -p[1]))
        front, best = [], -1.0
        for cost, agree, measure, lam in points:
            if agree > best:
                front.append({"cost_blocks": cost, "agreement": agree, "measure": measure, "lambda": lam})
                best = agree
        return front

    def only(self, names: Sequence[str]) -> ExitSimulation:
        """The records of the named lenses (the same grid, levels and costs)."""
        missing = [n for n in names if n not in self.lenses]
        if missing:
            raise ConfigError(f"lens(es) {', '.join(missing)} not in this simulation ({', '.join(self.lenses)})")
        return replace(self, lenses={n: self.lenses[n] for n in names}, _cache={})

    @classmethod
    def combine(cls, parts: Sequence[ExitSimulation]) -> ExitSimulation:
        """One simulation holding the lenses of ``parts`` (simulated on the same split with the same grid)."""
        if not parts:
            raise ConfigError("nothing to combine")
        first = parts[0]
        same = ("num_blocks", "split", "levels", "lambdas", "measures", "block_macs", "head_macs")
        for part in parts[1:]:
            if any(getattr(part, a) != getattr(first, a) for a in same) or not torch.equal(part.targets,
                                                                                            first.targets):
                raise ConfigError("cannot combine exit simulations of different splits, grids or models")
        lenses = {name: rec for part in parts for name, rec in part.lenses.items()}
        return replace(first, lenses=lenses, seconds=sum(p.seconds for p in parts), _cache={})

    # ---- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Everything but the per-row records and the time taken, as plain JSON types (the same for the same inputs)."""
        curves = {name: {m: {k: np.asarray(v).tolist() for k, v in self.curve(name, m)._asdict().items()}
                         for m in self.measures} for name in self.lenses}
        return {
            "format": FORMAT, "version": VERSION, "model": self.model, "split": self.split,
            "num_blocks": self.num_blocks, "num_samples": self.num_samples, "levels": list(self.levels),
            "lambdas": list(self.lambdas), "measures": list(self.measures), "block_macs": self.block_macs,
            "head_macs": self.head_macs,
            "lenses": {name: {"kind": r.kind, "check_macs": r.check_macs, "num_parameters": r.num_parameters,
                              "check_blocks": self.check_blocks(name)} for name, r in self.lenses.items()},
            "curves": curves,
            "summary": self.summary(),
            "frontier": {name: self.frontier(name) for name in self.lenses},
        }

    def save(self, folder: str | Path) -> Path:
        """Write ``exits.json`` and ``exits.safetensors`` (the per-row records) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"targets": self.targets.to(torch.int64).contiguous()}
        for i, rec in enumerate(self.lenses.values()):
            tensors[f"lens{i}/top1"] = rec.top1.to(torch.int64).contiguous()
            for m, conf in rec.confidence.items():
                tensors[f"lens{i}/{m}"] = conf.to(torch.float32).contiguous()
        save_safetensors(tensors, folder / TENSORS_NAME)
        text = json.dumps({**self.to_dict(), "seconds": self.seconds,
                           "tensor_index": {name: f"lens{i}" for i, name in enumerate(self.lenses)}}, indent=1)
        atomic_write_text(folder / JSON_NAME, text)
        return folder / JSON_NAME

    @classmethod
    def load(cls, folder: str | Path) -> ExitSimulation:
        """Read what :meth:`save` wrote; raises :class:`StoreError` if it is missing or malformed."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / JSON_NAME).read_text(encoding="utf-8"))
            if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                raise ValueError("not an exit simulation of this version")
            with safe_open(str(folder / TENSORS_NAME), framework="pt") as fh:
                t = {k: fh.get_tensor(k) for k in fh.keys()}
            lenses = {}
            for name, prefix in meta["tensor_index"].items():
                info = meta["lenses"][name]
                lenses[name] = LensExits(info["kind"], int(info["check_macs"]), int(info["num_parameters"]),
                                         t[f"{prefix}/top1"], {m: t[f"{prefix}/{m}"] for m in meta["measures"]})
            return cls(int(meta["num_blocks"]), meta["split"], [int(k) for k in meta["levels"]],
                       [float(x) for x in meta["lambdas"]], list(meta["measures"]), int(meta["block_macs"]),
                       int(meta["head_macs"]), t["targets"], lenses, float(meta.get("seconds", 0.0)), meta["model"])
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
            raise StoreError(f"{folder} does not hold a readable exit simulation: {exc}") from None



def _curve(conf: torch.Tensor, correct: torch.Tensor, levels: list[int], K: int, lambdas: Sequence[float],
           check_macs: int, head: int, block: int) -> ExitCurve:
    """Every mean follows from the counts of exits per (lambda, exit index) and of agreeing exits."""
    L, N = conf.shape
    e = first_exit(conf, lambdas).numpy()  # (lambdas, N) in 0..L
    n_lam = e.shape[0]
    hist = np.bincount((e + (L + 1) * np.arange(n_lam)[:, None]).ravel(), minlength=n_lam * (L + 1))
    hist = hist.reshape(n_lam, L + 1)
    correct_ext = np.concatenate([correct.numpy().astype(bool), np.ones((1, N), dtype=bool)])
    agree = correct_ext[e, np.arange(N)].sum(1) / N
    freq = hist / N
    exit_rate = 1.0 - freq[:, L]
    blocks = freq @ np.array(levels + [K], dtype=np.float64)
    checks = freq @ np.array(list(range(1, L + 1)) + [L], dtype=np.float64)
    cost = blocks + (checks * check_macs - exit_rate * head) / block
    return ExitCurve(np.asarray(lambdas, dtype=np.float64), exit_rate, agree, blocks, checks, cost, hist)
