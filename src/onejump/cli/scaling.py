"""``onejump scaling``: the scaling curves of a run (its subparser and its handler)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import _lock


def add_scaling_command(sub: Any) -> None:
    """The ``scaling`` subcommand's parser."""
    from .options import _positive

    p = sub.add_parser("scaling", help="lenses against training size: the run's rows, every position of its "
                                       "train sentences, every position of its corpus outside test",
                       description="Train the tuned lens (tuned-lens's SGD from zero), the residual KL joint jump "
                                   "at 2 floor(H/100) and the per-level MSE jumps on every position of the run's "
                                   "train sentences (train-all) and of every usable corpus sentence outside its "
                                   "test split (corpus-all), straight from the model, with --passes passes over "
                                   "each size's positions in --steps steps; take the run's own lenses at its "
                                   "one-position-per-sentence rows (rows); evaluate every point on the run's test "
                                   "split once. Writes RUN/scaling/ (scaling.json, scaling.png, the streamed "
                                   "lenses). Rerun to resume: trained sizes are reused, a cut-short one resumes "
                                   "from its checkpoint.")
    p.add_argument("--run", required=True, help="run folder with a store (`onejump run --out RUN`)")
    p.add_argument("--sizes", default="rows,train-all,corpus-all",
                   help="comma-separated training sizes among rows, train-all, corpus-all (default: %(default)s)")
    p.add_argument("--passes", type=_positive(float), default=1.0,
                   help="passes over each streamed size's positions (default: %(default)s)")
    p.add_argument("--steps", type=_positive(), default=250,
                   help="optimiser steps of each streamed size; positions per step = passes x positions / steps "
                        "(default: %(default)s, tuned-lens's)")
    p.add_argument("--max-sentences", type=_positive(), default=None,
                   help="keep the first N sentences of each streamed size (a shorter run; default: all)")
    p.add_argument("--val-sentences", type=_positive(), default=64,
                   help="train sentences held out of each stream for its loss curve (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model weights dtype (default: %(default)s)")


def cmd_scaling(args: argparse.Namespace) -> int:
    from ..experiment.run import Run
    from ..experiment.scaling import ScalingPlan, scaling

    run = Run(args.run, device=args.device, dtype=args.dtype, progress=not args.quiet)
    run.data_args()  # a clear error before anything is written if this is not a run folder
    sizes = tuple(s.strip() for s in args.sizes.split(",") if s.strip())
    plan = ScalingPlan(sizes=sizes, passes=args.passes, steps=args.steps, max_sentences=args.max_sentences,
                       val_sentences=args.val_sentences)
    plan.validate()
    args.kept.say(f"trained sizes are kept in {run.folder / 'scaling'}; rerun to resume")
    with _lock(run.folder):
        out = scaling(run, plan, progress=not args.quiet)
    print(f"{'point':<26} {'train rows':>10} {'precision@1':>11} {'KL':>7} {'seconds':>8}")
    for p in [{"key": "logit", "train_rows": 0, "train_seconds": None, **out["logit"]}, *out["points"]]:
        sec = f"{p['train_seconds']:.0f}" if p.get("train_seconds") is not None else "-"
        print(f"{p['key']:<26} {p['train_rows'] or 0:>10,} {p['mean_precision@1']:>11.3f} {p['mean_kl']:>7.3f} "
              f"{sec:>8}")
    print(f"scaling: {run.folder / 'scaling' / 'scaling.json'}")
    return 0


__all__ = ["add_scaling_command", "cmd_scaling"]
