"""Beyond the paper: objective x rank x method sweep over one run's store (Pareto frontier).

For every objective (``mse``: the paper's Eq. 2; ``kl``: KL through the frozen head, see
:mod:`onejump.training.objectives`) and every rank ``r = mult * floor(H/100)``, the sweep trains the
per-level bank and a joint jump on the run's store, picks a single jump from the bank by both
selection rules (the paper's D_m and the head-aware held-out precision), and evaluates on the test
split: per-level jumps (K jumps), the two OJFA choices and the joint jump (one jump each). The
logit lens (0 parameters) and the full-rank JTC maps come from the run's own evaluation.

The **best single jump** is chosen without looking at the test split: among the single-jump
candidates with at most ``2 x`` the paper OJFA's parameters, the one with the highest mean
precision@1 on the held-out part of the train split. Its test numbers are then checked against
a pre-registered bar (twice the paper OJFA's mean precision@1, above the logit lens at every exit
level up to K-5).

Other single-jump variants join with ``variants``: ``kl-res-cond`` is the residual KL joint jump
with a gain and a shift per exit level in its rank-r code (:class:`~onejump.lenses.cond.CondJump`;
its ``2rK`` extra numbers count in its parameters, so in the budget), ``kl-res-cond-warm`` the same
started from the ``kl-res`` joint jump of its rank, and ``kl-res-warm`` its control: the ``kl-res`` joint
jump trained on for as many more epochs without the conditioning (what the extra epochs alone buy).

Each configuration is a stage of its own, ``<run>/sweep/<objective>-r<rank>/`` (its lenses + summary.json),
so an interrupted sweep resumes where it stopped; the ``sweep`` stage (``<run>/sweep/sweep.json`` and the
best single jump ``<run>/sweep/best``) gathers everything.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..evaluation.evaluator import evaluate
from ..evaluation.metrics import metrics as registered
from ..evaluation.selection import select_ojfa, trained_holdout
from ..evaluation.statistics import bootstrap_ci, paired_test
from ..io import atomic_write_text
from ..lenses.jumps import default_rank
from ..training.config import OBJECTIVES, TrainConfig
from .presets import MULTIPLIERS, SINGLE, VARIANTS


def _field_metrics() -> list[str]:
    """The field's metrics a sweep records for every lens it evaluates (the registry's field metrics)."""
    return [m.name for m in registered(field=True)]


def objective_config(variant: str, rank: int, base: TrainConfig | None = None) -> TrainConfig:
    """The training settings the sweep uses for a variant (``mse``, ``kl``, ``kl-res``) at rank ``rank``."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown sweep variant '{variant}'; use one of {', '.join(VARIANTS)}")
    return replace(base or TrainConfig(), **{**VARIANTS[variant].train, "rank": rank})


def _summary(result: Any, name: str, params: int, holdout: float | None) -> dict[str, Any]:
    """Per-level means and the mean over levels with a bootstrap CI (over test samples), and the
    field's metrics (KL to the final distribution, entropy, cross-entropy) where the result has them."""
    p1 = result.samples(name, "precision@1").double().numpy()  # (K, N)
    s = result.samples(name, "surprisal").double().numpy()
    ci_p = bootstrap_ci(p1.mean(0))
    ci_s = bootstrap_ci(s.mean(0))
    out = {"precision@1": p1.mean(1).tolist(), "surprisal": s.mean(1).tolist(),
           "mean_precision@1": ci_p.mean, "mean_precision@1_ci": [ci_p.low, ci_p.high],
           "mean_surprisal": ci_s.mean, "mean_surprisal_ci": [ci_s.low, ci_s.high],
           "parameters": int(params), "holdout_precision@1": holdout,
           "sample_precision@1": p1.mean(0).tolist()}
    for metric in _field_metrics():
        values = result.metric(name, metric).double().numpy() if result.has(name, metric) else None
        if values is not None and not np.isnan(values).all():  # cross-entropy needs the store's next tokens
            out[metric] = values.tolist()
            out[f"mean_{metric}"] = float(np.nanmean(values))
    return out


def run_config(run: Any, objective: str, rank: int, *, val_fraction: float | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Train, select and evaluate one (variant, rank) configuration; cached in the run folder.

    ``val_fraction`` (default: :class:`TrainConfig`'s) is the part of the train split held out, both
    to stop training and to choose the single jumps."""
    base = TrainConfig() if val_fraction is None else TrainConfig(val_fraction=val_fraction)
    config = objective_config(objective, rank, base)
    folder = run.layout.sweep_entry(objective, rank)
    from ..evaluation.selection import HOLDOUT_MAX

    stage = run.stages.sweep_entry(objective, rank, config, HOLDOUT_MAX)
    summary_path = folder / "summary.json"
    return run.records.run(stage, lambda: _run_entry(run, objective, rank, config, folder, progress),
                           lambda: json.loads(summary_path.read_text()))


def _run_entry(run: Any, objective: str, rank: int, config: TrainConfig, folder: Path,
               progress: bool) -> dict[str, Any]:
    store = run.store()
    H = store.hidden_size
    summary_path = folder / "summary.json"
    timings: dict[str, float] = {}
    targets_cache: dict[int, Any] = {}  # the KL objective's targets, shared by the bank and the joint jump
    t0 = time.perf_counter()
    kinds = VARIANTS[objective].kinds
    warm = VARIANTS[objective].warm_start is not None
    lenses = {kind: run.train_or_reuse(kind, config, folder / kind, targets_cache)
              for kind in ("nnjtc", "joint") if kind in kinds and not (kind == "joint" and warm)}
    if "joint-cond" in kinds or ("joint" in kinds and warm):  # the variant's single jump, saved as its joint
        lenses["joint"] = _train_joint_variant(run, objective, config, folder, targets_cache)
    timings["train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # each lens is scored on the rows its own training held out (its config records them)
    rows = {kind: trained_holdout(store, lens.extra.get("held_out")) for kind, lens in lenses.items()}
    chosen: dict[str, int] = {}
    selection: dict[str, Any] = {}
    held: dict[str, float] = {}
    to_eval = {}
    if "nnjtc" in lenses:
        sel = select_ojfa(store, lenses["nnjtc"], device=run.compute_device, rule="head", holdout=rows["nnjtc"],
                          progress=progress)
        matrix = sel.matrix.double()
        chosen = {"ojfa-paper": int(sel.others["paper_chosen"]), "ojfa-head": int(sel.chosen)}
        selection = {"paper_chosen": chosen["ojfa-paper"], "head_chosen": chosen["ojfa-head"],
                     "paper_scores": sel.others["paper_scores"], "head_scores": sel.scores.tolist()}
        to_eval["per-level"] = lenses["nnjtc"]
        held["per-level"] = float(matrix.diagonal().mean())
        for name, m in chosen.items():
            to_eval[name] = lenses["nnjtc"].jump(m)
            held[name] = float(matrix[m].mean())
    if "joint" in lenses:  # scored as the evaluation scores it, on the rows its training held out
        to_eval["joint"] = lenses["joint"]
        on_rows = evaluate(store, {"joint": lenses["joint"]}, rows=rows["joint"], field_metrics=False, progress=False)
        held["joint"] = float(on_rows.metric("joint", "precision@1").mean())
    timings["select"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = evaluate(store, to_eval, progress=progress)
    timings["evaluate"] = time.perf_counter() - t0
    methods = {}
    for name, lens in to_eval.items():
        methods[name] = _summary(result, name, lens.num_parameters, held[name])
        if name in chosen:
            methods[name]["jump"] = chosen[name]
    out = {"objective": objective, "rank": rank, "multiplier": rank // default_rank(H),
           "residual": bool(config.residual), "config": config.to_dict(), "methods": methods, "timings": timings,
           "selection": selection}
    if "joint-cond" in kinds:
        out["conditioned"] = {"per_level_parameters": 2 * rank, "warm_start": VARIANTS[objective].warm_start}
    atomic_write_text(summary_path, json.dumps(out))
    return out


def _train_joint_variant(run: Any, variant: str, config: TrainConfig, folder: Path,
                         targets_cache: dict[int, Any]) -> Any:
    """The joint jump of ``variant`` (level-conditioned or not), from scratch or warm-started from the joint
    jump of its ``warm_start`` variant at the same rank (that variant's cached jump, trained first if absent)."""
    warm = VARIANTS[variant].warm_start
    init = None
    if warm is not None:
        source = run.folder / "sweep" / f"{warm}-r{config.rank}" / "joint"
        warm_config = objective_config(warm, config.rank, TrainConfig(val_fraction=config.val_fraction))
        init = run.train_or_reuse("joint", warm_config, source, targets_cache)
    kind = "joint-cond" if "joint-cond" in VARIANTS[variant].kinds else "joint"
    return run.train_or_reuse(kind, config, folder / "joint", targets_cache, init=init)


def _references(run: Any) -> dict[str, Any]:
    """Logit lens and JTC per level, from the run's own evaluation (the run must be evaluated)."""
    result = run.evaluate(best=False)  # the best jump of an earlier sweep may be replaced by this one
    refs = {}
    for name, params in (("identity", 0), ("jtc", None)):
        if name not in result.methods:
            continue
        if params is None:  # K affine maps: (H + 1) x H each, as in parameter_counts
            params = result.num_blocks * (result.hidden_size + 1) * result.hidden_size
        refs[name] = _summary(result, name, params, None)
    return refs


def choose_best(configs: list[dict[str, Any]], paper_params: int, budget: float = 2.0) -> dict[str, Any] | None:
    """The single jump with the highest held-out precision@1 among those within ``budget x`` paper_params."""
    best = None
    for cfg in configs:
        for name in SINGLE:
            m = cfg["methods"].get(name)
            if m is None or m["parameters"] > budget * paper_params or m["holdout_precision@1"] is None:
                continue
            if best is None or m["holdout_precision@1"] > best["holdout_precision@1"]:
                best = {"objective": cfg["objective"], "rank": cfg["rank"], "method": name,
                        "holdout_precision@1": m["holdout_precision@1"]}
    return best


def sweep(run: Any, *, multipliers: tuple[int, ...] = MULTIPLIERS, objectives: tuple[str, ...] = ("mse", "kl"),
          residual_multipliers: tuple[int, ...] = (1, 2), per_objective: dict[str, tuple[int, ...]] | None = None,
          variants: tuple[str, ...] = (), variant_multipliers: tuple[int, ...] = (2,),
          val_fraction: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the whole sweep on a run folder; writes and returns ``sweep/sweep.json``.

    ``objectives`` x ``multipliers`` for the plain jumps (``per_objective`` overrides the
    multipliers of one objective, e.g. ``{"kl": (1, 2)}``), plus the residual KL joint jump
    (``kl-res``) at ``residual_multipliers`` (empty: none), plus any other ``variants`` of
    :data:`~onejump.experiment.presets.VARIANTS` (e.g. ``kl-res-cond``) at ``variant_multipliers``.
    """
    per_objective = dict(per_objective or {})
    every = [*multipliers, *residual_multipliers, *(m for ms in per_objective.values() for m in ms)]
    every += list(variant_multipliers) if variants else []
    if not multipliers or any(m < 1 for m in every) or (variants and not variant_multipliers):
        raise ConfigError("rank multipliers must be >= 1")
    for objective in objectives:
        if objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective '{objective}'; use one of {', '.join(OBJECTIVES)}")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ConfigError(f"unknown sweep variant '{bad[0]}'; use one of {', '.join(VARIANTS)}")
    base = default_rank(run.store().hidden_size)
    plan = [(o, m) for o in objectives for m in per_objective.get(o, multipliers)]
    plan += [("kl-res", m) for m in residual_multipliers]
    plan += [(v, m) for v in variants for m in variant_multipliers]
    plan = list(dict.fromkeys(plan))
    # most informative first (the paper's configuration, then the candidates for the best single jump,
    # then the larger ranks), so that an interrupted sweep has already covered the comparison that matters
    first = [("mse", 1), ("kl-res", 2), ("kl", 1), ("kl", 2), ("kl-res", 1), ("mse", 2)]
    plan.sort(key=lambda vm: (first.index(vm) if vm in first else len(first), vm[1], vm[0]))
    configs = []
    for variant, mult in plan:
        configs.append(run_config(run, variant, base * mult, val_fraction=val_fraction, progress=progress))
    refs = _references(run)
    stage = run.stages.sweep([(variant, base * mult) for variant, mult in plan])
    return run.records.run(stage, lambda: _gather(run, configs, refs), lambda: load_sweep(run.folder))


def _gather(run: Any, configs: list[dict[str, Any]], refs: dict[str, Any]) -> dict[str, Any]:
    """sweep.json: every entry, the references, the best single jump (saved as sweep/best) and its bar."""
    store = run.store()
    K, H = store.num_blocks, store.hidden_size
    base = default_rank(H)
    paper = next((c for c in configs if c["objective"] == "mse" and c["rank"] == base), None)
    out: dict[str, Any] = {"model": run.lm().name, "num_blocks": K, "hidden_size": H, "base_rank": base,
                           "references": refs, "configs": configs}
    if paper is not None:
        p_ojfa = paper["methods"]["ojfa-paper"]
        best = choose_best(configs, p_ojfa["parameters"])
        if best is not None:
            cfg = next(c for c in configs if c["objective"] == best["objective"] and c["rank"] == best["rank"])
            bm = cfg["methods"][best["method"]]
            best.update({k: bm[k] for k in ("precision@1", "surprisal", "mean_precision@1", "mean_precision@1_ci",
                                            "mean_surprisal", "mean_surprisal_ci", "parameters")})
            best.update({k: v for k, v in bm.items() if k.split("mean_")[-1] in _field_metrics()})
            test = paired_test(np.asarray(bm["sample_precision@1"]), np.asarray(p_ojfa["sample_precision@1"]))
            lens = refs.get("identity", {}).get("precision@1")
            upto = K - 5
            below = [k for k in range(upto + 1) if lens is not None and bm["precision@1"][k] <= lens[k]]
            out["best"] = best
            out["bar"] = {
                "paper_ojfa_parameters": p_ojfa["parameters"],
                "paper_ojfa_mean_precision@1": p_ojfa["mean_precision@1"],
                "parameter_ratio": bm["parameters"] / p_ojfa["parameters"],
                "precision_ratio": bm["mean_precision@1"] / max(p_ojfa["mean_precision@1"], 1e-12),
                "vs_paper_ojfa": test._asdict(),
                "levels_checked": upto + 1,
                "levels_not_above_logit_lens": below,
            }  # its verdicts need the test rows' count: results.json's (claim_intervals.sweep_bar_verdicts)
            out["best"]["path"] = str(_save_best(run, best))
    path = run.folder / "sweep" / "sweep.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(_jsonable(out), indent=1))
    return out


def _save_best(run: Any, best: dict[str, Any]) -> Path:
    """Save the best single jump as ``<run>/sweep/best`` (a lens folder that generation loads)."""
    from ..lenses.base import Lens

    lm = run.lm()
    folder = run.folder / "sweep" / f"{best['objective']}-r{best['rank']}"
    if best["method"] == "joint":
        jump = Lens.load(folder / "joint", lm)
    else:
        summary = json.loads((folder / "summary.json").read_text())
        jump = Lens.load(folder / "nnjtc", lm).jump(int(summary["methods"][best["method"]]["jump"]))
    jump.extra = {"sweep": {k: best[k] for k in ("objective", "rank", "method", "holdout_precision@1")}}
    return jump.save(run.lens_path("best"))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def load_sweep(folder: str | Path) -> dict[str, Any] | None:
    """``<run>/sweep/sweep.json`` if the sweep was run, else None."""
    path = Path(folder) / "sweep" / "sweep.json"
    return json.loads(path.read_text()) if path.is_file() else None
