"""Rows per second of the per-level MSE jumps (full N-NJTC) on a run's store, against their roofline bound.

The bound is roofline.py's for the stage "per-level MSE jumps", with its ceilings measured in this
process (before and after the training, each taken at the better of the two): the jumps' FLOPs
(``3 x 4 H r K`` per training row, ``4 H r K`` per validation row) at the GEMM rate of the jumps' own
batched shape (``roofline.jump_gemm``; the ratio at the rate of the same product in its slow orientation,
``(B, H) @ (H, r)``, is given too), or the bytes (the store's files read once per pass over them, each
example's inputs and target read once from memory), whichever is longer. The training's time is split
into its parts: the store reads (float16/float32 shards into the float32 buffer), the validation passes
and the rest (the steps: gathering the batches, BatchNorm, the GEMMs, Adam).

Usage: python benchmarks/train_rows.py --run RUN [--epochs E] [--buffer-samples N] [--train-rows N]
  [--threads T] [--repeats R] [--tag TAG]

``--buffer-samples`` below the train split's size streams the split from the store every epoch (the
out-of-core path that a store of every position takes); at or above it, the split is read once.
Writes benchmarks/results/train-rows-cpu[-positions-P][-TAG].json.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import result_name, save
from roofline import Cost, Counted, SplitView, best_ceilings, file_bandwidth, gemm_rate, jump_gemm, memory_bandwidth

import onejump
from onejump.experiment.run import Run
from onejump.lenses.jumps import default_rank
from onejump.training import fit as fit_module
from onejump.training import reader as reader_module
from onejump.training.config import TrainConfig
from onejump.training.objectives import mse_loss


def ceilings(K: int, H: int, r: int, batch: int, store_dir) -> dict:
    gemm = {"jump": gemm_rate(*jump_gemm(H, r, batch, K)), "slow_orientation": gemm_rate(batch, H, r, batch=K)}
    return {"gemm": gemm,
            "memory_bytes_per_s": memory_bandwidth(),
            "exp_per_s": 1.0, "file_bytes_per_s": file_bandwidth(store_dir) or memory_bandwidth()}


class Phases:
    """Seconds spent in the library's store reads and validation passes (wrapped, not copied)."""

    def __init__(self):
        self.read_s, self.val_s, self.reads, self.vals = 0.0, 0.0, 0, 0
        self._read, self._val = reader_module._Reader.read, fit_module._val_losses

    def __enter__(self):
        phases = self

        def read(reader, *a, **kw):
            t0 = time.perf_counter()
            try:
                return phases._read(reader, *a, **kw)
            finally:
                phases.read_s += time.perf_counter() - t0
                phases.reads += 1

        def val(*a, **kw):
            t0 = time.perf_counter()
            try:
                return phases._val(*a, **kw)
            finally:
                phases.val_s += time.perf_counter() - t0
                phases.vals += 1

        reader_module._Reader.read, fit_module._val_losses = read, val
        return self

    def __exit__(self, *exc):
        reader_module._Reader.read, fit_module._val_losses = self._read, self._val


def one_training(store, cfg: TrainConfig) -> dict:
    loss = Counted(mse_loss)
    gc.collect()
    with Phases() as ph:
        t0 = time.perf_counter()
        bank, hist = fit_module.train_jumps(store, cfg, progress=False, loss_fn=loss)
        seconds = time.perf_counter() - t0
    # in-val read time is counted once, under validation
    return {"seconds": seconds, "read_s": ph.read_s, "val_s": ph.val_s, "steps_s": seconds - ph.read_s - ph.val_s,
            "reads": ph.reads, "validations": ph.vals, "epochs": hist.epochs_run, "steps": loss.steps,
            "train_examples": loss.train_examples, "val_examples": loss.val_examples,
            "final_val_loss_mean": float(torch.tensor(hist.val_loss[-1]).mean()), "_bank": bank}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run folder with an extracted store")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of training (default: 3)")
    ap.add_argument("--buffer-samples", type=int, default=None, help="the shuffle buffer (default: the config's)")
    ap.add_argument("--train-rows", type=int, default=None, help="the first N train rows only")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    ap.add_argument("--repeats", type=int, default=1, help="trainings, the fastest counted (default: 1)")
    ap.add_argument("--tag", default="", help="suffix of the result file's name")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Run(args.run, device="cpu", progress=False)
    store = SplitView(run.store(), args.train_rows, None)
    K, H = store.num_blocks, store.hidden_size
    r = default_rank(H)
    cfg = replace(TrainConfig(), max_epochs=args.epochs)
    if args.buffer_samples:
        cfg = replace(cfg, buffer_samples=args.buffer_samples)
    t0 = time.perf_counter()  # a process's first optimiser imports torch._dynamo: paid once, not by a training
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    first_optimizer_s = time.perf_counter() - t0
    before = ceilings(K, H, r, cfg.batch_size, run.store_dir)
    runs = [one_training(store, cfg) for _ in range(max(1, args.repeats))]
    best = min(runs, key=lambda x: x["seconds"])
    best.pop("_bank")
    ceil = best_ceilings(before, ceilings(K, H, r, cfg.batch_size, run.store_dir))
    manifest = json.loads((run.store_dir / "manifest.json").read_text())
    item = torch.empty((), dtype=getattr(torch, manifest.get("dtype", "float32"))).element_size()
    n_train = len(store.indices("train"))
    per_ex = 4.0 * K * H * r
    te, ve = best["train_examples"], best["val_examples"]
    passes = best["epochs"] if n_train > cfg.buffer_samples else 1  # a streamed split is read every epoch
    cost = Cost(flops=3 * per_ex * te + per_ex * ve, gemm="jump", mem_bytes=4.0 * (K + 1) * H * (te + ve),
                store_bytes=n_train * (K + 1) * H * item * passes)
    bound = cost.bound(ceil)
    rate = te / best["seconds"]
    bound_rate = te / bound["bound_s"]
    steps_bound = 3 * per_ex * te / ceil["gemm"]["jump"]
    slow_bound = cost.bound({**ceil, "gemm": {"jump": ceil["gemm"]["slow_orientation"]}})["bound_s"]
    payload = {"benchmark": "train-rows", "stage": "per-level MSE jumps", "model": run.data_args().model,
               "library": str(Path(onejump.__file__).resolve().parent),  # the code measured (PYTHONPATH)
               "num_blocks": K, "hidden_size": H, "rank": r, "n_train": n_train,
               "train_positions": store.positions.get("train", "one"), "store_dtype": manifest.get("dtype"),
               "batch_size": cfg.batch_size, "buffer_samples": cfg.buffer_samples,
               "streamed": n_train > cfg.buffer_samples, "repeats": len(runs),
               "first_optimizer_import_s": round(first_optimizer_s, 3),
               "ceilings": {"jump_gemm_gflops": round(ceil["gemm"]["jump"] / 1e9, 2),
                            "jump_gemm_shape": list(jump_gemm(H, r, cfg.batch_size, K)[:3]) + [K],
                            "slow_orientation_gemm_gflops": round(ceil["gemm"]["slow_orientation"] / 1e9, 2),
                            "memory_gb_per_s": round(ceil["memory_bytes_per_s"] / 1e9, 2),
                            "store_files_gb_per_s": round(ceil["file_bytes_per_s"] / 1e9, 2)},
               **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in best.items()},
               "bound_s": round(bound["bound_s"], 3), "limited_by": bound["limited_by"], "parts_s": bound["parts_s"],
               "rows_per_s": round(rate, 1), "bound_rows_per_s": round(bound_rate, 1),
               "ratio": round(bound_rate / rate, 3),
               "ratio_at_slow_orientation_ceiling": round(best["seconds"] / slow_bound, 3),
               "steps_rows_per_s": round(te / max(best["steps_s"], 1e-9), 1),
               "steps_bound_rows_per_s": round(te / steps_bound, 1),
               "all_seconds": [round(x["seconds"], 3) for x in runs]}
    name = result_name("train-rows", "cpu", run.data_args().model)
    positions = payload["train_positions"]
    name += ("" if positions == "one" else f"-positions-{positions}") + (f"-{args.tag}" if args.tag else "")
    save(name, payload)
    print(f"per-level MSE jumps: {rate:.0f} rows/s, bound {bound_rate:.0f} rows/s, ratio {bound_rate / rate:.2f} "
          f"(steps alone {payload['steps_rows_per_s']:.0f} rows/s against {payload['steps_bound_rows_per_s']:.0f})")
    return payload


if __name__ == "__main__":
    main()
