"""The stages of a run, declared once each, in pipeline order, and the identities of what they read.

=============== ============================================= ================================ =========
stage (name)    inputs                                         settings                         made by
=============== ============================================= ================================ =========
store           (the corpus and the model)                     the data arguments               extract
lenses/<f>      store, model fingerprint, (start lens's key)   lens kind, training config,      train
                                                               the held-out rows' record
lenses/ojfa     store, the per-level lens                      selection rule (+ HOLDOUT_MAX)   select
reuse           store, the per-level lens                                                       evaluate
evaluation/<id> store, that lens                                                                evaluate
early_exit/<id> store, that lens                                                                evaluate
sweep/<v>-r<r>  store, model fingerprint                       training config, HOLDOUT_MAX     sweep
sweep           every sweep entry, the references' evaluation  the plan (variant, rank) list    sweep
trajectory      store, model fingerprint, the drawn lens       which lens is drawn              report
report          selection, reuse, every evaluation and exit    (none)                           report
                part, sweep, trajectory, the preset, the per-
                level and joint lenses
=============== ============================================= ================================ =========

An artefact is identified by its content: ``store`` by its manifest (every shard's sha256),
``lens:<folder>`` by the lens's ``config.json`` (which holds its weights' sha256), ``file:<path>`` by
its bytes. A stage's key is that of :class:`~onejump.experiment.stage.Stage`: so a retrained lens
supersedes every stage after it, and a lens put back restores them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .layout import RunLayout
from .lens_table import EVALUATED, run_lens
from .stage import RECORDED, Stage, StageRecords


def file_identity(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def artefact_identity(layout: RunLayout, store: Callable[[], Any], name: str) -> str | None:
    """The content identity of artefact ``name`` of a run (None when it does not exist); ``store()``
    opens the run's store (its identity is checked against its shards once per process)."""
    if name == "store":
        return store().verify_identity() if (layout.store_dir / "manifest.json").is_file() else None
    if name == "fingerprint":
        return store().fingerprint if (layout.store_dir / "manifest.json").is_file() else None
    kind, _, rel = name.partition(":")
    if kind == "lens":
        return file_identity(layout.folder / rel / "config.json")
    if kind == "file":
        return file_identity(layout.folder / rel)
    raise ValueError(f"unknown artefact '{name}'")


class RunStages:
    """The declarations of one run's stages (each one's inputs as they are now in the run folder)."""

    def __init__(self, layout: RunLayout, records: StageRecords):
        self.layout, self.records = layout, records

    def _id(self, artefact: str) -> str | None:
        return self.records.identity(artefact)

    def lens_artefact(self, lens_id: str) -> str | None:
        folder = run_lens(lens_id).folder
        return None if folder is None else f"lens:{folder}"

    # ---- extract ---------------------------------------------------------------------------
    def extract(self, data: Any = RECORDED) -> Stage:
        return Stage("store", "store", "onejump extract --out {run}",
                     settings=asdict(data) if data is not RECORDED else RECORDED, outputs=("store/manifest.json",))

    # ---- train -----------------------------------------------------------------------------
    def train(self, folder: Path, kind: Any = RECORDED, config: Any = None, held: Any = None,
              init: str | None = None, made_by: str = "onejump train --out {run}") -> Stage:
        """The training of the lens saved in ``folder`` (``init``: the key of the stage of the lens a
        warm-started training starts from)."""
        name = self.layout.relative(folder)
        inputs: dict[str, Any] = {"store": self._id("store"), "fingerprint": self._id("fingerprint")}
        if init is not None:
            inputs["init"] = init
        settings = RECORDED if kind is RECORDED else {
            "kind": kind, "config": config.to_dict() if config is not None else None, "held_out": held}
        return Stage(name, f"the lens in {name}", made_by, inputs, settings, 1, (f"{name}/config.json",),
                     (f"lens:{name}",))

    def frontier_point(self, folder: Path, kind: str, config: dict[str, Any], held: Any) -> Stage:
        """A lens of ``onejump frontier`` trained on the run's store and saved in ``folder``."""
        name = self.layout.relative(folder)
        inputs: dict[str, Any] = {"store": self._id("store"), "fingerprint": self._id("fingerprint")}
        return Stage(name, f"the frontier point in {name}", "onejump frontier --run {run}", inputs,
                     {"kind": kind, "config": config, "held_out": held}, 1, (f"{name}/config.json",),
                     (f"lens:{name}",))

    def frontier(self, points: list[str] | None = None, plan: Any = RECORDED) -> Stage:
        """The frontier's evaluation (``frontier/frontier.json``) of the lenses in the folders ``points``
        (run-relative; None: those its record names)."""
        if points is None:
            inputs = (self.records.record("frontier") or {}).get("inputs") or {}
            points = [k.partition(":")[2] for k in inputs if k.startswith("lens:")]
        inputs = {"store": self._id("store"), **{f"lens:{p}": self._id(f"lens:{p}") for p in points}}
        return Stage("frontier", "the lens frontier", "onejump frontier --run {run}", inputs, plan, 1,
                     ("frontier/frontier.json",))

    def scaling_stream(self, size: str, stream: str, lenses: tuple[str, ...], digest: str,
                       recipe: dict[str, Any]) -> Stage:
        """The lenses of one stream of ``onejump scaling`` at a token-scale ``size`` (``scaling/<size>/<stream>/``),
        trained from the model on the sentences of hash ``digest``."""
        name = f"scaling/{size}/{stream}"
        return Stage(name, f"the {stream} lenses of the scaling size {size}", "onejump scaling --run {run}",
                     {"fingerprint": self._id("fingerprint"), "sentences": digest}, recipe, 1,
                     tuple(f"{name}/{lens}/config.json" for lens in lenses),
                     tuple(f"lens:{name}/{lens}" for lens in lenses))

    def scaling(self, folders: list[str] | None = None, plan: Any = RECORDED) -> Stage:
        """The evaluation of the scaling curves (``scaling/scaling.json``) of the lenses in the run-relative
        ``folders`` (None: those its record names)."""
        if folders is None:
            inputs = (self.records.record("scaling") or {}).get("inputs") or {}
            folders = [k.partition(":")[2] for k in inputs if k.startswith("lens:")]
        inputs = {"store": self._id("store"), **{f"lens:{f}": self._id(f"lens:{f}") for f in folders}}
        return Stage("scaling", "the scaling curves", "onejump scaling --run {run}", inputs, plan, 1,
                     ("scaling/scaling.json",))

    def train_of(self, lens_id: str) -> Stage:
        """What a command that only reads the run's lens ``lens_id`` checks it by (settings as recorded)."""
        row = run_lens(lens_id)
        folder = self.layout.lens_path(lens_id)
        record = self.records.record(self.layout.relative(folder)) or {}
        init = (record.get("inputs") or {}).get("init")
        if init is not None:  # a warm start: its start lens must be current too
            start = self.records.require(self.train(folder.parent / f"{folder.name}-start"))
            init = start
        stage = self.train(folder, init=init, made_by=f"onejump {row.made_by} --out {{run}}")
        return Stage(stage.name, f"the '{lens_id}' lens", stage.made_by, stage.inputs, stage.settings,
                     stage.version, stage.outputs, stage.products)

    # ---- select ----------------------------------------------------------------------------
    def select(self, rule: Any = RECORDED, holdout_max: int | None = None) -> Stage:
        name = self.layout.relative(self.layout.lens_path("ojfa"))
        inputs = {"store": self._id("store"), "full": self._id("lens:" + run_lens("full").folder)}
        settings = RECORDED if rule is RECORDED else {"rule": rule, "holdout_max": holdout_max}
        return Stage(name, "the OJFA selection", "onejump select --out {run}", inputs, settings, 1,
                     ("selection.json", f"{name}/config.json"), (f"lens:{name}", "file:selection.json"))

    # ---- evaluate --------------------------------------------------------------------------
    def reuse(self) -> Stage:
        return Stage("reuse", "reuse matrix", "onejump evaluate --out {run}",
                     {"store": self._id("store"), "full": self._id("lens:" + run_lens("full").folder)},
                     None, 1, ("reuse/result.json",))

    def _per_lens(self, part: str, lens_id: str, title: str, output: str) -> Stage:
        artefact = self.lens_artefact(lens_id)
        inputs = {"store": self._id("store"), "lens": lens_id,
                  "identity": self._id(artefact) if artefact else None}
        name = f"{part}/{lens_id}"
        return Stage(name, title, "onejump evaluate --out {run}", inputs, None, 1, (f"{name}/{output}",))

    def evaluation(self, lens_id: str) -> Stage:
        return self._per_lens("evaluation", lens_id, f"evaluation of '{lens_id}'", "result.json")

    def exits(self, lens_id: str) -> Stage:
        return self._per_lens("early_exit", lens_id, f"early-exit simulation of '{lens_id}'", "exits.json")

    # ---- sweep -----------------------------------------------------------------------------
    def sweep_entry(self, variant: str, rank: int, config: Any = RECORDED, holdout_max: int | None = None) -> Stage:
        name = self.layout.relative(self.layout.sweep_entry(variant, rank))
        settings = RECORDED if config is RECORDED else {"config": config.to_dict(), "holdout_max": holdout_max}
        return Stage(name, f"sweep entry {variant}-r{rank}", "onejump sweep --out {run}",
                     {"store": self._id("store"), "fingerprint": self._id("fingerprint")}, settings, 1,
                     (f"{name}/summary.json",))

    def sweep(self, plan: Any = RECORDED) -> Stage:
        """The whole sweep (sweep.json and the best single jump) from its entries and the references."""
        if plan is RECORDED:
            plan = ((self.records.record("sweep") or {}).get("settings") or {}).get("plan", [])
        inputs: dict[str, Any] = {}
        for variant, rank in plan:
            inputs[f"{variant}-r{rank}"] = self.records.require(self.sweep_entry(variant, int(rank)))
        for ref in ("identity", "jtc"):
            if (self.layout.evaluation_dir(ref) / "stage.json").is_file():
                inputs[f"reference:{ref}"] = self.records.require(self.evaluation(ref))
        return Stage("sweep", "sweep", "onejump sweep --out {run}", inputs,
                     {"plan": [[v, int(r)] for v, r in plan]}, 1, ("sweep/sweep.json",),
                     ("file:sweep/sweep.json", "lens:sweep/best"))

    def has_sweep(self) -> bool:
        return (self.layout.sweep_dir / "sweep.json").is_file() or (self.layout.sweep_dir / "stage.json").is_file()

    # ---- report ----------------------------------------------------------------------------
    def trajectory(self, lens_id: str | None = None) -> Stage:
        if lens_id is None:
            record = self.records.record("trajectory") or {}
            lens_id = (record.get("settings") or {}).get("lens", "ojfa")
        return Stage("trajectory", "trajectory figure", "onejump report --out {run}",
                     {"store": self._id("store"), "lens": self._id(self.lens_artefact(lens_id))},
                     {"lens": lens_id}, 1, ("trajectory/trajectory.png",))

    def evaluated(self, best: bool = True) -> list[str]:
        """The ids of the run's lenses its evaluation reads: the logit lens, full N-NJTC, OJFA, and
        whichever of the joint jump, JTC, the tuned lens and the sweep's best single jump exist."""
        always = ("identity", "full", "ojfa")  # a missing one is named when it is loaded
        return [n for n in EVALUATED if n in always or ((self.layout.lens_path(n) / "config.json").is_file()
                                                        and (best or n != "best"))]

    def report(self) -> Stage:
        """The report: every stage it is built from must be current (the first one that is not is named)."""
        req = self.records.require
        inputs: dict[str, Any] = {"select": req(self.select())}
        if self.has_sweep():
            inputs["sweep"] = req(self.sweep())
        for lens_id in self.evaluated():
            inputs[f"evaluation/{lens_id}"] = req(self.evaluation(lens_id))
        inputs["reuse"] = req(self.reuse())
        if (self.layout.folder / "early_exit").is_dir():  # the simulation is optional (`onejump evaluate`)
            for lens_id in self.evaluated():
                inputs[f"early_exit/{lens_id}"] = req(self.exits(lens_id))
        if (self.layout.trajectory_dir / "stage.json").is_file():
            inputs["trajectory"] = req(self.trajectory())
        for lens_id in ("full", "joint"):  # their configs give the rank, the training settings, the residual
            inputs[lens_id] = self._id(self.lens_artefact(lens_id))
        inputs["preset"] = self._id("file:preset.json")
        for name, stage in (("frontier", self.frontier), ("scaling", self.scaling)):  # optional: in it when made
            if (self.layout.folder / name / "stage.json").is_file():
                inputs[name] = req(stage())
        return Stage("report", "report", "onejump report --out {run}", inputs, None, 1,
                     ("report/results.json", "report/report.md"))


__all__ = ["RunStages", "artefact_identity", "file_identity"]
