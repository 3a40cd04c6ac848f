"""The whole experiment as cached stages: extract -> train -> select -> evaluate -> early exit -> report.

Every stage records a key made of the content identities of its inputs (the store's shard hashes,
each lens file's weights hash, the selection, the evaluation) and its settings; a stage whose
output holds the current key is reused, one whose inputs changed is recomputed by ``onejump run``
and refused, with the command to run, by a command that only reads it (``report``, ``evaluate``).
The folder's layout is :mod:`onejump.experiment.folder`'s.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ShortcutError, StoreError
from ..io import atomic_write_text
from ..store import HiddenStateStore
from ..training.checkpoint import Checkpoint
from .folder import RunFolder, stage_key
from .lens_table import EVALUATED
from .presets import DataArgs
from .results import build_results


class Run(RunFolder):
    """A run folder and its stages."""

    # ---- stage 1: extract ------------------------------------------------------------------
    def extract(self, args: DataArgs) -> HiddenStateStore:
        """Sample the corpus, extract hidden states (resumable); writes run.json."""
        from dataclasses import asdict

        from ..corpus.loaders import load_sentences, split_sentences
        from ..extract import extract

        run_json = self.folder / "run.json"
        if run_json.is_file():
            old = self.data_args()
            # settings bind the folder once extraction has started (store/plan.json); before that, a
            # command that failed (bad model, bad corpus) leaves nothing the corrected command must match
            if asdict(old) != asdict(args) and (self.store_dir / "plan.json").is_file():
                diff = [k for k, v in asdict(args).items() if asdict(old).get(k) != v]
                flags = ", ".join(f"--{k.replace('_', '-')}" for k in diff)
                raise StoreError(f"{self.folder} belongs to a run with other settings ({flags}); "
                                 "use another --out folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_json, json.dumps({"data": asdict(args)}, indent=1))
        if (self.store_dir / "manifest.json").is_file():
            store = HiddenStateStore.open(self.store_dir, fingerprint=self.lm().fingerprint)
            self.state.reused.append("extract")
            return store
        t0 = self._start()
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
        self._timed("extract", t0)
        return store

    # ---- what each stage was computed from -------------------------------------------------
    def train_or_reuse(self, kind: str, config: Any, folder: Path, targets_cache: dict | None = None,
                       init: Any = None):
        """The lens of ``kind`` (``nnjtc``, ``joint``, ``jtc``, ``tuned``, ``joint-cond``) trained with ``config``
        on this run's store, saved in ``folder``; reused from there when it was trained from the same store
        and config. ``init``: the lens a ``joint-cond`` jump starts from (its key joins the stage key)."""
        from ..lenses.base import Lens

        parts: list[Any] = [{"store": self.identity("store"), "fingerprint": self.lm().fingerprint}, kind,
                            config.to_dict() if config is not None else None]
        if init is not None:
            parts.append({"init": init.extra.get("key")})
        key = stage_key(*parts)
        held = self._held_out(config)
        if (folder / "config.json").is_file() or (folder / "shortcuts.json").is_file():
            try:
                lens = Lens.load(folder, self.lm())
                # a lens that does not record the rows its training held out (or recorded others) is
                # trained again: what it never saw cannot be told otherwise
                if lens.extra.get("key") == key and lens.extra.get("held_out") == held:
                    self.state.reused.append(self._train_label(kind, folder))
                    return lens
            except ShortcutError:
                pass  # a damaged or foreign file: train again and replace it
        t0 = self._start()
        # the training's state, saved as it goes: a rerun after an interrupt resumes from it
        ckpt = Checkpoint(folder.with_name(f"{folder.name}.checkpoint.safetensors"), key)
        lens = self._fit(kind, self.store(), config, {} if targets_cache is None else targets_cache, key, init,
                         ckpt)
        if held is not None:
            lens.extra["held_out"] = held
        lens.save(folder)
        self._timed(self._train_label(kind, folder), t0)
        return Lens.load(folder, self.lm())

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

    # ---- stage 2: train --------------------------------------------------------------------
    def train(self, config: Any, *, joint: bool = True, jtc: bool = True, tuned: bool = True,
              rank_multiplier: int = 1, tuned_steps: int = 250, tuned_init: str = "jtc") -> dict[str, Any]:
        """Train (or reuse) the per-level bank, the joint jump, the JTC maps and the tuned lens; returns their lenses.

        ``rank_multiplier`` (with ``config.rank`` unset) trains at ``rank_multiplier * floor(H/100)``;
        ``tuned_steps`` / ``tuned_init``: the tuned lens's schedule length and start
        (:class:`~onejump.training.tuned.TunedTrainConfig`).
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
        jobs += [("tuned", "tuned", TunedTrainConfig(num_steps=tuned_steps, init=tuned_init))] if tuned else []
        lenses = {}
        for name, kind, cfg in jobs:
            init = None
            if kind == "joint" and self.preset().get("joint_warm"):  # trained, then trained on from itself
                start = self.lens_path("joint").parent / "joint-start"
                init = self.train_or_reuse(kind, cfg, start, targets_cache)
            lenses[name] = self.train_or_reuse(kind, cfg, self.lens_path(name), targets_cache, init=init)
        return lenses

    def _fit(self, kind: str, store: HiddenStateStore, config: Any, targets_cache: dict, key: str, init: Any = None,
             ckpt: Any = None):
        from ..lenses.jtc import JTCLens, LinearJTC
        from ..lenses.onejump import OneJump, PerLevelLens
        from ..training.fit import objective_loss, train_joint, train_jumps
        from ..training.lenses import train_cond_jump

        lm, dev = self.lm(), self.compute_device
        if kind == "jtc":
            return JTCLens(lm, LinearJTC.fit(store, device=dev).cpu(), extra={"key": key})
        if kind == "tuned":
            from ..training.tuned import train_tuned_lens

            lens, history = train_tuned_lens(store, lm, config, device=dev, progress=self.progress,
                                             targets=targets_cache.get(config.kl_top_k), checkpoint=ckpt)
            lens.extra = {"key": key, "history": history.to_dict()}
            return lens.cpu()
        loss_fn = objective_loss(store, config, lm.adapter, self.progress, dev, targets_cache)
        if kind == "joint-cond":
            lens = train_cond_jump(store, lm, config, init=init, device=dev, progress=self.progress, loss_fn=loss_fn,
                                   checkpoint=ckpt)
            lens.extra["key"] = key
            return lens
        if kind == "joint" and init is not None:  # trained on from a copy of a joint jump (kept unless beaten)
            bank, history = train_joint(store, config, device=dev, progress=self.progress, loss_fn=loss_fn,
                                        bank=copy.deepcopy(init.bank), keep_start=True, checkpoint=ckpt)
            history.kind = "joint-warm"
        else:
            trainer = train_jumps if kind == "nnjtc" else train_joint
            bank, history = trainer(store, config, device=dev, progress=self.progress, loss_fn=loss_fn,
                                    checkpoint=ckpt)
        extra = {"key": key, "history": history.to_dict()}
        if kind == "nnjtc":
            return PerLevelLens(lm, bank.cpu(), extra=extra)
        return OneJump(lm, bank.cpu(), trained_at=-1, extra=extra)

    # ---- stage 3: select -------------------------------------------------------------------
    def _select_key(self, rule: str) -> str:
        from ..evaluation.selection import HOLDOUT_MAX

        if rule == "head":  # the held-out rows it scores on are part of what it is computed from
            return stage_key(self.identity("full"), self.identity("store"), "select", rule, HOLDOUT_MAX)
        return stage_key(self.identity("full"), self.identity("store"), "select", rule)

    def select(self, rule: str | None = None) -> dict[str, Any]:
        """Score every jump at every level, choose the single jump (OJFA), save it as shortcuts/ojfa.

        ``rule``: ``paper`` (D_m, Eq. 5) or ``head`` (held-out precision@1 through the head);
        default: the run's preset's rule.
        """
        from ..evaluation.selection import select_ojfa, trained_holdout

        rule = rule or self.preset().get("select_rule", "paper")
        per_level = self.lens("full")
        key = self._select_key(rule)
        path = self.folder / "selection.json"
        if path.is_file() and self.has_lens("ojfa"):
            saved = json.loads(path.read_text())
            if saved.get("key") == key and self.lens("ojfa").extra.get("selection_key") == key:
                self.state.reused.append("select")
                return saved
        holdout = None
        if rule == "head":  # the rows the per-level jumps' training held out, as their own config records
            try:
                holdout = trained_holdout(self.store(), per_level.extra.get("held_out"))
            except ShortcutError as exc:
                raise ShortcutError(f"{self.lens_path('full')}: {exc} (`onejump train --out {self.folder}`)") \
                    from None
        t0 = self._start()
        selection = select_ojfa(self.store(), per_level, device=self.compute_device, progress=self.progress,
                                rule=rule, holdout=holdout)
        result = {"key": key, **selection.to_dict()}
        jump = selection.lens
        jump.extra = {"selection_key": key, "D": result["scores"][selection.chosen]}
        if "held_out" in per_level.extra:  # one jump of the bank: trained on the rows the bank was
            jump.extra["held_out"] = per_level.extra["held_out"]
        jump.save(self.lens_path("ojfa"))
        atomic_write_text(path, json.dumps(result, indent=1))
        self._timed("select", t0)
        return result

    def select_result(self) -> dict[str, Any]:
        """The saved selection, refused when the per-level jumps changed after it was made."""
        path = self.folder / "selection.json"
        if not path.is_file():
            raise ShortcutError(f"no OJFA selection in {self.folder}: run `onejump select --out {self.folder}`")
        saved = json.loads(path.read_text())
        if saved.get("key") != self._select_key(saved.get("rule", "paper")):
            raise ShortcutError(f"the OJFA selection in {self.folder} was made from other jumps or another store "
                                f"than those now in the run: run `onejump select --out {self.folder}`")
        return saved

    # ---- stage 4: evaluate -----------------------------------------------------------------
    def _cached_result(self, folder: Path, key: str, compute: Any) -> Any:
        from ..evaluation.result import EvalResult

        if (folder / "key.txt").is_file() and (folder / "key.txt").read_text() == key:
            self.state.reused.append(folder.name)
            return EvalResult.load(folder)
        t0 = self._start()
        result = compute()
        result.save(folder)
        atomic_write_text(folder / "key.txt", key)
        self._timed(folder.name, t0)
        return result

    def evaluate(self, best: bool = True):
        """Evaluate every lens of the run (with the sweep's best jump unless ``best=False``), and the reuse
        matrix, on the test split (each lens cached on its own)."""
        from ..evaluation.evaluator import evaluate, reuse_matrix
        from ..evaluation.result import EvalResult
        from .lens_cache import cached_by_lens

        chosen = self.select_result()["chosen"]
        store = self.store()
        lenses = self.run_lens_names(best)  # loaded only when some must be read again
        absent = frozenset() if best else frozenset({"best"})
        started: list[float] = []

        def compute(names: list[str]) -> dict[str, EvalResult]:
            started.append(self._start())
            part = evaluate(store, self.run_lenses(names=names), chosen=chosen, progress=self.progress)
            return {n: part.only([n]) for n in names}

        def combine(parts: list[EvalResult]) -> EvalResult:
            out = functools.reduce(EvalResult.merge, parts)
            out.chosen = chosen
            return out

        result, computed = cached_by_lens(
            self.folder / "evaluation", self.evaluation_key(absent), {n: self.lens_key(n, "eval") for n in lenses},
            key_without=lambda a: self.evaluation_key(set(a) | absent), names_of=lambda r: r.lens_names,
            compute=compute, load=EvalResult.load, save=lambda r, p: r.save(p), split=lambda r, n: r.only([n]),
            combine=combine)
        if computed:
            self._timed(_stage_name("evaluation", computed, lenses), started[0])
        else:
            self.state.reused.append("evaluation")
        pairs = self._cached_result(self.folder / "reuse", self.reuse_key(),
                                    lambda: reuse_matrix(store, self.lens("full"), progress=self.progress))
        pairs.chosen = chosen
        return result.merge(pairs)

    def run_lens_names(self, best: bool = True) -> list[str]:
        """The report names of the run's lenses: the logit lens, full N-NJTC, OJFA, and whichever of the
        joint jump, JTC, the tuned lens and the sweep's best single jump exist."""
        always = ("identity", "full", "ojfa")  # a missing one is named when it is loaded
        return [n for n in EVALUATED if n in always or (self.has_lens(n) and (best or n != "best"))]

    def run_lenses(self, best: bool = True, names: list[str] | None = None) -> dict[str, Any]:
        """The run's lenses by id (:meth:`run_lens_names`, or only ``names``), loaded."""
        return {n: self.lens(n) for n in (names or self.run_lens_names(best))}

    def simulate_exits(self):
        """Confidence early exit simulated on the test store for every lens of the run (cached per lens)."""
        from ..evaluation.early_exit import ExitSimulation, simulate_exits
        from .lens_cache import cached_by_lens, exit_records

        self.select_result()
        folder, key = self.folder / "early_exit", self.exits_key()
        lenses = self.run_lens_names()  # loaded only when some must be read again
        started: list[float] = []

        def compute(names: list[str]) -> dict[str, ExitSimulation]:
            started.append(self._start())
            # a lens's current evaluation kept what the simulation reads: only the others are read again
            records = exit_records(self.folder / "evaluation", {n: self.lens_key(n, "eval") for n in names})
            sim = simulate_exits(self.store(), self.run_lenses(names=names), records=records, progress=self.progress)
            return {n: sim.only([n]) for n in names}

        sim, computed = cached_by_lens(
            folder, key, {n: self.lens_key(n, "exits") for n in lenses}, key_without=self.exits_key,
            names_of=lambda s: list(s.lenses), compute=compute, load=ExitSimulation.load,
            save=lambda s, p: s.save(p), split=lambda s, n: s.only([n]), combine=ExitSimulation.combine)
        if computed:
            self._timed(_stage_name("exits", computed, lenses), started[0])
        else:
            self.state.reused.append("exits")
        return sim

    def exits(self):
        """The saved exit simulation (None if never run), refused when its lenses changed after it."""
        from ..evaluation.exit_simulation import ExitSimulation

        folder = self.folder / "early_exit"
        if not (folder / "key.txt").is_file():
            return None
        if (folder / "key.txt").read_text() != self.exits_key():
            raise StoreError(f"the early-exit simulation in {self.folder} is older than the lenses now in the run: "
                             f"run `onejump evaluate --out {self.folder}`")
        return ExitSimulation.load(folder)

    def evaluation(self):
        """The saved evaluation (lenses and reuse matrix), refused when anything it came from changed after it."""
        from ..evaluation.result import EvalResult

        self.select_result()  # a stale selection is named first: it is the earliest stage to redo
        parts = []
        for name, key in (("evaluation", self.evaluation_key()), ("reuse", self.reuse_key())):
            folder = self.folder / name
            if not (folder / "result.json").is_file():
                raise StoreError(f"no evaluation in {self.folder}: run `onejump evaluate --out {self.folder}`")
            if not (folder / "key.txt").is_file() or (folder / "key.txt").read_text() != key:
                raise StoreError(f"the evaluation in {self.folder} is older than the lenses, store or selection "
                                 f"now in the run: run `onejump evaluate --out {self.folder}`")
            parts.append(EvalResult.load(folder))
        parts[1].chosen = parts[0].chosen
        return parts[0].merge(parts[1])

    # ---- stage 5: report -------------------------------------------------------------------
    def report(self, result: Any = None) -> Path:
        """Build results.json, the figures and report.md from the saved stages."""
        from .report import write_report

        if result is None:
            result = self.evaluation()
        t0 = self._start()
        results = build_results(self, result)
        from .sweep import load_sweep

        beyond = load_sweep(self.folder)
        store_id = self.identity("store")
        if beyond is not None and any(json.loads(c.get("key", "{}")).get("store") != store_id
                                      for c in beyond["configs"]):
            raise StoreError(f"the sweep in {self.folder} was run on another store than the one now in the run: "
                             f"run `onejump sweep --out {self.folder}` again")
        if beyond is not None:  # without the per-sample vectors (they stay in sweep/sweep.json)
            for cfg in [*beyond["configs"], {"methods": beyond["references"]}]:
                for m in cfg["methods"].values():
                    m.pop("sample_precision@1", None)
            results["beyond"] = beyond
        exits = self.exits()
        if exits is not None:
            results["early_exit"] = exits.to_dict()
        out = self.report_dir
        self._report_extras(result, out)
        self._timed("report", t0)
        results["timings"] = self.all_timings()
        results["memory"] = self.memory_summary()
        return write_report(results, out)

    def memory_summary(self) -> dict[str, Any]:
        """Each stage's peak RSS (``memory.json``) beside the model's own size (its parameters' bytes)."""
        from ..memory import module_mib

        model = self.lm().model
        params = list(model.parameters())  # a tied weight once
        return {**self.all_peaks(), "model_mib": round(module_mib(model), 1),
                "model_parameters": sum(p.numel() for p in params),
                "model_dtype": str(params[0].dtype).replace("torch.", "")}

    def _report_extras(self, result: Any, out: Path) -> None:
        """tuned-lens-shaped ``aggregate_metrics.json``, and the prediction trajectory of a fixed test
        sentence (the first test prefix of 12 to 20 tokens) through the logit lens and the run's single jump."""
        from ..evaluation.aggregate import metrics_of_result, write_aggregate_metrics
        from ..lenses.base import Lens, LogitLens
        from ..trajectory import save_trajectories, trajectories

        write_aggregate_metrics(out, **metrics_of_result(result))
        lm, store = self.lm(), self.store()
        single = "best" if (self.lens_path("best") / "config.json").is_file() else "ojfa"
        lenses = [LogitLens(lm), Lens.load(self.lens_path(single), lm)]  # the one it draws, not every lens
        test = store.indices("test")
        # rows are stored by prefix length; in corpus order, the first test prefix long enough to show
        # a trajectory (a sentence, not two tokens)
        in_order = test[np.argsort(store.meta("sample_id")[test], kind="stable")][:500]
        row = next((int(r) for r in in_order if 12 <= len(store.prefix_tokens(int(r))) <= 20),
                   int(in_order[0]))
        prompt = lm.tokenizer.decode(store.prefix_tokens(row), skip_special_tokens=True)
        trajs = trajectories([lens.to(lm.device) for lens in lenses], lm, prompt, names=["logit lens", single])
        save_trajectories(trajs, out / "trajectory.png", title=f"{lm.name}: what each level predicts")


def _stage_name(stage: str, computed: list[str], lenses: list[str]) -> str:
    """A stage's name in timings.json: itself when every lens was read, else what was added (``evaluation:
    tuned``), so that the time of the whole stage recorded earlier is kept beside the increment."""
    return stage if set(computed) >= set(lenses) else f"{stage}: {', '.join(computed)}"
