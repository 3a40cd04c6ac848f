"""N-NJTC jumps (Eq. 1): ``jump_j(h) = BatchNorm_j(h) @ A_j @ B_j`` held as a batched bank.

The K per-level jumps of N-NJTC are a bank with J = K (jump j trained at level j); the joint jump
is a bank with J = 1. A *residual* jump predicts ``h + BatchNorm(h) @ A @ B`` with the same
parameters.

Initialisation (N-NJTC has no public code; this is what ``nn.Sequential(nn.BatchNorm1d(H),
nn.Linear(H, r, bias=False), nn.Linear(r, H, bias=False))`` does): BatchNorm weight 1, bias 0,
running mean 0, running variance 1; ``A`` and ``B`` uniform in ``+-1/sqrt(fan_in)``. Every jump is
drawn from one seeded generator, so a bank built with the same seed has the same initial weights
whatever the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LensFileError

_BANK_KEYS = ("bn_weight", "bn_bias", "running_mean", "running_var", "A", "B")


def default_rank(hidden_size: int) -> int:
    """The paper's rank ``floor(H / 100)`` (at least 1, for toy models with H < 100)."""
    return max(1, int(hidden_size) // 100)


def jump_parameter_count(hidden_size: int, rank: int) -> int:
    """Parameters held by one N-NJTC jump: ``2Hr`` (A, B) + ``2H`` (BN affine) + ``2H`` (BN running stats)."""
    return 2 * hidden_size * rank + 4 * hidden_size


def _check_rank(hidden_size: int, rank: int | None) -> int:
    if rank is None:
        return default_rank(hidden_size)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1 or rank > hidden_size:
        raise LensFileError(f"jump rank must be an integer in 1..H={hidden_size}, got {rank!r}")
    return rank


class JumpBank(nn.Module):
    """J N-NJTC jumps ``BatchNorm_j(h) @ A_j @ B_j`` as batched tensors.

    Parameters: ``bn_weight``, ``bn_bias`` (J, H); ``A`` (J, H, r); ``B`` (J, r, H). Buffers:
    ``running_mean``, ``running_var`` (J, H). ``levels[j]`` is the level jump j was trained at
    (``range(J)`` for the per-level bank; ``[-1]`` marks a joint jump trained on all levels).

    :meth:`forward` takes ``h`` of shape (N, J, H) and applies jump j to ``h[:, j]``; in train mode
    every jump normalises with its own batch statistics and updates its own running statistics,
    exactly like J separate ``nn.BatchNorm1d(H)`` (it *is* one ``F.batch_norm`` over J*H channels).
    ``keys`` names the tensors a saved bank holds; ``conditioned`` is True for banks whose jumps
    depend on the exit level of each input (their :meth:`forward` needs ``levels``).
    """

    keys: ClassVar[tuple[str, ...]] = _BANK_KEYS
    conditioned: ClassVar[bool] = False

    def __init__(self, num_jumps: int, hidden_size: int, rank: int | None = None, *,
                 levels: Sequence[int] | None = None, eps: float = 1e-5, momentum: float = 0.1, seed: int = 0,
                 residual: bool = False):
        super().__init__()
        self.residual = bool(residual)
        if num_jumps < 1 or hidden_size < 1:
            raise LensFileError(f"a jump bank needs >= 1 jump and H >= 1 (got J={num_jumps}, H={hidden_size})")
        rank = _check_rank(hidden_size, rank)
        if not (eps > 0) or not (0 < momentum <= 1):
            raise LensFileError(f"BatchNorm eps must be > 0 and momentum in (0, 1] (got {eps}, {momentum})")
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.levels = [int(x) for x in (levels if levels is not None else range(num_jumps))]
        if len(self.levels) != num_jumps:
            raise LensFileError(f"levels names {len(self.levels)} levels for {num_jumps} jumps")
        gen = torch.Generator().manual_seed(int(seed))
        J, H, r = num_jumps, hidden_size, rank
        a = (torch.rand(J, H, r, generator=gen, dtype=torch.float64) * 2 - 1) / math.sqrt(H)
        b = (torch.rand(J, r, H, generator=gen, dtype=torch.float64) * 2 - 1) / math.sqrt(r)
        self.bn_weight = nn.Parameter(torch.ones(J, H))
        self.bn_bias = nn.Parameter(torch.zeros(J, H))
        if self.residual:  # start at the identity (the logit lens): a small correction
            b = b * 0.01
        self.A = nn.Parameter(a.float())
        self.B = nn.Parameter(b.float())
        self.register_buffer("running_mean", torch.zeros(J, H))
        self.register_buffer("running_var", torch.ones(J, H))

    # ---- sizes --------------------------------------------------------------------------------
    @property
    def num_jumps(self) -> int:
        return int(self.A.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.A.shape[1])

    @property
    def rank(self) -> int:
        return int(self.A.shape[2])

    def parameters_per_jump(self) -> int:
        """``2Hr + 2H (BN affine) + 2H (BN running stats)`` = about 0.02 H^2 + 4H."""
        return jump_parameter_count(self.hidden_size, self.rank)

    def parameter_count(self) -> int:
        """Parameters held by the whole bank (J jumps)."""
        return self.num_jumps * self.parameters_per_jump()

    def extra_repr(self) -> str:
        return (f"J={self.num_jumps}, H={self.hidden_size}, r={self.rank}, eps={self.eps}, momentum={self.momentum}"
                + (", residual" if self.residual else ""))

    def _jump_index(self, jump: int) -> int:
        if isinstance(jump, bool) or not isinstance(jump, int) or not 0 <= jump < self.num_jumps:
            raise LensFileError(f"jump index must be in 0..{self.num_jumps - 1}, got {jump!r}")
        return jump

    # ---- application ----------------------------------------------------------------------------
    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        """BatchNorm part of :meth:`forward`: (N, J, H) -> (N, J, H), train or eval mode."""
        if h.dim() != 3 or h.shape[1:] != (self.num_jumps, self.hidden_size):
            raise LensFileError(f"jump bank input must be (N, {self.num_jumps}, {self.hidden_size}), "
                                f"got {tuple(h.shape)}")
        n = h.shape[0]
        x = F.batch_norm(h.reshape(n, -1), self.running_mean.view(-1), self.running_var.view(-1),
                         self.bn_weight.reshape(-1), self.bn_bias.reshape(-1), training=self.training,
                         momentum=self.momentum, eps=self.eps)
        return x.view(n, self.num_jumps, self.hidden_size)

    def codes(self, h: torch.Tensor, levels: torch.Tensor | None = None) -> torch.Tensor:
        """The rank-r codes ``BN_j(h[:, j]) @ A_j``: (N, J, H) -> (J, N, r), train or eval mode.

        ``levels`` (N,), the exit level of each input, is ignored: these jumps do not depend on it.
        """
        return torch.bmm(self.normalize(h.to(self.A.dtype)).transpose(0, 1), self.A)

    def forward(self, h: torch.Tensor, levels: torch.Tensor | None = None) -> torch.Tensor:
        """Apply jump j to ``h[:, j]`` for every j: (N, J, H) -> (N, J, H) (``levels``: see :meth:`codes`)."""
        h = h.to(self.A.dtype)
        out = torch.bmm(self.codes(h, levels), self.B).transpose(0, 1)
        return out + h if self.residual else out

    def _bn_eval(self, h: torch.Tensor, jump: int) -> torch.Tensor:
        j = self._jump_index(jump)
        if h.shape[-1] != self.hidden_size:
            raise LensFileError(f"input width {h.shape[-1]} does not match the jump's H={self.hidden_size}")
        flat = h.reshape(-1, self.hidden_size).to(self.A.dtype)
        return F.batch_norm(flat, self.running_mean[j], self.running_var[j], self.bn_weight[j], self.bn_bias[j],
                            training=False, eps=self.eps)

    def project(self, h: torch.Tensor, jump: int) -> torch.Tensor:
        """``z = BN_m(h) @ A_m`` (eval-mode BN statistics of jump m): (..., H) -> (..., r)."""
        return (self._bn_eval(h, jump) @ self.A[jump]).reshape(*h.shape[:-1], self.rank)

    def apply(self, h: torch.Tensor, jump: int, level: int | None = None) -> torch.Tensor:
        """Eval-mode jump ``jump`` applied to any input ``h`` (..., H) -> (..., H) (Eq. 3).

        Jump m keeps its own BatchNorm statistics whatever level ``h`` comes from; ``level`` is
        accepted for readability only (the jump does not depend on it). Always uses running
        statistics, whether the module is in train or eval mode.
        """
        if level is not None and level < 0:
            raise LensFileError(f"level must be >= 0, got {level}")
        out = self.project(h, jump) @ self.B[jump]
        return out + h.to(out.dtype) if self.residual else out

    # ---- folding ------------------------------------------------------------------------------
    def folded_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All jumps' BatchNorm folded into A: ``A'`` (J, H, r) and ``c`` (J, r), float32 (computed in float64).

        ``BN_m(h) @ A_m == h @ A'_m + c_m``.
        """
        with torch.no_grad():
            scale = self.bn_weight.double() / torch.sqrt(self.running_var.double() + self.eps)  # (J, H)
            shift = self.bn_bias.double() - self.running_mean.double() * scale  # (J, H)
            a = self.A.double()
            folded = scale[:, :, None] * a
            c = torch.einsum("jh,jhr->jr", shift, a)
        return folded.float(), c.float()

    def select(self, jumps: int | Sequence[int]) -> JumpBank:
        """A new bank holding copies of the given jumps (e.g. the OJFA jump alone)."""
        idx = [jumps] if isinstance(jumps, int) else list(jumps)
        idx = [self._jump_index(j) for j in idx]
        out = JumpBank(len(idx), self.hidden_size, self.rank, levels=[self.levels[j] for j in idx],
                       eps=self.eps, momentum=self.momentum, residual=self.residual)
        out.load_tensors({k: v[idx] for k, v in self.tensors().items()})
        return out.to(self.A.device)

    # ---- tensors (safetensors) ----------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """The bank's state as plain float32 tensors (for safetensors)."""
        return {k: getattr(self, k).detach().to("cpu", torch.float32).contiguous() for k in self.keys}

    def tensors_live(self) -> dict[str, torch.Tensor]:
        """The bank's parameters and buffers themselves (not copies), by name."""
        return {k: getattr(self, k) for k in self.keys}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy tensors from :meth:`tensors` (shapes checked) into the bank."""
        for k in self.keys:
            if k not in tensors:
                raise LensFileError(f"jump bank tensors lack '{k}'")
            own = getattr(self, k)
            if tuple(tensors[k].shape) != tuple(own.shape):
                raise LensFileError(f"jump bank tensor '{k}' has shape {tuple(tensors[k].shape)}, "
                                    f"expected {tuple(own.shape)}")
            with torch.no_grad():
                own.copy_(tensors[k])
