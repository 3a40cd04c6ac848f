"""The load-time probe: an adapter is used only once it reproduces the model on a few tokens.

One forward of :data:`PROBE_TOKENS` tokens through the whole model, with the adapter's own level
hooks, must give

- every level exactly once, each of shape (1, positions, H) with one H;
- level k (block k's output) equal to the input of block k + 1, and to the model's own
  ``hidden_states[k]`` where those follow transformers' usual layout (embeddings first);
- ``head(level K)`` equal to the model's logits;

and a forward of the base model alone (how extraction runs it) must give the same levels. The
comparisons allow :data:`TOLERANCE` (relative to the largest magnitude compared), in the model's
dtype: the same operations on the same inputs, so only rounding may differ. The probe runs without
gradients, without a cache and in eval mode (the modes are restored), so it changes nothing the
model computes afterwards.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

PROBE_TOKENS = 6

# |got - want|.max() <= TOLERANCE * max(1, |want|.max()); about 100 units of rounding in float32
# and 2 in the half precisions, far below any real difference (a missed norm or scale is O(1)).
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-9, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


class Mismatch(Exception):
    """What differed (one line); the adapter turns it into ArchitectureMismatchError."""


def _dtype(model: nn.Module) -> torch.dtype:
    param = next(model.parameters(), None)
    return param.dtype if param is not None else torch.float32


def difference(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> str | None:
    """``None`` when ``got`` equals ``want`` within the tolerance, else how far apart they are."""
    if got.shape != want.shape:
        return f"shape {tuple(got.shape)} instead of {tuple(want.shape)}"
    # on the CPU: with a device map, block k's output and block k + 1's input sit on different devices
    got, want = got.detach().to("cpu", torch.float32), want.detach().to("cpu", torch.float32)
    if not (torch.isfinite(got).all() and torch.isfinite(want).all()):
        return "values that are not finite"
    diff = (got - want).abs().max().item() if got.numel() else 0.0
    tol = TOLERANCE.get(dtype, 1e-5) * max(1.0, want.abs().max().item() if want.numel() else 0.0)
    return None if diff <= tol else f"max |difference| {diff:.3g} > tolerance {tol:.3g}"


def probe_ids(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed handful of token ids spread over the vocabulary (no id 0, often padding), and a mask."""
    rows = [getattr(get(), "weight", None) for get in (model.get_input_embeddings, model.get_output_embeddings)]
    rows = [w for w in rows if torch.is_tensor(w) and w.dim() == 2]
    device = rows[0].device if rows else next(model.parameters()).device
    vocab = min((w.shape[0] for w in rows), default=2)
    ids = (torch.arange(PROBE_TOKENS) * 7919 + 3) % max(vocab - 1, 1) + 1
    ids = ids.unsqueeze(0).to(device)
    return ids, torch.ones_like(ids)


def _capture(adapter: Any, call: Callable[[], Any], what: str) -> tuple[dict, dict, Any]:
    """Run ``call`` with the adapter's level hooks and a pre-hook on every block."""
    levels: dict[int, list[torch.Tensor]] = defaultdict(list)
    inputs: dict[int, torch.Tensor] = {}

    def pre(k: int) -> Callable:
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs.get("hidden_states")
            if torch.is_tensor(hidden):
                inputs.setdefault(k, hidden.detach().clone())
        return hook

    handles = adapter.level_hooks(lambda k, h: levels[k].append(h.detach().clone() if torch.is_tensor(h) else h))
    handles += [block.register_forward_pre_hook(pre(k), with_kwargs=True)
                for k, block in enumerate(adapter.blocks, start=1)]
    try:
        with torch.no_grad():
            out = call()
    except Exception as exc:  # noqa: BLE001 - any failure of the model's own forward refuses the adapter
        text = " ".join(str(exc).split())[:200]
        raise Mismatch(f"{what} failed on a {PROBE_TOKENS}-token probe ({type(exc).__name__}: {text})") from None
    finally:
        for handle in handles:
            handle.remove()
    return levels, inputs, out


def _one_each(adapter: Any, levels: dict) -> list[torch.Tensor]:
    K = adapter.num_blocks
    for k in range(K + 1):
        runs = len(levels.get(k, []))
        if runs != 1:
            what = "the input of block 1" if k == 0 else f"block {k}"
            raise Mismatch(f"{what} ran {runs} times in one forward (expected once)")
    found = [levels[k][0] for k in range(K + 1)]
    first = found[0]
    for k, h in enumerate(found):
        if not torch.is_tensor(h) or h.dim() != 3:
            shape = tuple(h.shape) if torch.is_tensor(h) else type(h).__name__
            raise Mismatch(f"level {k} has shape {shape}, not (batch, positions, hidden)")
        if h.shape != first.shape:
            raise Mismatch(f"level {k} has shape {tuple(h.shape)}, level 0 {tuple(first.shape)}")
    return found


def _conventional(hidden: Any, K: int, level0: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether the model's ``hidden_states`` follow transformers' usual layout (K + 1, embeddings first).

    Some do not (Mamba's start after block 1); those are checked on the chain of blocks alone.
    """
    return (isinstance(hidden, (tuple, list)) and len(hidden) == K + 1 and all(torch.is_tensor(h) for h in hidden)
            and difference(level0, hidden[0], dtype) is None)


def run_probe(adapter: Any) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Check the levels (see the module docstring); return them and the model's logits."""
    model = adapter.model
    dtype = _dtype(model)
    ids, mask = probe_ids(model)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        levels, inputs, out = _capture(adapter, lambda: model(input_ids=ids, attention_mask=mask,
                                                               output_hidden_states=True, use_cache=False),
                                         "its forward")
        found = _one_each(adapter, levels)
        K = adapter.num_blocks
        for k in range(K):
            if k + 1 not in inputs:
                raise Mismatch(f"block {k + 1} was never given a hidden state")
            differs = difference(found[k], inputs[k + 1], dtype)
            if differs:
                raise Mismatch(f"level {k} differs from the input of block {k + 1}: {differs}")
        hidden = getattr(out, "hidden_states", None)
        if _conventional(hidden, K, found[0], dtype):
            for k in range(1, K):
                differs = difference(found[k], hidden[k], dtype)
                if differs:
                    raise Mismatch(f"level {k} differs from the model's hidden_states[{k}]: {differs}")
        logits = getattr(out, "logits", None)
        if not torch.is_tensor(logits):
            raise Mismatch("its forward returned no logits")
        base_levels, _, _ = _capture(adapter, lambda: adapter.base(input_ids=ids, attention_mask=mask,
                                                                   use_cache=False),
                                      "the base model's forward")
        for k, h in enumerate(_one_each(adapter, base_levels)):
            differs = difference(h, found[k], dtype)
            if differs:
                raise Mismatch(f"level {k} from the base model alone differs from the full model's: {differs}")
    finally:
        for module, mode in modes.items():
            module.training = mode
    return found, logits


def head_difference(adapter: Any, last: torch.Tensor, logits: torch.Tensor) -> str | None:
    """``None`` when ``head(level K)`` reproduces the model's logits, else what differed."""
    try:
        with torch.no_grad():
            got = adapter.head(last)
    except Exception as exc:  # noqa: BLE001 - a head that cannot run is a head that differs
        return f"the head failed ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
    differs = difference(got, logits, _dtype(adapter.model))
    return None if differs is None else f"head(level K) differs from the model's logits: {differs}"
