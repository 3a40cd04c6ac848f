"""The model's forward in two pieces around a draft level E, sharing one KV cache.

``lower`` runs the newest token(s) through blocks 1..E only (a forward hook after block E ends the
forward) and returns their level-E hidden states; those blocks' keys and values stay in the cache.
``upper`` continues saved level-E states through blocks E+1..K and the head: blocks 1..E are
replaced for that call by a stand-in that hands back the saved states, so they neither recompute
nor touch their (already longer) cache. This is LayerSkip's cache reuse: verification pays blocks
E+1..K on the drafted tokens, and the cache still holds exactly the full model's keys and values.

The model's own forward builds the attention mask and positions from the length of the first
cache layer (or the first of a kind: full or sliding attention). During ``upper`` the lower
layers are longer than the upper ones, so their cache entries are swapped for the duration of the
call with an upper layer of the same kind (never written: the stand-in blocks do not attend).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .common import run_model


class _Reached(Exception):
    def __init__(self, hidden: torch.Tensor):
        super().__init__("reached the draft level")
        self.hidden = hidden


class ModelStages:
    """Blocks 1..E and E+1..K of ``lm`` as two calls over one cache (see the module docstring)."""

    def __init__(self, lm: Any, level: int):
        self.lm, self.level = lm, int(level)
        self.blocks = list(lm.adapter.blocks)
        self._armed = False
        self._handle = self.blocks[self.level - 1].register_forward_hook(self._stop)

    def close(self) -> None:
        self._handle.remove()

    def __enter__(self) -> ModelStages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stop(self, _module: Any, _args: Any, output: Any) -> None:
        if self._armed:
            raise _Reached(output[0] if isinstance(output, (tuple, list)) else output)

    def lower(self, ids: Sequence[int], cache: Any) -> torch.Tensor:
        """Level-E hidden states (n, H) of ``ids`` appended after the cached tokens (blocks 1..E only)."""
        self._armed = True
        try:
            run_model(self.lm, ids, cache, 1)
        except _Reached as reached:
            return reached.hidden[0]
        finally:
            self._armed = False
        raise RuntimeError("the forward did not pass the draft level")  # pragma: no cover - adapter bug

    def upper(self, hidden: torch.Tensor, ids: Sequence[int], cache: Any) -> torch.Tensor:
        """Logits (n, V) at every position of ``ids`` from their level-E states ``hidden`` (n, H).

        Blocks 1..E of ``ids`` must already be in the cache (from :meth:`lower`); blocks E+1..K
        must hold exactly the tokens before ``ids``.
        """
        E = self.level
        saved = hidden.unsqueeze(0)
        originals = [block.__dict__.get("forward") for block in self.blocks[:E]]

        def stand_in(*_args: Any, **_kwargs: Any) -> torch.Tensor:
            return saved

        layers = cache.layers
        lower_layers = layers[:E]
        upper_layers = layers[E:]
        for i in range(E):
            layers[i] = next((u for u in upper_layers if type(u) is type(lower_layers[i])), upper_layers[0])
        for block in self.blocks[:E]:
            block.forward = stand_in
        try:
            out = run_model(self.lm, ids, cache, 0)
        finally:
            for block, original in zip(self.blocks[:E], originals):
                if original is None:
                    del block.forward
                else:
                    block.forward = original
            layers[:E] = lower_layers
        return out.logits[0]
