"""Lenses shipped with the package, in ``onejump/pretrained/``: ``<model alias>/<lens name>/`` folders
(config.json, weights.safetensors, README.md card) read offline by a short id.

Ids: ``pretrained`` (the default lens of the model it is loaded for), ``<alias>`` (its default lens,
``best``) or ``<alias>/<name>``. A shipped lens loads only for a model whose weights fingerprint is
the one it was trained on; anything else is refused with the fingerprint of both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LensFileError

# the data folder of shipped lenses (a package of data only, so that setuptools ships it)
ROOT = Path(__file__).resolve().parent.parent / "pretrained"
DEFAULT_NAME = "best"
PRETRAINED = "pretrained"


@dataclass(frozen=True)
class ShippedLens:
    """One shipped lens: its model alias, its name, its folder and its config (``config.json``)."""

    model: str
    name: str
    path: Path
    config: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.model}/{self.name}"

    @property
    def fingerprint(self) -> str | None:
        return self.config.get("fingerprint")


def shipped(root: Path | None = None) -> list[ShippedLens]:
    """Every shipped lens (folders holding a ``config.json``) under ``root`` (the package's), sorted by id."""
    out = []
    for cfg in sorted((root or ROOT).glob("*/*/config.json")):
        try:
            config = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            raise LensFileError(f"shipped lens {cfg.parent} has an unreadable config.json") from None
        out.append(ShippedLens(cfg.parent.parent.name, cfg.parent.name, cfg.parent, config))
    return out


def is_shipped_id(source: str, root: Path | None = None) -> bool:
    """Whether ``source`` names shipped lenses: ``pretrained``, an alias with shipped lenses, ``<alias>/<name>``."""
    text = str(source)
    if text == PRETRAINED:
        return True
    # ``<alias>/<anything>`` is a shipped id, so a misspelt lens name lists the shipped ones instead of
    # being looked up on the hub
    return text.split("/")[0] in {s.model for s in shipped(root)} and text.count("/") <= 1


def find(source: str, lm: Any | None, root: Path | None = None) -> ShippedLens:
    """The shipped lens ``source`` names, for the model ``lm`` (needed for ``pretrained``; checked otherwise)."""
    lenses = shipped(root)
    text = str(source)
    if text == PRETRAINED:
        if lm is None:
            raise LensFileError("'pretrained' names the shipped lens of a model: pass the model, or name the lens "
                                f"({', '.join(s.id for s in lenses) or 'none shipped'})")
        same = [s for s in lenses if s.fingerprint == lm.fingerprint]
        named = [s for s in lenses if s.model == lm.name]
        pool = same or named
        if not pool:
            raise LensFileError(f"no lens ships for the model '{lm.name}' (weights {lm.fingerprint}); shipped: "
                                f"{', '.join(s.id for s in lenses) or 'none'}")
        text = pool[0].model
    model, _, name = text.partition("/")
    name = name or DEFAULT_NAME
    for s in lenses:
        if (s.model, s.name) == (model, name):
            if lm is not None and s.fingerprint != lm.fingerprint:
                raise LensFileError(f"the shipped lens {s.id} was trained for the weights {s.fingerprint} of "
                                    f"'{s.config.get('model')}'; this model ('{lm.name}') has weights "
                                    f"{lm.fingerprint}: it is refused")
            return s
    of_model = [s.id for s in lenses if s.model == model]
    raise LensFileError(f"no shipped lens '{text}'; shipped: {', '.join(of_model or [s.id for s in lenses]) or 'none'}")


__all__ = ["DEFAULT_NAME", "PRETRAINED", "ROOT", "ShippedLens", "find", "is_shipped_id", "shipped"]
