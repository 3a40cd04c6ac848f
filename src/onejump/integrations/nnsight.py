"""Lenses inside an nnsight trace (``pip install onejump[nnsight]``).

::

    import nnsight
    from onejump.integrations.nnsight import level, lens_logits

    traced = nnsight.NNsight(lm.model)
    with traced.trace(input_ids):
        h5 = nnsight.save(level(traced, lm, 5))                    # the residual stream after block 5
        logits = nnsight.save(lens_logits(traced, lm, lens, 12))   # the lens read at level 12

Levels are onejump's: level 0 is what enters block 1 (after any embedding scaling), level k the
output of block k, level K the last block's output before the final norm. nnsight runs the trace's
code alongside the model's forward, so levels must be asked for in increasing order; what is done
with a level (a lens, an edit) happens while the model runs, on the real tensor.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError


def _blocks_path(lm: Any) -> list[str]:
    """The attribute path from the model to its list of blocks (as nnsight's envoys mirror it)."""
    for name, module in lm.model.named_modules():
        if module is lm.adapter.blocks:
            return name.split(".") if name else []
    raise ConfigError(f"the blocks of {lm.name} are not a submodule of its model")  # pragma: no cover


def block_envoy(traced: Any, lm: Any, index: int) -> Any:
    """nnsight's envoy of block ``index`` (0-based) of ``lm``'s model wrapped as ``traced``."""
    envoy = traced
    for part in _blocks_path(lm):
        envoy = getattr(envoy, part)
    return envoy[index]


def level(traced: Any, lm: Any, k: int) -> Any:
    """The hidden states (batch, tokens, H) at level ``k`` inside a trace of ``traced`` (``NNsight(lm.model)``)."""
    K = lm.num_blocks
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= K:
        raise ConfigError(f"level must be in 0..{K}, got {k!r}")
    if k == 0:
        args, kwargs = block_envoy(traced, lm, 0).inputs
        return args[0] if args else kwargs["hidden_states"]
    out = block_envoy(traced, lm, k - 1).output
    return out[0] if isinstance(out, (tuple, list)) else out


def lens_logits(traced: Any, lm: Any, lens: Any, k: int) -> Any:
    """``lens`` read at level ``k`` inside a trace: next-token logits (batch, tokens, V)."""
    if getattr(lens, "lm", None) is not None and lens.lm.fingerprint != lm.fingerprint:
        raise ConfigError(f"the lens was made for other weights ({lens.lm.fingerprint}, this model {lm.fingerprint})")
    return lens(level(traced, lm, k), k)


__all__ = ["block_envoy", "lens_logits", "level"]
