"""Early-exit generation speed and quality on real Wikipedia prompts, all in one process.

Same prompts (openings of real test sentences), same number of new tokens, batch size 1:
- ``model.generate`` greedy (the reference and baseline);
- onejump's own greedy loop (same cache mechanics as the early-exit modes, no exits);
- self-speculative decoding with the OJFA jump, for a sweep of draft levels E and draft lengths
  (must be identical to ``model.generate``);
- confidence early exit at several lambdas (agreement with the reference, layers per token),
  plotted as a speed-vs-quality curve.

Usage: python benchmarks/generate.py [--run runs/demo] [--prompts 8] [--new-tokens 32]
Needs a run folder with a trained OJFA jump (``make demo`` makes runs/demo).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
from pathlib import Path

import torch
from common import RESULTS, peak_rss_mib, save

from onejump.experiment.run import Run
from onejump.generation import (
    generate_confidence,
    generate_greedy,
    generate_reference,
    generate_speculative,
    jump_predictor,
    logit_lens_predictor,
)
from onejump.lenses.onejump import OneJump
from onejump.model.loading import load_model


def prompts_from(run: Run, n: int, words: int) -> list[str]:
    from onejump.corpus.loaders import load_sentences, split_sentences

    args = run.data_args()
    split = split_sentences(load_sentences(args.corpus), args.n_train, args.n_test, seed=args.seed)
    return [" ".join(s.text.split()[:words]) for s in split.test[:n]]


def agreement(tokens: list[int], ref: list[int]) -> tuple[float, float]:
    """(fraction of positions equal, length of the common prefix / length)."""
    same = sum(a == b for a, b in zip(tokens, ref)) / max(1, len(ref))
    prefix = 0
    while prefix < min(len(tokens), len(ref)) and tokens[prefix] == ref[prefix]:
        prefix += 1
    return same, prefix / max(1, len(ref))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/demo", help="run folder with shortcuts/ojfa (default runs/demo)")
    ap.add_argument("--jump", default=None,
                    help="another jump folder to compare side by side, e.g. runs/demo/sweep/best (the best single "
                         "jump of `onejump sweep`)")
    ap.add_argument("--jump-name", default="best", help="its name in the output (default: best)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--words", type=int, default=10, help="words of each sentence used as prompt")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--levels", default=None, help="comma-separated draft levels E to sweep (default: K/3..K-2)")
    ap.add_argument("--draft-lens", default="2,4,6")
    ap.add_argument("--lambdas", default="0.5,0.7,0.9,0.99")
    args = ap.parse_args()

    torch.manual_seed(0)
    run = Run(args.run, device=args.device, progress=False)
    lm = load_model(run.data_args().model, device=args.device)
    K = lm.num_blocks
    jumps = {"ojfa": OneJump.load(run.shortcut_dir("ojfa"), fingerprint=lm.fingerprint)}
    if args.jump:
        jumps[args.jump_name] = OneJump.load(args.jump, fingerprint=lm.fingerprint)
    prompts = [lm.tokenizer(p)["input_ids"] for p in prompts_from(run, args.prompts, args.words)]
    n = args.new_tokens
    levels = [int(x) for x in args.levels.split(",")] if args.levels else sorted({K // 3, K // 2, (2 * K) // 3,
                                                                                  (5 * K) // 6, K - 2})
    draft_lens = [int(x) for x in args.draft_lens.split(",")]
    lambdas = [float(x) for x in args.lambdas.split(",")]

    generate_reference(lm, prompts[0], 4)  # warm-up
    refs = [generate_reference(lm, p, n) for p in prompts]
    t_ref = sum(r.seconds for r in refs)
    tokens_ref = sum(len(r.tokens) for r in refs)
    greedy = [generate_greedy(lm, p, n) for p in prompts]
    t_greedy = sum(r.seconds for r in greedy)
    identical_greedy = all(g.tokens == r.tokens for g, r in zip(greedy, refs))

    results: dict = {"benchmark": "generate", "model": run.data_args().model, "device": args.device,
                     "prompts": len(prompts), "new_tokens": n, "num_blocks": K,
                     "model_generate": {"seconds": round(t_ref, 3), "tokens_per_s": round(tokens_ref / t_ref, 2)},
                     "own_greedy": {"seconds": round(t_greedy, 3), "tokens_per_s": round(tokens_ref / t_greedy, 2),
                                    "speedup_vs_generate": round(t_ref / t_greedy, 3),
                                    "identical": identical_greedy}}
    best = None
    predictors = {name: jump_predictor(lm, jump) for name, jump in jumps.items()}
    predictors["logit_lens"] = logit_lens_predictor(lm)  # the identity shortcut, for reference
    for name, predictor in predictors.items():
        spec_rows = []
        for E in levels:
            for d in draft_lens:
                outs = [generate_speculative(lm, predictor, p, n, draft_level=E, draft_len=d) for p in prompts]
                secs = sum(o.seconds for o in outs)
                drafted = sum(o.drafted for o in outs)
                row = {"draft_level": E, "draft_len": d, "seconds": round(secs, 3),
                       "speedup_vs_generate": round(t_ref / secs, 3),
                       "speedup_vs_own_greedy": round(t_greedy / secs, 3),
                       "acceptance_rate": round(sum(o.accepted for o in outs) / max(1, drafted), 3),
                       "identical": all(o.tokens == r.tokens for o, r in zip(outs, refs))}
                spec_rows.append(row)
                print(name, row, file=sys.stderr)
        conf_rows = []
        for lam in lambdas:
            outs = [generate_confidence(lm, predictor, p, n, lam=lam) for p in prompts]
            secs = sum(o.seconds for o in outs)
            agree = [agreement(o.tokens, r.tokens) for o, r in zip(outs, refs)]
            exits = [lv for o in outs for lv in o.exit_levels]
            row = {"lambda": lam, "seconds": round(secs, 3), "speedup_vs_generate": round(t_ref / secs, 3),
                   "token_agreement": round(sum(a for a, _ in agree) / len(agree), 3),
                   "prefix_agreement": round(sum(b for _, b in agree) / len(agree), 3),
                   "mean_exit_level": round(sum(exits) / len(exits), 2),
                   "early_exit_fraction": round(sum(lv < K for lv in exits) / len(exits), 3),
                   "layer_work_per_token": round(sum(o.layer_work for o in outs) / max(1, len(exits)), 2)}
            conf_rows.append(row)
            print(name, row, file=sys.stderr)
        top = max(spec_rows, key=lambda r: r["speedup_vs_generate"])
        results[name] = {"chosen_jump": jumps[name].chosen_jump if name in jumps else None,
                         "residual": bool(jumps[name].bank.residual) if name in jumps else None,
                         "rank": jumps[name].rank if name in jumps else None,
                         "speculative": spec_rows, "best_speculative": top, "confidence": conf_rows}
        if name == "ojfa":
            best = top
            _plot(conf_rows, spec_rows, K, RESULTS / f"generate-{args.device}.png", run.data_args().model)

    # where the time goes: profile the best speculative setting on one prompt
    predictor = jump_predictor(lm, jumps["ojfa"])
    prof = cProfile.Profile()
    prof.enable()
    generate_speculative(lm, predictor, prompts[0], n, draft_level=best["draft_level"], draft_len=best["draft_len"])
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(18)
    (RESULTS / f"generate-{args.device}-profile.txt").write_text(buf.getvalue())
    results["side_by_side"] = {
        name: {"best_speculative_speedup": results[name]["best_speculative"]["speedup_vs_generate"],
               "acceptance_at_best": results[name]["best_speculative"]["acceptance_rate"],
               "max_acceptance": max(r["acceptance_rate"] for r in results[name]["speculative"]),
               "confidence": [(r["lambda"], r["speedup_vs_generate"], r["token_agreement"])
                              for r in results[name]["confidence"]]}
        for name in predictors}
    print(json.dumps(results["side_by_side"], indent=1))
    results["peak_rss_mib"] = round(peak_rss_mib(), 1)
    results["target"] = "speculative >= 1.3x model.generate, identical output"
    save(f"generate-{args.device}", results)


def _plot(conf_rows: list[dict], spec_rows: list[dict], K: int, path: Path, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([r["speedup_vs_generate"] for r in conf_rows], [r["token_agreement"] for r in conf_rows], "o-",
            label="confidence exit (lambda sweep)")
    for r in conf_rows:
        ax.annotate(f"λ={r['lambda']}", (r["speedup_vs_generate"], r["token_agreement"]), fontsize=8)
    ax.scatter([r["speedup_vs_generate"] for r in spec_rows], [1.0] * len(spec_rows), marker="x", color="tab:red",
               label="self-speculative (identical output), E x draft length")
    ax.axvline(1.0, color="gray", linewidth=0.8)
    ax.set_xlabel("speed-up over model.generate (tokens/s ratio)")
    ax.set_ylabel("token agreement with full-model greedy")
    ax.set_title(f"{model}: early-exit generation, speed vs quality (K={K})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
