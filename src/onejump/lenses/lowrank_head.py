"""The model head in rank-r form: ``head(jump(h))`` computed exactly from the r-dim code of a low-rank jump."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from .jumps import JumpBank


class LowRankHead:
    """``head(jump_m(h))`` computed exactly from the rank-r code ``z = BN_m(h) @ A_m``.

    With ``y = z @ B_m`` the final norm depends on z only through r-dim quantities:

    - RMSNorm: ``mean(y^2) = z G z^T`` with ``G = B B^T / H``; logits
      ``= (z @ M) * rsqrt(z G z^T + eps) + c`` with ``M = B diag(w) W_U^T`` (r x V);
    - LayerNorm: centre ``B' = B - mean_H(B)`` (per row), so ``y - mean(y) = z @ B'``,
      ``var(y) = z (B' B'^T / H) z^T`` and ``M = B' diag(w) W_U^T``;
    - no norm: ``logits = z @ (B W_U^T)``;

    ``c = bias @ W_U^T + unembedding bias`` (when present), then the architecture's logit
    scaling / soft-capping (``adapter.finish_logits``). ``M`` and ``G`` are precomputed per jump
    (in float64, a block of vocabulary rows at a time, stored in float32). Raises
    ``UnsupportedArchitectureError`` (from the adapter) when the final norm cannot be written out.
    """

    def __init__(self, adapter: Any, bank: JumpBank, device: str | torch.device | None = None):
        if getattr(bank, "residual", False):
            raise ConfigError("a residual jump (h + low-rank correction) has no rank-r head form; "
                              "apply the full head to bank.apply(h, m)")
        params = adapter.norm_params()
        w_u = adapter.unembedding_matrix().detach()
        dev = torch.device(device) if device is not None else w_u.device
        self.adapter = adapter
        self.bank = bank
        self.kind = params.kind
        self.eps = float(params.eps)
        H = bank.hidden_size
        if w_u.shape[1] != H:
            raise ConfigError(f"jump bank has H={H} but the model's unembedding takes {w_u.shape[1]}")
        b = bank.B.detach().to(dev, torch.float64)  # (J, r, H)
        if self.kind == "layernorm":
            b = b - b.mean(-1, keepdim=True)
        self.gram = (b @ b.transpose(1, 2) / H).float()  # (J, r, r)
        if params.weight is not None:
            b = b * params.weight.to(dev, torch.float64)
        J, r = b.shape[:2]
        V = int(w_u.shape[0])
        bias = params.bias.to(dev, torch.float64) if params.bias is not None else None
        self.M = torch.empty(J, r, V, dtype=torch.float32, device=dev)
        const = torch.zeros(V, dtype=torch.float64, device=dev) if bias is not None else None
        # W_U goes to float64 a block of rows at a time: a whole float64 copy is twice the model's
        # unembedding (1.3 GB at V = 262,144), for a product whose every column only needs its own row
        step = max(1, (1 << 24) // max(H, 1))
        for v0 in range(0, V, step):
            w64 = w_u[v0:v0 + step].to(dev, torch.float64)
            self.M[:, :, v0:v0 + step] = torch.einsum("jrh,vh->jrv", b, w64)
            if bias is not None:
                const[v0:v0 + step] = w64 @ bias
        ub = adapter.unembedding_bias()
        if ub is not None:
            const = ub.detach().to(dev, torch.float64) + (const if const is not None else 0)
        self.const = const.float() if const is not None else None
        a_fold, c_fold = bank.folded_parameters()
        self.A_fold = a_fold.to(dev)  # (J, H, r)
        self.c_fold = c_fold.to(dev)  # (J, r)
        self.device = dev

    @property
    def vocab_size(self) -> int:
        return int(self.M.shape[2])

    def project_all(self, h: torch.Tensor) -> torch.Tensor:
        """Codes of every jump at once, BatchNorm folded: (rows, H) -> (rows, J, r) in one GEMM."""
        J, H, r = self.A_fold.shape
        a_cat = self.A_fold.permute(1, 0, 2).reshape(H, J * r)
        return torch.addmm(self.c_fold.reshape(-1), h.to(self.device, torch.float32), a_cat).view(-1, J, r)

    def scaled_codes(self, z: torch.Tensor, jump: int) -> torch.Tensor:
        """``z * rsqrt(z G z^T + eps)`` (the norm's scale moved onto the r-dim code)."""
        if self.kind == "identity":
            return z
        ms = ((z @ self.gram[jump]) * z).sum(-1, keepdim=True).clamp_min_(0)
        return z * torch.rsqrt(ms + self.eps)

    def logits_from_scaled(self, u: torch.Tensor, jump: int) -> torch.Tensor:
        """Logits (rows, V) from scaled codes ``u`` (rows, r) (see :meth:`scaled_codes`)."""
        if self.const is not None:
            logits = torch.addmm(self.const, u, self.M[jump])
        else:
            logits = u @ self.M[jump]
        return self.adapter.finish_logits(logits)

    def logits_from_codes(self, z: torch.Tensor, jump: int) -> torch.Tensor:
        """Logits (rows, V) from codes ``z`` (rows, r) of jump ``jump``."""
        return self.logits_from_scaled(self.scaled_codes(z.to(self.device, torch.float32), jump), jump)

    def logits(self, h: torch.Tensor, jump: int) -> torch.Tensor:
        """``head(jump(h))`` for ``h`` (rows, H) from the unfolded eval-mode BatchNorm of the jump."""
        z = self.bank.project(h.to(self.bank.A.device), jump)
        return self.logits_from_codes(z, jump)
