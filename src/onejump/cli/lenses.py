"""The commands that read lenses on prompts: generate (early exit) and lens (prediction trajectories)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError
from .common import _load_model


def _jump_folder(path: str) -> Path:
    """The OJFA jump folder of ``--jump``/``--lens``: the folder itself, or a run folder's OJFA jump (refused
    when missing or superseded, with the command to run)."""
    from ..experiment.lens_names import run_lens_path

    folder = Path(path)
    if (folder / "run.json").is_file():
        return run_lens_path(folder, "ojfa")
    return folder


def _generation_lens(args: argparse.Namespace, lm):
    """The lens named by --lens: ``logit``, a lens folder, or a run folder (its OJFA jump)."""
    from ..lenses.base import Lens, LogitLens

    name = args.lens
    if name is None:  # said, not guessed from whatever folder the command runs in
        print("onejump generate: lens: the logit lens (no --lens given)", file=sys.stderr)
        return LogitLens(lm)
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
    from ..generation import GenerationInterrupted, generate, generate_reference, max_positions
    from ..generation.auto import pick

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
        args.kept.say("interrupted while measuring the modes; nothing was generated")
        try:
            choice = pick(lm, lens, ids, min_agreement=args.min_agreement, levels=_exit_levels(args.exit_levels),
                          progress=lambda msg: print(f"onejump generate: measuring {msg}", file=sys.stderr))
        except GenerationInterrupted:
            raise KeyboardInterrupt from None
        print(f"onejump generate: --exit auto chose {choice.reason}", file=sys.stderr)
        mode, params = ("none" if choice.mode == "greedy" else choice.mode), choice.params  # generate's word
    elif mode == "confidence":
        params = {"lam": args.lam, "measure": args.measure, "exit_levels": _exit_levels(args.exit_levels)}
    elif mode == "speculative":
        params = {"draft_level": args.draft_level, "draft_len": args.draft_len,
                  "draft_threshold": args.draft_threshold}
    try:
        text, res = generate(lm, ids, lens, exit=mode, max_new_tokens=args.max_new_tokens, **params)
    except GenerationInterrupted as stop:
        print(args.prompt + lm.tokenizer.decode(stop.result.tokens), flush=True)
        print(f"onejump generate: interrupted after {len(stop.result.tokens)} new tokens (printed above)",
              file=sys.stderr)
        return 130
    print(args.prompt + text)
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
    from ..defaults import DEFAULT_MODEL
    from ..experiment.lens_names import resolve_lens, run_model
    from ..model.loading import load_model
    from ..trajectory import save_trajectories, trajectories

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg", ".html"):
        raise ConfigError(f"--out must end in .png, .pdf, .svg or .html, got '{out.name}'")
    if args.run is not None and not Path(args.run).is_dir():
        what = "is a file, not a run folder" if Path(args.run).exists() else "not found"
        raise ConfigError(f"--run {args.run}: {what}")
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
