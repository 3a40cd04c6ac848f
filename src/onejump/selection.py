"""The OJFA choice (Eq. 3-5): which single jump to reuse at every exit level.

``C[i, k, m] = cosine(jump_m(h_i^k), h_i^K)`` with jump m applied at level k using its *own*
BatchNorm statistics (Eq. 3-4); ``Dmat[m, k] = mean_i sign(C) C^2`` and
``D_m = mean_k Dmat[m, k]`` over the exit levels k = 0..K-1 (Eq. 5); OJFA = ``argmax_m D_m``,
computed on the train split (the test split is never used for the choice).

The K x K cosines are computed in rank-r form, without materialising any (N, K, K, H) tensor:
with ``z = BN_m(h^k) @ A_m = h^k @ A'_m + c_m`` (BatchNorm folded, all jumps in one GEMM),
``jump_m(h^k) . h^K = z . (h^K @ B_m^T)`` and ``||jump_m(h^k)||^2 = z (B_m B_m^T) z^T``. Memory is
bounded by the chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from .errors import ConfigError, NumericalError, StoreError
from .shortcuts import JumpBank

FIGURE3_TEMPERATURE = 5e-4


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
        finite = torch.isfinite(chunk)
        if not finite.all():
            i, level, _ = (~finite).nonzero()[0].tolist()
            raise NumericalError(f"non-finite hidden state in the store at level {level}, sample row {rows[i]}")
        n = chunk.shape[0]
        h = chunk[:, :K].reshape(n * K, H)
        target = chunk[:, K].double()  # (n, H)
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

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor, *, temperature: float = FIGURE3_TEMPERATURE, split: str = "train",
                    num_samples: int = 0, levels: list[int] | None = None) -> Selection:
        """Build a selection from a reuse matrix (J, K)."""
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        if matrix.dim() != 2 or matrix.numel() == 0:
            raise ConfigError(f"reuse matrix must be a non-empty (J, K) tensor, got shape {tuple(matrix.shape)}")
        matrix = matrix.double().cpu()
        scores = matrix.mean(1)
        return cls(matrix=matrix, scores=scores, chosen=int(scores.argmax()),
                   probabilities=_softmax(scores, temperature), temperature=float(temperature), split=split,
                   num_samples=int(num_samples),
                   levels=list(levels) if levels is not None else list(range(matrix.shape[0])))

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
        }


def select_ojfa(store: Any, bank: JumpBank, split: str = "train", chunk_size: int = 512,
                temperature: float = FIGURE3_TEMPERATURE, device: str | torch.device = "cpu",
                progress: bool = False) -> Selection:
    """Score every jump of ``bank`` reused at every exit level (Eq. 3-5) and pick the best (OJFA)."""
    matrix = reuse_scores(store, bank, split=split, chunk_size=chunk_size, device=device, progress=progress)
    return Selection.from_matrix(matrix, temperature=temperature, split=split,
                                 num_samples=len(store.indices(split)), levels=list(bank.levels))


__all__ = ["FIGURE3_TEMPERATURE", "Selection", "reuse_scores", "select_ojfa"]
