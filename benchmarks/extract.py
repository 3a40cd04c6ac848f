"""Extraction throughput on the default model, as ratios against baselines run in the same process.

- onejump: ``onejump.extract`` (prefix-only, length-bucketed batches, hooks at every level, store writes);
- bare: a forward of the same base model over the same prefixes in the same batches, no hooks, no
  writes (the limit; target ratio >= 0.9);
- naive: each full sentence alone through the CausalLM with ``output_hidden_states=True``, keeping
  the sampled position (target: onejump >= 3x faster).

Each variant's peak resident memory is measured too (the high-water mark reset before each pass;
the model's own size is given beside it).

Usage: python benchmarks/extract.py [--n 600] [--model smollm2-135m] [--device cpu] [--dtype float32]
                                    [--repeats 3] [--no-naive]

``--no-naive`` skips the slow one-sentence-at-a-time baseline (for large models). Writes
benchmarks/results/extract-<device>[-<model>][-<dtype>].json (no model for SmolLM2-135M, no dtype for
float32).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from common import load_for_benchmark, peak_rss_mib, real_sentences, result_name, save

from onejump.extract import collate, extract, plan_batches, sample_positions
from onejump.memory import PeakProbe, module_mib


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=600, help="sentences (default 600)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens-per-batch", type=int, default=8192)
    ap.add_argument("--random-init", action="store_true",
                    help="--model is a folder with config + tokenizer only; weights are random (same cost)")
    ap.add_argument("--dtype", default="float32", help="the model's dtype (float32, bfloat16)")
    ap.add_argument("--repeats", type=int, default=3, help="passes of bare forward and onejump each; the best counts")
    ap.add_argument("--no-naive", action="store_true", help="skip the slow one-sentence-at-a-time baseline")
    ap.add_argument("--corpus", default="wikipedia-offline", help="sentences from this corpus (name or file)")
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)

    lm = load_for_benchmark(args.model, args.device, args.random_init, dtype=args.dtype)
    sentences = real_sentences(args.n, corpus=args.corpus)
    samples = sample_positions(lm.tokenizer, sentences, [0] * len(sentences), seed=0)
    batches = plan_batches(samples, tokens_per_batch=args.tokens_per_batch)
    pad = lm.tokenizer.pad_token_id or 0
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)

    # warm-up
    with torch.no_grad():
        ids, mask, _ = collate(samples, batches[len(batches) // 2], pad, lm.device)
        lm.adapter.base(input_ids=ids, attention_mask=mask, use_cache=False)

    def bare() -> float:
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            for batch in batches:
                ids, mask, _ = collate(samples, batch, pad, lm.device)
                lm.adapter.base(input_ids=ids, attention_mask=mask, use_cache=False)
        sync()
        return time.perf_counter() - t0

    def onejump() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            sync()
            t0 = time.perf_counter()
            extract(lm, sentences, f"{tmp}/store", seed=0, tokens_per_batch=args.tokens_per_batch, progress=False)
            sync()
            return time.perf_counter() - t0

    def naive() -> float:
        sync()
        t0 = time.perf_counter()
        kept = []
        with torch.no_grad():
            for text, s in zip(sentences, samples):
                ids = torch.tensor([lm.tokenizer(text)["input_ids"]], device=lm.device)
                out = lm.model(ids, output_hidden_states=True)
                kept.append(torch.stack([h[0, s.position] for h in out.hidden_states]).cpu())
        sync()
        return time.perf_counter() - t0

    peaks: dict[str, dict] = {}  # variant: {peak_rss_mib: the highest over its passes, method}

    def probed(name: str, fn) -> float:
        with PeakProbe() as probe:
            seconds = fn()
        top = max(peaks.get(name, {}).get("peak_rss_mib", 0.0), round(probe.peak_mib, 1))
        peaks[name] = {"peak_rss_mib": top, "method": "stage peak" if probe.exact else "process peak so far"}
        return seconds

    # alternate the two fast variants so that load changes hit both alike; keep the best of each
    t_bare, t_one = float("inf"), float("inf")
    for _ in range(args.repeats):
        t_bare = min(t_bare, probed("bare_forward", bare))
        t_one = min(t_one, probed("onejump", onejump))
    t_naive = None if args.no_naive else probed("naive", naive)
    payload = _payload(args, lm, sentences, samples, batches, t_one, t_bare, t_naive, peaks)
    save(result_name("extract", args.device, args.model, args.dtype), payload)
    return payload


def _payload(args, lm, sentences, samples, batches, t_one: float, t_bare: float, t_naive: float | None,
             peaks: dict) -> dict:
    prefix_tokens = sum(len(s.tokens) for s in samples)
    full_tokens = sum(len(lm.tokenizer(s)["input_ids"]) for s in sentences)
    return {
        "benchmark": "extract",
        "model": lm.name,
        "device": str(lm.device),
        "sentences": len(sentences),
        "prefix_tokens": prefix_tokens,
        "full_sentence_tokens": full_tokens,
        "batches": len(batches),
        "dtype": args.dtype,
        "repeats": args.repeats,
        "seconds": {"onejump": round(t_one, 3), "bare_forward": round(t_bare, 3),
                    "naive": None if t_naive is None else round(t_naive, 3)},
        "prefix_tokens_per_s": {
            "onejump": round(prefix_tokens / t_one, 1),
            "bare_forward": round(prefix_tokens / t_bare, 1),
            "naive": None if t_naive is None else round(prefix_tokens / t_naive, 1),
        },
        "ratio_vs_bare_forward": round(t_bare / t_one, 3),
        "speedup_vs_naive": None if t_naive is None else round(t_naive / t_one, 2),
        "targets": {"ratio_vs_bare_forward": ">= 0.9", "speedup_vs_naive": ">= 3"},
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "model_mib": round(module_mib(lm.model), 1),
        "peak_rss_by_variant_mib": peaks,
    }


if __name__ == "__main__":
    main()
