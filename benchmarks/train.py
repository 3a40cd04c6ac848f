"""Training all K per-level jumps batched against one level at a time, same data and epochs.

Usage: python benchmarks/train.py [--run runs/demo] [--epochs 5]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import peak_rss_mib, save

from onejump.experiment.run import Run
from onejump.training.config import TrainConfig
from onejump.training.fit import train_jumps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/demo")
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    run = Run(args.run, device="cpu", progress=False)
    store = run.store()
    # fixed epochs: patience above the cap so both variants run every epoch
    config = TrainConfig(max_epochs=args.epochs, patience=args.epochs + 1)
    t0 = time.perf_counter()
    batched, _ = train_jumps(store, config, progress=False, batched=True)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    looped, _ = train_jumps(store, config, progress=False, batched=False)
    t_looped = time.perf_counter() - t0
    diff = max(float((a - b).abs().max()) for a, b in zip(batched.state_dict().values(), looped.state_dict().values())
               if torch.is_floating_point(a))
    save("train-cpu", {
        "benchmark": "train", "model": run.data_args().model, "jumps": batched.num_jumps, "epochs": args.epochs,
        "train_samples": int(len(store.indices("train"))),
        "seconds_batched": round(t_batched, 2), "seconds_looped": round(t_looped, 2),
        "speedup": round(t_looped / t_batched, 2), "max_weight_difference": diff,
        "peak_rss_mib": round(peak_rss_mib(), 1),
    })


if __name__ == "__main__":
    main()
