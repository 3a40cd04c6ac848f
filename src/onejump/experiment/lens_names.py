"""Naming a lens on the command line: ``logit``, a lens of a run folder, a folder or a hub id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ShortcutError
from ..lenses.base import Lens, LogitLens
from .folder import RunFolder
from .lens_table import LENSES

#: The run's saved lenses (the lens table's ids that have a folder).
RUN_LENS_NAMES = tuple(name for name, row in LENSES.items() if row.folder is not None)
# the command that makes each lens of a run (``run`` is filled with str.replace, never format, as a
# run's path is user text)
_MADE_BY = {"ojfa": "onejump train --out {run}` and `onejump select --out {run}", "best": "onejump sweep --out {run}"}


def run_lens_path(run: str | Path, name: str) -> Path:
    """Where run folder ``run`` keeps lens ``name`` (one of :data:`RUN_LENS_NAMES`): the run owns its layout."""
    if name not in RUN_LENS_NAMES:
        raise ConfigError(f"a run names its lenses {', '.join(RUN_LENS_NAMES)}; got '{name}'")
    return RunFolder(run).lens_path(name)


def run_model(run: str | Path) -> str | None:
    """The model a run folder was made with (its ``run.json``), or None."""
    path = Path(run) / "run.json"
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    model = info.get("data", {}).get("model") if isinstance(info, dict) else None
    return model if isinstance(model, str) else None


def resolve_lens(spec: str, lm: Any, run: str | Path | None = None) -> Lens:
    """The lens ``spec`` names: ``logit``; a lens of the run folder ``run`` (:data:`RUN_LENS_NAMES`);
    or a lens folder, a tuned-lens folder or a hub id
    (:meth:`Lens.from_pretrained`)."""
    if spec == "logit":
        return LogitLens(lm)
    if spec in RUN_LENS_NAMES:
        if run is None:
            raise ConfigError(f"lens '{spec}' is a lens of a run: give the run folder (--run RUN)")
        path = run_lens_path(run, spec)
        if not path.is_dir():
            raise ShortcutError(f"run {run} has no '{spec}' lens (expected at {path}); make it first with "
                                f"`{_MADE_BY.get(spec, 'onejump train --out {run}').replace('{run}', str(run))}`")
        return Lens.from_pretrained(path, lm)
    return Lens.from_pretrained(spec, lm)


__all__ = ["RUN_LENS_NAMES", "resolve_lens", "run_lens_path", "run_model"]
