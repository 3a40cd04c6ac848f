"""Finding the parts of a causal LM that is not in the adapter's table, from its module tree and config.

Discovery only proposes: the block list (the module list holding most of the decoder's weights),
the final norm (norm-like modules outside the blocks, those registered after the blocks first, then
none) and the unembedding (``get_output_embeddings()``). The adapter keeps the first proposal that
passes the load-time probe (:mod:`onejump.model.probe`), so a wrong guess is refused, never used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

# Block lists tried per model: the probe costs one short forward per list, and the right list is
# first in every architecture transformers ships (checked by tests/test_architectures.py).
MAX_BLOCK_LISTS = 3


@dataclass(frozen=True)
class Parts:
    """One proposal: where the blocks are and the final norms to try (``None``: no final norm)."""

    base: nn.Module
    blocks: nn.ModuleList
    blocks_path: str
    norms: tuple[nn.Module | None, ...]
    unembed: nn.Module
    project_out: nn.Module | None = None


def text_config(model: nn.Module) -> Any:
    """The config of the language part (a composite model's ``text_config``, else the config itself)."""
    config = model.config
    getter = getattr(config, "get_text_config", None)
    try:
        return getter(decoder=True) if getter is not None else config
    except (TypeError, ValueError, AttributeError):
        return config


def expected_blocks(model: nn.Module) -> int | None:
    """The number of blocks the config declares, where it declares one."""
    config = text_config(model)
    for name in ("num_hidden_layers", "n_layer", "num_layers", "decoder_layers"):
        try:
            value = getattr(config, name, None)
        except Exception:  # noqa: BLE001 - some configs refuse per-layer attributes at the top level
            value = None
        if isinstance(value, int) and value > 0:
            return value
    return None


def base_model(model: nn.Module) -> nn.Module | None:
    """The module that maps token ids to the last hidden state: the decoder of a composite model.

    ``get_decoder()`` first; it can name an output layer (``decoder``), so a candidate must hold a
    module list.
    """
    try:
        found = model.get_decoder()
    except (AttributeError, TypeError, NotImplementedError):
        found = None
    candidates = [found, getattr(model, "base_model", None),
                  *(getattr(model, name, None) for name in ("model", "transformer", "decoder"))]
    modules = [m for m in candidates if isinstance(m, nn.Module) and m is not model]
    holding = [m for m in modules if any(isinstance(sub, nn.ModuleList) for sub in m.modules())]
    return (holding or modules or [None])[0]


def _size(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _looks_like_norm(module: nn.Module) -> bool:
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)):
        return True
    name = type(module).__name__.lower()
    return "norm" in name and not any(True for _ in module.children())


def discover(model: nn.Module) -> tuple[list[Parts], str | None]:
    """Proposals, most likely first, or an empty list and the reason none could be made."""
    base = base_model(model)
    if base is None:
        return [], "no base model (get_decoder(), base_model, .model or .transformer)"
    get_unembed = getattr(model, "get_output_embeddings", None)
    unembed = get_unembed() if callable(get_unembed) else None
    weight = getattr(unembed, "weight", None)
    if not isinstance(unembed, nn.Module) or weight is None or weight.dim() != 2:
        return [], "no single unembedding matrix (get_output_embeddings())"
    order = {id(m): i for i, m in enumerate(base.modules())}
    lists = [(path, m) for path, m in base.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        return [], "no block list (a module list) in the base model"
    want = expected_blocks(model)
    lists.sort(key=lambda item: (len(item[1]) != want, -_size(item[1])))
    project_out = getattr(base, "project_out", None)
    project_out = project_out if isinstance(project_out, nn.Linear) else None
    proposals = []
    for path, blocks in lists[:MAX_BLOCK_LISTS]:
        inside = {id(m) for m in blocks.modules()}
        norms = [m for m in base.modules() if id(m) not in inside and _looks_like_norm(m)]
        end = max(order[id(m)] for m in blocks.modules())
        after = [m for m in norms if order[id(m)] > end]
        before = [m for m in norms if order[id(m)] < end]
        proposals.append(Parts(base, blocks, path, (*after, None, *reversed(before)), unembed, project_out))
    return proposals, None


# Config attributes that scale raw unembedding outputs: (name, how). "multiply" applies x * value,
# "divide" x / value; every one is checked by the probe against the model's own logits.
LOGIT_SCALES = (("logit_scale", "multiply"), ("logits_scaling", "divide"), ("logits_mup_width_multiplier", "divide"))
# Config attributes holding the soft-cap c of c * tanh(logits / c).
SOFTCAPS = ("final_logit_softcapping", "logits_soft_cap", "output_logit_soft_cap")


def logit_finish(model: nn.Module) -> tuple[float | None, float | None]:
    """(multiplier, soft-cap) the config applies to the logits, or ``None`` for each it does not."""
    config = text_config(model)
    scale = None
    for name, how in LOGIT_SCALES:
        value = getattr(config, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value not in (0, 1):
            scale = float(value) if how == "multiply" else 1.0 / float(value)
            break
    softcap = next((getattr(config, name) for name in SOFTCAPS if getattr(config, name, None)), None)
    return scale, float(softcap) if softcap else None
