"""Evaluation of the K x K reuse matrix: the rank-r head against the full head, and memory vs test-set size.

- speed: precision@1/@5 and surprisal for every (jump m, level k) pair on the same test rows,
  (a) through onejump's rank-r head (``head(jump(h)) = (z @ M) / scale(z) + c``, exact) and
  (b) the straightforward way: ``adapter.head(bank.apply(h, m))`` through the full H x V head;
  both in this process, same rows; reports the ratio and the largest logit difference.
- memory: peak RSS of a whole evaluation (all pairs + identity + JTC + joint) at two test-set
  sizes, each in a fresh subprocess; bounded memory means the two peaks are close.

Usage: python benchmarks/evaluate.py [--run runs/demo] [--rows 48] [--sizes 750,3000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from common import LimitedStore, peak_rss_mib, save

from onejump.evaluation.metrics import evaluate
from onejump.experiment.run import Run
from onejump.lenses.lowrank_head import LowRankHead


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


def speed(run: Run, rows: int) -> dict:
    store = LimitedStore(run.store(), rows)
    bank = run.shortcuts("nnjtc").module
    h = store.hidden("test")
    targets = store.targets("test")
    lm = run.lm()
    t0 = time.perf_counter()
    res = evaluate(store, lm.adapter, bank, identity=False, progress=False, device="cpu")
    t_low = time.perf_counter() - t0
    t_full, correct_full = _full_head_pairs(run, bank, h, targets)
    low = res.pair_matrix("precision@1").float()
    head = LowRankHead(lm.adapter, bank)
    x = h[:8, 3]
    diff = float((head.logits(x, 5) - lm.adapter.head(bank.apply(x, 5))).abs().max())
    K = store.num_blocks
    return {"rows": rows, "pairs": K * K, "head_applications": K * K * rows,
            "seconds_rank_r_head": round(t_low, 3), "seconds_full_head": round(t_full, 3),
            "speedup": round(t_full / t_low, 2),
            "precision_matrix_max_abs_diff": float((low - correct_full).abs().max()),
            "max_abs_logit_diff": diff}


def memory_child(run_dir: str, n: int) -> None:
    run = Run(run_dir, device="cpu", progress=False)
    store = LimitedStore(run.store(), n)
    shortcuts = {k: run.shortcuts(k).module for k in ("nnjtc", "joint", "jtc")}
    lm = run.lm()
    base = peak_rss_mib()
    t0 = time.perf_counter()
    evaluate(store, lm.adapter, shortcuts["nnjtc"], joint=shortcuts["joint"], jtc=shortcuts["jtc"],
             progress=False, device="cpu")
    print(json.dumps({"rows": n, "seconds": round(time.perf_counter() - t0, 2),
                      "peak_rss_before_mib": round(base, 1), "peak_rss_mib": round(peak_rss_mib(), 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/demo")
    ap.add_argument("--rows", type=int, default=48, help="test rows for the speed comparison")
    ap.add_argument("--sizes", default="750,3000", help="test-set sizes for the memory comparison")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child is not None:
        memory_child(args.run, args.memory_child)
        return
    run = Run(args.run, device="cpu", progress=False)
    payload = {"benchmark": "evaluate", "model": run.data_args().model, "speed": speed(run, args.rows)}
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
