"""The full-rank linear JTC maps of Din et al. (2023), one affine map per level, fitted in closed form."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import LensFileError, NumericalError, StoreError
from .base import Lens, LevelLogits


class LinearJTC(nn.Module):
    """Full-rank per-level affine maps ``h^k @ W_k + b_k ~ h^K`` (Din et al., 2023, "Jump to Conclusions").

    ``W`` has shape (K, H+1, H): rows 0..H-1 are the matrix, row H the bias. Fit with :meth:`fit`
    (closed-form ridge regression, streamed over chunks, solved in float64).
    """

    def __init__(self, W: torch.Tensor):
        super().__init__()
        if W.dim() != 3 or W.shape[1] != W.shape[2] + 1:
            raise LensFileError(f"JTC weights must have shape (K, H+1, H), got {tuple(W.shape)}")
        self.register_buffer("W", W.detach().to(torch.float32).contiguous())

    @property
    def num_levels(self) -> int:
        return int(self.W.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.W.shape[2])

    def parameter_count(self) -> int:
        """``K * (H^2 + H)``."""
        return int(self.W.numel())

    def forward(self, h: torch.Tensor, level: int) -> torch.Tensor:
        """Map ``h`` (..., H) from ``level`` to an estimate of h^K."""
        if not 0 <= level < self.num_levels:
            raise LensFileError(f"JTC level must be in 0..{self.num_levels - 1}, got {level}")
        flat = h.reshape(-1, self.hidden_size).to(self.W.dtype)
        return torch.addmm(self.W[level, -1], flat, self.W[level, :-1]).reshape(h.shape)

    def apply_all(self, h: torch.Tensor) -> torch.Tensor:
        """All levels at once: (N, K, H) -> (N, K, H), level k mapped with ``W_k``."""
        x = h.to(self.W.dtype).transpose(0, 1)  # (K, N, H)
        return torch.baddbmm(self.W[:, -1:, :], x, self.W[:, :-1, :]).transpose(0, 1)

    @classmethod
    def fit(cls, store: Any, *, split: str = "train", ridge: float = 1e-6, chunk_size: int = 1024,
            levels: Sequence[int] | None = None, device: str | torch.device = "cpu",
            rows: Sequence[int] | None = None) -> LinearJTC:
        """Least squares fit of every level k in 0..K-1 to h^K on a store split (or on store ``rows``).

        Accumulates ``X^T X`` and ``X^T Y`` (X = [h^k, 1]) in float64 chunk by chunk, so memory is
        ``K (H+1)^2`` doubles whatever the number of samples, then solves
        ``(X^T X + lam I) W = X^T Y`` per level with ``lam = ridge * trace(X^T X)/H`` (the bias
        row is not penalised). ``ridge`` only guards against an ill-conditioned ``X^T X``.
        """
        K, H = store.num_blocks, store.hidden_size
        lv = list(range(K)) if levels is None else [int(k) for k in levels]
        if any(not 0 <= k < K for k in lv):
            raise LensFileError(f"JTC levels must be in 0..{K - 1}")
        if ridge < 0:
            raise LensFileError(f"ridge must be >= 0, got {ridge}")
        dev = torch.device(device)
        L = len(lv)
        # X^T X and X^T Y of X = [h^k, 1] from their parts, h^T h, h^T y and the column sums: the products read
        # the chunk where it lies (strided views, no copy), and X^T Y of every level is one GEMM
        hth = torch.zeros(L, H, H, dtype=torch.float64, device=dev)
        hty = torch.zeros(L * H, H, dtype=torch.float64, device=dev)
        hsum = torch.zeros(L, H, dtype=torch.float64, device=dev)
        ysum = torch.zeros(H, dtype=torch.float64, device=dev)
        n = 0
        for idx, chunk in _chunks(store, split, rows, chunk_size, [*lv, K]):
            chunk = chunk.to(dev, torch.float64)
            _check_finite_chunk(chunk, idx, [*lv, K])
            h, y = chunk[:, :L], chunk[:, L]  # (n, L, H), (n, H)
            ht = h.transpose(0, 1)  # (L, n, H)
            hth.baddbmm_(ht.transpose(1, 2), ht)
            hty.addmm_(h.reshape(h.shape[0], L * H).T, y)
            hsum += h.sum(0)
            ysum += y.sum(0)
            n += chunk.shape[0]
        if n == 0:
            raise StoreError(f"store split '{split}' is empty; cannot fit JTC")
        xtx = torch.empty(L, H + 1, H + 1, dtype=torch.float64, device=dev)
        xtx[:, :H, :H], xtx[:, :H, H], xtx[:, H, :H], xtx[:, H, H] = hth, hsum, hsum, float(n)
        xty = torch.cat([hty.view(L, H, H), ysum.expand(L, 1, H)], 1)
        W = torch.empty(L, H + 1, H, dtype=torch.float64, device=dev)
        for i in range(L):
            a = xtx[i].clone()
            lam = ridge * torch.diagonal(a)[:H].sum() / H
            a.diagonal()[:H] += lam
            try:
                W[i] = torch.linalg.solve(a, xty[i])
            except RuntimeError:  # singular even with the ridge: fall back to the pseudo-inverse
                W[i] = torch.linalg.lstsq(a, xty[i]).solution
        if not torch.isfinite(W).all():
            raise NumericalError("JTC least squares gave non-finite weights; raise ridge")
        full = torch.zeros(K, H + 1, H, dtype=torch.float64, device=dev)
        full[lv] = W
        return cls(full.float().cpu())


def _chunks(store: Any, split: str, rows: Sequence[int] | None, chunk_size: int, levels: list[int]):
    """(store rows, hidden states (n, len(levels), H)) of a split, or of the given rows, chunk by chunk."""
    if rows is None:
        yield from store.iter_chunks(split, chunk_size=chunk_size, levels=levels)
        return
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    if hasattr(store, "read_rows"):
        read = store.read_rows
    else:  # an in-memory store (tests): its hidden states are read once
        everything = store.hidden(None)
        read = lambda part: everything[torch.from_numpy(part)]  # noqa: E731
    for start in range(0, len(rows), chunk_size):
        part = rows[start:start + chunk_size]
        yield part, read(part)[:, levels]


def _check_finite_chunk(chunk: torch.Tensor, rows: Iterable[int], levels: Sequence[int]) -> None:
    if torch.isfinite(chunk.sum()):  # a NaN or an infinity reaches the sum: one pass where isfinite takes four
        return
    finite = torch.isfinite(chunk)
    if not finite.all():
        i, lvl, _ = (~finite).nonzero()[0].tolist()
        raise NumericalError(f"non-finite hidden state in the store at level {levels[lvl]}, "
                             f"sample row {list(rows)[i]}")


class JTCLens(Lens):
    """Full-rank linear JTC (Din et al. 2023): an affine map per level, fitted in closed form."""

    kind = "jtc"

    def __init__(self, lm: Any, jtc: LinearJTC, extra: dict[str, Any] | None = None):
        super().__init__(lm)
        if jtc.hidden_size != lm.hidden_size or jtc.num_levels != lm.num_blocks:
            raise LensFileError(f"JTC maps have K={jtc.num_levels}, H={jtc.hidden_size}; the model has "
                                f"K={lm.num_blocks}, H={lm.hidden_size}")
        self.jtc = jtc
        self.extra = dict(extra or {})

    def transform(self, h: torch.Tensor, level: int) -> torch.Tensor:
        self.check_level(level)
        self.check_hidden(h)
        return self.jtc(h.float(), level).to(h.dtype)

    def transform_cost(self) -> int:
        return self.hidden_size * self.hidden_size

    def level_logits(self, h: torch.Tensor, full_head: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[LevelLogits]:
        """Every level's map in one batched product, then one pass through the head."""
        n, K, H = h.shape
        yield LevelLogits(full_head, self.jtc.to(h.device).apply_all(h).reshape(n * K, H))

    @property
    def num_parameters(self) -> int:
        return self.jtc.parameter_count()

    def lens_config(self) -> dict[str, Any]:
        return {"extra": self.extra}

    @classmethod
    def from_config(cls, lm: Any, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> JTCLens:
        W = tensors.get("jtc.W")
        if W is None:
            raise LensFileError("JTC lens weights lack 'jtc.W'")
        return cls(lm, LinearJTC(W), extra=config.get("extra"))
