"""The whole experiment as cached stages: extract -> train -> select -> evaluate -> report.

A run folder holds::

    run.json               model and data arguments (written by the extract stage)
    store/                 hidden states (onejump.store)
    shortcuts/nnjtc/       the K per-level jumps (records the OJFA choice once selected)
    shortcuts/joint/       one jump trained on all levels
    shortcuts/jtc/         the full-rank linear JTC maps
    shortcuts/ojfa/        the chosen jump alone (what early-exit inference loads)
    selection.json         D matrix, D_m, OJFA choice, softmax(D / 5e-4) (and the head-aware scores)
    preset.json            the preset the run was trained with (paper / best) and its selection rule
    evaluation/            per-sample test results (safetensors) + summary
    report/                results.json, figures, report.md
    sweep/                 the objective x rank sweep (``onejump sweep``), if run

Every stage is keyed by a hash of its inputs (store, training configuration, ...); a stage whose
output exists with the same key is reused, so ``onejump run`` after an interruption, or with only
the report changed, redoes only what is needed.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ShortcutError, StoreError
from ..io import atomic_write_text
from ..store import HiddenStateStore
from .presets import PRESETS
from .results import build_results


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class DataArgs:
    """What to extract (the ``run.json`` of a run folder)."""

    model: str = "smollm2-135m"
    corpus: str = "wikipedia-offline"
    hf_config: str | None = None
    text_field: str = "text"
    max_documents: int | None = None
    n_train: int = 9000
    n_test: int = 3000
    seed: int = 0
    store_dtype: str = "float32"
    tokens_per_batch: int = 8192
    shard_size: int = 1024


@dataclass
class RunState:
    """Timings and the objects produced so far."""

    timings: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)


class Run:
    """A run folder and its stages."""

    def __init__(self, folder: str | Path, *, device: str = "auto", dtype: str = "float32",
                 device_map: str | None = None, progress: bool = True):
        self.folder = Path(folder)
        self.device, self.dtype, self.device_map = device, dtype, device_map
        self.progress = progress
        self.state = RunState()
        self._lm = None

    # ---- paths and config ---------------------------------------------------------------------
    @property
    def store_dir(self) -> Path:
        return self.folder / "store"

    def shortcut_dir(self, kind: str) -> Path:
        return self.folder / "shortcuts" / kind

    def data_args(self) -> DataArgs:
        path = self.folder / "run.json"
        if not path.is_file():
            raise StoreError(f"{self.folder} is not an onejump run folder (no run.json): run `onejump extract "
                             f"--out {self.folder}` or `onejump run --out {self.folder}` first")
        try:
            return DataArgs(**json.loads(path.read_text())["data"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise StoreError(f"{path} is corrupt: {exc}") from None

    def _timed(self, stage: str, t0: float) -> None:
        self.state.timings[stage] = round(self.state.timings.get(stage, 0.0) + time.perf_counter() - t0, 3)

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
        t0 = time.perf_counter()
        if (self.store_dir / "manifest.json").is_file():
            store = HiddenStateStore.open(self.store_dir, fingerprint=self.lm().fingerprint)
            self.state.reused.append("extract")
            return store
        sentences = load_sentences(args.corpus, text_field=args.text_field, hf_config=args.hf_config,
                                   max_documents=args.max_documents)
        split = split_sentences(sentences, args.n_train, args.n_test, seed=args.seed)
        texts = [s.text for s in split.train] + [s.text for s in split.test]
        labels = [0] * len(split.train) + [1] * len(split.test)
        store = extract(self.lm(), texts, self.store_dir, splits=labels, seed=args.seed,
                        store_dtype=args.store_dtype, tokens_per_batch=args.tokens_per_batch,
                        shard_size=args.shard_size, progress=self.progress,
                        extra={"corpus": args.corpus, "n_train": args.n_train, "n_test": args.n_test})
        self._timed("extract", t0)
        return store

    def store(self) -> HiddenStateStore:
        return HiddenStateStore.open(self.store_dir, fingerprint=self.lm().fingerprint, verify=False)

    # ---- stage 2: train --------------------------------------------------------------------
    def train(self, config: Any, *, joint: bool = True, jtc: bool = True, rank_multiplier: int = 1) -> dict[str, Any]:
        """Train (or reuse) the per-level bank, the joint jump and the JTC maps.

        ``rank_multiplier`` (with ``config.rank`` unset) trains at ``rank_multiplier * floor(H/100)``.
        """
        from dataclasses import replace

        from ..lenses.files import load_shortcuts, save_shortcuts
        from ..lenses.jtc import LinearJTC
        from ..lenses.jumps import default_rank
        from ..training.fit import objective_loss, train_joint, train_jumps

        store = self.store()
        lm = self.lm()
        if config.rank is None and rank_multiplier != 1:
            config = replace(config, rank=rank_multiplier * default_rank(store.hidden_size))
        base = {"store": store.manifest["samples_sha256"], "fingerprint": store.fingerprint}
        dev = self.compute_device
        out: dict[str, Any] = {}
        joint_config = replace(config, **self.preset().get("joint", {}))
        targets_cache: dict[int, Any] = {}  # the KL objective's targets, shared by the bank and the joint jump
        jobs = [("nnjtc", _key(base, "nnjtc", config.to_dict()))]
        if joint:
            jobs.append(("joint", _key(base, "joint", joint_config.to_dict())))
        if jtc:
            jobs.append(("jtc", _key(base, "jtc")))
        for kind, key in jobs:
            folder = self.shortcut_dir(kind)
            cached = self._cached_shortcuts(folder, key, lm.fingerprint)
            if cached is not None:
                out[kind] = cached
                self.state.reused.append(f"train:{kind}")
                continue
            t0 = time.perf_counter()
            history = None
            if kind == "nnjtc":
                loss_fn = objective_loss(store, config, lm.adapter, self.progress, dev, targets_cache)
                module, history = train_jumps(store, config, device=dev, progress=self.progress, loss_fn=loss_fn)
                levels, rank = list(range(store.num_blocks)), module.rank
            elif kind == "joint":
                loss_fn = objective_loss(store, joint_config, lm.adapter, self.progress, dev, targets_cache)
                module, history = train_joint(store, joint_config, device=dev, progress=self.progress,
                                              loss_fn=loss_fn)
                levels, rank = [-1], module.rank
            else:
                module = LinearJTC.fit(store, device=dev)
                levels, rank = list(range(store.num_blocks)), None
            extra = {"key": key, "history": history.to_dict() if history is not None else None}
            save_shortcuts(folder, module.cpu(), kind=kind, model=lm.name, fingerprint=lm.fingerprint, levels=levels,
                           rank=rank, num_blocks=store.num_blocks, extra=extra)
            out[kind] = load_shortcuts(folder, fingerprint=lm.fingerprint).module
            self._timed(f"train:{kind}", t0)
        return out

    @staticmethod
    def _cached_shortcuts(folder: Path, key: str, fingerprint: str):
        from ..lenses.files import load_shortcuts

        if not (folder / "shortcuts.json").is_file():
            return None
        try:
            loaded = load_shortcuts(folder, fingerprint=fingerprint)
        except ShortcutError:
            return None
        return loaded.module if (loaded.config.get("extra") or {}).get("key") == key else None

    def shortcuts(self, kind: str):
        from ..lenses.files import load_shortcuts

        folder = self.shortcut_dir(kind)
        if not (folder / "shortcuts.json").is_file():
            raise ShortcutError(f"no trained '{kind}' shortcuts in {folder}: run `onejump train --out {self.folder}`")
        return load_shortcuts(folder, fingerprint=self.lm().fingerprint)

    # ---- stage 3: select -------------------------------------------------------------------
    def preset(self) -> dict[str, Any]:
        """The preset recorded by train/run (``preset.json``); the paper's when none was recorded."""
        path = self.folder / "preset.json"
        if path.is_file():
            return json.loads(path.read_text())
        return {"name": "paper", **PRESETS["paper"]}

    def record_preset(self, name: str, select_rule: str | None = None) -> None:
        """Write ``preset.json`` (which preset trained this run, and its selection rule)."""
        from ..errors import ConfigError

        if name not in PRESETS:
            raise ConfigError(f"unknown preset '{name}'; use one of {', '.join(PRESETS)}")
        self.folder.mkdir(parents=True, exist_ok=True)
        info = {"name": name, **PRESETS[name]}
        if select_rule is not None:
            info["select_rule"] = select_rule
        atomic_write_text(self.folder / "preset.json", json.dumps(info, indent=1))

    def select(self, rule: str | None = None) -> dict[str, Any]:
        """Score every jump at every level, choose the single jump (OJFA), save it as shortcuts/ojfa.

        ``rule``: ``paper`` (D_m, Eq. 5) or ``head`` (held-out precision@1 through the head);
        default: the run's preset's rule.
        """
        from ..evaluation.selection import select_ojfa
        from ..lenses.onejump import OneJump

        rule = rule or self.preset().get("select_rule", "paper")
        bank_file = self.shortcuts("nnjtc")
        key = _key(bank_file.config.get("extra", {}).get("key"), "select", rule)
        path = self.folder / "selection.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("key") == key and (self.shortcut_dir("ojfa") / "shortcuts.json").is_file():
                self.state.reused.append("select")
                return saved
        t0 = time.perf_counter()
        store = self.store()
        lm = self.lm()
        selection = select_ojfa(store, bank_file.module, device=self.compute_device, progress=self.progress,
                                rule=rule, adapter=lm.adapter)
        result = {"key": key, **selection.to_dict()}
        jump = OneJump.from_bank(bank_file.module, selection.chosen, num_blocks=store.num_blocks, model=lm.name,
                                 fingerprint=lm.fingerprint, extra={"selection_key": key, "D": selection.to_dict()[
                                     "scores"][selection.chosen]})
        jump.save(self.shortcut_dir("ojfa"))
        atomic_write_text(path, json.dumps(result, indent=1))
        self._timed("select", t0)
        return result

    # ---- stage 4: evaluate -----------------------------------------------------------------
    def evaluate(self):
        """Evaluate every (jump, level) pair and the baselines on the test split (cached)."""
        from ..evaluation.metrics import EvalResult, evaluate

        selection = self.select_result()
        kinds = {k: self.shortcuts(k) for k in ("nnjtc", "joint", "jtc") if
                 (self.shortcut_dir(k) / "shortcuts.json").is_file()}
        key = _key({k: v.config.get("extra", {}).get("key") for k, v in kinds.items()}, selection["chosen"], "eval")
        folder = self.folder / "evaluation"
        if (folder / "key.txt").is_file() and (folder / "key.txt").read_text() == key:
            self.state.reused.append("evaluate")
            return EvalResult.load(folder)
        t0 = time.perf_counter()
        store = self.store()
        lm = self.lm()
        result = evaluate(store, lm.adapter, kinds["nnjtc"].module,
                          joint=kinds["joint"].module if "joint" in kinds else None,
                          jtc=kinds["jtc"].module if "jtc" in kinds else None,
                          chosen=selection["chosen"], device=self.compute_device, progress=self.progress)
        result.save(folder)
        atomic_write_text(folder / "key.txt", key)
        self._timed("evaluate", t0)
        return result

    def select_result(self) -> dict[str, Any]:
        path = self.folder / "selection.json"
        if not path.is_file():
            raise ShortcutError(f"no OJFA selection in {self.folder}: run `onejump select --out {self.folder}`")
        return json.loads(path.read_text())

    # ---- stage 5: report -------------------------------------------------------------------
    def report(self, result: Any = None) -> Path:
        """Build results.json, the figures and report.md from the saved stages."""
        from ..evaluation.metrics import EvalResult
        from .report import write_report

        if result is None:
            folder = self.folder / "evaluation"
            if not (folder / "result.json").is_file():
                raise StoreError(f"no evaluation in {self.folder}: run `onejump evaluate --out {self.folder}`")
            result = EvalResult.load(folder)
        t0 = time.perf_counter()
        results = build_results(self, result)
        from .sweep import load_sweep

        beyond = load_sweep(self.folder)
        if beyond is not None:  # without the per-sample vectors (they stay in sweep/sweep.json)
            for cfg in [*beyond["configs"], {"methods": beyond["references"]}]:
                for m in cfg["methods"].values():
                    m.pop("sample_precision@1", None)
            results["beyond"] = beyond
        self._timed("report", t0)
        results["timings"] = self.all_timings()
        return write_report(results, self.folder / "report")

    def all_timings(self) -> dict[str, float]:
        """This invocation's stage timings merged into those recorded by earlier ones (timings.json)."""
        path = self.folder / "timings.json"
        saved = json.loads(path.read_text()) if path.is_file() else {}
        saved.update(self.state.timings)
        atomic_write_text(path, json.dumps(saved, indent=1))
        return saved
