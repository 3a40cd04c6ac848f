"""Command-line options built from the library's dataclasses, and the parsers of option values.

A dataclass field declared with :func:`onejump.fields.option` is an option: its flag (the field's
name, or the declared ``flag``), help, range or choices come from the field, its default from the
dataclass. :func:`field_values` reads the parsed values back as the dataclass's fields.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields
from typing import Any

from ..fields import option_of


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


def _positions(text: str) -> str:
    """one, all or a positive integer: positions kept per sentence of a split."""
    word = text.strip().lower()
    if word in ("one", "all") or (word.isdigit() and int(word) >= 1):
        return word
    raise argparse.ArgumentTypeError(f"expected one, all or a positive integer, got {text!r}")


def _ranged(parse: Callable[[str], Any], allowed: Any) -> Callable[[str], Any]:
    def parse_in_range(text: str):
        value = parse(text)
        if not allowed.contains(value):
            raise argparse.ArgumentTypeError(f"must be {allowed.describe()}, got {text}")
        return value

    parse_in_range.ranged = True  # type: ignore[attr-defined]
    parse_in_range.__name__ = getattr(parse, "__name__", "value")
    return parse_in_range


_PARSERS: dict[str, Callable[[str], Any]] = {"positions": _positions}


def _value_parser(spec: dict[str, Any]) -> Callable[[str], Any] | None:
    """How an option's text becomes its value: a named parser, or a number checked against its range
    (with the plain "must be > 0" / ">= 0" first where the range starts there), or the text itself."""
    if spec["parse"] is not None:
        return _PARSERS[spec["parse"]]
    allowed = spec["range"]
    if allowed is None:
        return None
    if not allowed.integer:
        return _ranged(_number, allowed)
    base = _positive() if allowed.lo == 1 and not allowed.lo_open else \
        _non_negative if allowed.lo == 0 and not allowed.lo_open else _integer
    return _ranged(base, allowed)


def flag_of(f: Any) -> str:
    """The command-line flag of an option field."""
    return option_of(f)["flag"] or "--" + f.name.replace("_", "-")


def dest_of(f: Any) -> str:
    return flag_of(f)[2:].replace("-", "_")


def add_field_options(p: argparse.ArgumentParser, cls: type, names: Sequence[str], *,
                      default_text: Callable[[str], str] | None = None) -> None:
    """Add the options of ``cls``'s fields ``names`` (in that order) to ``p``.

    Without ``default_text`` an option's default is the field's (said in its help unless the help
    already says it, or it is None); with it the option's default is None (the value then comes from
    elsewhere, e.g. a preset) and its help ends with ``(default: <default_text(name)>)``.
    """
    by_name = {f.name: f for f in fields(cls)}
    for name in names:
        f = by_name[name]
        spec = option_of(f)
        if spec is None:
            raise TypeError(f"{cls.__name__}.{name} declares no command-line option")
        default = None if default_text is not None else (f.default if f.default is not MISSING else None)
        text = spec["help"]
        if default_text is not None:
            text += f" (default: {default_text(name)})"
        elif default is not None and "default" not in text:
            text += " (default: %(default)s)"
        kwargs: dict[str, Any] = {"default": default, "help": text, "dest": dest_of(f)}
        if spec["choices"] is not None:
            kwargs["choices"] = list(spec["choices"])
        parse = _value_parser(spec)
        if parse is not None:
            kwargs["type"] = parse
        p.add_argument(flag_of(f), **kwargs)


def field_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The values ``args`` holds for ``cls``'s option fields (those of its options this command has)."""
    return {f.name: getattr(args, dest_of(f)) for f in fields(cls)
            if option_of(f) is not None and hasattr(args, dest_of(f))}


__all__ = ["add_field_options", "dest_of", "field_values", "flag_of"]


#: The training options a preset sets (a flag left unset keeps the preset's value).
PRESET_FIELDS = ("objective", "rank", "lr", "batch_size", "max_epochs", "patience")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from ..experiment.presets import DataArgs

    add_field_options(p, DataArgs, ("model",))
    _add_device_args(p)


def _add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model weights dtype (default: %(default)s)")
    p.add_argument("--device-map", default=None,
                   help="'auto' to spread a model too big for one device over several (accelerate)")
