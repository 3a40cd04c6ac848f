"""Training objectives beyond the paper's MSE: matching the model's own next-token distribution.

The paper trains every jump to reproduce the final hidden state (Eq. 2, MSE). But the final
state's energy sits in a few massive dimensions that the head largely ignores (on SmolLM2-135M
the top 5 of 576 dimensions carry about half of it), so an MSE jump spends its rank on them.
:class:`HeadKL` instead trains a jump so that the *head* of its output matches the model's own
next-token distribution::

    L_k = 1/N sum_i KL( p_final(. | h_i^K) || softmax(head(jump(h_i^k))) )

with the head frozen (final norm, unembedding, logit scaling / soft-capping). Two things make this
affordable on a CPU:

- **Rank-r head.** ``jump(h) = z @ B`` with ``z = BN(h) @ A`` of width r, and the final norm only
  needs ``mean(y^2) = z (B B^T / H) z^T``; so the logits are ``(z @ M) * rsqrt(z G z^T + eps) + c``
  with ``M = B diag(w) W_U^T`` (r x V), recomputed from the trainable ``B`` every step (see
  :class:`onejump.evaluation.LowRankHead` for the exact, inference-time form).
- **Top-k targets, sampled normaliser.** ``p_final`` is summarised once per training sample by
  its ``top_k`` tokens and the remaining mass (:func:`head_targets`): the loss is the exact KL
  between the two distributions coarsened to those ``top_k + 1`` events. In training mode the
  jump's log-partition over the vocabulary is estimated from the batch's target tokens plus
  ``negatives`` tokens drawn uniformly from the vocabulary (importance weight V / negatives), so a
  step touches a few thousand vocabulary columns instead of V (49,152 on SmolLM2, 262,144 on
  Gemma 3). In eval mode (validation, early stopping) the normaliser is exact.

A residual jump (``h + BN(h) @ A @ B``) has no rank-r head form; its logits cost O(H) per
vocabulary column, about H/r times more per step (the sampled normaliser keeps that affordable).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, NumericalError, StoreError
from ..lenses.jumps import JumpBank

DEFAULT_TOP_K = 32
DEFAULT_NEGATIVES = 2048


@dataclass
class HeadTargets:
    """The model's next-token distribution per store row, summarised by its top-k tokens.

    ``rows`` (n,) sorted store rows; ``token`` (n, k) token ids; ``logp`` (n, k) their final
    log-probabilities; the rest of the mass is ``1 - exp(logp).sum(-1)``.
    """

    rows: torch.Tensor
    token: torch.Tensor
    logp: torch.Tensor

    @property
    def top_k(self) -> int:
        return int(self.token.shape[1])

    def lookup(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(token, logp)`` of the given store rows (any order); raises if a row is unknown."""
        rows = torch.as_tensor(rows, dtype=torch.long).cpu()
        pos = torch.searchsorted(self.rows, rows).clamp_max(len(self.rows) - 1)
        if not torch.equal(self.rows[pos], rows):
            raise StoreError("head targets were computed for other store rows (stale targets?)")
        return self.token[pos], self.logp[pos]


@torch.no_grad()
def head_targets(store: Any, adapter: Any, split: str = "train", top_k: int = DEFAULT_TOP_K,
                 chunk_size: int = 256, progress: bool = True) -> HeadTargets:
    """Top-k of ``softmax(head(h^K))`` for every sample of a store split (streamed, O(n k) memory)."""
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    K = store.num_blocks
    w_u = adapter.unembedding_matrix()
    dev, dtype = w_u.device, w_u.dtype
    top_k = min(top_k, int(w_u.shape[0]))
    rows_out, tok_out, logp_out = [], [], []
    bar = tqdm(total=len(store.indices(split)), desc="head targets", unit="sample", disable=not progress,
               leave=False)
    for rows, h in store.iter_chunks(split, chunk_size=chunk_size, levels=[K]):
        h = h[:, 0].to(dev, dtype)
        logp = torch.log_softmax(adapter.head(h).float(), -1)
        if not torch.isfinite(logp).all():
            raise NumericalError(f"non-finite final log-probabilities for store rows near {int(rows[0])}")
        val, idx = logp.topk(top_k, dim=-1)
        rows_out.append(torch.from_numpy(np.asarray(rows, dtype=np.int64)))
        tok_out.append(idx.cpu())
        logp_out.append(val.cpu())
        bar.update(len(rows))
    bar.close()
    if not rows_out:
        raise StoreError(f"store split '{split}' is empty; no head targets")
    rows_t, tok, lp = torch.cat(rows_out), torch.cat(tok_out), torch.cat(logp_out)
    order = rows_t.argsort()
    return HeadTargets(rows_t[order], tok[order], lp[order])


class HeadKL:
    """``loss_fn(bank, inp, tgt, rows) -> (J,)``: KL(p_final || head(jump)) per jump (see module doc).

    ``adapter`` gives the frozen head (its weights are never updated); ``targets`` the top-k final
    distributions of the store rows that will be seen. ``negatives`` uniform vocabulary samples
    estimate the log-partition in training mode (0: exact over the whole vocabulary). ``seed``
    seeds those samples, so training stays deterministic.
    """

    def __init__(self, adapter: Any, targets: HeadTargets, *, negatives: int = DEFAULT_NEGATIVES, seed: int = 0,
                 device: str | torch.device | None = None):
        if negatives < 0:
            raise ConfigError(f"negatives must be >= 0, got {negatives}")
        params = adapter.norm_params()
        w_u = adapter.unembedding_matrix().detach()
        self.device = torch.device(device) if device is not None else w_u.device
        self.adapter = adapter
        self.kind = params.kind
        self.eps = float(params.eps)
        w = w_u.to(self.device, torch.float32)
        if params.weight is not None:
            w = w * params.weight.to(self.device, torch.float32)  # rows of diag(w) W_U^T, transposed
        self.W = w.contiguous()  # (V, H): logits = norm_unscaled(y) @ W.T
        const = None
        if params.bias is not None:
            const = w_u.to(self.device, torch.float32) @ params.bias.to(self.device, torch.float32)
        ub = adapter.unembedding_bias()
        if ub is not None:
            const = ub.detach().to(self.device, torch.float32) + (const if const is not None else 0)
        self.const = const
        self.V = int(w.shape[0])
        self.targets = targets
        self.negatives = int(negatives)
        self.gen = torch.Generator().manual_seed(int(seed) + 15485863)

    def _logits(self, bank: JumpBank, inp: torch.Tensor, cols: torch.Tensor | None,
                levels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (J, B, C) of the head of every jump's output on vocabulary columns ``cols`` (None: all).

        ``levels`` (B,): the exit level of each input, for a level-conditioned bank."""
        y = self._outputs(bank, inp, levels)
        if y is not None:
            return self.full_rank_logits(y, cols)
        z = bank.codes(inp, levels)  # (J, B, r)
        b = bank.B
        if self.kind == "layernorm":
            b = b - b.mean(-1, keepdim=True)
        W = self.W if cols is None else self.W[cols]
        M = torch.matmul(b, W.T)  # (J, r, C)
        logits = torch.bmm(z, M)
        if self.kind != "identity":
            gram = torch.bmm(b, b.transpose(1, 2)) / b.shape[-1]
            ms = (torch.bmm(z, gram) * z).sum(-1, keepdim=True).clamp_min(0)
            logits = logits * torch.rsqrt(ms + self.eps)
        if self.const is not None:
            logits = logits + (self.const if cols is None else self.const[cols])
        return self.adapter.finish_logits(logits)

    def _outputs(self, bank: JumpBank, inp: torch.Tensor, levels: torch.Tensor | None = None) -> torch.Tensor | None:
        """The jumps' full-rank outputs (J, B, H), or None when the rank-r head form applies.

        A residual jump's output ``h + correction`` is full-rank: the head costs O(H) per column."""
        if not bank.residual:
            return None
        return bank(inp.to(bank.A.dtype), levels).transpose(0, 1)

    def _normed(self, y: torch.Tensor) -> torch.Tensor:
        """The final norm of ``y`` without its weight (folded into ``W``)."""
        if self.kind == "layernorm":
            y = y - y.mean(-1, keepdim=True)
        if self.kind != "identity":
            y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return y

    def full_rank_logits(self, y: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
        """The head on full-rank estimates of h^K, restricted to the vocabulary columns ``cols``."""
        y = self._normed(y)
        W = self.W if cols is None else self.W[cols]
        logits = y @ W.T
        if self.const is not None:
            logits = logits + (self.const if cols is None else self.const[cols])
        return self.adapter.finish_logits(logits)

    def _exact_parts(self, bank: Any, inp: torch.Tensor, token: torch.Tensor,
                     levels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log-partition (J, B), logits of the target tokens (J, B, k))`` over the whole vocabulary.

        Without autograd a full-rank head never holds a (J B, V) array: the log-partition is
        accumulated over cache-sized blocks of rows x columns (one GEMM, one max and one exp per
        logit, the block still in cache), and the target tokens' logits are dot products."""
        by_level = () if levels is None else (levels,)
        y = self._outputs(bank, inp, *by_level) if not torch.is_grad_enabled() else None
        if y is None:
            logits = self._logits(bank, inp, None, *by_level)
            chosen = logits.gather(-1, token.unsqueeze(0).expand(logits.shape[0], -1, -1))
            return torch.logsumexp(logits, -1), chosen
        u = self._normed(y.float())
        J, B, H = u.shape
        chosen = torch.einsum("jbh,bkh->jbk", u, self.W[token])
        if self.const is not None:
            chosen = chosen + self.const[token]
        return _blocked_logsumexp(u.reshape(J * B, H), self.W, self.const, self.adapter).view(J, B), \
            self.adapter.finish_logits(chosen)

    def __call__(self, bank: JumpBank, inp: torch.Tensor, tgt: torch.Tensor, rows: torch.Tensor,
                 levels: torch.Tensor | None = None) -> torch.Tensor:
        token, logp = self.targets.lookup(rows)
        token, logp = token.to(self.device), logp.to(self.device)
        by_level = () if levels is None else (levels,)  # subclasses' _logits need not know about levels
        if bank.training and self.negatives > 0:
            cand, inverse = torch.unique(token, return_inverse=True)  # sorted union of the batch's targets
            neg = torch.randint(0, self.V, (self.negatives,), generator=self.gen).to(self.device)
            cols = torch.cat([cand, neg])
            logits = self._logits(bank, inp, cols, *by_level)
            c = len(cand)
            # log importance weight of each column: 0 for the targets, log((V - c) / negatives) for a sampled
            # column, -inf for a sampled column that is also a target (it is counted once, as a target)
            weight = torch.zeros(len(cols), dtype=logits.dtype, device=logits.device)
            weight[c:] = math.log(max(self.V - c, 1) / self.negatives)
            weight[c:].masked_fill_(torch.isin(neg, cand), -math.inf)
            lse = _WeightedLogSumExp.apply(logits, weight)  # (J, B)
            chosen = logits.gather(-1, inverse.unsqueeze(0).expand(logits.shape[0], -1, -1))  # targets come first
        else:
            lse, chosen = self._exact_parts(bank, inp, token, levels)
        logq = chosen - lse.unsqueeze(-1)  # (J, B, k)
        p = logp.exp()
        p_rest = (1 - p.sum(-1)).clamp_min(0)  # (B,)
        q_top = torch.logsumexp(logq, -1).clamp_max(-1e-6)
        logq_rest = torch.log(-torch.expm1(q_top))  # log(1 - sum q_top)
        kl_top = (p * (logp - logq)).sum(-1)  # (J, B)
        rest = torch.where(p_rest > 0, p_rest * (torch.log(p_rest.clamp_min(1e-30)) - logq_rest), 0.0)
        return (kl_top + rest).mean(-1)


class _WeightedLogSumExp(torch.autograd.Function):
    """``logsumexp(logits + weight, -1)`` whose backward is one in-place pass over the saved sum.

    The same operations as autograd's (``exp(z - lse) * grad``, so the same gradients to the bit), without
    its slices, concatenation and zero-filled temporaries the size of the logits."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        z = logits + weight
        lse = torch.logsumexp(z, -1)
        ctx.save_for_backward(z, lse)
        return lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        z, lse = ctx.saved_tensors
        return z.sub_(lse.unsqueeze(-1)).exp_().mul_(grad.unsqueeze(-1)), None


#: Logits held at once by an exact pass over the vocabulary (rows x columns): 8 MiB, so that the max and
#: exp passes over a block read it from cache right after the GEMM that wrote it.
EXACT_BLOCK = 1 << 21
EXACT_ROWS = 512


def _blocked_logsumexp(u: torch.Tensor, W: torch.Tensor, const: torch.Tensor | None, adapter: Any) -> torch.Tensor:
    """``logsumexp(finish(u @ W.T + const), -1)`` for ``u`` (R, H), blocked over rows and vocabulary columns
    (an online log-sum-exp: the running sum is rescaled when a block raises the row's maximum)."""
    R, V = u.shape[0], W.shape[0]
    rows = min(R, EXACT_ROWS)
    width = max(256, EXACT_BLOCK // max(rows, 1))
    out = torch.empty(R, dtype=torch.float32, device=u.device)
    for r0 in range(0, R, rows):
        ub = u[r0:r0 + rows]
        mx = torch.full((ub.shape[0],), -math.inf, dtype=torch.float32, device=u.device)
        total = torch.zeros_like(mx)
        for v0 in range(0, V, width):
            w = W[v0:v0 + width]
            blk = ub @ w.T if const is None else torch.addmm(const[v0:v0 + width], ub, w.T)
            blk = adapter.finish_logits(blk)
            new = torch.maximum(mx, blk.amax(1))
            total.mul_(torch.exp(mx - new)).add_(blk.sub_(new[:, None]).exp_().sum(1))
            mx = new
        out[r0:r0 + rows] = mx + total.log()
    return out


LossFn = Callable[..., torch.Tensor]  # (bank, inp, tgt, rows[, levels]) -> (J,): see onejump.training.fit


def mse_loss(bank: JumpBank, inp: torch.Tensor, tgt: torch.Tensor, rows: torch.Tensor,
             levels: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2 per jump: ``mean_i ||jump(h_i) - h_i^K||^2`` (the default :data:`LossFn`; ignores ``rows``).

    A plain low-rank bank takes :func:`low_rank_mse` (the same loss and gradients, without the (B, J, H)
    temporaries); a residual or level-conditioned bank goes through its own forward."""
    if type(bank) is JumpBank and not bank.residual and inp.dim() == 3 and (inp.shape[0] > 1 or not bank.training):
        return low_rank_mse(bank, inp, tgt)
    return (bank(inp, levels) - tgt.unsqueeze(1)).pow(2).sum(-1).mean(0)


def _moments(xt: torch.Tensor, scratch: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(biased variance, mean) over the rows of each ``xt[j]`` (J, N, H), in two passes whose sums over the
    rows are matrix products (any strides): ``var_mean`` over the outer dimension of a wide array runs an
    order of magnitude slower on a CPU. ``scratch`` (``xt``'s shape and strides) holds the centred values."""
    ones = xt.new_full((xt.shape[0], 1, xt.shape[1]), 1.0 / xt.shape[1])
    mean = torch.bmm(ones, xt)  # (J, 1, H)
    centred = xt - mean if scratch is None else torch.sub(xt, mean, out=scratch)
    return torch.bmm(ones, centred.square_())[:, 0], mean[:, 0]


def _scratch(bank: JumpBank, xt: torch.Tensor) -> torch.Tensor:
    """A buffer for the centred ``xt`` (J, N, H) of :func:`_moments`, kept on the bank from step to step (it
    is as large as the batch, and a fresh one each step costs its page faults); laid out (N, J, H) in
    memory, as ``xt - mean`` lays out a transposed view."""
    J, N, H = xt.shape
    buf = getattr(bank, "_moments_scratch", None)
    if buf is None or buf.shape != xt.shape or buf.dtype != xt.dtype or buf.device != xt.device:
        buf = torch.empty(N, J, H, dtype=xt.dtype, device=xt.device).transpose(0, 1)
        bank._moments_scratch = buf
    return buf


def release_scratch(bank: Any) -> None:
    """Drop the step buffer :func:`low_rank_mse` keeps on a bank (at the end of its training)."""
    vars(bank).pop("_moments_scratch", None)


def low_rank_mse(bank: JumpBank, inp: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """:func:`mse_loss` of a plain bank in rank-r form: no (B, J, H) array is made but the input.

    BatchNorm folds into the first matrix (``z = h @ (s A) + (b - mu s) @ A`` with ``s = w / sqrt(var + eps)``;
    in train mode mu, var are the batch's, and the running statistics move exactly as ``F.batch_norm`` moves
    them), and ``||z B - t||^2 = z (B B^T) z^T - 2 z . (t B^T) + ||t||^2``: the input is read by one batched
    GEMM (and its transpose in the backward), the target by one GEMM, and the rest is r-wide. The three
    terms are summed in float64 (float32 on MPS), so the difference of large terms loses nothing to float32."""
    N, J, H = inp.shape
    xt = inp.to(bank.A.dtype).transpose(0, 1)  # (J, N, H), a view
    if bank.training:
        with torch.no_grad():
            var, mean = _moments(xt, _scratch(bank, xt))
            m = bank.momentum
            bank.running_mean.mul_(1 - m).add_(mean, alpha=m)
            bank.running_var.mul_(1 - m).add_(var, alpha=m * N / (N - 1))  # unbiased, as batch_norm
    else:
        mean, var = bank.running_mean, bank.running_var
    scale = bank.bn_weight * torch.rsqrt(var + bank.eps)  # (J, H)
    shift = torch.bmm((bank.bn_bias - mean * scale).unsqueeze(1), bank.A)  # (J, 1, r)
    # z^T = (s A)^T x^T, (r, H) @ (H, N) per jump: the same products as x (s A), but a product r rows
    # tall and N wide runs several times faster on a CPU than one N tall and r wide, and so does its
    # backward (grad (s A)^T = grad z^T @ x, r rows tall and H wide)
    zt = torch.baddbmm(shift.transpose(1, 2), (bank.A * scale.unsqueeze(-1)).transpose(1, 2), xt.transpose(1, 2))
    z = zt.transpose(1, 2)  # (J, N, r)
    B = bank.B
    r = B.shape[1]
    tb = (tgt.to(B.dtype) @ B.permute(2, 0, 1).reshape(H, J * r)).view(N, J, r).transpose(0, 1)  # t B_j^T
    quad = (torch.bmm(z, B @ B.transpose(1, 2)) * z).sum(-1)  # (J, N)
    cross = (z * tb).sum(-1)
    wide = torch.float32 if tgt.device.type == "mps" else torch.float64  # MPS has no float64
    energy = tgt.to(wide).pow(2).sum(-1)  # (N,)
    return (quad.to(wide) - 2 * cross.to(wide) + energy).mean(-1).to(B.dtype)
