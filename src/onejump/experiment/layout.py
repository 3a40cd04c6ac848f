"""Where everything of one run lives: the paths of a run folder, nothing else.

::

    run.json               the format of the folder and the data arguments (written by the extract stage)
    model.json             the model's own size (its parameters' bytes, count, dtype), written when it is loaded
    store/                 hidden states (onejump.store)
    lenses/<folder>/       lenses: nnjtc (the K per-level jumps), joint, jtc, ojfa (the chosen jump), tuned
                           (the lens table, onejump.experiment.lens_table, maps each lens id to its folder)
    selection.json         D matrix, D_m, OJFA choice, softmax(D / 5e-4) (and the head-aware scores)
    preset.json            the preset the run was trained with (paper / best) and its selection rule
    evaluation/<lens id>/  per-sample test results of one lens (safetensors) + summary
    reuse/                 the K x K reuse matrix: every per-level jump at every level
    early_exit/<lens id>/  the offline early-exit simulation of one lens
    trajectory/            the prediction trajectory of a fixed test sentence (trajectory.png)
    report/                results.json, aggregate_metrics.json, figures, report.md
    sweep/                 the objective x rank sweep (``onejump sweep``): one folder per entry, sweep.json, best/
    timings.json           {stage: seconds}, saved as each stage ends (by whichever command ran it)
    memory.json            {"peak_rss_mib": {stage: MiB}, "method": {stage: how it was measured}}

Every stage folder ends with its record (``stage.json``, :mod:`onejump.experiment.stage`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .lens_table import run_lens

#: ``run.json``'s format and version: a folder whose run.json holds others (or none) has no stage records to check.
RUN_FORMAT, RUN_VERSION = "onejump-run", 2


class RunLayout:
    """The paths of the run folder ``folder``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @property
    def run_json(self) -> Path:
        return self.folder / "run.json"

    @property
    def model_json(self) -> Path:
        return self.folder / "model.json"

    @property
    def preset_json(self) -> Path:
        return self.folder / "preset.json"

    @property
    def store_dir(self) -> Path:
        return self.folder / "store"

    @property
    def selection_json(self) -> Path:
        return self.folder / "selection.json"

    @property
    def report_dir(self) -> Path:
        """results.json, aggregate_metrics.json, the figures and report.md."""
        return self.folder / "report"

    @property
    def trajectory_dir(self) -> Path:
        return self.folder / "trajectory"

    @property
    def sweep_dir(self) -> Path:
        return self.folder / "sweep"

    @property
    def timings_json(self) -> Path:
        return self.folder / "timings.json"

    @property
    def memory_json(self) -> Path:
        return self.folder / "memory.json"

    def lens_path(self, name: str) -> Path:
        """Where the run keeps lens ``name`` (an id of :data:`~onejump.experiment.lens_table.LENSES`)."""
        folder = run_lens(name).folder
        if folder is None:
            raise ConfigError(f"the '{name}' lens is the model's own head: a run keeps no file of it")
        return self.folder / folder

    def evaluation_dir(self, lens_id: str) -> Path:
        return self.folder / "evaluation" / lens_id

    @property
    def reuse_dir(self) -> Path:
        return self.folder / "reuse"

    def exits_dir(self, lens_id: str) -> Path:
        return self.folder / "early_exit" / lens_id

    def sweep_entry(self, variant: str, rank: int) -> Path:
        return self.sweep_dir / f"{variant}-r{rank}"

    def relative(self, path: Path) -> str:
        """``path`` relative to the run folder, with ``/`` (a stage's name)."""
        return Path(path).relative_to(self.folder).as_posix()

    def made_by_older_version(self) -> bool:
        """Whether the folder is laid out without stage records (it holds a ``shortcuts/`` folder); such a
        folder, like one whose ``run.json`` lacks this run format, is never read: its stages carry no records
        to check."""
        return (self.folder / "shortcuts").is_dir()


__all__ = ["RUN_FORMAT", "RUN_VERSION", "RunLayout"]
