"""Early-exit generation: speculative decoding's bound against what the implementation achieves.

For each configuration (mode, lens, draft level E, draft length g or dynamic) on the same real
Wikipedia prompts and number of new tokens, batch size 1, in one process:

- ``a``: per-token acceptance (accepted drafts / compared drafts);
- ``c``: drafting time per drafted token, ``v``: verification time per round, both as fractions of
  one step of our own greedy loop, measured on the run itself (``c_lens``: the lens's share of c);
- ``bound``: S = (1 - a^(g+1)) / ((1 - a)(g c + v)) (for a dynamic draft length: measured tokens
  per round over measured cost per round); ``achieved``: decoding speed-up over our greedy loop
  (prompt forward excluded from both); ``achieved_of_bound``;
- ``achieved_vs_generate``: end-to-end speed-up over ``model.generate`` (prompt included);
- ``identical``: output equal to ``model.generate`` token for token.

``generate+assistant`` rows run transformers' own ``model.generate`` with the lens as its assistant
model (:class:`onejump.generation.assistant.LensAssistant`) at each lens's best speculative
configuration: the assistant keeps its own KV cache for blocks 1..E and verification runs all K
blocks, so its bound is lower than cache reuse's at the same acceptance; its first round counts as
the prefill.

Each speculative configuration is timed right after a greedy run on the same prompts (paired), so
machine load drifts cancel. Confidence exits get the same keys, with a bound from measured unit
prices: blocks computed per token at the greedy loop's price per block, lens checks at their
measured price, the head for tokens the full model emits. It prices the recomputed blocks of
exited tokens (deferred exact KV) as if run alone; they run batched with the next token, which
is cheaper, so confidence rows can beat their "bound". A cProfile of the best configuration
says where the remaining time goes.

Usage: OMP_NUM_THREADS=1 python benchmarks/generate.py [--model smollm2-135m] [--prompts 3]
       [--new-tokens 20] [--levels 20,25,28] [--draft-lens 1,3] [--dynamic 0.5:6] [--jump FOLDER] [--no-reuse]
       [--no-assisted]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time

import torch
from common import RESULTS, peak_rss_mib, real_sentences, save

from onejump.generation import generate_confidence, generate_greedy, generate_reference, generate_speculative
from onejump.generation.assistant import generate_assisted
from onejump.generation.auto import warm_up
from onejump.generation.bound import greedy_step_seconds, speculative_costs
from onejump.lenses.base import Lens, LogitLens
from onejump.model.loading import load_model


def load_lenses(lm, names: list[str], jump: str | None, bank: str | None) -> dict[str, Lens]:
    lenses: dict[str, Lens] = {}
    for name in names:
        if name == "logit":
            lenses[name] = LogitLens(lm)
        elif name == "jump" and jump:
            lenses[name] = Lens.load(jump, lm)
        elif name == "bank" and bank:
            lenses[name] = Lens.load(bank, lm)
        elif name == "pretrained":  # the lens shipped with onejump for this model
            lenses[name] = Lens.load("pretrained", lm)
        else:
            raise SystemExit(f"lens '{name}' needs --{name} FOLDER" if name in ("jump", "bank") else
                             f"unknown lens '{name}' (logit, jump, bank, pretrained)")
    return lenses


def run_all(fn, prompts: list[list[int]], n: int) -> list:
    return [fn(p, n) for p in prompts]


def paired(lm, prompts, n, run) -> tuple[float, list]:
    """Greedy then ``run`` on each prompt in turn: (greedy seconds per decoding step, run's results).

    Alternating per prompt keeps both under the same machine load (the CPU may be shared).
    """
    greedy, outs = [], []
    for p in prompts:
        greedy.append(generate_greedy(lm, p, n))
        outs.append(run(p, n))
    steps = sum(len(r.tokens) - 1 for r in greedy)
    return sum(greedy_step_seconds(r) * (len(r.tokens) - 1) for r in greedy) / steps, outs


def speculative_row(lm, lens, prompts, n, refs, E, g, threshold, reuse=True):
    step, outs = paired(lm, prompts, n, lambda p, k: generate_speculative(
        lm, lens, p, k, draft_level=E, draft_len=g, draft_threshold=threshold, reuse_cache=reuse))
    row = speculative_costs(outs, step, None if threshold is not None else g)
    t_ref = sum(r.seconds for r in refs)
    row.update({"draft_level": E, "draft_len": g, "draft_threshold": threshold, "reuse_cache": reuse,
                "achieved_vs_generate": round(t_ref / sum(o.seconds for o in outs), 4),
                "identical": all(o.tokens == r.tokens for o, r in zip(outs, refs)),
                "greedy_step_ms": round(step * 1e3, 2)})
    return row


def assisted_row(lm, lens, prompts, n, refs, E, g, threshold):
    """transformers' own ``model.generate`` drafting with the lens (a :class:`LensAssistant`): its own KV
    cache for blocks 1..E, verification through all K blocks; same keys as a speculative row."""
    step, outs = paired(lm, prompts, n, lambda p, k: generate_assisted(
        lm, lens, p, k, draft_level=E, draft_len=g, draft_threshold=threshold))
    row = speculative_costs(outs, step, None if threshold is not None else g)
    row.update({"draft_level": E, "draft_len": g, "draft_threshold": threshold, "reuse_cache": False,
                "achieved_vs_generate": round(sum(r.seconds for r in refs) / sum(o.seconds for o in outs), 4),
                "identical": all(o.tokens == r.tokens for o, r in zip(outs, refs)),
                "greedy_step_ms": round(step * 1e3, 2)})
    return row


def unit_prices(lm, lens, level: int, reps: int = 20) -> dict[str, float]:
    """Seconds of the head and of the lens on one hidden vector (the exit checks' unit prices)."""
    h = torch.randn(1, lm.hidden_size, dtype=next(lm.model.parameters()).dtype, device=lm.device)
    out = {}
    with torch.no_grad():
        for name, fn in (("head", lambda: lm.adapter.head(h)), ("lens", lambda: lens(h, level))):
            fn()
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            out[name] = (time.perf_counter() - t) / reps
    return out


def confidence_row(lm, lens, prompts, n, refs, lam, levels):
    K = lm.num_blocks
    step, outs = paired(lm, prompts, n, lambda p, k: generate_confidence(lm, lens, p, k, lam=lam, exit_levels=levels))
    prices = unit_prices(lm, lens, levels[0])
    per_block = (step - prices["head"]) / K
    emitted = sum(len(o.tokens) - 1 for o in outs)
    prompt_work = sum(K * len(p) for p in prompts)
    work = sum(o.layer_work for o in outs) - prompt_work  # block applications after the prompt
    full = sum(sum(lv == K for lv in o.exit_levels[1:]) for o in outs)
    checks = sum(o.checks for o in outs)
    ideal = work * per_block + checks * prices["lens"] + full * prices["head"]
    decode = sum(o.decode_seconds for o in outs)
    bound, achieved = emitted * step / ideal, emitted * step / decode
    same = sum(a == b for o, r in zip(outs, refs) for a, b in zip(o.tokens, r.tokens))
    exits = [lv for o in outs for lv in o.exit_levels[1:]]
    return {"lambda": lam, "exit_levels": levels, "bound": round(bound, 4), "achieved": round(achieved, 4),
            "achieved_of_bound": round(achieved / bound, 4),
            "achieved_vs_generate": round(sum(r.seconds for r in refs) / sum(o.seconds for o in outs), 4),
            "token_agreement": round(same / max(1, sum(len(r.tokens) for r in refs)), 4),
            "mean_exit_level": round(sum(exits) / max(1, len(exits)), 2),
            "blocks_per_token": round(work / max(1, emitted), 2),
            "checks_per_token": round(checks / max(1, emitted), 2),
            "c_lens": round(prices["lens"] / step, 4), "head_fraction": round(prices["head"] / step, 4)}


def profile(lm, lens, prompt, n, row, suffix: str) -> dict:
    prof = cProfile.Profile()
    prof.enable()
    res = generate_speculative(lm, lens, prompt, n, draft_level=row["draft_level"], draft_len=row["draft_len"],
                               draft_threshold=row["draft_threshold"])
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
    (RESULTS / f"generate-cpu{suffix}-profile.txt").write_text(buf.getvalue())
    lower = res.draft_seconds - res.lens_seconds
    split = {"prefill": res.prefill_seconds, "draft_blocks_1_to_E": lower, "draft_lens": res.lens_seconds,
             "verify": res.verify_seconds,
             "loop_overhead": res.seconds - res.prefill_seconds - res.draft_seconds - res.verify_seconds}
    return {k: round(v / res.seconds, 4) for k, v in split.items()}


def merge_previous(results: dict, path) -> dict:
    """The earlier results of the same model, prompts and tokens, with their configurations put first."""
    previous = json.loads(path.read_text())
    previous.pop("machine", None)
    for key in ("model", "prompts", "new_tokens"):
        if previous.get(key) != results[key]:
            raise SystemExit(f"--append: {path} has another {key}; rerun without --append")
    results["configurations"] = previous["configurations"] + results["configurations"]
    return previous


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lenses", default="logit", help="lenses to draft with, comma-separated: logit, jump (--jump), "
                                                      "bank (--bank), pretrained (the shipped lens) (default: "
                                                      "%(default)s)")
    ap.add_argument("--jump", default=None, help="a lens or jump folder, e.g. RUN/lenses/ojfa (for --lenses jump)")
    ap.add_argument("--bank", default=None, help="a per-level jump bank folder, e.g. RUN/lenses/nnjtc (for "
                                                 "--lenses bank); jump lenses read through their rank-r head")
    ap.add_argument("--append", action="store_true",
                    help="add these configurations to the existing results file (same model, prompts, tokens)")
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--words", type=int, default=10, help="words of each sentence used as prompt")
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--levels", default=None, help="draft levels E, comma-separated (default: 2K/3, 5K/6, K-2)")
    ap.add_argument("--draft-lens", default="1,3", help="fixed draft lengths g (default: %(default)s)")
    ap.add_argument("--dynamic", default="0.5:6", help="dynamic draft length as THRESHOLD:MAX_LEN, or 'none'")
    ap.add_argument("--lambdas", default="0.9,0.99", help="confidence-exit thresholds (default: %(default)s)")
    ap.add_argument("--no-reuse", action="store_true", help="also time verification without cache reuse")
    ap.add_argument("--no-assisted", action="store_true",
                    help="skip transformers' generate with the lens as assistant model (each lens's best E, g)")
    return ap


def main() -> None:
    args = _parser().parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)
    lm = load_model(args.model, device="cpu")
    K = lm.num_blocks
    lenses = load_lenses(lm, args.lenses.split(","), args.jump, args.bank)
    texts = [" ".join(s.split()[:args.words]) for s in real_sentences(args.prompts, seed=1)]
    prompts = [lm.tokenizer(t)["input_ids"] for t in texts]
    n = args.new_tokens
    levels = [int(x) for x in args.levels.split(",")] if args.levels else sorted({(2 * K) // 3, (5 * K) // 6, K - 2})
    configs: list[tuple[int, float | None]] = [(int(g), None) for g in args.draft_lens.split(",")]
    if args.dynamic != "none":
        thr, most = args.dynamic.split(":")
        configs.append((int(most), float(thr)))

    generate_reference(lm, prompts[0], 4)  # warm-up
    for lens in lenses.values():
        warm_up(lm, lens, levels)
    refs = run_all(lambda p, k: generate_reference(lm, p, k), prompts, n)
    greedy = run_all(lambda p, k: generate_greedy(lm, p, k), prompts, n)
    results: dict = {"benchmark": "generate", "model": args.model, "device": "cpu", "prompts": texts,
                     "new_tokens": n, "num_blocks": K,
                     "model_generate_seconds": round(sum(r.seconds for r in refs), 3),
                     "own_greedy_seconds": round(sum(r.seconds for r in greedy), 3),
                     "own_greedy_identical": all(g.tokens == r.tokens for g, r in zip(greedy, refs)),
                     "configurations": []}
    t_start = time.perf_counter()
    for name, lens in lenses.items():
        for E in levels:
            for g, thr in configs:
                row = {"mode": "speculative", "lens": name,
                       **speculative_row(lm, lens, prompts, n, refs, E, g, thr)}
                results["configurations"].append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        for lam in [float(x) for x in args.lambdas.split(",") if x]:
            row = {"mode": "confidence", "lens": name,
                   **confidence_row(lm, lens, prompts, n, refs, lam, [lv for lv in levels if lv < K])}
            results["configurations"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    name = "generate-cpu" if args.model == "smollm2-135m" else f"generate-cpu-{args.model}"
    previous = merge_previous(results, RESULTS / f"{name}.json") if args.append else None
    spec = [r for r in results["configurations"] if r["mode"] == "speculative" and r["lens"] in lenses]
    best = max(spec, key=lambda r: r["achieved"])
    if args.no_reuse:  # the same configuration, verification rerunning blocks 1..E on the drafted tokens
        row = {"mode": "speculative", "lens": best["lens"],
               **speculative_row(lm, lenses[best["lens"]], prompts, n, refs, best["draft_level"], best["draft_len"],
                                 best["draft_threshold"], reuse=False)}
        results["configurations"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    if not args.no_assisted:  # each lens's best configuration, driven by transformers' generate itself
        for lens_name, lens in lenses.items():
            own = max((r for r in spec if r["lens"] == lens_name), key=lambda r: r["achieved"])
            row = {"mode": "generate+assistant", "lens": lens_name,
                   **assisted_row(lm, lens, prompts, n, refs, own["draft_level"], own["draft_len"],
                                  own["draft_threshold"])}
            results["configurations"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    suffix = name.removeprefix("generate-cpu")
    results[f"best_{'_'.join(lenses)}"] = best
    results[f"best_{'_'.join(lenses)}_time_split"] = profile(lm, lenses[best["lens"]], prompts[0], n, best, suffix)
    results["seconds"] = round(time.perf_counter() - t_start, 1) + (previous or {}).get("seconds", 0)
    results["peak_rss_mib"] = round(peak_rss_mib(), 1)
    results["target"] = "speculative: achieved >= 0.9 of the bound, identical output"
    save(name, {**(previous or {}), **results})
    _print_table(results)


def _print_table(results: dict) -> None:
    """The configurations as a markdown table: bound, achieved, and their ratio."""
    print("| mode | lens | E | g | a | c | v | bound | achieved | of bound | vs model.generate | identical |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["configurations"]:
        g = str(r.get("draft_len", ""))
        if r.get("draft_threshold"):
            g = f"<={g} @ p>={r['draft_threshold']}"
        mode = r["mode"] + ("" if r.get("reuse_cache", True) else " (no cache reuse)")
        if r["mode"] == "confidence":
            mode, g = f"confidence lambda={r['lambda']}", f"agreement {r['token_agreement']}"
        print(f"| {mode} | {r['lens']} | {r.get('draft_level', '')} | {g} | {r.get('acceptance', '')} | "
              f"{r.get('c', '')} | {r.get('v', '')} | {r['bound']:.2f} | {r['achieved']:.2f} | "
              f"{r['achieved_of_bound']:.2f} | {r['achieved_vs_generate']:.2f} | {r.get('identical', '')} |")


if __name__ == "__main__":
    main()
