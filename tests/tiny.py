"""Tiny random-init causal LMs built from configs (no downloads), one per supported family."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128)

CONFIGS: dict[str, dict] = {
    "gpt2": dict(vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=128),
    "gpt_neox": dict(COMMON, max_position_embeddings=128),
    "opt": dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, ffn_dim=128,
                max_position_embeddings=128, word_embed_proj_dim=64),
    "llama": dict(COMMON, num_key_value_heads=2, max_position_embeddings=128),
    "mistral": dict(COMMON, num_key_value_heads=2, max_position_embeddings=128),
    "qwen2": dict(COMMON, num_key_value_heads=2, max_position_embeddings=128),
    "qwen3": dict(COMMON, num_key_value_heads=2, head_dim=16, max_position_embeddings=128),
    "phi3": dict(COMMON, num_key_value_heads=4, max_position_embeddings=128, pad_token_id=0),
    "gemma": dict(COMMON, num_key_value_heads=1, head_dim=16, max_position_embeddings=128),
    "gemma2": dict(COMMON, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                   final_logit_softcapping=5.0, sliding_window=16),
    "gemma3_text": dict(COMMON, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
                        final_logit_softcapping=5.0, sliding_window=16),
}
ARCHS = sorted(CONFIGS)


def tiny_model(model_type: str = "llama", seed: int = 0) -> torch.nn.Module:
    """A random-init model; norms get random weights so the head test is not trivial."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **CONFIGS[model_type])
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII (ids < VOCAB)."""
    chars = [chr(i) for i in range(32, 32 + VOCAB - 4)]
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    vocab.update({c: i + 4 for i, c in enumerate(chars)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>")
