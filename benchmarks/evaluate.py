"""Evaluation's costs on a run folder: the rank-r head, the exit records, and memory vs test-set size.

- reuse: precision@1/@5 and surprisal for every (jump m, level k) pair on the same test rows,
  (a) through onejump's rank-r head (``head(jump(h)) = (z @ M) / scale(z) + c``, exact;
  ``reuse_matrix``) and (b) the straightforward way, ``adapter.head(bank.apply(h, m))`` through the
  full H x V head; both in this process on the same rows; the ratio and the largest logit difference.
- exits: the run's lenses evaluated, then the early-exit simulation (a) from the top-1 tokens and
  confidences the evaluation kept and (b) by a pass of its own over the store (what it did before the
  evaluation kept them); same lenses and rows; the ratio of the two stages' totals, and whether the
  two simulations agree.
- memory: peak RSS of the evaluation of every lens of the run at two test-set sizes, each in a fresh
  subprocess; bounded memory means the two peaks are close.

Usage: python benchmarks/evaluate.py [--run runs/demo] [--rows 48] [--exit-rows 96] [--sizes 200,800]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from common import LimitedStore, peak_rss_mib, save

from onejump.evaluation.early_exit import simulate_exits
from onejump.evaluation.evaluator import evaluate, reuse_matrix
from onejump.experiment.run import Run


def _full_head_pairs(run: Run, bank, h: torch.Tensor, targets: torch.Tensor) -> tuple[float, torch.Tensor]:
    adapter = run.lm().adapter
    K = h.shape[1] - 1
    correct = torch.zeros(bank.num_jumps, K)
    t0 = time.perf_counter()
    with torch.no_grad():
        for m in range(bank.num_jumps):
            y = bank.apply(h[:, :K].reshape(-1, h.shape[-1]), m)
            logits = adapter.head(y).view(h.shape[0], K, -1)
            lse = torch.logsumexp(logits, -1)
            tl = logits.gather(-1, targets.view(-1, 1, 1).expand(-1, K, 1)).squeeze(-1)
            _ = lse - tl  # surprisal
            correct[m] = (logits.argmax(-1) == targets.view(-1, 1)).float().mean(0)
    return time.perf_counter() - t0, correct


def reuse(run: Run, rows: int) -> dict:
    store = LimitedStore(run.store(), rows)
    lens = run.lens("nnjtc")
    h, targets = store.hidden("test"), store.targets("test")
    t0 = time.perf_counter()
    res = reuse_matrix(store, lens, progress=False)
    t_low = time.perf_counter() - t0
    t_full, correct_full = _full_head_pairs(run, lens.bank, h, targets)
    low = res.pair_matrix("precision@1").float()
    x = h[:8, 3]
    adapter = run.lm().adapter
    with torch.no_grad():
        diff = float((lens.lowrank_head().logits(x, 5) - adapter.head(lens.bank.apply(x, 5))).abs().max())
    K = store.num_blocks
    return {"rows": rows, "pairs": K * K, "head_applications": K * K * rows,
            "seconds_rank_r_head": round(t_low, 3), "seconds_full_head": round(t_full, 3),
            "speedup": round(t_full / t_low, 2),
            "precision_matrix_max_abs_diff": float((low - correct_full).abs().max()),
            "max_abs_logit_diff": diff}


def exits(run: Run, rows: int) -> dict:
    store = LimitedStore(run.store(), rows)
    lenses = run.run_lenses(best=False)
    t0 = time.perf_counter()
    result = evaluate(store, lenses, progress=False)
    t_eval = time.perf_counter() - t0
    t0 = time.perf_counter()
    kept = simulate_exits(store, lenses, records={n: result.exit_records(n) for n in lenses}, progress=False)
    t_kept = time.perf_counter() - t0
    t0 = time.perf_counter()
    passed = simulate_exits(store, lenses, progress=False)
    t_pass = time.perf_counter() - t0
    same_top1 = all(torch.equal(kept.lenses[n].top1, passed.lenses[n].top1) for n in lenses)
    conf_diff = max(float((kept.lenses[n].confidence[m] - passed.lenses[n].confidence[m]).abs().max())
                    for n in lenses for m in kept.measures)
    return {"rows": rows, "lenses": sorted(lenses), "seconds_evaluation": round(t_eval, 3),
            "seconds_exits_from_records": round(t_kept, 3), "seconds_exits_pass": round(t_pass, 3),
            "evaluation_and_exits_ratio": round((t_eval + t_kept) / (t_eval + t_pass), 3),
            "same_top1": same_top1, "max_abs_confidence_diff": conf_diff,
            "same_summary": kept.summary() == passed.summary()}


def memory_child(run_dir: str, n: int) -> None:
    run = Run(run_dir, device="cpu", progress=False)
    store = LimitedStore(run.store(), n)
    lenses = run.run_lenses(best=False)
    base = peak_rss_mib()
    t0 = time.perf_counter()
    evaluate(store, lenses, progress=False)
    print(json.dumps({"rows": n, "lenses": sorted(lenses), "seconds": round(time.perf_counter() - t0, 2),
                      "peak_rss_before_mib": round(base, 1), "peak_rss_mib": round(peak_rss_mib(), 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/demo")
    ap.add_argument("--rows", type=int, default=48, help="test rows for the reuse-matrix comparison")
    ap.add_argument("--exit-rows", type=int, default=96, help="test rows for the exit-simulation comparison")
    ap.add_argument("--sizes", default="200,800", help="test-set sizes for the memory comparison")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.memory_child is not None:
        memory_child(args.run, args.memory_child)
        return
    run = Run(args.run, device="cpu", progress=False)
    payload = {"benchmark": "evaluate", "model": run.data_args().model, "reuse": reuse(run, args.rows),
               "exits": exits(run, args.exit_rows)}
    print(json.dumps({k: payload[k] for k in ("reuse", "exits")}, indent=1), flush=True)
    mem = []
    for n in (int(x) for x in args.sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, "--run", args.run, "--memory-child", str(n)],
                             capture_output=True, text=True, check=True)
        mem.append(json.loads(out.stdout.strip().splitlines()[-1]))
    payload["memory"] = mem
    payload["memory_growth_ratio"] = round(mem[-1]["peak_rss_mib"] / mem[0]["peak_rss_mib"], 3)
    save("evaluate-cpu", payload)


if __name__ == "__main__":
    main()
