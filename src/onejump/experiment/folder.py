"""A run folder opened: its layout, its model and store (loaded once), its stage records, and the run's
lenses and saved stages as a command reads them (each one checked current by the stage protocol first).

The layout is :mod:`onejump.experiment.layout`'s; the stages are declared in
:mod:`onejump.experiment.stages` and decided by :mod:`onejump.experiment.stage`.
"""

from __future__ import annotations

import functools
import json
import shlex
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import StageError, StoreError
from ..io import atomic_write_text
from ..store import HiddenStateStore
from .layout import RUN_FORMAT, RUN_VERSION, RunLayout
from .lens_table import run_lens
from .presets import PRESETS, DataArgs
from .probes import Probes
from .stage import Stage, StageRecords
from .stages import RunStages, artefact_identity


def rerun_command(folder: Path, data: dict[str, Any] | None) -> str:
    """``onejump run`` with the data settings of ``data`` (those that differ from the defaults), into a new
    folder beside ``folder``."""
    parts = ["onejump", "run", "--out", f"{folder}-new"]
    defaults = {f.name: f.default for f in fields(DataArgs)}
    for name, value in (data or {}).items():
        if name in defaults and (value != defaults[name] or name in ("model", "corpus")) and value is not None:
            parts += [f"--{name.replace('_', '-')}", str(value)]
    return " ".join(shlex.quote(p) for p in parts)


class RunFolder:
    """A run folder: its layout, its model and store (loaded once), and its stages' records."""

    def __init__(self, folder: str | Path, *, device: str = "auto", dtype: str = "float32",
                 device_map: str | None = None, progress: bool = True):
        self.folder = Path(folder)
        self.layout = RunLayout(self.folder)
        self.device, self.dtype, self.device_map = device, dtype, device_map
        self.progress = progress
        self.probes = Probes(self.layout)
        self.records = StageRecords(self.folder, lambda name: artefact_identity(self.layout, self.store, name))
        self.stages = RunStages(self.layout, self.records)
        self._lm = None
        self._store: HiddenStateStore | None = None

    @property
    def state(self):
        return self.probes.state

    @property
    def store_dir(self) -> Path:
        return self.layout.store_dir

    @property
    def report_dir(self) -> Path:
        return self.layout.report_dir

    def lens_path(self, name: str) -> Path:
        return self.layout.lens_path(name)

    def _run_json(self) -> dict[str, Any]:
        path = self.layout.run_json
        if not path.is_file():
            raise StoreError(f"{self.folder} is not an onejump run folder (no run.json): run `onejump extract "
                             f"--out {self.folder}` or `onejump run --out {self.folder}` first")
        try:
            info = json.loads(path.read_text())
            if not isinstance(info, dict) or not isinstance(info.get("data"), dict):
                raise KeyError("data")
            return info
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError) as exc:
            raise StoreError(f"{path} is corrupt: {exc}") from None

    def made_by_older_version(self) -> bool:
        """Whether the folder has no stage records to check: a ``shortcuts/`` layout, or a ``run.json``
        without this run format and version (:data:`RUN_FORMAT`, :data:`RUN_VERSION`)."""
        if self.layout.made_by_older_version():
            return True
        if not self.layout.run_json.is_file():
            return False
        try:
            info = json.loads(self.layout.run_json.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False
        return isinstance(info, dict) and (info.get("format"), info.get("version")) != (RUN_FORMAT, RUN_VERSION)

    def refuse_older_version(self) -> None:
        """A run folder without stage records (:meth:`made_by_older_version`) is never read: one line with the
        command that makes it again."""
        if self.made_by_older_version():
            try:
                data = json.loads(self.layout.run_json.read_text()).get("data")
            except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                data = None
            raise StageError(f"{self.folder} was made by an older onejump version, whose stages this one cannot "
                             f"check: make it again with `{rerun_command(self.folder, data)}`")

    def data_args(self) -> DataArgs:
        self.refuse_older_version()
        info = self._run_json()
        try:
            return DataArgs(**info["data"])
        except TypeError as exc:
            raise StoreError(f"{self.layout.run_json} is corrupt: {exc}") from None

    def write_data_args(self, args: DataArgs) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.layout.run_json, json.dumps(
            {"format": RUN_FORMAT, "version": RUN_VERSION, "data": asdict(args)}, indent=1))

    def lm(self):
        """The model, loaded once (its size is recorded for the report)."""
        if self._lm is None:
            from ..model.loading import load_model

            args = self.data_args()
            self._lm = load_model(args.model, device=self.device if self.device_map is None else None,
                                  dtype=self.dtype, device_map=self.device_map)
            self.probes.record_model(self._lm)
            if self._store is not None and self._store.fingerprint != self._lm.fingerprint:
                raise StoreError(f"store {self.store_dir} was extracted from another model (weights hash "
                                 f"{self._store.fingerprint}, this model {self._lm.fingerprint})")
        return self._lm

    @property
    def compute_device(self) -> torch.device:
        from ..model.loading import resolve_device

        return resolve_device(self.device)

    def store(self) -> HiddenStateStore:
        """The run's store, opened once (its shards are verified before first use); checked against the
        model when the model is loaded."""
        if self._store is None:
            fingerprint = self._lm.fingerprint if self._lm is not None else None
            self._store = HiddenStateStore.open(self.store_dir, fingerprint=fingerprint, verify=False)
        return self._store

    # ---- the run's lenses, as a command reads them ------------------------------------------
    def lens_stage(self, name: str) -> Stage:
        """The stage that makes the run's lens ``name``, as a command that only reads it declares it."""
        if name == "ojfa":
            return self.stages.select()
        if name == "best":
            return self.stages.sweep()
        return self.stages.train_of(name)

    def current_lens_path(self, name: str) -> Path:
        """Where the run keeps its lens ``name``, refused (one line, the command to run) when that lens is
        missing or superseded: the one check every consumer of a run's lenses goes through."""
        self.refuse_older_version()
        if run_lens(name).folder is None:
            raise StageError(f"the '{name}' lens is the model's own head: a run keeps no file of it")
        self.records.require(self.lens_stage(name))
        return self.lens_path(name)

    def has_lens(self, name: str) -> bool:
        return run_lens(name).folder is not None and (self.lens_path(name) / "config.json").is_file()

    def lens(self, name: str):
        """The run's lens ``name`` (an id of the lens table), checked current and loaded."""
        from ..lenses.base import Lens, LogitLens

        if run_lens(name).folder is None:
            return LogitLens(self.lm())
        return Lens.load(self.current_lens_path(name), self.lm())

    def lens_config(self, name: str) -> dict[str, Any] | None:
        """The saved config of the run's lens ``name`` (None when the run has none): read without the model."""
        path = self.lens_path(name) / "config.json"
        return json.loads(path.read_text()) if path.is_file() else None

    # ---- the saved stages, as a command reads them ----------------------------------------
    def _selection(self) -> dict[str, Any]:
        return json.loads(self.layout.selection_json.read_text())

    def select_result(self) -> dict[str, Any]:
        """The saved selection, refused when it is missing or the per-level jumps changed after it was made."""
        self.records.require(self.stages.select())
        return self._selection()

    def _evaluation_parts(self, names: list[str], chosen: int):
        from ..evaluation.result import EvalResult

        out = functools.reduce(EvalResult.merge, [EvalResult.load(self.layout.evaluation_dir(n)) for n in names])
        out.chosen = chosen
        return out

    def run_lens_names(self, best: bool = True) -> list[str]:
        """The ids of the run's lenses (:meth:`~onejump.experiment.stages.RunStages.evaluated`)."""
        return self.stages.evaluated(best)

    def run_lenses(self, best: bool = True, names: list[str] | None = None) -> dict[str, Any]:
        """The run's lenses by id (:meth:`run_lens_names`, or only ``names``), checked current and loaded."""
        return {n: self.lens(n) for n in (names or self.run_lens_names(best))}

    def evaluation(self):
        """The saved evaluation (lenses and reuse matrix), refused when anything it came from changed after it."""
        from ..evaluation.result import EvalResult

        chosen = self.select_result()["chosen"]  # a stale selection is named first: the earliest stage to redo
        names = self.stages.evaluated()
        for n in names:
            self.records.require(self.stages.evaluation(n))
        self.records.require(self.stages.reuse())
        pairs = EvalResult.load(self.layout.reuse_dir)
        pairs.chosen = chosen
        return self._evaluation_parts(names, chosen).merge(pairs)

    def _exit_parts(self, names: list[str]):
        from ..evaluation.exit_simulation import ExitSimulation

        return ExitSimulation.combine([ExitSimulation.load(self.layout.exits_dir(n)) for n in names])

    def exits(self):
        """The saved exit simulation (None if never run), refused when its lenses changed after it."""
        if not (self.folder / "early_exit").is_dir():
            return None
        names = self.stages.evaluated()
        for n in names:
            self.records.require(self.stages.exits(n))
        return self._exit_parts(names)


    def preset(self) -> dict[str, Any]:
        """The preset recorded by train/run (``preset.json``); the paper's when none was recorded."""
        path = self.folder / "preset.json"
        if path.is_file():
            return json.loads(path.read_text())
        return PRESETS["paper"].record()

    def record_preset(self, name: str, select_rule: str | None = None) -> None:
        """Write ``preset.json`` (which preset trained this run, and its selection rule)."""
        from ..errors import ConfigError

        if name not in PRESETS:
            raise ConfigError(f"unknown preset '{name}'; use one of {', '.join(PRESETS)}")
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / "preset.json", json.dumps(PRESETS[name].record(select_rule), indent=1))


__all__ = ["RunFolder", "rerun_command"]
