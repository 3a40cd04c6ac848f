"""Training cost of the tuned lens against the best single jump, on one run's store, in one process.

- tuned: ``onejump.train_tuned_lens`` with the default ``TunedTrainConfig`` (tuned-lens's schedule):
  K full-rank affine translators, K (H^2 + H) parameters;
- single: the residual KL joint jump ``h + BN(h) A B`` at rank 2 floor(H/100), the single jump of
  ``onejump run --preset best`` (the sweep's ``kl-res`` variant, trained by the same code).

Both read the same head targets (top-k of the model's final distribution over the train split, one
pass of the head, timed on its own and shared, as ``onejump run`` shares them), then train one
after the other with the same thread count. For each: wall time, optimiser steps and epochs, peak
resident memory (the high-water mark reset before it; the model is resident throughout, so the
growth above the start is also given) and parameters; and the ratios tuned / single.

Usage: python benchmarks/train_time.py --run RUN [--rows N] [--threads T] [--dtype float32]

``--rows N`` trains on the first N train rows only (a short check). A run folder of a tiny
random-init model (``onejump extract --model FOLDER``) makes a smoke test. Writes
benchmarks/results/train-time-<device>[-<model>][-<dtype>].json (no model for SmolLM2-135M,
no dtype for float32).
"""

from __future__ import annotations

import argparse
import gc
import math
import time

import torch
from common import LimitedStore, result_name, save

from onejump.errors import OneJumpError
from onejump.experiment.run import Run
from onejump.experiment.sweep import load_sweep, objective_config
from onejump.lenses.jumps import default_rank
from onejump.memory import PeakProbe, module_mib
from onejump.training.fit import objective_loss, train_joint
from onejump.training.objectives import head_targets
from onejump.training.tuned import TunedTrainConfig, train_tuned_lens


class _CountSteps:
    """A training loss that counts the optimiser steps it is called for (validation runs without grad)."""

    def __init__(self, loss):
        self.loss, self.steps = loss, 0

    def __call__(self, *args):
        self.steps += torch.is_grad_enabled()
        return self.loss(*args)


def _measure(fn):
    """``fn()``'s result, wall seconds and peak-RSS probe."""
    with PeakProbe() as probe:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
    return out, seconds, probe


def _memory(probe: PeakProbe) -> dict:
    return {"peak_rss_mib": round(probe.peak_mib, 1),
            "peak_above_start_mib": round(probe.peak_mib - probe.start_mib, 1) if probe.start_mib else None,
            "peak_method": "stage peak" if probe.exact else "process peak so far"}


def measure(store, lm, device: str = "cpu", progress: bool = True, tuned_init: str = "jtc") -> dict:
    """Train both lenses on ``store`` for ``lm``; their costs and the ratios tuned / single."""
    H = store.hidden_size
    tuned_cfg = TunedTrainConfig(init=tuned_init)
    single_cfg = objective_config("kl-res", 2 * default_rank(H))
    top_k = max(tuned_cfg.kl_top_k, single_cfg.kl_top_k)
    targets, t_targets, p_targets = _measure(lambda: head_targets(store, lm.adapter, top_k=top_k, progress=progress))

    (tuned, hist_t), t_tuned, p_tuned = _measure(
        lambda: train_tuned_lens(store, lm, tuned_cfg, device=device, progress=progress, targets=targets))
    tuned_params = tuned.num_parameters
    del tuned  # what the single jump's training holds is its own, not the tuned lens's leftovers
    gc.collect()
    shared = {single_cfg.kl_top_k: targets}
    counted = _CountSteps(objective_loss(store, single_cfg, lm.adapter, progress, device, shared))
    (bank, hist_s), t_single, p_single = _measure(
        lambda: train_joint(store, single_cfg, device=device, progress=progress, loss_fn=counted))
    n_fit = hist_t.n_train  # rows trained on (the train split less the held-out part)
    # an epoch is n_fit // batch_size full steps (the incomplete last batch is dropped), or one step
    # holding every row when they fit in one batch
    out = {
        "head_targets": {"seconds": round(t_targets, 2), "top_k": top_k, **_memory(p_targets)},
        "tuned": {"seconds": round(t_tuned, 2), "steps": hist_t.steps_run,
                  "epochs": round(hist_t.steps_run / max(1, n_fit // tuned_cfg.batch_size), 2),
                  "parameters": tuned_params, "config": tuned_cfg.to_dict(), **_memory(p_tuned)},
        "single": {"seconds": round(t_single, 2), "steps": counted.steps, "epochs": hist_s.epochs_run,
                   "rank": single_cfg.rank, "parameters": bank.parameter_count(),
                   "config": single_cfg.to_dict(), **_memory(p_single)},
    }
    for name in ("tuned", "single"):
        m = out[name]
        m["seconds_per_step"] = round(m["seconds"] / max(m["steps"], 1), 4)
        m["seconds_with_targets"] = round(m["seconds"] + t_targets, 2)
    t, s = out["tuned"], out["single"]
    out["ratios_tuned_over_single"] = {
        "seconds": _ratio(t["seconds"], s["seconds"]),
        "seconds_with_targets": _ratio(t["seconds_with_targets"], s["seconds_with_targets"]),
        "peak_rss": _ratio(t["peak_rss_mib"], s["peak_rss_mib"]),
        "peak_above_start": _ratio(t["peak_above_start_mib"], s["peak_above_start_mib"]),
        "parameters": _ratio(t["parameters"], s["parameters"]),
    }
    out["train_rows"] = {"fit": n_fit, "held_out": hist_t.n_val}
    return out


def _sweep_best(folder) -> dict | None:
    """The run's own sweep's best single jump (objective, rank, method), if it ran the sweep: whether the
    jump timed here (``kl-res`` joint at 2 floor(H/100)) is the one its sweep chose."""
    best = (load_sweep(folder) or {}).get("best")
    return None if best is None else {k: best[k] for k in ("objective", "rank", "method")}


def _ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b and not math.isnan(b) else None


def table(out: dict) -> str:
    rows = [("", "tuned lens", "single jump", "tuned / single")]
    r = out["ratios_tuned_over_single"]
    t, s = out["tuned"], out["single"]
    for label, key, ratio in (("seconds", "seconds", "seconds"), ("+ head targets", "seconds_with_targets",
                              "seconds_with_targets"), ("steps", "steps", None), ("epochs", "epochs", None),
                              ("peak RSS (MiB)", "peak_rss_mib", "peak_rss"),
                              ("above start (MiB)", "peak_above_start_mib", "peak_above_start"),
                              ("parameters", "parameters", "parameters")):
        rows.append((label, str(t[key]), str(s[key]), "" if ratio is None else str(r[ratio])))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run folder with an extracted store")
    ap.add_argument("--rows", type=int, default=None, help="train on the first N train rows only (a short check)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", help="the model's dtype, as the run was extracted with")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--tuned-init", choices=["jtc", "zero"], default="jtc", help="the tuned lens's start")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Run(args.run, device=args.device, dtype=args.dtype, progress=not args.quiet)
    lm, store = run.lm(), run.store()
    if args.rows is not None:
        store = LimitedStore(store, args.rows)
    model = run.data_args().model
    payload = {"benchmark": "train-time", "model": lm.name, "num_blocks": store.num_blocks,
               "hidden_size": store.hidden_size, "vocab_size": lm.adapter.vocab_size,
               "model_mib": round(module_mib(lm.model), 1), "rows_limit": args.rows,
               "sweep_best": _sweep_best(run.folder),
               **measure(store, lm, args.device, progress=not args.quiet, tuned_init=args.tuned_init)}
    print(table(payload))
    save(result_name("train-time", args.device, model, args.dtype), payload)
    return payload


if __name__ == "__main__":
    try:
        main()
    except OneJumpError as exc:
        raise SystemExit(f"error: {exc}") from None
