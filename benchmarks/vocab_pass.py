"""The evaluation's pass over the vocabulary: the scoring kernel's time, and the evaluation's peak memory.

- kernel: the field's scoring (:func:`onejump.evaluation.scoring.score_block`) on the logit lens's real
  logits at several levels of a run's test rows, (a) as it runs and (b) with the exp's floor taken away
  (``EXP_FLOOR = -inf``: every shifted logit through ``exp`` as it is), in this process on the same
  logits; per level the milliseconds per row, their ratio, the share of shifted logits below the floor,
  and the bound of one exp per logit at this machine's exp rate (``benchmarks/roofline.py``'s).
- memory: the peak RSS above the start of ``evaluate`` (a per-level rank-r lens, field metrics on) at
  two test-set sizes and two memory budgets, each in a fresh subprocess: the peak follows the budget,
  not the rows.

Usage: python benchmarks/vocab_pass.py --run RUN [--rows 64,300] [--budgets 256,4096] [--levels 0,3,9,-1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import result_name, save
from roofline import exp_rate

from onejump.evaluation import scoring
from onejump.evaluation.budget import working_set
from onejump.evaluation.reference import make_reference
from onejump.experiment.run import Run


def _ms_per_row(logits: torch.Tensor, ref, sample: torch.Tensor, repeats: int = 3) -> float:
    work = logits.clone()
    best = float("inf")
    for _ in range(repeats):
        work.copy_(logits)
        t0 = time.perf_counter()
        scoring.score_block(work, ref, sample)
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best / logits.shape[0]


def kernel(run: Run, levels: list[int], rows: int) -> dict:
    store, adapter = run.store(), run.lm().adapter
    h = next(iter(store.iter_chunks("test", chunk_size=rows)))[1]
    K = store.num_blocks
    with torch.no_grad():
        ref = make_reference(adapter.head(h[:, K]).float(), store.targets("test")[:rows],
                             torch.zeros(rows, dtype=torch.int64), extras=True, exits=True)
    sample = torch.arange(rows)
    rate = exp_rate()
    out = []
    for level in levels:
        with torch.no_grad():
            logits = adapter.head(h[:, level % K]).float()
        below = float((logits - logits.amax(1, keepdim=True) < scoring.EXP_FLOOR).float().mean())
        now = _ms_per_row(logits, ref, sample)
        floor, scoring.EXP_FLOOR = scoring.EXP_FLOOR, float("-inf")
        try:
            unfloored = _ms_per_row(logits, ref, sample)
        finally:
            scoring.EXP_FLOOR = floor
        bound = 1e3 * logits.shape[1] / rate
        out.append({"level": level % K, "share_below_floor": round(below, 4), "ms_per_row": round(now, 3),
                    "ms_per_row_without_floor": round(unfloored, 3), "speedup": round(unfloored / now, 2),
                    "exp_bound_ms_per_row": round(bound, 3), "ratio_to_bound": round(now / bound, 2)})
        print(out[-1], flush=True)
    return {"rows": rows, "vocab": int(logits.shape[1]), "exp_per_s": rate, "levels": out}


CHILD = """
import json, sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {bench!r})
from common import LimitedStore
from onejump.evaluation.evaluator import evaluate
from onejump.experiment.run import Run
from onejump.lenses import PerLevelLens
from onejump.lenses.jumps import JumpBank
from onejump.memory import PeakProbe, current_rss_mib
run = Run({run!r})
store, lm = LimitedStore(run.store(), {rows}), run.lm()
lens = PerLevelLens(lm, JumpBank(store.num_blocks, store.hidden_size, 5, seed=0).eval())
lens.lowrank_head()
start = current_rss_mib()
with PeakProbe() as probe:
    t0 = time.perf_counter()
    evaluate(store, {{"full": lens}}, memory_mib={budget}, progress=False)
    seconds = time.perf_counter() - t0
print(json.dumps({{"above_start_mib": round(probe.peak_mib - start, 1), "exact": probe.exact,
                  "seconds": round(seconds, 2)}}))
"""


def memory(run_dir: str, rows: list[int], budgets: list[float]) -> list[dict]:
    bench = str(Path(__file__).resolve().parent)
    V = Run(run_dir).lm().adapter.vocab_size
    out = []
    for budget in budgets:
        work = working_set(V, torch.device("cpu"), budget)
        for n in rows:
            code = CHILD.format(bench=bench, run=run_dir, rows=n, budget=budget)
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            rec = {"memory_mib": budget, "rows": n, "chunk": work.chunk, "full_block": work.full_block,
                   **json.loads(done.stdout.strip().splitlines()[-1])}
            out.append(rec)
            print(rec, flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--rows", default="64,300", help="test rows of the memory runs")
    ap.add_argument("--budgets", default="256,4096", help="memory budgets (MiB) of the memory runs")
    ap.add_argument("--levels", default="0,3,9,-1", help="levels of the kernel's logits (-1: the last)")
    ap.add_argument("--kernel-rows", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Run(args.run)
    payload = {"benchmark": "vocab_pass", "run": args.run, "model": run.data_args().model,
               "kernel": kernel(run, [int(x) for x in args.levels.split(",")], args.kernel_rows),
               "memory": memory(args.run, [int(x) for x in args.rows.split(",")],
                                [float(x) for x in args.budgets.split(",")])}
    save(result_name("vocab-pass", "cpu", payload["model"]), payload)
    return payload


if __name__ == "__main__":
    main()
