"""Every option of every command is used, or refused with one line saying which invocations take it.

Parametrised over the parser's actual options and the declared table (``onejump.cli.modes.USES``): an
option added without a declaration, or a declaration whose option is gone, fails here.
"""

from __future__ import annotations

import argparse

import pytest

from onejump.cli import main
from onejump.cli.modes import USES, Needs, check_invocation, commands_of, options_of
from onejump.cli.parser import _friendly_types, build_parser
from onejump.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = build_parser()
    _friendly_types(parser)
    return parser


COMMANDS = commands_of(_parser())


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_is_declared(command):
    actual = set(options_of(COMMANDS[command]))
    declared = set(USES.get(command, {}))
    assert actual - declared == set(), f"options of '{command}' with no declaration in modes.USES"
    assert declared - actual == set(), f"declarations in modes.USES for options '{command}' does not have"


def _sample(action: argparse.Action) -> list[str]:
    """Option strings and a value the option's parser accepts."""
    head = list(action.option_strings[:1])
    if action.nargs == 0:
        return head
    if action.choices:
        return head + [str(list(action.choices)[0])]
    candidates = ([str(action.default)] if action.default not in (None, "", argparse.SUPPRESS)
                  and not isinstance(action.default, list) else []) + ["1", "2", "0.5", "one", "x"]
    for text in candidates:
        try:
            value = action.type(text) if action.type else text
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            continue
        if value is not None:
            return head + [text]
    raise AssertionError(f"no sample value for {action.option_strings}")


def _required(command: str, skip: set[str]) -> list[str]:
    """What ``command`` cannot be parsed without (its required options and positionals)."""
    out: list[str] = []
    for dest, action in options_of(COMMANDS[command]).items():
        if dest in skip:
            continue
        if action.required or (not action.option_strings and action.nargs not in ("?", "*")):
            out += _sample(action) if action.option_strings else ["x"]
    return out


def _states(command: str, needs: Needs) -> list[tuple[list[str], bool]]:
    """The invocations to try: argv fragments for the deciding option, and whether they use the option
    (its other conditions, ``or_``, read with their options left out)."""
    action = options_of(COMMANDS[command])[needs.option]
    also = any(_holds_by_default(command, other) for other in needs.or_)
    if needs.given is not None:
        return [([], not needs.given or also), (_sample(action), needs.given or also)]
    words = lambda v: [w.strip() for w in v.split(",")] if needs.naming else [v]  # noqa: E731
    out = [([], any(w in needs.values for w in words(action.default)) or also)]
    for value in dict.fromkeys([*(action.choices or []), *needs.values, "other"]):
        if action.choices and value not in action.choices:
            continue
        out.append(([action.option_strings[0], value], any(w in needs.values for w in words(value)) or also))
    return out


def _holds_by_default(command: str, needs: Needs) -> bool:
    """Whether a condition holds when its option is not given (its default)."""
    if needs.given is not None:
        return not needs.given
    default = options_of(COMMANDS[command])[needs.option].default
    words = [w.strip() for w in default.split(",")] if needs.naming and default else [default]
    return any(w in needs.values for w in words)


CASES = [(command, dest, needs) for command, table in sorted(USES.items()) for dest, needs in table.items()
         if needs is not None]


def _check(argv: list[str]) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    check_invocation(build_parser, parser, args, argv)


@pytest.mark.parametrize("command, dest, needs", CASES, ids=[f"{c}-{d}" for c, d, _ in CASES])
def test_an_option_is_used_or_refused(command, dest, needs):
    option = options_of(COMMANDS[command])[dest]
    for fragment, used in _states(command, needs):
        argv = [command, *_required(command, {dest, needs.option}), *fragment, *_sample(option)]
        if used:
            _check(argv)  # accepted: the invocation uses the option
        else:
            with pytest.raises(ConfigError) as err:
                _check(argv)
            message = str(err.value)
            assert option.option_strings[0] in message and "used only with" in message, (argv, message)
            assert "\n" not in message


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_options_used_always_are_accepted_in_every_mode(command):
    """An option every invocation uses is never refused, whatever the deciding options say."""
    always = [d for d, needs in USES[command].items() if needs is None]
    deciding = {needs.option for needs in USES[command].values() if needs is not None}
    for decide in sorted(deciding) or [None]:
        for dest in always:
            if dest == decide or dest in deciding:
                continue
            action = options_of(COMMANDS[command])[dest]
            if not action.option_strings:
                continue
            fragments = [[]] if decide is None else [f for f, _ in _states(command, _any_needs(command, decide))]
            for fragment in fragments:
                _check([command, *_required(command, {dest, decide}), *fragment, *_sample(action)]
                       if command else [*_sample(action), "info"])


def _any_needs(command: str, option: str) -> Needs:
    return next(n for n in USES[command].values() if n is not None and n.option == option)


def test_generate_refuses_a_lambda_it_would_ignore(capsys):
    code = main(["generate", "--prompt", "x", "--exit", "speculative", "--lambda", "0.3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0] == ("onejump generate: error: --lambda does nothing with --exit speculative: it is used only with "
                      "--exit confidence")


def test_an_option_given_at_its_default_still_counts_as_given(capsys):
    code = main(["train", "--no-tuned", "--tuned-steps", "250"])
    err = capsys.readouterr().err
    assert code == 2 and "--tuned-steps does nothing with --no-tuned" in err


def test_a_run_folder_is_used_for_its_model_or_its_lenses():
    """``lens --run`` gives the model when --model is not given, and the lenses --lens / --compare name."""
    for used in (["--run", "R"], ["--run", "R", "--model", "M", "--lens", "ojfa"],
                 ["--run", "R", "--model", "M", "--compare", "tuned"]):
        _check(["lens", "--prompt", "x", "--out", "o.png", *used])
    with pytest.raises(ConfigError, match="--run does nothing with --model and with --lens logit"):
        _check(["lens", "--prompt", "x", "--out", "o.png", "--run", "R", "--model", "M", "--lens", "logit"])


def test_sweep_multipliers_are_refused_where_every_objective_has_its_own():
    _check(["sweep", "--objectives", "kl", "--multipliers", "2"])  # kl takes --multipliers without its own
    with pytest.raises(ConfigError, match="--multipliers does nothing with --objectives kl and with --kl-mult"):
        _check(["sweep", "--objectives", "kl", "--kl-multipliers", "1", "--multipliers", "2"])
