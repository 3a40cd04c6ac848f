"""The one stage protocol: when a stage of a run is reused, recomputed or refused.

A stage is declared once (:mod:`onejump.experiment.stages`): its name (its folder, relative to the
run folder), its inputs (other stages, by their keys, and artefacts, by their content identities:
the store's shard hashes, a lens file's config, which holds its weights' sha256), its settings and a
format version. Its key is a hash of all four. A stage writes its outputs and then, last, its record
``<folder>/stage.json``: its key, its inputs, its settings and the identities of the artefacts it
made. A stage cut short leaves no record, so it is never taken for done.

:meth:`StageRecords.status` is the one decision, for every stage:

- ``current``: the record's key equals the key of the inputs now in the run, its outputs exist and
  the artefacts it made are unchanged: it is reused (a command that computes) or read (one that reads);
- ``missing``: no record, or an output is gone: computed, or refused with the command that makes it;
- ``superseded``: an input changed after it was made: recomputed, or refused with the command to run.

A command that only reads a stage does not know the settings it was made with: it declares them as
:data:`RECORDED`, and the key is checked with the record's settings against the inputs now in the run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LensFileError, StageError, StoreError
from ..io import atomic_write_text

RECORD = "stage.json"


class _Recorded:
    def __repr__(self) -> str:
        return "RECORDED"


#: The settings of a stage as its record holds them (what a command that only reads it declares).
RECORDED: Any = _Recorded()


def stage_key(*parts: Any) -> str:
    """A short hash of a stage's inputs (their identities and settings)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Stage:
    """One stage of a run, declared: what it is computed from and what it writes."""

    name: str  # its folder, relative to the run folder ("lenses/joint", "evaluation/ojfa", "report")
    title: str  # what a message calls it ("the 'joint' lens", "the evaluation of 'ojfa'")
    made_by: str  # the command that makes it; "{run}" stands for the run folder
    inputs: dict[str, Any] = field(default_factory=dict)  # input -> its key or content identity
    settings: Any = None
    version: int = 1
    outputs: tuple[str, ...] = ()  # files it writes besides its record, relative to the run folder
    products: tuple[str, ...] = ()  # artefacts it makes (identities kept in its record)

    def key(self, settings: Any = RECORDED) -> str:
        """The stage's key with ``settings`` (its own unless they are :data:`RECORDED`)."""
        used = self.settings if self.settings is not RECORDED else settings
        return stage_key(self.name, self.version, self.inputs, used)


class StageRecords:
    """The stage records of one run folder; ``identity(artefact)`` gives an artefact's content identity."""

    def __init__(self, folder: Path, identity: Callable[[str], str | None]):
        self.folder = Path(folder)
        self.identity = identity

    def record(self, name: str) -> dict[str, Any] | None:
        path = self.folder / name / RECORD
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None  # a damaged record: the stage is made again
        return record if isinstance(record, dict) and record.get("stage") == name else None

    def status(self, stage: Stage) -> str:
        """``current``, ``missing`` or ``superseded`` (see the module's doc)."""
        record = self.record(stage.name)
        if record is None or any(not (self.folder / out).is_file() for out in stage.outputs):
            return "missing"
        if record.get("key") != stage.key(record.get("settings")):
            return "superseded"
        made = record.get("products") or {}
        if any(made.get(p) != self.identity(p) for p in stage.products):
            return "superseded"  # replaced after it was made
        return "current"

    def command(self, stage: Stage) -> str:
        # the run's path is user text: put in with str.replace, never format
        return stage.made_by.replace("{run}", str(self.folder))

    def require(self, stage: Stage) -> str:
        """The key of ``stage`` when it is current; else one line naming the command that makes it again."""
        status = self.status(stage)
        if status == "missing":
            raise StageError(f"no {stage.title} in {self.folder}: run `{self.command(stage)}`")
        if status == "superseded":
            raise StageError(f"{stage.title} in {self.folder} is superseded (what it was made from has changed "
                             f"since): run `{self.command(stage)}`")
        return self.key_of(stage)

    def key_of(self, stage: Stage) -> str:
        """The stage's key as recorded (its settings from the record when declared :data:`RECORDED`)."""
        record = self.record(stage.name) or {}
        return stage.key(record.get("settings"))

    def begin(self, stage: Stage) -> None:
        """A stage is about to be (re)computed: its old record goes first."""
        folder = self.folder / stage.name
        (folder / RECORD).unlink(missing_ok=True)
        for stale in folder.glob(f".{RECORD}.*"):  # what a kill while writing the record left
            stale.unlink(missing_ok=True)

    def complete(self, stage: Stage) -> None:
        """Its outputs are written: the record, last."""
        if stage.settings is RECORDED:
            raise ValueError(f"stage {stage.name} is completed with the settings it was computed with")
        record = {"stage": stage.name, "version": stage.version, "key": stage.key(), "inputs": stage.inputs,
                  "settings": stage.settings, "products": {p: self.identity(p) for p in stage.products}}
        (self.folder / stage.name).mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / stage.name / RECORD, json.dumps(record, indent=1, default=str))

    def run(self, stage: Stage, compute: Callable[[], Any], load: Callable[[], Any],
            reused: Callable[[], None] = lambda: None) -> Any:
        """Reuse a current stage (``load()``), else compute it (``compute()`` writes its outputs and returns
        them) and record it."""
        if self.status(stage) == "current":
            try:
                out = load()
                reused()
                return out
            except (StoreError, LensFileError):
                pass  # a damaged output: made again
        self.begin(stage)
        out = compute()
        self.complete(stage)
        return out


    def run_parts(self, stages: Mapping[str, Stage], compute: Callable[[list[str]], Mapping[str, Any]],
                  load: Callable[[str], Any], save: Callable[[str, Any], None]) -> tuple[dict[str, Any], list[str]]:
        """:meth:`run` for stages computed together (one lens each, in one pass over the store): each
        current one is loaded, the others computed in one call (``compute(names) -> {name: part}``),
        saved and recorded. Returns every part, in ``stages``' order, and the names computed."""
        parts: dict[str, Any] = {}
        todo: list[str] = []
        for name, stage in stages.items():
            if self.status(stage) == "current":
                try:
                    parts[name] = load(name)
                    continue
                except (StoreError, LensFileError):
                    pass  # a damaged part: made again
            todo.append(name)
        if todo:
            fresh = compute(todo)
            for name in todo:
                self.begin(stages[name])
                save(name, fresh[name])
                self.complete(stages[name])
                parts[name] = fresh[name]
        return {name: parts[name] for name in stages}, todo


__all__ = ["RECORD", "RECORDED", "Stage", "StageRecords", "stage_key"]
