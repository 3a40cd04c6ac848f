"""Training the tuned lens on a run's store: time, peak memory, and per-level test metrics vs the logit lens.

Usage: python benchmarks/tuned_lens.py [--run runs/demo] [--steps 250] [--save-lens DIR]

Prints and writes benchmarks/results/tuned-lens-<device>.json: training seconds and steps, peak RSS,
and per exit level on the test split precision@1 (against t*, the model's own top-1) and
KL(p_final || p_lens) of the tuned lens and of the logit lens, with the tuned lens's parameter count.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import peak_rss_mib, save

from onejump.experiment.run import Run
from onejump.lenses import LogitLens
from onejump.training.tuned import TunedTrainConfig, train_tuned_lens


@torch.no_grad()
def test_metrics(lens, lm, store, chunk: int = 64) -> dict[str, list[float]]:
    """Per-level precision@1 and KL(p_final || p_lens) on the store's test split (exact head)."""
    K = lm.num_blocks
    hits = np.zeros(K)
    kl = np.zeros(K)
    n = 0
    for rows, h in store.iter_chunks("test", chunk_size=chunk):
        h = h.float()
        logp = torch.log_softmax(lm.adapter.head(h[:, K]), -1)
        target = logp.argmax(-1)
        for k in range(K):
            logq = torch.log_softmax(lens(h[:, k], k), -1)
            hits[k] += float((logq.argmax(-1) == target).sum())
            kl[k] += float((logp.exp() * (logp - logq)).sum(-1).sum())
        n += len(rows)
    return {"precision_at_1": (hits / n).round(4).tolist(), "kl": (kl / n).round(4).tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/demo")
    ap.add_argument("--steps", type=int, default=TunedTrainConfig().num_steps)
    ap.add_argument("--init", choices=["jtc", "zero"], default=TunedTrainConfig().init,
                    help="where the translators start (default: %(default)s)")
    ap.add_argument("--save-lens", default=None, help="also save the trained lens to this folder")
    args = ap.parse_args()
    run = Run(args.run, device="cpu", progress=False)
    store, lm = run.store(), run.lm()
    config = TunedTrainConfig(num_steps=args.steps, init=args.init)
    t0 = time.perf_counter()
    lens, hist = train_tuned_lens(store, lm, config, progress=True)
    seconds = time.perf_counter() - t0
    if args.save_lens:
        lens.save_pretrained(args.save_lens)
    tuned = test_metrics(lens, lm, store)
    logit = test_metrics(LogitLens(lm), lm, store)
    result = {
        "benchmark": "tuned-lens", "model": lm.name, "num_blocks": lm.num_blocks, "hidden_size": lm.hidden_size,
        "train_samples": hist.n_train, "validation_samples": hist.n_val,
        "test_samples": int(len(store.indices("test"))), "config": config.to_dict(),
        "seconds_train": round(seconds, 1), "steps_run": hist.steps_run, "best_step": hist.best_step,
        "parameters": lens.num_parameters, "peak_rss_mib": round(peak_rss_mib(), 1),
        "tuned": tuned, "logit": logit,
    }
    save(f"tuned-lens-{'cuda' if torch.cuda.is_available() else 'cpu'}", result)


if __name__ == "__main__":
    main()
