"""The architecture adapter: where the blocks, the final norm and the unembedding are (an explicit
per-architecture table, else discovery from the module tree and config), the exact head (final norm,
unembedding, logit scaling / soft-capping), the final norm's parameters for the rank-r head, and
hooks that capture every level. Every adapter proves itself on a probe input before it is used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ArchitectureMismatchError, UnsupportedArchitectureError
from .discovery import Parts, discover, logit_finish, text_config
from .probe import Mismatch, head_difference, run_probe


def _get(obj: Any, dotted: str) -> Any:
    """Attribute at a dotted path; ``a|b`` tries alternatives (names differ across transformers versions)."""
    if "|" in dotted:
        for alt in dotted.split("|"):
            found = _get(obj, alt)
            if found is not None:
                return found
        return None
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


@dataclass(frozen=True)
class ArchSpec:
    """Where the parts of one architecture family live (dotted attribute paths from the CausalLM)."""

    base: str
    blocks: str
    final_norm: str | None
    unembed: str
    project_out: str | None = None  # OPT-350m style projection between norm and unembedding


# model_type -> ArchSpec. Explicit, tested on tiny random models in tests/test_models.py.
_LLAMA_LIKE = ArchSpec(base="model", blocks="model.layers", final_norm="model.norm", unembed="lm_head")
ARCHITECTURES: dict[str, ArchSpec] = {
    "gpt2": ArchSpec(base="transformer", blocks="transformer.h", final_norm="transformer.ln_f", unembed="lm_head"),
    "gpt_neox": ArchSpec(
        base="gpt_neox", blocks="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm", unembed="lm_head|embed_out"
    ),
    "opt": ArchSpec(
        base="model.decoder",
        blocks="model.decoder.layers",
        final_norm="model.decoder.final_layer_norm",
        unembed="lm_head",
        project_out="model.decoder.project_out",
    ),
    **{
        name: _LLAMA_LIKE
        for name in (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen3",
            "phi3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo",
            "olmo2",
            "granite",
            "cohere",
            "stablelm",
        )
    },
}


def _table_parts(model: nn.Module, model_type: str, spec: ArchSpec) -> Parts:
    base = _get(model, spec.base)
    blocks = _get(model, spec.blocks)
    unembed = _get(model, spec.unembed)
    missing = [
        name for name, part in (("base model", base), ("block list", blocks), ("unembedding", unembed)) if part is None
    ]
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        missing.append(f"block list at '{spec.blocks}'")
    if missing:
        raise UnsupportedArchitectureError(
            f"could not find {', '.join(missing)} in {type(model).__name__} (model_type '{model_type}')"
        )
    final_norm = _get(model, spec.final_norm) if spec.final_norm else None
    project_out = _get(model, spec.project_out) if spec.project_out else None
    return Parts(base, blocks, spec.blocks, (final_norm,), unembed, project_out)


@dataclass
class NormParams:
    """The final norm written out, so that the head can be applied in low-rank form.

    ``norm(x) = (x - mean(x) if centred) * rsqrt(var_or_ms(x) + eps) * weight + bias``.
    """

    kind: str  # "rmsnorm" | "layernorm" | "identity"
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float


@dataclass
class ArchitectureAdapter:
    """The parts of a causal LM that onejump needs, found by explicit per-architecture lookups."""

    model: nn.Module
    model_type: str
    base: nn.Module
    blocks: nn.ModuleList
    final_norm: nn.Module | None
    unembed: nn.Module
    project_out: nn.Module | None = None
    logit_softcap: float | None = None
    logit_scale: float | None = None  # multiply (Cohere) ; Granite divides: stored as 1/x
    width: int | None = None  # H as the probe saw it (a composite model's config may not say)
    _norm_params: NormParams | None = field(default=None, repr=False)

    @classmethod
    def from_model(cls, model: nn.Module, *, verify: bool = True) -> ArchitectureAdapter:
        """Find the parts of ``model`` (the table, else discovery) and prove them on a probe input.

        Raises :class:`UnsupportedArchitectureError` naming what is missing, or
        :class:`ArchitectureMismatchError` naming what differed on the probe
        (:mod:`onejump.model.probe`). ``verify=False`` skips the probe (the first proposal is used).
        """
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        if model_type is None:
            raise UnsupportedArchitectureError("model has no config.model_type; is it a transformers causal LM?")
        who = f"architecture '{model_type}' ({type(model).__name__})"
        spec = ARCHITECTURES.get(model_type)
        if spec is not None:
            proposals = [_table_parts(model, model_type, spec)]
        else:
            proposals, why = discover(model)
            if not proposals:
                raise UnsupportedArchitectureError(f"{who} is not in onejump's table and discovery found {why}")
        scale, softcap = logit_finish(model)

        def build(parts: Parts, norm: nn.Module | None) -> ArchitectureAdapter:
            return cls(model=model, model_type=model_type, base=parts.base, blocks=parts.blocks, final_norm=norm,
                       unembed=parts.unembed, project_out=parts.project_out, logit_softcap=softcap,
                       logit_scale=scale)

        if not verify:
            return build(proposals[0], proposals[0].norms[0])
        failures = []
        for parts in proposals:
            first = build(parts, parts.norms[0])
            try:
                levels, logits = run_probe(first)
            except Mismatch as exc:
                failures.append(f"blocks at '{parts.blocks_path}': {exc}")
                continue
            for norm in parts.norms:
                adapter = build(parts, norm)
                differs = head_difference(adapter, levels[-1], logits)
                if differs is None:
                    adapter.width = int(levels[-1].shape[-1])
                    return adapter
            failures.append(f"blocks at '{parts.blocks_path}': {head_difference(first, levels[-1], logits)}")
        raise ArchitectureMismatchError(f"{who} refused: {failures[0]}")

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        """K, the number of transformer blocks (levels are 0..K)."""
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        """H, the width of the residual stream."""
        if self.width is not None:
            return self.width
        return int(text_config(self.model).hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.unembed.weight.shape[0])

    # ---- the head ---------------------------------------------------------------------------
    def apply_norm(self, h: torch.Tensor) -> torch.Tensor:
        """The final norm (identity where the architecture has none)."""
        return self.final_norm(h) if self.final_norm is not None else h

    def finish_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """What the architecture applies to raw unembedding outputs (scaling, soft-capping)."""
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.logit_softcap is not None:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Everything after the last block: final norm, unembedding, logit scaling/soft-capping."""
        x = self.apply_norm(h)
        if self.project_out is not None:
            x = self.project_out(x)
        return self.finish_logits(self.unembed(x))

    def unembedding_matrix(self) -> torch.Tensor:
        """W_U as (V, H'), H' the width entering the unembedding."""
        return self.unembed.weight

    def unembedding_bias(self) -> torch.Tensor | None:
        return getattr(self.unembed, "bias", None)

    def norm_params(self) -> NormParams:
        """The final norm's kind and parameters, verified numerically against the module itself.

        Raises :class:`UnsupportedArchitectureError` if the norm is of a form onejump cannot write
        out (then only the full head can be used).
        """
        if self._norm_params is not None:
            return self._norm_params
        norm = self.final_norm
        if self.project_out is not None:
            raise UnsupportedArchitectureError("low-rank head: a projection after the final norm is not supported")
        if norm is None:
            params = NormParams("identity", None, None, 0.0)
        else:
            cls_name = type(norm).__name__.lower()
            weight = getattr(norm, "weight", None)
            bias = getattr(norm, "bias", None)
            eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", None) or 1e-6
            if isinstance(norm, nn.LayerNorm) or "layernorm" in cls_name and "rms" not in cls_name:
                kind = "layernorm"
            elif "rmsnorm" in cls_name:
                kind = "rmsnorm"
            else:
                raise UnsupportedArchitectureError(f"final norm {type(norm).__name__} is not a known norm")
            plain = weight.detach().float() if weight is not None else None
            # Gemma-style norms scale by (1 + w); which form the module uses is decided numerically
            forms = [plain] if plain is None else [1.0 + plain, plain]
            if not self.model_type.startswith("gemma"):
                forms.reverse()
            bias = bias.detach().float() if bias is not None else None
            for form in forms:
                params = NormParams(kind, form, bias, float(eps))
                if self._norm_matches(params):
                    break
            else:
                raise UnsupportedArchitectureError(
                    f"final norm {type(norm).__name__} does not behave like a {kind}"
                )
        self._norm_params = params
        return params

    def _norm_matches(self, params: NormParams) -> bool:
        ref_param = next(self.final_norm.parameters(), None)
        device = ref_param.device if ref_param is not None else torch.device("cpu")
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(4, self.hidden_size, generator=gen).to(device) * 3.0
        dtype = ref_param.dtype if ref_param is not None else torch.float32
        with torch.no_grad():
            expected = self.final_norm(x.to(dtype)).float()
            got = apply_norm_params(params, x.to(dtype).float())
        return torch.allclose(expected, got, rtol=1e-2 if dtype != torch.float32 else 1e-4, atol=1e-3)

    # ---- capture --------------------------------------------------------------------------------
    def level_hooks(self, sink: Callable[[int, torch.Tensor], None]) -> list[torch.utils.hooks.RemovableHandle]:
        """Register hooks that call ``sink(level, hidden)`` for levels 0..K during a forward pass.

        Level 0 is captured as the input of block 1 (after any embedding scaling); level k as the
        output of block k; level K is therefore the residual stream before the final norm.
        """

        def pre_hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            sink(0, hidden)

        def make_hook(level: int) -> Callable:
            def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
                sink(level, output[0] if isinstance(output, (tuple, list)) else output)

            return hook

        handles = [self.blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)]
        for k, block in enumerate(self.blocks, start=1):
            handles.append(block.register_forward_hook(make_hook(k)))
        return handles


def apply_norm_params(params: NormParams, x: torch.Tensor) -> torch.Tensor:
    """Apply a written-out norm to ``x`` (float32)."""
    if params.kind == "identity":
        return x
    if params.kind == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + params.eps)
    if params.weight is not None:
        y = y * params.weight.to(y.device)
    if params.bias is not None:
        y = y + params.bias.to(y.device)
    return y
