"""Tiny random-init causal LMs of any model type transformers knows, built from its config offline.

The config of each type starts from its defaults; the generic sizes below replace every attribute
of that name the config (or any of its sub-configs) has, and :data:`PER_TYPE` adds what a family
needs to stay consistent at those sizes. Norm weights are perturbed so that a head without its
final norm, or with the wrong one, cannot reproduce the logits by accident.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

VOCAB = 128

SIZES: dict[str, Any] = dict(
    vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, intermediate_size=128, moe_intermediate_size=32, shared_expert_intermediate_size=32,
    num_experts=4, n_routed_experts=4, num_local_experts=4, num_experts_per_tok=2, n_shared_experts=1,
    n_group=1, topk_group=1,
    # encoder-decoder families whose causal LM is the decoder alone
    d_model=64, decoder_layers=3, encoder_layers=1, decoder_attention_heads=4, encoder_attention_heads=4,
    decoder_ffn_dim=128, encoder_ffn_dim=128,
    # multi-head latent attention (DeepSeek-style)
    q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
    # state-space layers (their reference scans are slow at the default state sizes)
    mamba_d_state=16, mamba_chunk_size=16, mamba_d_ssm=128,
    # linear-attention layers of hybrid models
    linear_head_dim=16, linear_num_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
    linear_num_key_heads=2, linear_num_value_heads=4,
    # per-layer token embeddings (Gemma 3n / 4)
    vocab_size_per_layer_input=VOCAB, hidden_size_per_layer_input=16,
)

# Extra attributes per model type (applied after SIZES, to the config and its text config).
PER_TYPE: dict[str, dict[str, Any]] = {
    "codegen": dict(rotary_dim=8),
    "gptj": dict(rotary_dim=8),
    "reformer": dict(is_decoder=True, axial_pos_embds_dim=(16, 48)),
    "mamba2": dict(num_heads=8, head_dim=16, n_groups=1),
    "xlnet": dict(d_head=16),
    "gpt_neo": dict(num_hidden_layers=2, attention_types=[[["global", "local"], 1]]),
    "dots3_note": dict(num_key_value_heads=4),
    "dots3_note_text": dict(num_key_value_heads=4),
    "zaya": dict(num_experts_per_tok=1),
    "prophetnet": dict(num_decoder_layers=3, num_encoder_layers=1),
    "gemma3n_text": dict(num_kv_shared_layers=0),
    "lfm2_moe": dict(layer_types=["conv", "full_attention", "conv"]),
    "blt": dict(encoder_hash_byte_group_vocab=64, hidden_size_global=64),
}

# Tokens ids that must stay inside the tiny vocabulary.
_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id",
              "cls_token_id", "mask_token_id", "unk_token_id")


def _declares(config: Any, name: str) -> bool:
    """Whether ``name`` is a setting of ``config`` (not a property derived from the others)."""
    if isinstance(getattr(type(config), name, None), property):
        return False
    return name in vars(config) or name in getattr(config, "attribute_map", {})


def overrides(config: Any, model_type: str, depth: int = 0) -> dict[str, Any]:
    """The tiny sizes ``config`` declares, as constructor arguments, sub-configs as nested dicts.

    Passing them to the constructor (rather than setting them afterwards) lets the config derive
    what depends on them (per-layer lists, head sizes) itself.
    """
    from transformers import PretrainedConfig

    sizes = {**SIZES, **PER_TYPE.get(model_type, {})}
    kwargs = {name: value for name, value in sizes.items() if _declares(config, name)}
    if "qk_rope_head_dim" in kwargs and "head_dim" not in PER_TYPE.get(model_type, {}):
        kwargs.pop("head_dim", None)  # latent attention derives its rotary head size itself
    for name in _TOKEN_IDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value >= VOCAB:
            kwargs[name] = VOCAB - 1 - _TOKEN_IDS.index(name)
        elif isinstance(value, list):
            kwargs[name] = [v if v < VOCAB else VOCAB - 1 for v in value]
    if depth < 2:
        for name, sub in vars(config).items():
            if isinstance(sub, PretrainedConfig):
                kwargs[name] = {"model_type": sub.model_type, **overrides(sub, model_type, depth + 1)}
    return kwargs


def tiny_config(model_type: str) -> Any:
    """The tiny config of ``model_type`` (raises what transformers raises when it cannot be built)."""
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **overrides(AutoConfig.for_model(model_type), model_type))


def tiny_causal_lm(model_type: str, seed: int = 0) -> torch.nn.Module:
    """A random-init causal LM of ``model_type`` in float32, eval mode, norm weights perturbed."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(model_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for module in model.modules():
            if "norm" in type(module).__name__.lower():
                for p in module.parameters(recurse=False):
                    p.add_(torch.randn_like(p) * 0.2)
    return model.eval()
