"""Shortcut maps from an intermediate level to the final representation h^K.

- :class:`JumpBank`: J low-rank N-NJTC jumps (Eq. 1) held as batched tensors,
  ``jump_j(h) = BatchNorm_j(h) @ A_j @ B_j`` with ``A_j: H x r``, ``B_j: r x H``.
  The K per-level jumps of N-NJTC are a bank with J = K (jump j trained at level j); the joint
  jump is a bank with J = 1 applied at every level.
- :class:`FoldedJump`: one jump with its eval-mode BatchNorm folded into ``A`` (inference form).
- Beyond the paper, a *residual* jump (``residual=True``) predicts ``h + BatchNorm(h) @ A @ B``: the
  same parameters, but it starts from the logit lens and only learns a rank-r correction.
- :class:`IdentityShortcut`: the logit lens (``h`` itself).
- :class:`LinearJTC`: the full-rank per-level affine maps of Din et al. (2023), fitted in closed form.
- :class:`OneJump`: the user-facing OJFA object: one jump, reused at every exit level (Eq. 3).
- :func:`save_shortcuts` / :func:`load_shortcuts`: a folder holding ``shortcuts.json`` and
  ``weights.safetensors``; nothing is ever unpickled.

Initialisation of a :class:`JumpBank` (N-NJTC has no public code; this is what a plain PyTorch
implementation ``nn.Sequential(nn.BatchNorm1d(H), nn.Linear(H, r, bias=False), nn.Linear(r, H,
bias=False))`` does): BatchNorm affine weight 1, bias 0, running mean 0, running variance 1;
``A`` and ``B`` uniform in ``+-1/sqrt(fan_in)`` (``fan_in`` = H for A, r for B), i.e. the default
``nn.Linear`` initialisation. Every jump is drawn from one seeded generator, so a bank built with
the same seed has the same initial weights whatever the device.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .errors import NumericalError, ShortcutError, StoreError
from .store import sha256_file

FORMAT = "onejump-shortcuts"
VERSION = 1
CONFIG_NAME = "shortcuts.json"
WEIGHTS_NAME = "weights.safetensors"
KINDS = ("nnjtc", "joint", "ojfa", "jtc")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
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
        raise ShortcutError(f"jump rank must be an integer in 1..H={hidden_size}, got {rank!r}")
    return rank


class FoldedJump(nn.Module):
    """One jump in inference form: ``jump(h) = (h @ A + c) @ B``.

    ``A = diag(w / sqrt(var + eps)) A_m`` and ``c = (b - mean * w / sqrt(var + eps)) @ A_m`` fold the
    eval-mode BatchNorm of jump m into its first matrix (computed in float64, stored in float32).
    """

    def __init__(self, A: torch.Tensor, c: torch.Tensor, B: torch.Tensor, residual: bool = False):
        super().__init__()
        self.residual = bool(residual)
        if A.dim() != 2 or B.dim() != 2 or c.shape != (A.shape[1],) or B.shape != (A.shape[1], A.shape[0]):
            raise ShortcutError(f"folded jump shapes do not fit: A {tuple(A.shape)}, c {tuple(c.shape)}, "
                                f"B {tuple(B.shape)}")
        self.register_buffer("A", A.detach().to(torch.float32).contiguous())
        self.register_buffer("c", c.detach().to(torch.float32).contiguous())
        self.register_buffer("B", B.detach().to(torch.float32).contiguous())

    @property
    def hidden_size(self) -> int:
        return int(self.A.shape[0])

    @property
    def rank(self) -> int:
        return int(self.A.shape[1])

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """The rank-r code ``z = h @ A + c`` (= BN_m(h) @ A_m)."""
        return torch.addmm(self.c, h.reshape(-1, h.shape[-1]).to(self.A.dtype), self.A).reshape(*h.shape[:-1], -1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``(h @ A + c) @ B`` (``+ h`` for a residual jump) for ``h`` of shape (..., H), in float32."""
        out = self.project(h) @ self.B
        return out + h.to(out.dtype) if self.residual else out


class JumpBank(nn.Module):
    """J N-NJTC jumps ``BatchNorm_j(h) @ A_j @ B_j`` as batched tensors.

    Parameters: ``bn_weight``, ``bn_bias`` (J, H); ``A`` (J, H, r); ``B`` (J, r, H). Buffers:
    ``running_mean``, ``running_var`` (J, H). ``levels[j]`` is the level jump j was trained at
    (``range(J)`` for the per-level bank; ``[-1]`` marks a joint jump trained on all levels).

    :meth:`forward` takes ``h`` of shape (N, J, H) and applies jump j to ``h[:, j]``; in train mode
    every jump normalises with its own batch statistics and updates its own running statistics,
    exactly like J separate ``nn.BatchNorm1d(H)`` (it *is* one ``F.batch_norm`` over J*H channels).
    """

    def __init__(self, num_jumps: int, hidden_size: int, rank: int | None = None, *,
                 levels: Sequence[int] | None = None, eps: float = 1e-5, momentum: float = 0.1, seed: int = 0,
                 residual: bool = False):
        super().__init__()
        self.residual = bool(residual)
        if num_jumps < 1 or hidden_size < 1:
            raise ShortcutError(f"a jump bank needs >= 1 jump and H >= 1 (got J={num_jumps}, H={hidden_size})")
        rank = _check_rank(hidden_size, rank)
        if not (eps > 0) or not (0 < momentum <= 1):
            raise ShortcutError(f"BatchNorm eps must be > 0 and momentum in (0, 1] (got {eps}, {momentum})")
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.levels = [int(x) for x in (levels if levels is not None else range(num_jumps))]
        if len(self.levels) != num_jumps:
            raise ShortcutError(f"levels names {len(self.levels)} levels for {num_jumps} jumps")
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
            raise ShortcutError(f"jump index must be in 0..{self.num_jumps - 1}, got {jump!r}")
        return jump

    # ---- application ----------------------------------------------------------------------------
    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        """BatchNorm part of :meth:`forward`: (N, J, H) -> (N, J, H), train or eval mode."""
        if h.dim() != 3 or h.shape[1:] != (self.num_jumps, self.hidden_size):
            raise ShortcutError(f"jump bank input must be (N, {self.num_jumps}, {self.hidden_size}), "
                                f"got {tuple(h.shape)}")
        n = h.shape[0]
        x = F.batch_norm(h.reshape(n, -1), self.running_mean.view(-1), self.running_var.view(-1),
                         self.bn_weight.reshape(-1), self.bn_bias.reshape(-1), training=self.training,
                         momentum=self.momentum, eps=self.eps)
        return x.view(n, self.num_jumps, self.hidden_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Apply jump j to ``h[:, j]`` for every j: (N, J, H) -> (N, J, H)."""
        h = h.to(self.A.dtype)
        x = self.normalize(h).transpose(0, 1)  # (J, N, H)
        out = torch.bmm(torch.bmm(x, self.A), self.B).transpose(0, 1)
        return out + h if self.residual else out

    def _bn_eval(self, h: torch.Tensor, jump: int) -> torch.Tensor:
        j = self._jump_index(jump)
        if h.shape[-1] != self.hidden_size:
            raise ShortcutError(f"input width {h.shape[-1]} does not match the jump's H={self.hidden_size}")
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
            raise ShortcutError(f"level must be >= 0, got {level}")
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

    def fold(self, jump: int) -> FoldedJump:
        """Jump ``jump`` in inference form; equals the eval-mode jump to float tolerance."""
        j = self._jump_index(jump)
        a, c = self.folded_parameters()
        return FoldedJump(a[j], c[j], self.B[j].detach(), residual=self.residual)

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
        return {k: getattr(self, k).detach().to("cpu", torch.float32).contiguous() for k in _BANK_KEYS}

    def tensors_live(self) -> dict[str, torch.Tensor]:
        """The bank's parameters and buffers themselves (not copies), by name."""
        return {k: getattr(self, k) for k in _BANK_KEYS}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy tensors from :meth:`tensors` (shapes checked) into the bank."""
        for k in _BANK_KEYS:
            if k not in tensors:
                raise ShortcutError(f"jump bank tensors lack '{k}'")
            own = getattr(self, k)
            if tuple(tensors[k].shape) != tuple(own.shape):
                raise ShortcutError(f"jump bank tensor '{k}' has shape {tuple(tensors[k].shape)}, "
                                    f"expected {tuple(own.shape)}")
            with torch.no_grad():
                own.copy_(tensors[k])


class IdentityShortcut(nn.Module):
    """The logit lens / identity shortcut (Schwartz et al., 2020): ``h^k`` is fed to the head as it is."""

    def forward(self, h: torch.Tensor, level: int | None = None) -> torch.Tensor:
        return h

    def parameter_count(self) -> int:
        return 0


class LinearJTC(nn.Module):
    """Full-rank per-level affine maps ``h^k @ W_k + b_k ~ h^K`` (Din et al., 2023, "Jump to Conclusions").

    ``W`` has shape (K, H+1, H): rows 0..H-1 are the matrix, row H the bias. Fit with :meth:`fit`
    (closed-form ridge regression, streamed over chunks, solved in float64).
    """

    def __init__(self, W: torch.Tensor):
        super().__init__()
        if W.dim() != 3 or W.shape[1] != W.shape[2] + 1:
            raise ShortcutError(f"JTC weights must have shape (K, H+1, H), got {tuple(W.shape)}")
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
            raise ShortcutError(f"JTC level must be in 0..{self.num_levels - 1}, got {level}")
        flat = h.reshape(-1, self.hidden_size).to(self.W.dtype)
        return torch.addmm(self.W[level, -1], flat, self.W[level, :-1]).reshape(h.shape)

    def apply_all(self, h: torch.Tensor) -> torch.Tensor:
        """All levels at once: (N, K, H) -> (N, K, H), level k mapped with ``W_k``."""
        x = h.to(self.W.dtype).transpose(0, 1)  # (K, N, H)
        return torch.baddbmm(self.W[:, -1:, :], x, self.W[:, :-1, :]).transpose(0, 1)

    @classmethod
    def fit(cls, store: Any, *, split: str = "train", ridge: float = 1e-6, chunk_size: int = 1024,
            levels: Sequence[int] | None = None, device: str | torch.device = "cpu") -> LinearJTC:
        """Least squares fit of every level k in 0..K-1 to h^K on a store split.

        Accumulates ``X^T X`` and ``X^T Y`` (X = [h^k, 1]) in float64 chunk by chunk, so memory is
        ``K (H+1)^2`` doubles whatever the number of samples, then solves
        ``(X^T X + lam I) W = X^T Y`` per level with ``lam = ridge * trace(X^T X)/H`` (the bias
        row is not penalised). ``ridge`` only guards against an ill-conditioned ``X^T X``.
        """
        K, H = store.num_blocks, store.hidden_size
        lv = list(range(K)) if levels is None else [int(k) for k in levels]
        if any(not 0 <= k < K for k in lv):
            raise ShortcutError(f"JTC levels must be in 0..{K - 1}")
        if ridge < 0:
            raise ShortcutError(f"ridge must be >= 0, got {ridge}")
        dev = torch.device(device)
        L = len(lv)
        xtx = torch.zeros(L, H + 1, H + 1, dtype=torch.float64, device=dev)
        xty = torch.zeros(L, H + 1, H, dtype=torch.float64, device=dev)
        n = 0
        for rows, chunk in store.iter_chunks(split, chunk_size=chunk_size, levels=[*lv, K]):
            chunk = chunk.to(dev, torch.float64)
            _check_finite_chunk(chunk, rows, [*lv, K])
            x = torch.cat([chunk[:, :L], torch.ones(chunk.shape[0], L, 1, dtype=torch.float64, device=dev)], 2)
            x = x.transpose(0, 1)  # (L, n, H+1)
            y = chunk[:, L]  # (n, H)
            xtx += x.transpose(1, 2) @ x
            xty += x.transpose(1, 2) @ y
            n += chunk.shape[0]
        if n == 0:
            raise StoreError(f"store split '{split}' is empty; cannot fit JTC")
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


def _check_finite_chunk(chunk: torch.Tensor, rows: Iterable[int], levels: Sequence[int]) -> None:
    finite = torch.isfinite(chunk)
    if not finite.all():
        i, lvl, _ = (~finite).nonzero()[0].tolist()
        raise NumericalError(f"non-finite hidden state in the store at level {levels[lvl]}, "
                             f"sample row {list(rows)[i]}")


# --------------------------------------------------------------------------------------------------
# Files: safetensors + JSON, never pickle
# --------------------------------------------------------------------------------------------------


class ShortcutFile(NamedTuple):
    """What :func:`load_shortcuts` returns: the module (JumpBank or LinearJTC) and its JSON config."""

    module: nn.Module
    config: dict[str, Any]




def _refuse_pickle_name(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ShortcutError(
            f"refusing {path}: '{path.suffix}' files are pickle-based and can run code when loaded; onejump "
            f"shortcuts are a folder with {CONFIG_NAME} + {WEIGHTS_NAME}"
        )


def save_shortcuts(path: str | Path, bank: nn.Module, *, kind: str, model: str, fingerprint: str,
                   levels: Sequence[int], rank: int | None, chosen_jump: int | None = None,
                   num_blocks: int | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write shortcuts to the folder ``path`` (created): ``weights.safetensors`` and ``shortcuts.json``.

    ``kind`` is ``"nnjtc"`` (the K per-level jumps), ``"joint"`` (one jump trained on all levels),
    ``"ojfa"`` (the chosen jump alone) or ``"jtc"`` (a :class:`LinearJTC`, ``rank=None``).
    ``levels`` are the levels the jumps were trained at (``[-1]`` for the joint jump; the exit
    levels for JTC). ``fingerprint`` is the model's weights hash; loading checks it. Files are
    written to temporary names and renamed. Returns the folder.
    """
    folder = Path(path)
    _refuse_pickle_name(folder)
    if kind not in KINDS:
        raise ShortcutError(f"unknown shortcut kind '{kind}'; use one of {', '.join(KINDS)}")
    if kind == "jtc":
        if not isinstance(bank, LinearJTC):
            raise ShortcutError("kind 'jtc' needs a LinearJTC")
        tensors = {"W": bank.W.detach().to("cpu", torch.float32).contiguous()}
        hidden, n_jumps, rank = bank.hidden_size, bank.num_levels, None
        k_default = bank.num_levels
    else:
        if not isinstance(bank, JumpBank):
            raise ShortcutError(f"kind '{kind}' needs a JumpBank")
        if rank != bank.rank:
            raise ShortcutError(f"rank {rank} given but the bank has rank {bank.rank}")
        if len(levels) != bank.num_jumps:
            raise ShortcutError(f"{len(levels)} levels given for {bank.num_jumps} jumps")
        if kind in ("joint", "ojfa") and bank.num_jumps != 1:
            raise ShortcutError(f"kind '{kind}' holds exactly one jump, the bank has {bank.num_jumps}")
        tensors = bank.tensors()
        hidden, n_jumps = bank.hidden_size, bank.num_jumps
        k_default = bank.num_jumps if kind == "nnjtc" else None
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise NumericalError(f"shortcut tensor '{name}' holds NaN or inf; not saved")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{WEIGHTS_NAME}.")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, folder / WEIGHTS_NAME)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    config = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "model": model,
        "fingerprint": fingerprint,
        "hidden_size": hidden,
        "num_blocks": num_blocks if num_blocks is not None else k_default,
        "num_jumps": n_jumps,
        "levels": [int(x) for x in levels],
        "rank": rank,
        "chosen_jump": chosen_jump,
        "bn_eps": getattr(bank, "eps", None),
        "bn_momentum": getattr(bank, "momentum", None),
        "residual": bool(getattr(bank, "residual", False)),
        "weights": WEIGHTS_NAME,
        "sha256": sha256_file(folder / WEIGHTS_NAME),
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "parameters": sum(int(v.numel()) for v in tensors.values()),
        "extra": extra or {},
    }
    from .store import atomic_write_text

    atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=1))
    return folder


def _resolve_shortcut_path(path: Path) -> tuple[Path, Path]:
    """(folder, config file) of a shortcut path (the folder, its JSON, or its safetensors)."""
    _refuse_pickle_name(path)
    if path.is_dir():
        return path, path / CONFIG_NAME
    if path.is_file():
        with path.open("rb") as fh:
            head = fh.read(4)
        if head[:1] == b"\x80" or head[:2] == b"PK":
            raise ShortcutError(f"refusing {path}: it is a pickle / torch.save archive, which can run code "
                                f"when loaded; onejump shortcuts are safetensors + JSON")
        if path.suffix == ".json":
            return path.parent, path
        if path.suffix == ".safetensors":
            return path.parent, path.parent / CONFIG_NAME
        raise ShortcutError(f"{path} is not a shortcut folder, {CONFIG_NAME} or {WEIGHTS_NAME}")
    raise ShortcutError(f"shortcut path not found: {path}")


def load_shortcuts(path: str | Path, fingerprint: str | None = None) -> ShortcutFile:
    """Load shortcuts written by :func:`save_shortcuts` (a folder, or its JSON file).

    Refuses, with :class:`ShortcutError`: pickle-based files (``.pt``, ``.bin``, ...), a JSON that
    names a weights file outside its folder, a weights file whose sha256, tensor names, shapes,
    rank or dtype do not match the JSON, and (with ``fingerprint``) shortcuts trained for another
    model. NaN/inf weights raise :class:`NumericalError`.
    """
    folder, cfg_path = _resolve_shortcut_path(Path(path))
    if not cfg_path.is_file():
        raise ShortcutError(f"{folder} is not a shortcut folder: {CONFIG_NAME} missing")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShortcutError(f"{cfg_path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ShortcutError(f"{cfg_path} is not an onejump shortcut config")
    if config.get("version") != VERSION:
        raise ShortcutError(f"shortcut format version {config.get('version')} is not supported (expected {VERSION})")
    if fingerprint is not None and config.get("fingerprint") != fingerprint:
        raise ShortcutError(
            f"shortcuts in {folder} were trained for another model (model '{config.get('model')}', weights hash "
            f"{config.get('fingerprint')}); this model's hash is {fingerprint}: retrain them for this model"
        )
    kind = config.get("kind")
    if kind not in KINDS:
        raise ShortcutError(f"{cfg_path}: unknown shortcut kind {kind!r}")
    weights = (folder / str(config.get("weights", ""))).resolve()
    if weights.parent != folder.resolve():
        raise ShortcutError(f"{cfg_path} names a weights file outside its folder: {config.get('weights')!r}")
    _refuse_pickle_name(weights)
    if not weights.is_file():
        raise ShortcutError(f"shortcut weights missing: {weights}")
    if config.get("sha256") and sha256_file(weights) != config["sha256"]:
        raise ShortcutError(f"shortcut weights {weights.name} are corrupt or were changed (sha256 differs)")
    try:
        H = int(config["hidden_size"])
        J = int(config["num_jumps"])
        levels = [int(x) for x in config["levels"]]
    except (KeyError, TypeError, ValueError):
        raise ShortcutError(f"{cfg_path} lacks hidden_size, num_jumps or levels, or has bad values") from None
    try:
        with safe_open(str(weights), framework="pt") as fh:
            keys = set(fh.keys())
            expected = {"W"} if kind == "jtc" else set(_BANK_KEYS)
            if keys != expected:
                raise ShortcutError(f"{weights.name} holds tensors {sorted(keys)}, expected {sorted(expected)}")
            for k in sorted(keys):
                if fh.get_slice(k).get_dtype() != "F32":
                    raise ShortcutError(f"{weights.name}: tensor '{k}' has dtype {fh.get_slice(k).get_dtype()}, "
                                        "expected F32")
            tensors = {k: fh.get_tensor(k) for k in keys}
    except ShortcutError:
        raise
    except Exception as exc:  # malformed safetensors header
        raise ShortcutError(f"{weights.name} is not a readable safetensors file: {exc}") from None
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise NumericalError(f"shortcut tensor '{name}' in {weights.name} holds NaN or inf")
    if kind == "jtc":
        W = tensors["W"]
        if W.dim() != 3 or tuple(W.shape) != (J, H + 1, H):
            raise ShortcutError(f"{weights.name}: JTC weights have shape {tuple(W.shape)}, expected {(J, H + 1, H)}")
        return ShortcutFile(LinearJTC(W), config)
    rank = config.get("rank")
    if not isinstance(rank, int) or not 1 <= rank <= H:
        raise ShortcutError(f"{cfg_path}: rank {rank!r} is invalid for H={H}")
    if len(levels) != J:
        raise ShortcutError(f"{cfg_path}: {len(levels)} levels for {J} jumps")
    a_shape = tuple(tensors["A"].shape)
    if len(a_shape) == 3 and a_shape[:2] == (J, H) and a_shape[2] != rank:
        raise ShortcutError(f"{weights.name}: jumps have rank {a_shape[2]} but the config says rank {rank}")
    residual = config.get("residual", False)
    if not isinstance(residual, bool):
        raise ShortcutError(f"{cfg_path}: 'residual' must be true or false, got {residual!r}")
    bank = JumpBank(J, H, rank, levels=levels, eps=float(config.get("bn_eps") or 1e-5),
                    momentum=float(config.get("bn_momentum") or 0.1), residual=residual)
    bank.load_tensors(tensors)
    if torch.any(bank.running_var < 0):
        raise ShortcutError(f"{weights.name}: negative BatchNorm running variance")
    return ShortcutFile(bank.eval(), config)


# --------------------------------------------------------------------------------------------------
# The user-facing OJFA object
# --------------------------------------------------------------------------------------------------


class OneJump:
    """One-Jump-Fits-All: a single N-NJTC jump reused at every exit level 0..K-1 (Eq. 3).

    Build it from a trained per-level bank and the OJFA choice (:func:`onejump.selection.select_ojfa`)
    with :meth:`from_bank`, or load a saved one with :meth:`load`. ``.jump`` is the chosen jump in
    folded inference form; ``.shortcut(h, level)`` estimates h^K from ``h^level`` and
    ``.logits(h, level, adapter)`` runs the model's head on it. Holds
    ``2Hr + 4H`` parameters (see :meth:`parameter_count`), K times fewer than the full N-NJTC bank.
    """

    def __init__(self, bank: JumpBank, *, chosen_jump: int, num_blocks: int, model: str = "",
                 fingerprint: str = "", extra: dict[str, Any] | None = None):
        if bank.num_jumps != 1:
            raise ShortcutError(f"OneJump holds exactly one jump, got a bank of {bank.num_jumps}")
        if not -1 <= chosen_jump < num_blocks:  # -1: a joint jump, trained on all levels
            raise ShortcutError(f"chosen jump {chosen_jump} is not an exit level of a {num_blocks}-block model")
        self.bank = bank.eval()
        self.chosen_jump = int(chosen_jump)
        self.num_blocks = int(num_blocks)
        self.model = model
        self.fingerprint = fingerprint
        self.extra = dict(extra or {})
        self.jump: FoldedJump = bank.fold(0)

    @classmethod
    def from_bank(cls, bank: JumpBank, chosen: int, *, num_blocks: int | None = None, model: str = "",
                  fingerprint: str = "", extra: dict[str, Any] | None = None) -> OneJump:
        """Keep jump ``chosen`` of a per-level bank (J = K; jump m trained at level m), discard the rest."""
        k = bank.num_jumps if num_blocks is None else int(num_blocks)
        if not 0 <= chosen < bank.num_jumps:
            raise ShortcutError(f"chosen jump {chosen} is not in the bank (0..{bank.num_jumps - 1})")
        return cls(bank.select(chosen), chosen_jump=chosen, num_blocks=k, model=model, fingerprint=fingerprint,
                   extra=extra)

    @property
    def hidden_size(self) -> int:
        return self.bank.hidden_size

    @property
    def rank(self) -> int:
        return self.bank.rank

    def parameter_count(self) -> int:
        """Shortcut parameters held at inference: ``2Hr + 4H``."""
        return self.bank.parameters_per_jump()

    def to(self, device: str | torch.device) -> OneJump:
        self.bank = self.bank.to(device)
        self.jump = self.jump.to(device)
        return self

    def _check_level(self, level: int) -> None:
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < self.num_blocks:
            raise ShortcutError(f"exit level must be in 0..{self.num_blocks - 1}, got {level!r}")

    def shortcut(self, h: torch.Tensor, level: int) -> torch.Tensor:
        """Estimate of h^K from ``h`` = h^level, shape (..., H); computed in float32, returned in h's dtype."""
        self._check_level(level)
        if h.shape[-1] != self.hidden_size:
            raise ShortcutError(f"hidden width {h.shape[-1]} does not match the jump's H={self.hidden_size}")
        return self.jump(h.to(self.jump.A.dtype)).to(h.dtype)

    def logits(self, h: torch.Tensor, level: int, adapter: Any) -> torch.Tensor:
        """``adapter.head(shortcut(h, level))``: next-token logits predicted from level ``level``."""
        return adapter.head(self.shortcut(h, level))

    def save(self, path: str | Path) -> Path:
        """Write as kind ``ojfa`` (the unfolded jump, so it reloads exactly)."""
        return save_shortcuts(path, self.bank, kind="ojfa", model=self.model, fingerprint=self.fingerprint,
                              levels=[self.chosen_jump], rank=self.rank, chosen_jump=self.chosen_jump,
                              num_blocks=self.num_blocks, extra=self.extra)

    @classmethod
    def from_joint(cls, joint: JumpBank, *, num_blocks: int, model: str = "", fingerprint: str = "",
                   extra: dict[str, Any] | None = None) -> OneJump:
        """A joint jump (trained on all exit levels) as the single jump; ``chosen_jump`` is -1."""
        return cls(joint, chosen_jump=-1, num_blocks=num_blocks, model=model, fingerprint=fingerprint, extra=extra)

    @classmethod
    def load(cls, path: str | Path, fingerprint: str | None = None) -> OneJump:
        """Load an ``ojfa`` or ``joint`` file, or an ``nnjtc`` file that records its ``chosen_jump``."""
        bank, cfg = load_shortcuts(path, fingerprint=fingerprint)
        if cfg["kind"] not in ("ojfa", "nnjtc", "joint"):
            raise ShortcutError(f"{path} holds '{cfg['kind']}' shortcuts, not an OJFA jump")
        chosen = -1 if cfg["kind"] == "joint" else cfg.get("chosen_jump")
        if not isinstance(chosen, int):
            raise ShortcutError(f"{path} records no chosen jump: run the OJFA selection first")
        num_blocks = cfg.get("num_blocks")
        if not isinstance(num_blocks, int):
            raise ShortcutError(f"{path} does not record the model's number of blocks")
        if cfg["kind"] == "nnjtc":
            bank = bank.select(chosen)
        return cls(bank, chosen_jump=chosen, num_blocks=num_blocks, model=cfg.get("model", ""),
                   fingerprint=cfg.get("fingerprint", ""), extra=cfg.get("extra") or {})


__all__ = [
    "FoldedJump",
    "IdentityShortcut",
    "JumpBank",
    "LinearJTC",
    "OneJump",
    "ShortcutFile",
    "default_rank",
    "jump_parameter_count",
    "load_shortcuts",
    "save_shortcuts",
]
