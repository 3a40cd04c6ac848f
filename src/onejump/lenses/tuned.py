"""The tuned lens (Belrose et al. 2023): one full-rank affine translator per exit level.

``lens_k(h) = head(h + W_k h + b_k)`` with ``W_k`` (H x H) and ``b_k`` (H,), both initialised at
zero, so an untrained tuned lens *is* the logit lens. The translator is added residually, as in
tuned-lens, so that weight decay pulls it towards the identity rather than towards zero.
``W_k`` is stored in ``nn.Linear``'s (out, in) convention, exactly as tuned-lens's ``params.pt``
stores ``layer_translators.k.weight``: ``W_k h`` is ``h @ weight[k].T``. Train one with
:func:`onejump.training.tuned.train_tuned_lens`; exchange it with tuned-lens through
:mod:`onejump.lenses.tuned_format`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LensFileError
from .base import Lens


class TunedLens(Lens):
    """K affine translators ``h -> h + h @ weight[k].T + bias[k]`` feeding the frozen head.

    ``weight`` (K, H, H) and ``bias`` (K, H) are parameters (zeros when not given); :meth:`translate`
    applies all K at once to inputs (N, K, H) (translator k to ``h[:, k]``), which training uses.
    Holds ``K (H^2 + H)`` parameters.
    """

    kind = "tuned"

    def __init__(self, lm: Any, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None):
        super().__init__(lm)
        K, H = self.num_blocks, self.hidden_size
        w = torch.zeros(K, H, H) if weight is None else weight.detach().to("cpu", torch.float32).clone()
        b = torch.zeros(K, H) if bias is None else bias.detach().to("cpu", torch.float32).clone()
        if tuple(w.shape) != (K, H, H) or tuple(b.shape) != (K, H):
            raise LensFileError(f"tuned-lens translators must be weight ({K}, {H}, {H}) and bias ({K}, {H}) for "
                                f"this model, got {tuple(w.shape)} and {tuple(b.shape)}")
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(b)

    def transform(self, h: torch.Tensor, level: int) -> torch.Tensor:
        k = self.check_level(level)
        self.check_hidden(h)
        x = h.to(self.weight.dtype)
        return (x + F.linear(x, self.weight[k], self.bias[k])).to(h.dtype)

    def translate(self, h: torch.Tensor) -> torch.Tensor:
        """All levels at once: (N, K, H) -> (N, K, H), translator k applied to ``h[:, k]``."""
        if h.dim() != 3 or h.shape[1:] != self.bias.shape:
            raise LensFileError(f"translate needs inputs (N, {self.num_blocks}, {self.hidden_size}), "
                                f"got {tuple(h.shape)}")
        x = h.to(self.weight.dtype)
        return x + torch.einsum("nki,koi->nko", x, self.weight) + self.bias

    def transform_cost(self) -> int:
        return self.hidden_size * self.hidden_size

    @classmethod
    def from_config(cls, lm: Any, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> TunedLens:
        if set(tensors) != {"weight", "bias"}:
            raise LensFileError(f"a tuned lens holds tensors ['bias', 'weight'], got {sorted(tensors)}")
        return cls(lm, tensors["weight"], tensors["bias"])


__all__ = ["TunedLens"]
