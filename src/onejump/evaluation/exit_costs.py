"""What an early exit costs, per token, in multiply-adds: one block of the model, and the model's own head."""

from __future__ import annotations

from typing import Any


def block_macs(lm: Any) -> int:
    """Multiply-adds per token of one transformer block: the entries of its weight matrices (mean over blocks).

    Every matrix entry is used once per token; vectors (norms, biases) and attention over the
    context are left out. Mixture-of-experts blocks would be over-counted (all experts).
    """
    blocks = lm.adapter.blocks
    total = sum(p.numel() for block in blocks for p in block.parameters() if p.dim() >= 2)
    return max(1, round(total / len(blocks)))


def head_macs(lm: Any) -> int:
    """Multiply-adds per token of the model's own head: the unembedding (and an output projection)."""
    macs = lm.adapter.unembedding_matrix().numel()
    project_out = getattr(lm.adapter, "project_out", None)
    if project_out is not None:
        macs += sum(p.numel() for p in project_out.parameters() if p.dim() >= 2)
    return int(macs)


__all__ = ["block_macs", "head_macs"]
