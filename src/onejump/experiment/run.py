"""The whole experiment in its order: extract -> train -> select -> evaluate -> early exit -> trajectory -> report.

Each step declares its stage (:mod:`onejump.experiment.stages`) and lets the one protocol
(:mod:`onejump.experiment.stage`) decide whether it is reused or computed; what each step computes
lives with its subject (training in :mod:`onejump.experiment.fitting`, scoring and selection in
:mod:`onejump.evaluation`, results.json in :mod:`onejump.experiment.results`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import LensFileError, StoreError
from ..io import atomic_write_text
from ..store import HiddenStateStore
from ..training.checkpoint import Checkpoint
from .folder import RunFolder
from .presets import DataArgs


class Run(RunFolder):
    """A run folder and its stages, in pipeline order."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._trained: dict[int, tuple[Any, str]] = {}  # id(lens) -> (lens, its train stage's key)

    # ---- extract ---------------------------------------------------------------------------
    def extract(self, args: DataArgs) -> HiddenStateStore:
        """Sample the corpus, extract hidden states (resumable); writes run.json."""
        from ..corpus.loaders import load_sentences, split_sentences
        from ..extract import extract

        if self.layout.run_json.is_file() and (self.store_dir / "plan.json").is_file():
            # settings bind the folder once extraction has started; before that, a command that failed (bad
            # model, bad corpus) leaves nothing the corrected command must match
            old = self.data_args()
            if asdict(old) != asdict(args):
                diff = [k for k, v in asdict(args).items() if asdict(old).get(k) != v]
                flags = ", ".join(f"--{k.replace('_', '-')}" for k in diff)
                raise StoreError(f"{self.folder} belongs to a run with other settings ({flags}); "
                                 "use another --out folder")
        self.write_data_args(args)
        stage = self.stages.extract(args)

        def compute() -> HiddenStateStore:
            t0 = self.probes.start()
            sentences = load_sentences(args.corpus, text_field=args.text_field, hf_config=args.hf_config,
                                       max_documents=args.max_documents, progress=self.progress)
            split = split_sentences(sentences, args.n_train, args.n_test, seed=args.seed)
            texts = [s.text for s in split.train] + [s.text for s in split.test]
            labels = [0] * len(split.train) + [1] * len(split.test)
            store = extract(self.lm(), texts, self.store_dir, splits=labels, seed=args.seed,
                            store_dtype=args.store_dtype, tokens_per_batch=args.tokens_per_batch,
                            shard_size=args.shard_size, progress=self.progress,
                            positions={"train": args.train_positions, "test": args.test_positions},
                            extra={"corpus": args.corpus, "n_train": args.n_train, "n_test": args.n_test})
            self.probes.timed("extract", t0)
            return store

        return self.records.run(stage, compute, lambda: HiddenStateStore.open(
            self.store_dir, fingerprint=self.lm().fingerprint), lambda: self.state.reused.append("extract"))

    # ---- train -----------------------------------------------------------------------------
    def train_or_reuse(self, kind: str, config: Any, folder: Path, targets_cache: dict | None = None,
                       init: Any = None):
        """The lens of ``kind`` (``nnjtc``, ``joint``, ``jtc``, ``tuned``, ``joint-cond``) trained with ``config``
        on this run's store, saved in ``folder`` (its train stage); ``init``: the lens a warm-started
        training starts from (its stage's key is an input)."""
        from ..lenses.base import Lens
        from .fitting import fit_lens

        init_key = self._trained[id(init)][1] if init is not None else None
        stage = self.stages.train(folder, kind, config, self._held_out(config), init_key)
        key = stage.key()

        def compute():
            t0 = self.probes.start()
            # the training's state, saved as it goes: a rerun after an interrupt resumes from it
            ckpt = Checkpoint(folder.with_name(f"{folder.name}.checkpoint.safetensors"), key)
            lens = fit_lens(kind, self.lm(), self.store(), config, {} if targets_cache is None else targets_cache,
                            key, device=self.compute_device, progress=self.progress, init=init, ckpt=ckpt)
            held = stage.settings["held_out"]
            if held is not None:
                lens.extra["held_out"] = held
            lens.save(folder)
            self.probes.timed(self._train_label(kind, folder), t0)
            return Lens.load(folder, self.lm())

        # a damaged or foreign file in a current stage's folder fails to load: it is trained again
        lens = self.records.run(stage, compute, lambda: Lens.load(folder, self.lm()),
                                lambda: self.state.reused.append(self._train_label(kind, folder)))
        self._trained[id(lens)] = (lens, key)  # a warm start from it names its stage's key among its inputs
        return lens

    def _held_out(self, config: Any) -> dict[str, Any] | None:
        """The record of the train-split rows a training with ``config`` holds out (None: it holds none
        out by design, as JTC's least squares on the whole train split)."""
        from ..evaluation.selection import held_out_record

        if config is None or not hasattr(config, "val_fraction"):
            return None
        return held_out_record(self.store(), config.val_fraction, config.seed)

    def _train_label(self, kind: str, folder: Path) -> str:
        """``train:joint`` for the run's own lens folders; the sweep's apart: ``train:joint (kl-res-r10)``."""
        own = folder.parent.resolve() == self.lens_path("joint").parent.resolve()
        return f"train:{folder.name}" if own else f"train:{kind} ({folder.parent.name})"

    def train(self, config: Any, *, joint: bool = True, jtc: bool = True, tuned: bool = True,
              rank_multiplier: int = 1, tuned_steps: int = 250, tuned_init: str = "jtc",
              tuned_optimizer: str = "sgd", muon_lr: float = 0.02) -> dict[str, Any]:
        """Train (or reuse) the per-level bank, the joint jump, the JTC maps and the tuned lens; returns their lenses.

        ``rank_multiplier`` (with ``config.rank`` unset) trains at ``rank_multiplier * floor(H/100)``;
        ``tuned_steps`` / ``tuned_init`` / ``tuned_optimizer``: the tuned lens's schedule length, start and
        optimiser, ``muon_lr`` its Muon rate (:class:`~onejump.training.tuned.TunedTrainConfig`).
        """
        from dataclasses import replace

        from ..lenses.jumps import default_rank

        if config.rank is None and rank_multiplier != 1:
            config = replace(config, rank=rank_multiplier * default_rank(self.store().hidden_size))
        joint_config = replace(config, **self.preset().get("joint", {}))
        targets_cache: dict[int, Any] = {}  # the KL objective's targets, shared by the bank and the joint jump
        from ..training.tuned import TunedTrainConfig

        # (lens id, how it is trained, its settings)
        jobs = [("full", "nnjtc", config)] + ([("joint", "joint", joint_config)] if joint else [])
        jobs += [("jtc", "jtc", None)] if jtc else []
        jobs += [("tuned", "tuned", TunedTrainConfig(
            num_steps=tuned_steps, init=tuned_init, optimizer=tuned_optimizer, muon_lr=muon_lr))] if tuned else []
        lenses = {}
        for name, kind, cfg in jobs:
            init = None
            if kind == "joint" and self.preset().get("joint_warm"):  # trained, then trained on from itself
                start = self.lens_path("joint").parent / "joint-start"
                init = self.train_or_reuse(kind, cfg, start, targets_cache)
            lenses[name] = self.train_or_reuse(kind, cfg, self.lens_path(name), targets_cache, init=init)
        return lenses

    # ---- select ----------------------------------------------------------------------------
    def select(self, rule: str | None = None) -> dict[str, Any]:
        """Score every jump at every level, choose the single jump (OJFA), save it as lenses/ojfa.

        ``rule``: ``paper`` (D_m, Eq. 5) or ``head`` (held-out precision@1 through the head);
        default: the run's preset's rule.
        """
        from ..evaluation.selection import HOLDOUT_MAX, select_ojfa, trained_holdout

        rule = rule or self.preset().get("select_rule", "paper")
        per_level = self.lens("full")
        # the held-out rows it scores on are part of what the head rule is computed from
        stage = self.stages.select(rule, HOLDOUT_MAX if rule == "head" else None)

        def compute() -> dict[str, Any]:
            holdout = None
            if rule == "head":  # the rows the per-level jumps' training held out, as their own config records
                try:
                    holdout = trained_holdout(self.store(), per_level.extra.get("held_out"))
                except LensFileError as exc:
                    raise LensFileError(f"{self.lens_path('full')}: {exc} (`onejump train --out {self.folder}`)") \
                        from None
            t0 = self.probes.start()
            selection = select_ojfa(self.store(), per_level, device=self.compute_device, progress=self.progress,
                                    rule=rule, holdout=holdout)
            result = selection.to_dict()
            jump = selection.lens
            jump.extra = {"rule": rule, "D": result["scores"][selection.chosen]}
            if "held_out" in per_level.extra:  # one jump of the bank: trained on the rows the bank was
                jump.extra["held_out"] = per_level.extra["held_out"]
            jump.save(self.lens_path("ojfa"))
            atomic_write_text(self.layout.selection_json, json.dumps(result, indent=1))
            self.probes.timed("select", t0)
            return result

        return self.records.run(stage, compute, self._selection, lambda: self.state.reused.append("select"))

    # ---- evaluate --------------------------------------------------------------------------
    def evaluate(self, best: bool = True):
        """Evaluate every lens of the run (with the sweep's best jump unless ``best=False``), and the reuse
        matrix, on the test split (each lens its own stage: only those not current are read again)."""
        from ..evaluation.evaluator import evaluate, reuse_matrix
        from ..evaluation.result import EvalResult

        chosen = self.select_result()["chosen"]
        store = self.store()
        names = self.stages.evaluated(best)
        started: list[float] = []

        def compute(todo: list[str]) -> dict[str, EvalResult]:
            started.append(self.probes.start())
            part = evaluate(store, self.run_lenses(names=todo), chosen=chosen, progress=self.progress)
            return {n: part.only([n]) for n in todo}

        parts, computed = self.records.run_parts(
            {n: self.stages.evaluation(n) for n in names}, compute,
            lambda n: EvalResult.load(self.layout.evaluation_dir(n)),
            lambda n, part: part.save(self.layout.evaluation_dir(n)))
        if computed:
            self.probes.timed(_stage_name("evaluation", computed, names), started[0])
        else:
            self.state.reused.append("evaluation")
        result = functools.reduce(EvalResult.merge, parts.values())
        result.chosen = chosen

        def compute_reuse():
            t0 = self.probes.start()
            pairs = reuse_matrix(store, self.lens("full"), progress=self.progress)
            pairs.save(self.layout.reuse_dir)
            self.probes.timed("reuse", t0)
            return pairs

        pairs = self.records.run(self.stages.reuse(), compute_reuse, lambda: EvalResult.load(self.layout.reuse_dir),
                                 lambda: self.state.reused.append("reuse"))
        pairs.chosen = chosen
        return result.merge(pairs)

    # ---- early exit ------------------------------------------------------------------------
    def simulate_exits(self):
        """Confidence early exit simulated on the test store for every lens of the run (one stage per lens)."""
        from ..evaluation.early_exit import simulate_exits
        from ..evaluation.exit_simulation import ExitSimulation
        from ..evaluation.result import EvalResult

        self.select_result()
        names = self.stages.evaluated()
        started: list[float] = []

        def compute(todo: list[str]) -> dict[str, ExitSimulation]:
            started.append(self.probes.start())
            # a lens whose current evaluation kept what the simulation reads is not read again
            records = {}
            for n in todo:
                if self.records.status(self.stages.evaluation(n)) == "current":
                    try:
                        kept = EvalResult.load(self.layout.evaluation_dir(n)).exit_records(n)
                    except StoreError:
                        kept = None
                    if kept is not None:
                        records[n] = kept
            sim = simulate_exits(self.store(), self.run_lenses(names=todo), records=records, progress=self.progress)
            return {n: sim.only([n]) for n in todo}

        parts, computed = self.records.run_parts(
            {n: self.stages.exits(n) for n in names}, compute,
            lambda n: ExitSimulation.load(self.layout.exits_dir(n)),
            lambda n, part: part.save(self.layout.exits_dir(n)))
        if computed:
            self.probes.timed(_stage_name("exits", computed, names), started[0])
        else:
            self.state.reused.append("exits")
        return ExitSimulation.combine(list(parts.values()))

    # ---- trajectory ------------------------------------------------------------------------
    def draw_trajectory(self) -> Path:
        """The prediction trajectory of a fixed test sentence through the logit lens and the run's single jump."""
        from .trajectory_figure import draw_run_trajectory

        single = "best" if self.has_lens("best") else "ojfa"
        stage = self.stages.trajectory(single)
        out = self.layout.trajectory_dir / "trajectory.png"

        def compute() -> Path:
            t0 = self.probes.start()
            draw_run_trajectory(self.lm(), self.store(), self.lens(single), single, out)
            self.probes.timed("trajectory", t0)
            return out

        return self.records.run(stage, compute, lambda: out, lambda: self.state.reused.append("trajectory"))

    # ---- report ----------------------------------------------------------------------------
    def report(self) -> Path:
        """The trajectory figure (its own stage: it reads the model), then the report: results.json, the
        figures and report.md, built from the saved stages only."""
        self.select_result()  # the earliest stage to redo is named first
        if self.stages.has_sweep():
            self.records.require(self.stages.sweep())
        self.evaluation()
        self.draw_trajectory()
        return self.write_report()

    def write_report(self) -> Path:
        """The report stage: rendered again whenever asked (it is cheap, and a reader wants the current
        rendering), from current stages only; it never loads the model."""
        from .report import write_report
        from .results import build_results

        stage = self.stages.report()  # every stage it reads must be current: the first that is not is named
        self.records.begin(stage)
        t0 = self.probes.start()
        result = self.evaluation()
        results = build_results(self, result)
        self.probes.timed("report", t0)
        results["timings"] = self.probes.all_timings()
        results["memory"] = self.probes.memory_summary()
        path = write_report(results, self.report_dir, result, self.layout.trajectory_dir / "trajectory.png")
        self.records.complete(stage)
        return path


def _stage_name(stage: str, computed: list[str], lenses: list[str]) -> str:
    """A stage's name in timings.json: itself when every lens was read, else what was added (``evaluation:
    tuned``), so that the time of the whole stage recorded earlier is kept beside the increment."""
    return stage if set(computed) >= set(lenses) else f"{stage}: {', '.join(computed)}"
