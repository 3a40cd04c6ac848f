"""The OJFA choice (Eq. 3-5): which single jump to reuse at every exit level.

``C[i, k, m] = cosine(jump_m(h_i^k), h_i^K)`` with jump m applied at level k using its *own*
BatchNorm statistics (Eq. 3-4); ``Dmat[m, k] = mean_i sign(C) C^2`` and
``D_m = mean_k Dmat[m, k]`` over the exit levels k = 0..K-1 (Eq. 5); OJFA = ``argmax_m D_m``,
computed on the train split (the test split is never used for the choice).

Beyond the paper, a head-aware rule: ``Pmat[m, k]`` = precision@1 of ``head(jump_m(h^k))`` against
the model's own top-1 token, on the held-out validation part of the train split (the rows training
used only for early stopping), scored by the evaluation itself (its reuse matrix on those rows,
:func:`~onejump.evaluation.evaluator.reuse_matrix`). ``select_ojfa(..., rule="head")`` picks
``argmax_m mean_k Pmat[m, k]``.

The K x K cosines are computed in rank-r form, without materialising any (N, K, K, H) tensor:
with ``z = BN_m(h^k) @ A_m = h^k @ A'_m + c_m`` (BatchNorm folded, all jumps in one GEMM),
``jump_m(h^k) . h^K = z . (h^K @ B_m^T)`` and ``||jump_m(h^k)||^2 = z (B_m B_m^T) z^T``. Memory is
bounded by the chunk.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import ConfigError, LensFileError, StoreError
from ..lenses.jumps import JumpBank
from ..lenses.onejump import PerLevelLens
from .evaluator import reuse_matrix
from .scoring import require_finite

FIGURE3_TEMPERATURE = 5e-4
RULES = ("paper", "head")


@torch.no_grad()
def reuse_scores(store: Any, bank: JumpBank, split: str = "train", chunk_size: int = 512,
                 device: str | torch.device = "cpu", progress: bool = False) -> torch.Tensor:
    """The reuse matrix ``Dmat`` (J, K): ``Dmat[m, k] = mean_i sign(C) C^2``, C = cosine(jump_m(h_i^k), h_i^K).

    Rows are the bank's jumps, columns the exit levels 0..K-1 of the store. A zero-norm
    prediction or target counts as cosine 0. Float64 accumulation.
    """
    if chunk_size < 1:
        raise ConfigError("chunk_size must be >= 1")
    K, H = store.num_blocks, store.hidden_size
    if bank.hidden_size != H:
        raise ConfigError(f"jump bank has H={bank.hidden_size} but the store has H={H}")
    dev = torch.device(device)
    J, r = bank.num_jumps, bank.rank
    if bank.residual:
        bank = copy.deepcopy(bank).to(dev)
    a_fold, c_fold = bank.folded_parameters()
    a_cat = a_fold.permute(1, 0, 2).reshape(H, J * r).to(dev)  # column block m = A'_m
    c_cat = c_fold.reshape(J * r).to(dev)
    b = bank.B.detach().to(dev, torch.float64)  # (J, r, H)
    bt_cat = b.permute(2, 0, 1).reshape(H, J * r)  # column block m = B_m^T
    gram = b @ b.transpose(1, 2)  # (J, r, r)
    sums = torch.zeros(J, K, dtype=torch.float64, device=dev)
    n_total = 0
    total = len(store.indices(split))
    bar = tqdm(total=total, desc="reuse scores", unit="sample", disable=not progress, leave=False)
    for rows, chunk in store.iter_chunks(split, chunk_size=chunk_size):
        chunk = chunk.to(dev, torch.float32)
        require_finite(chunk, rows)
        n = chunk.shape[0]
        h = chunk[:, :K].reshape(n * K, H)
        target = chunk[:, K].double()  # (n, H)
        if bank.residual:  # h + correction: no rank-r shortcut for the norms, compute the (n*K, H) predictions
            for m in range(J):
                pred = bank.apply(h, m).double().view(n, K, H)
                cos = F.cosine_similarity(pred, target[:, None, :], dim=-1, eps=1e-300).clamp_(-1, 1)
                sums[m] += (cos * cos.abs()).sum(0)
            n_total += n
            bar.update(n)
            continue
        z = torch.addmm(c_cat, h, a_cat).view(n, K, J, r).double()
        tb = (target @ bt_cat).view(n, J, r)
        dot = torch.einsum("nkjr,njr->nkj", z, tb)
        sq = (torch.einsum("nkjr,jrs->nkjs", z, gram) * z).sum(-1).clamp_min_(0)
        denom = sq.sqrt() * target.norm(dim=-1)[:, None, None]
        cos = torch.where(denom > 0, dot / denom.clamp_min(1e-300), torch.zeros_like(dot)).clamp_(-1, 1)
        sums += (cos * cos.abs()).sum(0).T
        n_total += n
        bar.update(n)
    bar.close()
    if n_total == 0:
        raise StoreError(f"store split '{split}' is empty; cannot compute reuse scores")
    return (sums / n_total).cpu()


#: At most this many held-out rows score jumps through the head (the K x K scores cost K^2 V per
#: row); at the paper's 9000 train sentences and ``val_fraction=0.12`` all 1,080 are used.
HOLDOUT_MAX = 2048


def holdout_rows(store: Any, val_fraction: float = 0.1, seed: int = 0,
                 max_rows: int | None = HOLDOUT_MAX) -> np.ndarray:
    """Store rows of the validation part of the train split, exactly as training holds them out
    (a seeded subset of ``max_rows`` of them when there are more: the K x K head scores cost
    K^2 V per row)."""
    from ..training.reader import holdout_split

    rows = store.indices("train")
    if len(rows) < 3:
        raise StoreError(f"store has {len(rows)} train samples; a held-out part needs >= 3")
    _, held = holdout_split(store, val_fraction if val_fraction > 0 else 0.1, seed)
    if max_rows is not None and len(held) > max_rows:
        keep = np.random.default_rng(seed + 31).choice(len(held), size=max_rows, replace=False)
        held = held[np.sort(keep)]
    return held


#: How a trained lens's ``held_out`` record says its rows were drawn: by :func:`holdout_rows`.
HELD_OUT_DRAWN_BY = "onejump.evaluation.selection.holdout_rows"


def _rows_digest(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


def held_out_record(store: Any, val_fraction: float, seed: int) -> dict[str, Any]:
    """What a training with ``val_fraction`` and ``seed`` held out of ``store``'s train split, kept in the
    trained lens's config (``extra["held_out"]``): the settings, how the rows were drawn, how many and
    a digest of them, so that whatever scores "held-out" rows later scores exactly these."""
    rows = holdout_rows(store, val_fraction, seed, max_rows=None) if val_fraction > 0 else np.zeros(0, np.int64)
    return {"split": "train", "val_fraction": float(val_fraction), "seed": int(seed), "drawn_by": HELD_OUT_DRAWN_BY,
            "num_rows": int(len(rows)), "rows_sha256": _rows_digest(rows)}


def trained_holdout(store: Any, record: dict[str, Any] | None, max_rows: int | None = HOLDOUT_MAX) -> np.ndarray:
    """The store rows a lens's training held out (its ``held_out`` record), at most ``max_rows`` of them.

    Refused (:class:`~onejump.errors.LensFileError`) when the lens keeps no record, when its training held
    nothing out, or when the rows drawn now differ from those recorded (another store or another split)."""
    if not record:
        raise LensFileError("the lens does not record which rows its training held out: train it again")
    if record.get("drawn_by") != HELD_OUT_DRAWN_BY or record.get("split") != "train":
        raise LensFileError(f"the lens's held-out rows were drawn by {record.get('drawn_by')}, which this onejump "
                            "cannot redraw: train it again")
    if not record["val_fraction"] > 0:
        raise LensFileError("the lens's training held no rows out (val_fraction 0): nothing it never trained on "
                            "is left to score it on; train with a validation fraction above 0")
    full = holdout_rows(store, record["val_fraction"], record["seed"], max_rows=None)
    if len(full) != record["num_rows"] or _rows_digest(full) != record["rows_sha256"]:
        raise LensFileError("the rows held out of this store differ from those the lens's training held out "
                            "(another store or another split): train it again")
    return holdout_rows(store, record["val_fraction"], record["seed"], max_rows=max_rows)


def _softmax(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(scores.double() / temperature, dim=0)


@dataclass
class Selection:
    """The OJFA choice and the scores behind it.

    ``matrix[m, k]`` is Dmat (jump m reused at level k), ``scores[m] = D_m`` (mean over the exit
    levels), ``chosen = argmax_m D_m`` (the jump index; ``levels[chosen]`` is the level it was
    trained at), ``probabilities = softmax(D / temperature)`` (Figure 3, temperature 5e-4).
    """

    matrix: torch.Tensor
    scores: torch.Tensor
    chosen: int
    probabilities: torch.Tensor
    temperature: float = FIGURE3_TEMPERATURE
    split: str = "train"
    num_samples: int = 0
    levels: list[int] = field(default_factory=list)
    rule: str = "paper"
    others: dict[str, Any] = field(default_factory=dict)
    lens: Any = field(default=None, repr=False, compare=False)  # the chosen jump as a lens, when selected from one

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor, *, temperature: float = FIGURE3_TEMPERATURE, split: str = "train",
                    num_samples: int = 0, levels: list[int] | None = None, rule: str = "paper") -> Selection:
        """Build a selection from a reuse matrix (J, K) (larger is better)."""
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        if matrix.dim() != 2 or matrix.numel() == 0:
            raise ConfigError(f"reuse matrix must be a non-empty (J, K) tensor, got shape {tuple(matrix.shape)}")
        matrix = matrix.double().cpu()
        scores = matrix.mean(1)
        return cls(matrix=matrix, scores=scores, chosen=int(scores.argmax()),
                   probabilities=_softmax(scores, temperature), temperature=float(temperature), split=split,
                   num_samples=int(num_samples),
                   levels=list(levels) if levels is not None else list(range(matrix.shape[0])), rule=rule)

    @property
    def chosen_level(self) -> int:
        """The level the chosen jump was trained at."""
        return self.levels[self.chosen]

    def ranking(self) -> list[int]:
        """Jump indices from best to worst D_m."""
        return torch.argsort(self.scores, descending=True, stable=True).tolist()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the reuse matrix, D_m, the choice and the Figure-3 softmax."""
        return {
            "chosen": self.chosen,
            "chosen_level": self.chosen_level,
            "scores": self.scores.tolist(),
            "softmax": self.probabilities.tolist(),
            "temperature": self.temperature,
            "matrix": self.matrix.tolist(),
            "split": self.split,
            "num_samples": self.num_samples,
            "levels": self.levels,
            "ranking": self.ranking(),
            "rule": self.rule,
            **self.others,
        }


def select_ojfa(store: Any, jumps: Any, split: str = "train", chunk_size: int = 512,
                temperature: float = FIGURE3_TEMPERATURE, device: str | torch.device = "cpu",
                progress: bool = False, *, rule: str = "paper", model: Any = None,
                holdout: np.ndarray | None = None) -> Selection:
    """Score every jump of a per-level lens (or bare ``JumpBank``) reused at every exit level; pick the best.

    With a :class:`~onejump.lenses.PerLevelLens`, ``selection.lens`` is the chosen jump as a
    :class:`~onejump.lenses.OneJump`.

    ``rule="paper"``: D_m of Eq. 3-5 on ``split``. ``rule="head"``: mean precision@1 through the
    head on the rows the jumps' training held out (``holdout``; default: those the lens records,
    :func:`trained_holdout`), scored by the evaluation's reuse matrix
    (:func:`~onejump.evaluation.evaluator.reuse_matrix` on those rows). A bare bank of K jumps is
    read as ``PerLevelLens(model, bank)`` and records no rows, so the head rule needs ``model`` and
    ``holdout`` with it. The head rule's result records the paper rule's matrix too (``others``), so
    both choices can be compared.
    """
    if rule not in RULES:
        raise ConfigError(f"unknown selection rule '{rule}'; use one of {', '.join(RULES)}")
    lens = jumps if hasattr(jumps, "bank") else None
    bank = lens.bank if lens is not None else jumps
    scorer, rows = None, None
    if rule == "head":  # the rows and the lens they are scored through, settled before any pass
        scorer, rows = _head_rule_inputs(store, lens, bank, model, holdout)
    matrix = reuse_scores(store, bank, split=split, chunk_size=chunk_size, device=device, progress=progress)
    sel = Selection.from_matrix(matrix, temperature=temperature, split=split, num_samples=len(store.indices(split)),
                                levels=list(bank.levels))
    if rule == "head":
        sel = _head_selection(store, scorer, rows, sel, temperature, progress)
    if lens is not None:
        sel.lens = lens.jump(sel.chosen)
    return sel


def _head_rule_inputs(store: Any, lens: Any, bank: JumpBank, model: Any,
                      holdout: np.ndarray | None) -> tuple[PerLevelLens, np.ndarray]:
    """The per-level lens the head rule scores and the held-out rows it scores on."""
    if lens is None:
        if holdout is None:
            raise ConfigError("the head-aware rule scores the rows the jumps' training held out: pass holdout=rows")
        if model is None:
            raise ConfigError("the head-aware rule reads a bare jump bank through the model's head: pass model=")
        lens = PerLevelLens(model, bank)
    elif not isinstance(lens, PerLevelLens):
        raise ConfigError(f"the head-aware rule scores the K jumps of a per-level lens, not a '{lens.kind}' lens")
    if holdout is None:
        holdout = trained_holdout(store, lens.extra.get("held_out"))
    return lens, np.asarray(holdout, dtype=np.int64)


def _head_selection(store: Any, lens: PerLevelLens, rows: np.ndarray, paper: Selection, temperature: float,
                    progress: bool) -> Selection:
    """The head rule's choice: the evaluation's precision@1 of jump m at level k on ``rows`` (the reuse
    matrix), with the paper rule's ``paper`` kept alongside."""
    scores = reuse_matrix(store, lens, rows=rows, progress=progress).pair_matrix("precision@1")
    sel = Selection.from_matrix(scores, temperature=temperature, split="train-holdout", num_samples=len(rows),
                                levels=list(lens.bank.levels), rule="head")
    sel.others = {"paper_chosen": paper.chosen, "paper_scores": paper.scores.tolist(),
                  "paper_matrix": paper.matrix.tolist()}
    return sel
