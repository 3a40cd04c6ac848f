"""``onejump stream-train``: lenses trained on every position of a token stream, straight from the model."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from .. import defaults as DEFAULTS  # noqa: N812


def add_stream_command(sub: Any) -> None:
    """The ``stream-train`` subcommand and its options."""
    from .options import _add_model_args, _non_negative, _positive

    p = sub.add_parser(
        "stream-train", help="train lenses on every position of a text stream, without a store",
        description="Forward batches of text through the model and train the chosen lenses on every position "
                    "1..n-1 of every sentence (never position 0 or a BOS), as tuned-lens trains: --steps steps of "
                    "--tokens-per-step positions (default 250 x 2^18 = 65.5M tokens), the learning rate decayed "
                    "linearly to zero. Nothing is stored but the lenses (OUT/<lens>, loadable with Lens.load) and "
                    "a checkpoint (rerun the same command to resume). Runs data-parallel under torchrun.")
    _add_model_args(p)
    p.add_argument("--corpus", default=DEFAULTS.DEFAULT_CORPUS,
                   help="wikipedia-offline (default), a .txt/.jsonl file, or hf:DATASET (streamed)")
    p.add_argument("--hf-config", default=None, help="dataset config for hf: corpora, e.g. 20231101.en")
    p.add_argument("--text-field", default="text", help="text field of .jsonl / hf: corpora (default: text)")
    p.add_argument("--max-documents", type=_positive(), default=None,
                   help="read at most this many documents (lines, records, articles)")
    p.add_argument("--out", required=True, help="output folder: one lens folder per lens, and the checkpoint")
    p.add_argument("--lenses", default="tuned",
                   help="comma-separated: tuned, per-level, joint, joint-residual (default: %(default)s)")
    p.add_argument("--tokens-per-step", type=_positive(), default=1 << 18,
                   help="positions per optimiser step (default: %(default)s, tuned-lens's)")
    p.add_argument("--steps", type=_positive(), default=None,
                   help="optimiser steps (default: 250, tuned-lens's, unless --tokens is given)")
    p.add_argument("--tokens", type=_positive(), default=None,
                   help="token budget: steps = ceil(TOKENS / tokens-per-step) (default: 250 steps)")
    p.add_argument("--micro-rows", type=_positive(), default=256,
                   help="positions per backward pass (memory only; gradients are accumulated) (default: %(default)s)")
    p.add_argument("--tokens-per-batch", type=_positive(), default=DEFAULTS.TOKENS_PER_BATCH,
                   help="padded tokens per forward batch (default: %(default)s)")
    p.add_argument("--val-sentences", type=_positive(), default=64,
                   help="whole sentences held out; every position of them scores each lens (default: %(default)s)")
    p.add_argument("--eval-every", type=_positive(), default=50, help="steps between validations (default: 50)")
    p.add_argument("--seed", type=_non_negative, default=DEFAULTS.SEED,
                   help="seed of the held-out sentences, the stream's order and the draws (default: %(default)s)")
    p.add_argument("--checkpoint-every", type=_positive(), default=10,
                   help="steps between checkpoints (default: %(default)s)")
    p.add_argument("--tuned-optimizer", choices=["sgd", "muon"], default="sgd",
                   help="sgd: tuned-lens's recipe (Nesterov momentum 0.9, lr 1, weight decay 1e-3, clipping 1); "
                        "muon: Muon on the translators' matrices, Adam on their biases (default: %(default)s)")
    p.add_argument("--jump-optimizer", choices=["adam", "muon"], default="adam",
                   help="adam (lr --jump-lr) or muon (Muon on A and B, Adam on BatchNorm) (default: %(default)s)")
    p.add_argument("--muon-lr", type=_positive(float), default=0.02, help="Muon's learning rate (default: 0.02)")
    p.add_argument("--jump-lr", type=_positive(float), default=1e-2, help="the jumps' Adam lr (default: 0.01)")
    p.add_argument("--objective", choices=["kl", "mse"], default="kl",
                   help="the jumps' objective: kl through the frozen head (as the tuned lens) or mse to h^K "
                        "(default: %(default)s)")
    p.add_argument("--rank", type=_positive(), default=None, help="rank of the jumps (default: floor(H/100))")
    p.add_argument("--kl-negatives", type=_non_negative, default=2048,
                   help="vocabulary columns sampled for the KL's normaliser in training (default: %(default)s)")
    p.add_argument("--kl-top-k", type=_positive(), default=32,
                   help="tokens of p_final kept exactly in the KL's target (default: %(default)s)")


def _config(args: argparse.Namespace):
    from ..errors import ConfigError
    from ..training.config import TrainConfig
    from ..training.streaming import StreamConfig
    from ..training.tuned import TunedTrainConfig

    if args.steps is not None and args.tokens is not None:
        raise ConfigError("give --steps or --tokens, not both")
    steps = args.steps if args.steps is not None else (
        math.ceil(args.tokens / args.tokens_per_step) if args.tokens is not None else 250)
    tuned = TunedTrainConfig(init="zero", optimizer=args.tuned_optimizer, muon_lr=args.muon_lr,
                             kl_top_k=args.kl_top_k, kl_negatives=args.kl_negatives, seed=args.seed)
    jumps = TrainConfig(objective=args.objective, rank=args.rank, lr=args.jump_lr, optimizer=args.jump_optimizer,
                        muon_lr=args.muon_lr, kl_top_k=args.kl_top_k, kl_negatives=args.kl_negatives, seed=args.seed)
    config = StreamConfig(lenses=tuple(x.strip() for x in args.lenses.split(",") if x.strip()),
                          tokens_per_step=args.tokens_per_step, num_steps=steps, micro_rows=args.micro_rows,
                          tokens_per_batch=args.tokens_per_batch, val_sentences=args.val_sentences,
                          eval_every=args.eval_every, seed=args.seed, tuned=tuned, jumps=jumps)
    config.validate()
    return config


def _done(out: Path, config: Any, digest: str) -> bool:
    """Whether every lens folder already holds this run's finished lens."""
    for name in config.lenses:
        try:
            rec = json.loads((out / name / "config.json").read_text())["extra"]["streaming"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if rec.get("recipe") != json.loads(json.dumps(config.recipe())) or rec["corpus"].get("digest") != digest:
            return False
    return True


def cmd_stream_train(args: argparse.Namespace) -> int:
    from ..corpus.loaders import load_sentences
    from ..training.stream_data import StreamText
    from ..training.streaming import train_streaming
    from .common import _load_model, _lock

    config = _config(args)
    out = Path(args.out)
    sentences = load_sentences(args.corpus, text_field=args.text_field, hf_config=args.hf_config,
                               max_documents=args.max_documents, progress=not args.quiet)
    text = StreamText.from_texts([s.text for s in sentences], config.val_sentences, config.seed)
    if _done(out, config, text.digest):
        print(f"already trained: {', '.join(str(out / n) for n in config.lenses)}")
        return 0
    lm = _load_model(args)
    corpus = {"source": args.corpus, "hf_config": args.hf_config, "text_field": args.text_field,
              "max_documents": args.max_documents}
    args.kept.say(f"the steps done are kept in {out} every {args.checkpoint_every} steps; rerun the same "
                  "command to resume")
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    with _lock(out):
        lenses = train_streaming(lm, text, out, config, corpus=corpus, progress=not args.quiet,
                                 checkpoint_every=args.checkpoint_every)
    for name, lens in lenses.items():
        hist = lens.extra["streaming"]["history"]
        print(f"{name}: held-out loss {hist['val'][name][0]:.4g} -> {hist['val'][name][-1]:.4g}, saved in {out / name}")
    if lenses:
        print(f"{config.num_steps} steps x {config.tokens_per_step} tokens = {config.token_budget} tokens in "
              f"{time.time() - t0:.1f} s")
    return 0
