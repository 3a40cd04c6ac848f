"""Paper-scale plan: shortcut parameters, store sizes and measured extraction cost for the paper's models.

Builds gpt2-xl, Phi-3-mini-4k and Llama-2-7B from their architecture configs (no download): the
parameter counts come from H, K and r = floor(H/100) and must reproduce the paper's (2.76M -> 57.6K,
6.29M -> 196.6K, 11.01M -> 344.06K). With a CUDA GPU it also instantiates each model with random
weights in bfloat16 (same cost as the real weights) and measures onejump's extraction throughput
on real sentences (token ids of the offline corpus folded into each model's vocabulary, which keeps
the prefix lengths realistic), then estimates the time of the paper's 12k-sample extraction.

Usage: python benchmarks/paper_scale.py [--n 1000] [--device cuda]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from common import real_sentences, save

from onejump.evaluation.evaluator import parameter_counts
from onejump.extract import extract
from onejump.lenses.jumps import default_rank
from onejump.model.loading import from_pretrained_model
from onejump.store import store_nbytes

PAPER = {
    "gpt2-xl": dict(model_type="gpt2", n_embd=1600, n_layer=48, n_head=25, vocab_size=50257, n_positions=1024),
    "microsoft/Phi-3-mini-4k-instruct": dict(model_type="phi3", hidden_size=3072, num_hidden_layers=32,
                                             num_attention_heads=32, num_key_value_heads=32,
                                             intermediate_size=8192, vocab_size=32064,
                                             max_position_embeddings=4096, pad_token_id=32000),
    "meta-llama/Llama-2-7b-hf": dict(model_type="llama", hidden_size=4096, num_hidden_layers=32,
                                     num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008,
                                     vocab_size=32000, max_position_embeddings=4096),
}
PAPER_COUNTS = {"gpt2-xl": ("2.76M", "57.6K"), "microsoft/Phi-3-mini-4k-instruct": ("6.29M", "196.6K"),
                "meta-llama/Llama-2-7b-hf": ("11.01M", "344.06K")}


class FoldedTokenizer:
    """A real tokenizer whose ids are folded into a smaller vocabulary (timing only)."""

    def __init__(self, tok, vocab: int):
        self.tok, self.vocab = tok, vocab
        self.bos_token_id, self.pad_token_id, self.eos_token_id = None, 0, None

    def __call__(self, texts, add_special_tokens=True):
        ids = self.tok(texts, add_special_tokens=add_special_tokens)["input_ids"]
        return {"input_ids": [[i % self.vocab for i in row] for row in ids]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokenizer", default=None, help="folder with a tokenizer (default: the offline SmolLM2 one)")
    args = ap.parse_args()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    rows = {}
    sentences = real_sentences(args.n) if args.device != "cpu" else []
    base_tok = None
    if sentences:
        from onejump.io import DEFAULT_CACHE

        base_tok = AutoTokenizer.from_pretrained(args.tokenizer or str(DEFAULT_CACHE / "models" / "smollm2-135m"))
    for name, cfg in PAPER.items():
        cfg = dict(cfg)
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        H = config.hidden_size
        K = config.num_hidden_layers
        r = default_rank(H)
        params = parameter_counts(K, H, r)
        row = {"K": K, "H": H, "rank": r, "full_nnjtc_parameters": params["full"],
               "ojfa_parameters": params["ojfa"], "reduction_factor": params["reduction_factor"],
               "paper": {"full_nnjtc": PAPER_COUNTS[name][0], "ojfa": PAPER_COUNTS[name][1]},
               "store_gb_12k": {dt: round(store_nbytes(12000, K + 1, H, dt) / 1e9, 2)
                                for dt in ("float32", "float16")}}
        if sentences:
            torch.manual_seed(0)
            with torch.device(args.device):
                model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
            lm = from_pretrained_model(model.eval(), FoldedTokenizer(base_tok, config.vocab_size), name=name)
            with tempfile.TemporaryDirectory() as tmp:
                extract(lm, sentences[:64], f"{tmp}/warm", progress=False, store_dtype="float16")
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                store = extract(lm, sentences, f"{tmp}/s", progress=False, store_dtype="float16")
                torch.cuda.synchronize()
                secs = time.perf_counter() - t0
            tokens = store.manifest["total_prefix_tokens"]
            row["measured"] = {"device": torch.cuda.get_device_name(0), "sentences": len(sentences),
                               "prefix_tokens": tokens, "seconds": round(secs, 2),
                               "prefix_tokens_per_s": round(tokens / secs, 1),
                               "estimated_extract_seconds_12k": round(secs * 12000 / len(sentences), 1)}
            del model, lm
            torch.cuda.empty_cache()
        rows[name] = row
        print(name, row)
    save(f"paper-scale-{args.device}", {"benchmark": "paper_scale", "models": rows})


if __name__ == "__main__":
    main()
