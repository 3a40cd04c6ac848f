"""A run folder: where everything of one experiment lives, and the content identity of each part.

The layout is known here alone::

    run.json               model and data arguments (written by the extract stage)
    store/                 hidden states (onejump.store)
    shortcuts/<folder>/    lenses: nnjtc (the K per-level jumps), joint, jtc, ojfa (the chosen jump), tuned
                           (the lens table, onejump.experiment.lens_table, maps each lens id to its folder)
    selection.json         D matrix, D_m, OJFA choice, softmax(D / 5e-4) (and the head-aware scores)
    preset.json            the preset the run was trained with (paper / best) and its selection rule
    evaluation/            per-sample test results of every lens (safetensors) + summary
    reuse/                 the K x K reuse matrix: every per-level jump at every level
    early_exit/            the offline early-exit simulation
    report/                results.json, aggregate_metrics.json, figures, report.md
    sweep/                 the objective x rank sweep (``onejump sweep``) and its best single jump
    timings.json           {stage: seconds}, saved as each stage ends (by whichever command ran it)
    memory.json            {"peak_rss_mib": {stage: MiB}, "method": {stage: how it was measured}}
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, ShortcutError, StoreError
from ..io import atomic_write_text
from ..memory import PeakProbe
from ..store import HiddenStateStore
from .lens_table import run_lens
from .presets import PRESETS, DataArgs


def stage_key(*parts: Any) -> str:
    """A short hash of a stage's inputs (their identities and settings)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class RunState:
    """Timings, peak resident memory and the stages reused in this process.

    ``peak_rss[stage]``: the stage's peak RSS in MiB; ``peak_method[stage]``: ``"stage peak"`` (the
    high-water mark was reset when it began) or ``"process peak so far"`` (it could not be reset).
    """

    timings: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    peak_rss: dict[str, float] = field(default_factory=dict)
    peak_method: dict[str, str] = field(default_factory=dict)


class RunFolder:
    """A run folder: its layout, its model and store (loaded once), and the identities of its parts."""

    def __init__(self, folder: str | Path, *, device: str = "auto", dtype: str = "float32",
                 device_map: str | None = None, progress: bool = True):
        self.folder = Path(folder)
        self.device, self.dtype, self.device_map = device, dtype, device_map
        self.progress = progress
        self.state = RunState()
        self._lm = None
        self._store: HiddenStateStore | None = None
        self._probes: dict[float, PeakProbe] = {}  # by the start time of the stage they measure

    @property
    def store_dir(self) -> Path:
        return self.folder / "store"

    def lens_path(self, name: str) -> Path:
        """Where the run keeps lens ``name`` (an id of :data:`~onejump.experiment.lens_table.LENSES`)."""
        folder = run_lens(name).folder
        if folder is None:
            raise ConfigError(f"the '{name}' lens is the model's own head: a run keeps no file of it")
        return self.folder / folder

    @property
    def report_dir(self) -> Path:
        """results.json, aggregate_metrics.json, the figures and report.md."""
        return self.folder / "report"

    def data_args(self) -> DataArgs:
        path = self.folder / "run.json"
        if not path.is_file():
            raise StoreError(f"{self.folder} is not an onejump run folder (no run.json): run `onejump extract "
                             f"--out {self.folder}` or `onejump run --out {self.folder}` first")
        try:
            return DataArgs(**json.loads(path.read_text())["data"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise StoreError(f"{path} is corrupt: {exc}") from None

    def _start(self) -> float:
        """A stage begins: its memory high-water mark is reset; returns its start time (for :meth:`_timed`)."""
        probe = PeakProbe().start()
        t0 = time.perf_counter()
        self._probes[t0] = probe
        return t0

    def _timed(self, stage: str, t0: float) -> None:
        """A stage started at ``t0`` ends: record its seconds (added up) and its peak RSS (the highest)."""
        self.state.timings[stage] = round(self.state.timings.get(stage, 0.0) + time.perf_counter() - t0, 3)
        probe = self._probes.pop(t0, None)
        if probe is not None:
            peak = round(probe.stop(), 1)
            self.state.peak_rss[stage] = max(peak, self.state.peak_rss.get(stage, 0.0))
            self.state.peak_method[stage] = "stage peak" if probe.exact else "process peak so far"
        # saved now, not only by the report: stages run by separate commands (or a run cut short) keep theirs
        self.all_timings()
        self.all_peaks()

    def lm(self):
        """The model, loaded once."""
        if self._lm is None:
            from ..model.loading import load_model

            args = self.data_args()
            self._lm = load_model(args.model, device=self.device if self.device_map is None else None,
                                  dtype=self.dtype, device_map=self.device_map)
        return self._lm

    @property

    def compute_device(self) -> torch.device:
        from ..model.loading import resolve_device

        return resolve_device(self.device)

    def store(self) -> HiddenStateStore:
        """The run's store, opened once (its shards are verified before first use)."""
        if self._store is None:
            self._store = HiddenStateStore.open(self.store_dir, fingerprint=self.lm().fingerprint, verify=False)
        return self._store

    def identity(self, name: str) -> str | None:
        """Content identity of a stage output (None when it does not exist).

        ``store``: its manifest (which lists every shard's sha256); a lens kind: its config (which
        holds the weights' sha256, checked whenever the lens is loaded); ``selection`` and
        ``evaluation``: their JSON. A stage records the identities of its inputs in its key, so a
        changed input makes every stage after it stale.
        """
        if name == "store" and (self.store_dir / "manifest.json").is_file():
            return self.store().verify_identity()
        paths = {"selection": self.folder / "selection.json",
                 "evaluation": self.folder / "evaluation" / "result.json"}
        if name in paths:
            path = paths[name]
        else:
            if run_lens(name).folder is None:
                return None
            folder = self.lens_path(name)
            path = next((folder / n for n in ("config.json", "shortcuts.json") if (folder / n).is_file()),
                        folder / "config.json")
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None

    # ---- what the evaluation stages are computed from ----------------------------------------
    def evaluation_key(self, absent: set[str] = frozenset()) -> str:
        """What the evaluation of the lenses is computed from: the store, every lens, the selection
        (``absent``: stage outputs taken as missing, to recognise a result from before they existed)."""
        inputs = {name: None if name in absent else self.identity(name)
                  for name in ("store", "full", "joint", "jtc", "ojfa", "tuned", "selection")}
        best = None if "best" in absent else self.identity("best")
        if best is not None:  # the sweep's best jump; a run without one keeps the key it always had
            inputs["best"] = best
        return stage_key(inputs, "eval", 2)

    def lens_key(self, name: str, stage: str) -> str:
        """What one lens's part of a stage (``eval`` or ``exits``) is computed from: the store and that lens."""
        return stage_key({"store": self.identity("store"), "lens": name, "identity": self.identity(name)},
                         stage, "lens", 1)

    def reuse_key(self) -> str:
        """What the K x K reuse matrix is computed from: the store and the per-level jumps."""
        return stage_key(self.identity("store"), self.identity("full"), "reuse", 1)

    def exits_key(self, absent: set[str] = frozenset()) -> str:
        best = self.lens_path("best") / "config.json"
        has_best = best.is_file() and "best" not in absent
        best_id = hashlib.sha256(best.read_bytes()).hexdigest()[:16] if has_best else None
        return stage_key(self.evaluation_key(absent), None if "tuned" in absent else self.identity("tuned"), best_id,
                         "exits", 1)

    def has_lens(self, name: str) -> bool:
        return self.identity(name) is not None

    def lens(self, name: str):
        """The run's lens ``name`` (an id of the lens table), loaded."""
        from ..lenses.base import Lens, LogitLens

        row = run_lens(name)
        if row.folder is None:
            return LogitLens(self.lm())
        if not self.has_lens(name):
            raise ShortcutError(f"no '{name}' lens in {self.lens_path(name)}: run "
                                f"`onejump {row.made_by} --out {self.folder}`")
        return Lens.load(self.lens_path(name), self.lm())

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

    def all_timings(self) -> dict[str, float]:
        """This invocation's stage timings merged into those recorded by earlier ones (timings.json)."""
        path = self.folder / "timings.json"
        saved = json.loads(path.read_text()) if path.is_file() else {}
        saved.update(self.state.timings)
        atomic_write_text(path, json.dumps(saved, indent=1))
        return saved

    def all_peaks(self) -> dict[str, dict[str, Any]]:
        """This invocation's per-stage peak RSS merged into those recorded by earlier ones (``memory.json``:
        ``{"peak_rss_mib": {stage: MiB}, "method": {stage: "stage peak" | "process peak so far"}}``)."""
        path = self.folder / "memory.json"
        saved = json.loads(path.read_text()) if path.is_file() else {}
        peaks = {**saved.get("peak_rss_mib", {}), **self.state.peak_rss}
        method = {**saved.get("method", {}), **self.state.peak_method}
        out = {"peak_rss_mib": peaks, "method": method}
        atomic_write_text(path, json.dumps(out, indent=1))
        return out
