"""Which invocations use each option, declared once and checked before a command runs.

Every option of every command is in :data:`USES`: either :data:`ALWAYS` (every invocation of the
command uses it) or a :class:`Needs` (only the invocations where another option has some value use
it). An option given where it does nothing is refused with one line saying which invocations take
it (``generate --exit speculative --lambda 0.3``: ``--lambda`` is used only with ``--exit
confidence``). ``tests/test_options.py`` checks the table against the parser's options.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..experiment.lens_names import RUN_LENS_NAMES


@dataclass(frozen=True)
class Needs:
    """An option used only when ``option`` (another option's dest) has one of ``values`` (with
    ``naming``: ``option`` is a comma-separated list naming one of them), or, with ``given``, only
    when ``option`` is given (``True``) or is not (``False``); ``or_``: other conditions, any of
    which also makes the option used; ``text``: how the refusal says who uses it, where the
    conditions' own words would be long."""

    option: str
    values: tuple[str, ...] = ()
    given: bool | None = None
    naming: bool = False
    or_: tuple[Needs, ...] = ()
    text: str | None = None

    def holds(self, args: argparse.Namespace, given: set[str]) -> bool:
        return self._holds(args, given) or any(other.holds(args, given) for other in self.or_)

    def _holds(self, args: argparse.Namespace, given: set[str]) -> bool:
        if self.given is not None:
            return (self.option in given) == self.given
        value = getattr(args, self.option)
        words = [w.strip() for w in value.split(",")] if self.naming else [value]
        return any(w in self.values for w in words)

    def says(self, flags: dict[str, str]) -> str:
        """The invocations that use the option, in the words of the command line (``flags``: dest -> flag)."""
        if self.text is not None:
            return self.text
        flag = flags[self.option]
        if self.given is not None:
            own = f"with {flag}" if self.given else f"without {flag}"
        else:
            words = ", ".join(self.values[:-1]) + " or " + self.values[-1] if len(self.values) > 1 else self.values[0]
            own = f"with {flag} {'naming ' if self.naming else ''}{words}"
        return " or ".join([own, *(other.says(flags) for other in self.or_)])

    def now(self, args: argparse.Namespace, given: set[str], flags: dict[str, str]) -> str:
        """What this invocation does instead, in the same words."""
        flag = flags[self.option]
        if self.given is not None:
            own = f"with {flag}" if self.option in given else f"without {flag}"
        else:
            own = f"with {flag} {getattr(args, self.option)}"
        return " and ".join([own, *(other.now(args, given, flags) for other in self.or_ if other.option in given)])


ALWAYS = None

_EXIT = "exit_mode"
_RUN_LENSES = RUN_LENS_NAMES  # what ``onejump lens --lens/--compare`` may name in a run folder (with --run)
_LENS_MODES = ("speculative", "confidence", "auto")
_STREAM_JUMPS = ("per-level", "joint", "joint-residual")  # the lenses of stream-train that are jumps
_RUN = {"out": ALWAYS, "device": ALWAYS, "dtype": ALWAYS, "device_map": ALWAYS}
_MODEL_ONLY = {"model": ALWAYS, "device": Needs("device_map", given=False), "dtype": ALWAYS, "device_map": ALWAYS}
_DATA = {name: ALWAYS for name in ("corpus", "hf_config", "text_field", "max_documents", "n_train", "n_test", "seed",
                                   "store_dtype", "tokens_per_batch", "shard_size", "train_positions",
                                   "test_positions")}
_TRAIN = {**{name: ALWAYS for name in ("preset", "objective", "rank", "lr", "batch_size", "max_epochs", "patience",
                                       "val_fraction", "train_seed", "select_rule", "no_joint", "no_jtc",
                                       "no_tuned")},
          "tuned_steps": Needs("no_tuned", given=False), "tuned_init": Needs("no_tuned", given=False),
          "jump_optimizer": ALWAYS, "tuned_optimizer": Needs("no_tuned", given=False),
          "muon_lr": Needs("jump_optimizer", ("muon",), or_=(Needs("tuned_optimizer", ("muon",)),))}

#: command -> option dest -> who uses it; "" is the options before the command.
USES: dict[str, dict[str, Needs | None]] = {
    "": {"quiet": ALWAYS, "threads": ALWAYS},
    "prepare": {"models": ALWAYS, "dtype": ALWAYS},
    "extract": {**_MODEL_ONLY, **_DATA, "out": ALWAYS},
    "train": {**_RUN, **_TRAIN},
    "select": {**_RUN, "select_rule": ALWAYS},
    "evaluate": dict(_RUN),
    "report": dict(_RUN),
    "run": {**_RUN, "model": ALWAYS, **_DATA, **_TRAIN},
    "sweep": {**_RUN, "objectives": ALWAYS,
              "multipliers": Needs("objectives", ("mse",), naming=True, or_=(Needs("kl_multipliers", given=False),),
                                   text="with --objectives naming mse, or without --kl-multipliers"),
              "kl_multipliers": Needs("objectives", ("kl",), naming=True), "residual_multipliers": ALWAYS,
              "val_fraction": ALWAYS, "variants": ALWAYS,
              "variant_multipliers": Needs("variants", given=True)},
    "compare": {"sources": ALWAYS, "out": ALWAYS},
    "generate": {**_MODEL_ONLY, "lens": Needs(_EXIT, _LENS_MODES), "prompt": ALWAYS, "max_new_tokens": ALWAYS,
                 _EXIT: ALWAYS, "min_agreement": Needs(_EXIT, ("auto",)), "lam": Needs(_EXIT, ("confidence",)),
                 "measure": Needs(_EXIT, ("confidence",)), "exit_levels": Needs(_EXIT, ("confidence", "auto")),
                 "draft_level": Needs(_EXIT, ("speculative",)), "draft_len": Needs(_EXIT, ("speculative",)),
                 "draft_threshold": Needs(_EXIT, ("speculative",)), "compare": ALWAYS},
    "lens": {"prompt": ALWAYS, "lens": ALWAYS, "compare": ALWAYS,
             "run": Needs("model", given=False, or_=(Needs("lens", _RUN_LENSES), Needs("compare", _RUN_LENSES)),
                          text=f"without --model, or with --lens or --compare naming a lens of the run "
                               f"({', '.join(_RUN_LENSES)})"),
             "statistic": ALWAYS, "out": ALWAYS,
             "model": ALWAYS, "device": ALWAYS, "dtype": ALWAYS},
    "info": {"path": ALWAYS},
    "frontier": {"run": ALWAYS, "ranks": ALWAYS, "jump_ranks": ALWAYS, "tuned_steps": ALWAYS, "no_tuned_adam": ALWAYS,
                 "no_tuned_muon": ALWAYS,
                 "max_epochs": ALWAYS, "device": ALWAYS, "dtype": ALWAYS},
    "scaling": {name: ALWAYS for name in ("run", "sizes", "passes", "steps", "max_sentences", "val_sentences",
                                          "device", "dtype")},
    "stream-train": {**_MODEL_ONLY, **{name: ALWAYS for name in (
        "corpus", "hf_config", "text_field", "max_documents", "out", "lenses", "tokens_per_step", "steps", "tokens",
        "micro_rows", "tokens_per_batch", "val_sentences", "eval_every", "seed", "checkpoint_every", "kl_top_k")},
        "tuned_optimizer": Needs("lenses", ("tuned",), naming=True),
        "jump_optimizer": Needs("lenses", _STREAM_JUMPS, naming=True),
        "jump_lr": Needs("lenses", _STREAM_JUMPS, naming=True),
        "objective": Needs("lenses", _STREAM_JUMPS, naming=True),
        "rank": Needs("lenses", _STREAM_JUMPS, naming=True),
        "kl_negatives": ALWAYS,
        "muon_lr": Needs("tuned_optimizer", ("muon",), or_=(Needs("jump_optimizer", ("muon",)),))},
}


def options_of(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """A parser's options by dest (without --help and the subcommands)."""
    return {a.dest: a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))}


def commands_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``""`` (the options before the command) and every subcommand's parser."""
    out = {"": parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.update(action.choices)
    return out


def given_options(build: Any, argv: Sequence[str]) -> set[str]:
    """The dests of the options ``argv`` gives (whatever their value, even the default's): parsed again by
    a fresh parser (``build()``) whose options have no defaults."""
    parser = build()
    for sub in commands_of(parser).values():
        for action in options_of(sub).values():
            action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(list(argv))))


def check_invocation(build: Any, parser: argparse.ArgumentParser, args: argparse.Namespace,
                     argv: Sequence[str]) -> None:
    """Refuse an invocation that gives an option it does not use (before the command or after it)."""
    given = given_options(build, argv)
    check_uses(parser, "", args, given)
    check_uses(parser, args.command, args, given)


def check_uses(parser: argparse.ArgumentParser, command: str, args: argparse.Namespace, given: set[str]) -> None:
    """Refuse (:class:`ConfigError`) an option given to ``command`` that this invocation does not use."""
    sub = commands_of(parser)[command]
    actions = options_of(sub)
    for dest in sorted(given & set(actions), key=list(actions).index):
        needs = USES[command].get(dest)
        if needs is None or needs.holds(args, given):
            continue
        flags = {d: (a.option_strings[0] if a.option_strings else d) for d, a in actions.items()}
        raise ConfigError(f"{flags[dest]} does nothing {needs.now(args, given, flags)}: it is used only "
                          f"{needs.says(flags)}")


__all__ = ["ALWAYS", "USES", "Needs", "check_invocation", "check_uses", "commands_of", "given_options", "options_of"]
