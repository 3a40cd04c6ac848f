"""``onejump frontier``: the lens frontier of a run's store (its subparser and its handler)."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError
from .common import _lock


def _ranks(text: str, name: str, allow_none: bool = False) -> tuple[int, ...]:
    if allow_none and text.strip().lower() == "none":
        return ()
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--{name} must be comma-separated integers, got '{text}'") from None
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"--{name} must list integers >= 1, got '{text}'")
    return values


def add_frontier_command(sub: Any) -> None:
    """The ``frontier`` subcommand's parser."""
    p = sub.add_parser("frontier", help="the lens frontier: precision@1 and KL against parameters, every lens kind",
                       description="On a run folder's store, train (or reuse) every point of the frontier: the "
                                   "logit lens, the run's own lenses, per-level low-rank residual lenses "
                                   "h + BN_k(h) A_k B_k at --ranks, the residual KL joint jump when the run has no "
                                   "best single jump, JTC and the tuned lens when the run has none, and the tuned "
                                   "lens trained with Adam and with Muon; choose the two bars' lenses (compact, one "
                                   "jump) on held-out train rows, then evaluate the test split once. Writes "
                                   "RUN/frontier/ "
                                   "(frontier.json, frontier.png, preregistration.json, the trained points). "
                                   "Rerun to resume: trained points are reused.")
    p.add_argument("--run", required=True, help="run folder with a store (`onejump extract --out RUN`)")
    p.add_argument("--ranks", default="1,2,4,8,16,32",
                   help="ranks of the per-level low-rank residual lenses, comma-separated (default: %(default)s)")
    p.add_argument("--jump-ranks", default=None,
                   help="ranks of the residual KL joint jump, or 'none' (default: 2 floor(H/100) when the run has "
                        "no best single jump, else none)")
    p.add_argument("--tuned-steps", type=int, default=250,
                   help="steps of the tuned lens's SGD schedule when the run has no tuned lens (default: %(default)s)")
    p.add_argument("--no-tuned-adam", action="store_true", help="leave out the tuned lens trained with Adam")
    p.add_argument("--no-tuned-muon", action="store_true",
                   help="leave out the tuned lens trained with Muon (tuned-lens's schedule, least-squares start)")
    p.add_argument("--max-epochs", type=int, default=None,
                   help="cap the epochs of every point trained with Adam (default: the recipes': 16 for the low-rank "
                        "lenses, 4 for the joint jump and the Adam tuned lens)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model weights dtype (default: %(default)s)")


def cmd_frontier(args: argparse.Namespace) -> int:
    from ..experiment.frontier import FrontierPlan, frontier
    from ..experiment.run import Run

    run = Run(args.run, device=args.device, dtype=args.dtype, progress=not args.quiet)
    run.data_args()  # a clear error before anything is written if this is not a run folder
    if args.tuned_steps < 1:
        raise ConfigError(f"--tuned-steps must be >= 1, got {args.tuned_steps}")
    plan = FrontierPlan(ranks=_ranks(args.ranks, "ranks"),
                        jump_ranks=None if args.jump_ranks is None else _ranks(args.jump_ranks, "jump-ranks", True),
                        tuned_steps=args.tuned_steps, tuned_adam=not args.no_tuned_adam,
                        tuned_muon=not args.no_tuned_muon, max_epochs=args.max_epochs)
    args.kept.say(f"trained points are kept in {run.folder / 'frontier' / 'points'}; rerun to resume")
    with _lock(run.folder):
        out = frontier(run, plan, progress=not args.quiet)
    print(f"{'point':<14} {'parameters':>11} {'precision@1':>11} {'KL':>7} frontier")
    for p in out["points"]:
        marks = ",".join(m for m, f in (("p@1", "pareto_precision"), ("KL", "pareto_kl")) if p[f])
        print(f"{p['name']:<14} {p['parameters']:>11,} {p['mean_precision@1']:>11.3f} {p['mean_kl']:>7.3f} {marks}")
    for name, bar in (out.get("bars") or {}).items():
        print(f"bar {name}: {bar['verdict']} (lens {bar.get('chosen')}, baseline {out['baseline']})")
    print(f"frontier: {run.folder / 'frontier' / 'frontier.json'}")
    return 0


__all__ = ["add_frontier_command", "cmd_frontier"]
