"""Scaling curves: the tuned lens, the best single jump and the per-level jumps at several training sizes.

Every point is scored on the run's own test split (the paper's protocol: one position per test
sentence), so the curves differ only in what each lens was trained on:

- ``rows``: the run's own lenses, trained on its store (one position per train sentence: 9,000 rows
  on the paper's sample) by the project's recipes;
- ``train-all``: every position 1..n-1 of the run's train sentences;
- ``corpus-all``: every position of every usable sentence of the run's corpus outside its test
  split (the offline sample: about 25,000 sentences).

The two token-scale sizes are trained straight from the model (:mod:`onejump.training.streaming`),
with tuned-lens's budget convention: ``steps`` optimiser steps (250) of ``tokens_per_step`` positions,
chosen so that the budget is ``passes`` passes over the size's positions, every learning rate decayed
linearly to zero. Two streams per size: ``kl`` trains the tuned lens (tuned-lens's SGD from zero) and
the residual KL joint jump at ``2 floor(H/100)`` (the best preset's single jump) on the same
positions; ``mse`` trains the per-level jumps at ``floor(H/100)`` with the paper's MSE (Eq. 2). Each
stream holds out ``val_sentences`` whole train sentences for its loss curve. Each stream is a stage
of the run (``scaling/<size>/<stream>/``), reused when model, sentences and recipe are unchanged and
resumed from its checkpoint when cut short; the evaluation of every point is the stage
``scaling/scaling.json``, with ``scaling.png`` (metric against training tokens, log x).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..evaluation.evaluator import evaluate
from ..evaluation.statistics import bootstrap_ci
from ..io import atomic_write_text
from ..lenses.jumps import default_rank

SIZES = ("rows", "train-all", "corpus-all")
#: The curves' lenses, by their name in the streamed folders, and the run's own lens at size ``rows``.
LENSES = {"tuned": ("tuned",), "joint-residual": ("best", "joint"), "per-level": ("full",)}
STREAMS = {"kl": ("tuned", "joint-residual"), "mse": ("per-level",)}


@dataclass(frozen=True)
class ScalingPlan:
    """What the scaling curves train: the sizes, the budget (``passes`` over each size's positions in
    ``steps`` steps) and the streams' settings; ``max_sentences`` caps a streamed size's sentences (a
    shorter run, recorded as such)."""

    sizes: tuple[str, ...] = SIZES
    passes: float = 1.0
    steps: int = 250
    val_sentences: int = 64
    micro_rows: int = 256
    tokens_per_batch: int = 8192
    seed: int = 0
    max_sentences: int | None = None

    def validate(self) -> None:
        unknown = [s for s in self.sizes if s not in SIZES]
        if unknown or not self.sizes or len(set(self.sizes)) != len(self.sizes):
            raise ConfigError(f"sizes must be distinct names among {', '.join(SIZES)}, got {', '.join(self.sizes)}")
        if not self.passes > 0 or not math.isfinite(self.passes):
            raise ConfigError(f"passes must be a positive number, got {self.passes}")
        for name in ("steps", "val_sentences", "micro_rows", "tokens_per_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_sentences is not None and self.max_sentences <= self.val_sentences:
            raise ConfigError(f"max_sentences ({self.max_sentences}) must exceed val_sentences ({self.val_sentences})")


def size_texts(run: Any, size: str, max_sentences: int | None = None) -> list[str]:
    """The sentences a streamed size trains on: the run's train split (``train-all``) or every usable
    sentence of its corpus outside its test split (``corpus-all``), in corpus order."""
    from ..corpus.loaders import load_sentences, split_sentences
    from ..training.stream_data import usable_sentences

    args = run.data_args()
    sentences = load_sentences(args.corpus, text_field=args.text_field, hf_config=args.hf_config,
                               max_documents=args.max_documents, progress=False)
    split = split_sentences(sentences, args.n_train, args.n_test, seed=args.seed)
    if size == "train-all":
        texts = [s.text for s in split.train]
    else:
        test = {" ".join(s.text.split()) for s in split.test}
        texts = [t for t in usable_sentences([s.text for s in sentences]) if t not in test]
    return texts[:max_sentences] if max_sentences else texts


def _positions(text: Any, tokenizer: Any) -> int:
    from ..training.stream_data import StepPlanner

    planner = StepPlanner(text, tokenizer, 1)
    return sum(max(len(planner.encode(t)) - 1, 0) for t in text.train)


def _stream_config(plan: ScalingPlan, stream: str, hidden_size: int, tokens_per_step: int) -> Any:
    from ..training.config import TrainConfig
    from ..training.streaming import StreamConfig
    from ..training.tuned import TunedTrainConfig

    r = default_rank(hidden_size)
    jumps = TrainConfig(objective="kl", rank=2 * r, lr=1e-2, seed=plan.seed) if stream == "kl" else \
        TrainConfig(objective="mse", rank=r, lr=1e-2, seed=plan.seed)
    return StreamConfig(lenses=STREAMS[stream], tokens_per_step=tokens_per_step, num_steps=plan.steps,
                        micro_rows=plan.micro_rows, tokens_per_batch=plan.tokens_per_batch,
                        val_sentences=plan.val_sentences, eval_every=max(1, plan.steps // 5), seed=plan.seed,
                        tuned=TunedTrainConfig(init="zero", seed=plan.seed), jumps=jumps)


def train_size(run: Any, size: str, plan: ScalingPlan, progress: bool = True) -> dict[str, Any]:
    """Train (or reuse) both streams of a token-scale ``size``; returns its lenses by name."""
    from ..lenses.base import Lens
    from ..training.stream_data import StreamText
    from ..training.streaming import train_streaming

    lm = run.lm()
    text = StreamText.from_texts(size_texts(run, size, plan.max_sentences), plan.val_sentences, plan.seed)
    positions = _positions(text, lm.tokenizer)
    tokens_per_step = max(1, math.ceil(plan.passes * positions / plan.steps))
    lenses: dict[str, Any] = {}
    for stream in STREAMS:
        config = _stream_config(plan, stream, lm.hidden_size, tokens_per_step)
        recipe = json.loads(json.dumps(config.recipe()))
        stage = run.stages.scaling_stream(size, stream, STREAMS[stream], text.digest, recipe)
        folder = run.folder / stage.name
        corpus = {"size": size, "positions": positions, "max_sentences": plan.max_sentences}

        def compute(folder=folder, config=config, corpus=corpus):
            return train_streaming(lm, text, folder, config, corpus=corpus, progress=progress)

        def load(folder=folder, stream=stream):
            return {n: Lens.load(folder / n, lm) for n in STREAMS[stream]}

        lenses.update(run.records.run(stage, compute, load))
    return lenses


def _run_points(run: Any) -> dict[str, tuple[str, Any]]:
    """The run's own lenses at size ``rows`` (those it has), by the curves' names: ``(lens id, lens)``."""
    out = {}
    for name, ids in LENSES.items():
        for lens_id in ids:
            if run.has_lens(lens_id) and (lens_id != "joint" or (run.lens_config("joint") or {}).get("residual")):
                out[name] = (lens_id, run.lens(lens_id))
                break
    return out


def _seconds(lens: Any) -> tuple[float | None, int | None]:
    """A lens's training seconds and the training rows it saw (rows x steps for the store trainers)."""
    stream = lens.extra.get("streaming")
    if stream:
        return float(stream["seconds"]), int(stream["tokens_seen"])
    hist = lens.extra.get("history") or {}
    return (float(hist["seconds"]) if hist.get("seconds") is not None else None), None


def scaling(run: Any, plan: ScalingPlan | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Train or reuse every size's lenses, evaluate them all on the test split once, write
    ``scaling/scaling.json`` and ``scaling/scaling.png``; returns the former."""
    from .scaling_report import scaling_figure

    plan = plan or ScalingPlan()
    plan.validate()
    store = run.store()
    points: dict[str, tuple[str, str, Any]] = {}
    folders = []
    for size in plan.sizes:
        if size == "rows":
            for name, (lens_id, lens) in _run_points(run).items():
                points[f"{name}@rows"] = ("rows", name, lens)
                folders.append(run.layout.relative(run.current_lens_path(lens_id)))
            continue
        for name, lens in train_size(run, size, plan, progress).items():
            points[f"{name}@{size}"] = (size, name, lens)
            folders.append(f"scaling/{size}/{next(s for s, n in STREAMS.items() if name in n)}/{name}")
    if not points:
        raise ConfigError(f"nothing to evaluate: {run.folder} has no tuned lens, best single jump or per-level "
                          "jumps, and no token-scale size was asked for")
    stage = run.stages.scaling(folders, asdict(plan))
    run.records.begin(stage)
    from ..lenses.base import LogitLens

    lenses = {"logit": LogitLens(run.lm()), **{k: v[2] for k, v in points.items()}}
    t0 = time.perf_counter()
    test = evaluate(store, lenses, split="test", progress=progress)
    rows = [_point(test, key, *points[key]) for key in points]
    logit = _point(test, "logit", "rows", "logit", lenses["logit"])
    out = {"model": run.lm().name, "num_blocks": store.num_blocks, "hidden_size": store.hidden_size,
           "n_train_sentences": len(store.indices("train")), "n_test": len(store.indices("test")),
           "plan": asdict(plan), "logit": logit, "points": rows,
           "sizes": _by_size(rows), "evaluate_seconds": time.perf_counter() - t0}
    folder = run.folder / "scaling"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "scaling.json", json.dumps(out, indent=1))
    scaling_figure(out, folder / "scaling.png")
    run.records.complete(stage)
    return out


def _point(result: Any, key: str, size: str, name: str, lens: Any) -> dict[str, Any]:
    p1 = result.samples(key, "precision@1").double().numpy()
    kl = result.samples(key, "kl").double().numpy()
    ci_p, ci_kl = bootstrap_ci(p1.mean(0)), bootstrap_ci(kl.mean(0))
    seconds, seen = _seconds(lens)
    stream = lens.extra.get("streaming") or {}
    hist = lens.extra.get("history") or {}
    train_rows = (stream.get("corpus") or {}).get("positions") if stream else hist.get("n_train")
    return {"key": key, "size": size, "lens": name, "kind": lens.kind, "parameters": int(lens.num_parameters),
            "train_rows": train_rows, "tokens_seen": seen, "train_seconds": seconds,
            "rows_per_s": round(seen / seconds, 1) if seen and seconds else None,
            "recipe": stream.get("recipe") or hist.get("config"),
            "mean_precision@1": ci_p.mean, "mean_precision@1_ci": [ci_p.low, ci_p.high],
            "mean_kl": ci_kl.mean, "mean_kl_ci": [ci_kl.low, ci_kl.high],
            "precision@1": p1.mean(1).tolist(), "kl": kl.mean(1).tolist()}


def _by_size(points: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in points:
        entry = out.setdefault(p["size"], {"train_rows": p["train_rows"], "lenses": {}})
        entry["lenses"][p["lens"]] = {k: p[k] for k in ("mean_precision@1", "mean_precision@1_ci", "mean_kl",
                                                        "mean_kl_ci", "parameters", "train_seconds",
                                                        "tokens_seen", "rows_per_s")}
    return out


def scaling_entry(run: Any) -> dict[str, Any] | None:
    """The ``scaling`` entry of a run's results.json (by training size, then lens); None when not run.
    ``run``: an opened run folder (the stage must then be current) or a folder's path (read as it is)."""
    opened = not isinstance(run, (str, Path))
    path = (run.folder if opened else Path(run)) / "scaling" / "scaling.json"
    if not path.is_file():
        return None
    if opened:
        run.records.require(run.stages.scaling())
    data = json.loads(path.read_text())
    keep = ("key", "size", "lens", "kind", "parameters", "train_rows", "tokens_seen", "train_seconds", "rows_per_s",
            "mean_precision@1", "mean_precision@1_ci", "mean_kl", "mean_kl_ci")
    return {"sizes": data["sizes"], "points": [{k: p[k] for k in keep} for p in data["points"]],
            "logit": {k: data["logit"][k] for k in ("mean_precision@1", "mean_kl")}, "plan": data["plan"],
            "model": data["model"], "n_test": data["n_test"]}


__all__ = ["LENSES", "SIZES", "STREAMS", "ScalingPlan", "scaling", "scaling_entry",
           "size_texts", "train_size"]
