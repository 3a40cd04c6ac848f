"""Optimisers of lens training beyond SGD and Adam: Muon on the lenses' matrices, Adam on the rest.

Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural networks") replaces a
matrix's momentum update by its orthogonalisation (five Newton-Schulz iterations, in bfloat16), so
every singular direction of the update moves by about the same amount. It is meant for 2-D weight
matrices only; vectors (biases, BatchNorm's affine) are left to Adam, as its authors and
``torch.optim.Muon``'s documentation prescribe, and as tuned-lens's own change to Muon does.

``torch.optim.Muon`` (torch >= 2.9) takes 2-D parameters only, while onejump's lenses hold their K
matrices in one tensor (the tuned lens's ``weight`` (K, H, H), a bank's ``A`` (J, H, r) and ``B``
(J, r, H)). :class:`MuonAdam` therefore applies the same update to every matrix of a batch of
matrices (the last two dimensions), with torch's arithmetic: momentum by ``lerp``, Nesterov's
look-ahead, the Newton-Schulz coefficients (3.4445, -4.7750, 2.0315) and the learning rate scaled
by ``sqrt(max(1, out / in))`` of the matrix as a linear map (Keller Jordan's "original"
adjustment). On a 2-D parameter it gives torch's update bit for bit (tested).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from ..errors import ConfigError

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7
#: The optimisers a lens can be trained with: ``sgd`` (tuned-lens's recipe), ``adam`` (the jumps'),
#: ``muon`` (Muon on the matrices, Adam on the rest).
OPTIMIZERS = ("sgd", "adam", "muon")


def orthogonalise(g: torch.Tensor, steps: int = NS_STEPS, eps: float = NS_EPS) -> torch.Tensor:
    """Newton-Schulz's approximate ``U V^T`` of each matrix ``g[..., :, :]`` (bfloat16, as Muon computes it)."""
    a, b, c = NS_COEFFICIENTS
    x = g.bfloat16()
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    if x.dim() == 2:  # torch.optim.Muon's own operations, so a 2-D parameter gets its update to the bit
        x = x.div(x.norm().clamp(min=eps))
        for _ in range(steps):
            gram = x @ x.T
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    else:
        shape = x.shape
        x = x.reshape(-1, *shape[-2:])
        x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
        for _ in range(steps):
            gram = torch.bmm(x, x.mT)
            x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        x = x.reshape(shape)
    return x.mT if tall else x


class MuonAdam(torch.optim.Optimizer):
    """Muon on ``matrices`` (each a matrix or a batch of them), Adam on ``others``, in one optimiser.

    One optimiser, so one learning-rate schedule scales both groups and one state dictionary holds
    both (checkpoints). ``inputs_first``: the matrices act as ``h @ W`` (a jump bank's ``A`` and
    ``B``), so as linear maps their (out, in) shape is the transpose of the stored one; the learning
    rate adjustment uses the (out, in) shape. Weight decay is decoupled in both groups
    (``p *= 1 - lr * weight_decay``), as torch's Muon and AdamW apply it.
    """

    def __init__(self, matrices: Iterable[torch.Tensor], others: Iterable[torch.Tensor], *, lr: float = 0.02,
                 momentum: float = 0.95, nesterov: bool = True, weight_decay: float = 0.0, ns_steps: int = NS_STEPS,
                 adam_lr: float = 1e-3, adam_betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8,
                 adam_weight_decay: float = 0.0, inputs_first: bool = False):
        for name, value in (("lr", lr), ("adam_lr", adam_lr)):
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"Muon's {name} must be > 0, got {value}")
        if not 0 <= momentum < 1:
            raise ConfigError(f"Muon's momentum must be in [0, 1), got {momentum}")
        groups: list[dict[str, Any]] = []
        matrices, others = list(matrices), list(others)
        if any(p.dim() < 2 for p in matrices):
            raise ConfigError("Muon orthogonalises matrices: every parameter of its group needs >= 2 dimensions")
        if matrices:
            groups.append({"params": matrices, "muon": True, "lr": lr, "momentum": momentum, "nesterov": nesterov,
                           "weight_decay": weight_decay, "ns_steps": ns_steps, "inputs_first": inputs_first})
        if others:
            groups.append({"params": others, "muon": False, "lr": adam_lr, "betas": tuple(adam_betas),
                           "eps": adam_eps, "weight_decay": adam_weight_decay})
        super().__init__(groups, {})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: D102 - torch's
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["muon"]:
                    self._muon(p, group)
                else:
                    self._adam(p, group)

    def _muon(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad)
        buf, grad, mu = state["momentum_buffer"], p.grad, group["momentum"]
        buf.lerp_(grad, 1 - mu)
        update = orthogonalise(grad.lerp(buf, mu) if group["nesterov"] else buf, group["ns_steps"])
        rows, cols = p.shape[-2:]
        out, inp = (cols, rows) if group["inputs_first"] else (rows, cols)
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(update, alpha=-group["lr"] * math.sqrt(max(1.0, out / inp)))

    def _adam(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        t = float(state["step"])
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denom = (state["exp_avg_sq"] / (1 - beta2 ** t)).sqrt_().add_(group["eps"])
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1 ** t))


def bank_optimizer(bank: torch.nn.Module, optimizer: str, lr: float, weight_decay: float = 0.0,
                   muon_lr: float = 0.02) -> torch.optim.Optimizer:
    """The optimiser of a jump bank: Adam on every parameter (``adam``, the jumps' default) or Muon on
    ``A`` and ``B`` and Adam (at ``lr``) on the rest (BatchNorm's affine, a conditioned bank's gains and
    shifts) (``muon``)."""
    if optimizer == "adam":  # foreach: one call per operation over all parameters, the same numbers as the loop
        return torch.optim.Adam(bank.parameters(), lr=lr, weight_decay=weight_decay, foreach=True)
    if optimizer != "muon":
        raise ConfigError(f"jumps train with adam or muon, got '{optimizer}'")
    named = dict(bank.named_parameters())
    matrices = [named[k] for k in ("A", "B") if k in named]
    return MuonAdam(matrices, [p for k, p in named.items() if k not in ("A", "B")], lr=muon_lr,
                    weight_decay=weight_decay, adam_lr=lr, inputs_first=True)





def tuned_optimizer(lens: Any, config: Any) -> torch.optim.Optimizer:
    """The optimiser of a tuned lens's translators for a :class:`~onejump.training.tuned.TunedTrainConfig`.

    ``sgd``: tuned-lens's recipe, SGD with Nesterov momentum at ``lr * (1 - momentum)`` (PyTorch's
    momentum SGD multiplies the step by 1 / (1 - momentum)) with weight decay. ``muon``: Muon on the
    K matrices at ``muon_lr`` (momentum ``muon_momentum``) and Adam at ``adam_lr`` (tuned-lens's Adam
    learning rate) on the biases, both with the same decoupled weight decay."""
    if config.optimizer == "sgd":
        return torch.optim.SGD([lens.weight, lens.bias], lr=config.lr * (1 - config.momentum),
                               momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0,
                               weight_decay=config.weight_decay)
    if config.optimizer != "muon":
        raise ConfigError(f"the tuned lens trains with sgd or muon, got '{config.optimizer}'")
    return MuonAdam([lens.weight], [lens.bias], lr=config.muon_lr, momentum=config.muon_momentum,
                    weight_decay=config.weight_decay, adam_lr=config.adam_lr, adam_weight_decay=config.weight_decay)

__all__ = ["MuonAdam", "NS_COEFFICIENTS", "OPTIMIZERS", "bank_optimizer", "orthogonalise", "tuned_optimizer"]
