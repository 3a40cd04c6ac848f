"""The least time `make demo`'s stages after extraction can take on this machine, against its extraction.

`make demo`'s performance target is the whole run within 1.5x its own extraction. This benchmark asks
whether that target is reachable at all: it counts the work every stage of the paper preset must do
whatever the code (the FLOPs of its GEMMs, the exponentials of its O(V) reductions, from the shapes
and the stage's fixed schedule), divides it by this machine's ceilings (roofline.py's: GEMM FLOP/s at
each stage's shape, exp/s), and adds the bounds up. Only stages with a fixed amount of work are
counted (head targets, the tuned lens's steps and validations, every lens's evaluation, the reuse
matrix); the jumps, JTC, selection, the exits and the report are left out, so the sum is a lower
bound of the demo's time after extraction.

The ceilings are either measured here (``--measure``: one and ``--threads`` threads, needs a quiet
machine) or read from a roofline JSON (default: ``benchmarks/results/roofline-cpu.json``, measured
on one thread), and scaled to ``--cores`` cores by perfect scaling, which only lowers the bound.

Usage: python benchmarks/demo_bound.py [--extract-seconds S] [--cores 2] [--measure] [--roofline JSON]
    [--n-train 9000] [--n-test 3000] [--tuned-steps 250]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import RESULTS, save
from roofline import Cost, exp_rate, gemm_rate

# SmolLM2-135M, the demo's model: levels, width, vocabulary, the per-level jumps' rank
SHAPE = {"K": 30, "H": 576, "V": 49152, "r": 5}
#: The paper preset's lenses by how their evaluation reaches the vocabulary.
FULL_HEAD = ("identity", "jtc", "tuned")  # (rows, H) @ (H, V)
RANK_R = ("full_nnjtc", "joint", "ojfa")  # (rows, r) @ (r, V)


def _ceilings(args) -> dict:
    if args.measure:
        torch.set_num_threads(args.threads)
        K, H, V, r = SHAPE["K"], SHAPE["H"], SHAPE["V"], SHAPE["r"]
        gemm = {"full head": gemm_rate(341, H, V), "rank-r head": gemm_rate(21, r, V),
                "head on sampled columns": gemm_rate(256 * K, H, 4096)}
        return {"gemm": gemm, "exp_per_s": exp_rate(), "source": f"measured here, {args.threads} thread(s)",
                "threads": args.threads}
    data = json.loads(Path(args.roofline).read_text())
    c = data["ceilings"]
    return {"gemm": {k: v * 1e9 for k, v in c["gemm_flops_per_s"].items()}, "exp_per_s": c["exp_per_s"] * 1e9,
            "source": f"{args.roofline} ({data['machine'].get('date')}, {data['machine'].get('commit')}, "
                      f"{data['machine'].get('threads')} thread(s))", "threads": data["machine"].get("threads", 1)}


def stage_costs(n_train: int, n_test: int, tuned_steps: int, columns: int, validations: int) -> dict[str, Cost]:
    """Each fixed-work stage's least FLOPs and exponentials at the demo's shapes."""
    K, H, V, r = SHAPE["K"], SHAPE["H"], SHAPE["V"], SHAPE["r"]
    B, val_rows = 256, 256  # the tuned lens's rows per step and held-out rows per validation
    rows = B * K
    costs = {"head targets": Cost(flops=2.0 * n_train * H * V, gemm="full head", exps=n_train * V),
             "tuned lens: steps": Cost(flops=tuned_steps * (4.0 * rows * H * H + 4.0 * rows * H * columns),
                                       gemm="head on sampled columns", exps=tuned_steps * rows * columns),
             "tuned lens: validation": Cost(flops=validations * 2.0 * val_rows * K * H * (H + V), gemm="full head",
                                            exps=validations * val_rows * K * V)}
    N = n_test
    reference = Cost(flops=2.0 * N * H * V, gemm="full head", exps=N * V)  # the final head on every test row
    for name in FULL_HEAD:
        costs[f"evaluation: {name}"] = reference + Cost(flops=2.0 * N * K * H * V, gemm="full head", exps=N * K * V)
    for name in RANK_R:
        costs[f"evaluation: {name}"] = reference + Cost(flops=2.0 * N * K * r * V, gemm="rank-r head",
                                                        exps=N * K * V)
    costs["reuse matrix"] = Cost(flops=2.0 * N * K * K * r * V, gemm="rank-r head", exps=N * K * K * V)
    return costs


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extract-seconds", type=float, default=384.0,
                    help="the demo's measured extraction (default: 384, README's 6.4 min at 2 threads)")
    ap.add_argument("--cores", type=int, default=2, help="cores the demo runs on (default: 2)")
    ap.add_argument("--measure", action="store_true", help="measure the ceilings here instead of reading them")
    ap.add_argument("--threads", type=int, default=1, help="threads of --measure's ceilings (default: 1)")
    ap.add_argument("--roofline", default=str(RESULTS / "roofline-cpu.json"), help="roofline JSON of the ceilings")
    ap.add_argument("--n-train", type=int, default=9000)
    ap.add_argument("--n-test", type=int, default=3000)
    ap.add_argument("--tuned-steps", type=int, default=250, help="the tuned lens's steps (default: 250)")
    ap.add_argument("--columns", type=int, default=5192,
                    help="vocabulary columns per tuned-lens step: the 2048 negatives and the batch's top-32 "
                         "tokens (default: 5192, roofline.py's count on SmolLM2's store)")
    ap.add_argument("--target", type=float, default=1.5, help="the target: demo / extraction (default: 1.5)")
    args = ap.parse_args(argv)
    ceil = _ceilings(args)
    scale = args.cores / ceil["threads"]  # perfect scaling: the bound can only be lower than the truth
    ceilings = {"gemm": {k: v * scale for k, v in ceil["gemm"].items()}, "exp_per_s": ceil["exp_per_s"] * scale,
                "file_bytes_per_s": float("inf"), "memory_bytes_per_s": float("inf")}
    validations = args.tuned_steps // 50 + 1  # before the first step, then every 50
    costs = stage_costs(args.n_train, args.n_test, args.tuned_steps, args.columns, validations)
    stages = {name: cost.bound(ceilings) for name, cost in costs.items()}
    after = sum(s["bound_s"] for s in stages.values())
    least = (args.extract_seconds + after) / args.extract_seconds
    budget = (args.target - 1.0) * args.extract_seconds
    width = max(map(len, stages))
    for name, s in stages.items():
        print(f"{name.ljust(width)}  {s['bound_s']:8.1f} s  ({s['limited_by']})")
    print(f"{'sum after extraction'.ljust(width)}  {after:8.1f} s; the {args.target}x target leaves {budget:.0f} s")
    print(f"least demo / extraction on {args.cores} cores: {least:.2f}x (target {args.target}x: "
          f"{'reachable' if least <= args.target else 'not reachable'})")
    payload = {"benchmark": "demo-bound", "shape": SHAPE, "n_train": args.n_train, "n_test": args.n_test,
               "tuned_steps": args.tuned_steps, "validations": validations, "columns_per_step": args.columns,
               "cores": args.cores, "ceilings_source": ceil["source"],
               "ceilings_at_cores": {"gemm_gflop_per_s": {k: round(v / 1e9, 1) for k, v in ceilings["gemm"].items()},
                                     "exp_1e9_per_s": round(ceilings["exp_per_s"] / 1e9, 3)},
               "stages": {k: {"bound_s": round(v["bound_s"], 2), "limited_by": v["limited_by"]}
                          for k, v in stages.items()},
               "bound_after_extraction_s": round(after, 1), "extract_seconds": args.extract_seconds,
               "least_demo_over_extraction": round(least, 3), "target": args.target,
               "budget_after_extraction_s": round(budget, 1), "reachable": least <= args.target}
    save("demo-bound-cpu", payload)
    return payload


if __name__ == "__main__":
    main()
