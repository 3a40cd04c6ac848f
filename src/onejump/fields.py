"""A library dataclass field's command-line option, declared beside the field (its ``metadata``).

The command line builds its options from these (``onejump.cli.options``), so a setting's help,
range and choices are written once, where the setting is. Imports nothing heavy: the library's
config modules use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .limits import Range


def option(help: str, *, range: Range | None = None, choices: Sequence[str] | None = None,  # noqa: A002
           flag: str | None = None, unset: str | None = None, parse: str | None = None) -> dict[str, Any]:
    """The ``metadata`` of a field that is a command-line option.

    ``help``: the option's help (``%(default)s`` is the default); ``range``: the documented range of a
    number (:mod:`onejump.limits`); ``choices``: the words it takes; ``flag``: its spelling when not
    the field's name (``seed`` -> ``--train-seed``); ``unset``: what the field's ``None`` means
    (``floor(H/100)``); ``parse``: a named parser of the command line for values of its own form
    (``positions``: one, all or a positive integer).
    """
    return {"option": {"help": help, "range": range, "choices": tuple(choices) if choices else None,
                       "flag": flag, "unset": unset, "parse": parse}}


def option_of(f: Any) -> dict[str, Any] | None:
    """The option declared on a dataclass field (None: the field is not an option)."""
    return f.metadata.get("option")


__all__ = ["option", "option_of"]
