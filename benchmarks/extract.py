"""Extraction throughput on the default model, as ratios against baselines run in the same process.

- onejump: ``onejump.extract`` (prefix-only, length-bucketed batches, hooks at every level, store writes);
- bare: a forward of the same base model over the same prefixes in the same batches, no hooks, no
  writes (the limit; target ratio >= 0.9);
- naive: each full sentence alone through the CausalLM with ``output_hidden_states=True``, keeping
  the sampled position (target: onejump >= 3x faster).

Each variant's peak resident memory is measured too (the high-water mark reset before each pass;
the model's own size is given beside it).

``--positions all`` (or N) keeps every (or N) position of each sentence from one forward of it; the
variants then run those forwards, and ``onejump_one`` (the same sentences, one position each) is
timed in the same process, alternated with the others, so that ``all_vs_one`` compares the two
settings under the same load: seconds, forwarded tokens per second and rows per second.

Usage: python benchmarks/extract.py [--n 600] [--model smollm2-135m] [--device cpu] [--dtype float32]
                                    [--repeats 3] [--no-naive] [--positions one|all|N]

``--no-naive`` skips the slow one-sentence-at-a-time baseline (for large models). Writes
benchmarks/results/extract-<device>[-<model>][-<dtype>][-positions-<P>].json (no model for
SmolLM2-135M, no dtype for float32, no positions for one).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from common import load_for_benchmark, peak_rss_mib, real_sentences, result_name, save

from onejump.extract import collate, extract, plan_batches, sample_positions
from onejump.extract_plan import forward_tokens, parse_positions
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
    ap.add_argument("--positions", default="one", type=parse_positions,
                    help="positions kept per sentence: one (default), all or N")
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)

    lm = load_for_benchmark(args.model, args.device, args.random_init, dtype=args.dtype)
    sentences = real_sentences(args.n, corpus=args.corpus)
    samples = sample_positions(lm.tokenizer, sentences, [0] * len(sentences), seed=0, positions=args.positions)
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

    def onejump(positions: str | int = args.positions) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            sync()
            t0 = time.perf_counter()
            extract(lm, sentences, f"{tmp}/store", seed=0, tokens_per_batch=args.tokens_per_batch, progress=False,
                    positions=positions)
            sync()
            return time.perf_counter() - t0

    def naive() -> float:
        sync()
        t0 = time.perf_counter()
        kept = []
        with torch.no_grad():
            for text, group in _by_sentence(sentences, samples):
                ids = torch.tensor([lm.tokenizer(text)["input_ids"]], device=lm.device)
                out = lm.model(ids, output_hidden_states=True)
                kept.append(torch.stack([h[0, [r.position for r in group]] for h in out.hidden_states]).cpu())
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
    t_bare, t_one, t_single = float("inf"), float("inf"), float("inf")
    for _ in range(args.repeats):
        t_bare = min(t_bare, probed("bare_forward", bare))
        t_one = min(t_one, probed("onejump", onejump))
        if args.positions != "one":
            t_single = min(t_single, probed("onejump_one", lambda: onejump("one")))
    t_naive = None if args.no_naive else probed("naive", naive)
    payload = _payload(args, lm, sentences, samples, batches, t_one, t_bare, t_naive, peaks)
    if args.positions != "one":
        payload["all_vs_one"] = _all_vs_one(lm, sentences, samples, t_one, t_single)
    name = result_name("extract", args.device, args.model, args.dtype)
    save(name + ("" if args.positions == "one" else f"-positions-{args.positions}"), payload)
    return payload


def _by_sentence(sentences, samples):
    """(text, its samples) per sentence, in order (the samples are listed sentence by sentence)."""
    groups: dict[int, list] = {}
    for s in samples:
        groups.setdefault(s.sample_id, []).append(s)
    return [(sentences[i], groups[i]) for i in sorted(groups)]


def _all_vs_one(lm, sentences, samples, t_many: float, t_one: float) -> dict:
    """The kept positions' extraction against one position per sentence, timed in the same process."""
    single = sample_positions(lm.tokenizer, sentences, [0] * len(sentences), seed=0)
    tokens = {"positions": forward_tokens(samples, range(len(samples))),
              "one": forward_tokens(single, range(len(single)))}
    rows = {"positions": len(samples), "one": len(single)}
    return {
        "seconds": {"positions": round(t_many, 3), "one": round(t_one, 3)},
        "forward_tokens": tokens,
        "rows": rows,
        "forward_tokens_per_s": {k: round(tokens[k] / t, 1) for k, t in (("positions", t_many), ("one", t_one))},
        "rows_per_s": {k: round(rows[k] / t, 1) for k, t in (("positions", t_many), ("one", t_one))},
        "seconds_ratio": round(t_many / t_one, 3),
        "rows_ratio": round(rows["positions"] / rows["one"], 2),
    }


def _payload(args, lm, sentences, samples, batches, t_one: float, t_bare: float, t_naive: float | None,
             peaks: dict) -> dict:
    prefix_tokens = forward_tokens(samples, range(len(samples)))  # the tokens run (prefixes with one position)
    full_tokens = sum(len(lm.tokenizer(s)["input_ids"]) for s in sentences)
    return {
        "benchmark": "extract",
        "model": lm.name,
        "device": str(lm.device),
        "sentences": len(sentences),
        "positions": args.positions,
        "rows": len(samples),
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
