"""The lens frontier of a run's store: the most precision per parameter held at inference, at every budget.

Points, each a lens: the logit lens (0 parameters); the run's own lenses when it has them (per-level
N-NJTC, OJFA, the joint jump, the best single jump, JTC, the tuned lens); and, trained here on the
run's store and kept as lens folders under ``<run>/frontier/points/<name>/`` with their settings and
key (reused when store, model and settings are unchanged): per-level low-rank residual lenses
``h + BN_k(h) A_k B_k`` at several ranks, the residual KL joint jump when the run has no best single
jump, JTC and the tuned lens (tuned-lens's SGD recipe from the least-squares start) when the run has
none, and the tuned lens trained with Adam from the same start (:mod:`onejump.training.lowrank`).

Every point is scored by one evaluation of the test split (:func:`~onejump.evaluation.evaluator.evaluate`,
the metric registry's precision@1 and KL), as the mean over exit levels 0..K-1 (95% bootstrap CI over
sentences) and per level. A point is on the precision frontier when no other point has at most its
parameters and at least its mean precision@1, one of the two strictly (likewise for KL, lower being
better). The two bars of :mod:`onejump.evaluation.bars` are registered on held-out train rows before
the test split is read (``preregistration.json`` is written first) and checked once on it.

Outputs in ``<run>/frontier/``: ``frontier.json`` (:func:`frontier_entry` is its results.json entry)
and ``frontier.png`` (:mod:`onejump.experiment.frontier_figure`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..evaluation.bars import Candidate, check, preregister
from ..evaluation.evaluator import evaluate
from ..evaluation.selection import held_out_record, trained_holdout
from ..evaluation.statistics import bootstrap_ci
from ..io import atomic_write_text
from ..lenses.jumps import default_rank, jump_parameter_count

#: The run's own lenses a frontier takes when the run has them (ids of the run's lens table).
RUN_POINTS = ("full", "ojfa", "joint", "best", "jtc", "tuned")
#: Kinds of lens that hold one set of parameters for every exit level.
ONE_SET_KINDS = ("jump",)
TUNED_POINTS = ("tuned", "tuned-adam", "tuned-muon")


@dataclass
class FrontierPlan:
    """What the frontier trains. ``ranks``: the low-rank residual lenses' ranks; ``jump_ranks``: ranks of the
    residual KL joint jump trained when the run has no best single jump (None: 2 floor(H/100)); ``tuned_steps``:
    the SGD recipe's schedule when the run has no tuned lens (and the Muon alternative's); ``tuned_adam`` /
    ``tuned_muon``: train the Adam / Muon alternative;
    ``val_fraction`` / ``seed``: the train rows every trained point holds out (the bars are chosen on them)."""

    ranks: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    jump_ranks: tuple[int, ...] | None = None
    tuned_steps: int = 250
    tuned_adam: bool = True
    tuned_muon: bool = True
    val_fraction: float = 0.1
    seed: int = 0
    max_epochs: int | None = None  # overrides the recipes' epoch caps (a quicker, smaller frontier)
    skip: tuple[str, ...] = field(default_factory=tuple)  # run lenses to leave out

    def validate(self, hidden_size: int) -> None:
        if not self.ranks or any(not 1 <= r <= hidden_size for r in self.ranks):
            raise ConfigError(f"frontier ranks must be in 1..H={hidden_size}, got {list(self.ranks)}")
        if self.jump_ranks and any(not 1 <= r <= hidden_size for r in self.jump_ranks):
            raise ConfigError(f"joint-jump ranks must be in 1..H={hidden_size}, got {list(self.jump_ranks)}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"the frontier holds rows out to choose the bars' lenses: val_fraction must be in "
                              f"(0, 1), got {self.val_fraction}")
        if self.tuned_steps < 1 or (self.max_epochs is not None and self.max_epochs < 1):
            raise ConfigError("tuned_steps and max_epochs must be >= 1")


def pareto_optimal(parameters: list[float], scores: list[float], better: str = "higher") -> list[bool]:
    """For each point, whether no other point dominates it: at most its parameters and at least as good a
    score, one of the two strictly (``better``: ``higher`` or ``lower`` scores win)."""
    if better not in ("higher", "lower") or len(parameters) != len(scores):
        raise ConfigError("pareto_optimal needs as many parameters as scores, better higher or lower")
    sign = 1.0 if better == "higher" else -1.0
    pts = [(float(p), sign * float(s)) for p, s in zip(parameters, scores)]
    return [not any(q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1]) for q in pts) for p in pts]


def _seconds(lens: Any) -> float | None:
    own = lens.extra.get("frontier", {}).get("seconds")
    if own is not None:
        return float(own)
    hist = lens.extra.get("history") or {}
    return float(hist["seconds"]) if hist.get("seconds") is not None else None


class _Points:
    """Trains or reuses the frontier's own points in ``<run>/frontier/points/``."""

    def __init__(self, run: Any, plan: FrontierPlan, progress: bool):
        self.run, self.plan, self.progress = run, plan, progress
        self.store, self.lm = run.store(), run.lm()
        self.folder = run.folder / "frontier" / "points"
        self.targets: dict[int, Any] = {}
        self.held = held_out_record(self.store, plan.val_fraction, plan.seed)
        self.reused: list[str] = []

    def get(self, name: str, kind: str, config: dict[str, Any], train: Any) -> Any:
        from ..lenses.base import Lens

        folder = self.folder / name
        # JTC's least squares use every train row, as the run's own
        held = None if kind == "jtc" else self.held
        stage = self.run.stages.frontier_point(folder, kind, config, held)

        def compute():
            t0, c0 = time.perf_counter(), time.process_time()
            lens = train()
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            # CPU seconds too: on a shared machine the wall time says more about the other jobs than the lens
            lens.extra = {**lens.extra, "frontier": {"key": stage.key(), "kind": kind, "config": config,
                                                     "seconds": seconds, "cpu_seconds": cpu}}
            if held is not None:
                lens.extra["held_out"] = held
            lens.save(folder)
            return Lens.load(folder, self.lm)

        return self.run.records.run(stage, compute, lambda: Lens.load(folder, self.lm),
                                    lambda: self.reused.append(name))

    def _train_config(self, recipe: Any, **over: Any) -> Any:
        from ..training.config import TrainConfig

        cfg = recipe(TrainConfig(val_fraction=self.plan.val_fraction, seed=self.plan.seed), **over)
        if self.plan.max_epochs is not None:
            from dataclasses import replace

            cfg = replace(cfg, max_epochs=self.plan.max_epochs)
        return cfg

    def lowrank(self, rank: int) -> Any:
        from ..training.lowrank import lowrank_config, train_lowrank_lens

        cfg = self._train_config(lambda base: lowrank_config(rank, base))
        return self.get(f"lowrank-r{rank}", "lowrank", cfg.to_dict(), lambda: train_lowrank_lens(
            self.store, self.lm, cfg, device=self.run.compute_device, progress=self.progress,
            targets_cache=self.targets))

    def joint(self, rank: int) -> Any:
        """The residual KL joint jump (the best preset's form): one jump for every level, the same recipe."""
        from dataclasses import replace

        from ..lenses.onejump import OneJump
        from ..training.fit import objective_loss, train_joint
        from ..training.lowrank import JOINT_RECIPE

        cfg = self._train_config(lambda base: replace(base, **JOINT_RECIPE, rank=rank))

        def train() -> Any:
            dev = self.run.compute_device
            loss_fn = objective_loss(self.store, cfg, self.lm.adapter, self.progress, dev, self.targets)
            bank, hist = train_joint(self.store, cfg, device=dev, progress=self.progress, loss_fn=loss_fn)
            return OneJump(self.lm, bank.cpu(), trained_at=-1, extra={"history": hist.to_dict()})

        return self.get(f"jump-r{rank}", "joint", cfg.to_dict(), train)

    def tuned_adam(self) -> Any:
        from ..training.lowrank import train_tuned_adam, tuned_adam_config

        cfg = self._train_config(tuned_adam_config)
        return self.get("tuned-adam", "tuned-adam", cfg.to_dict(), lambda: train_tuned_adam(
            self.store, self.lm, cfg, device=self.run.compute_device, progress=self.progress,
            targets_cache=self.targets))

    def tuned_sgd(self) -> Any:
        return self._tuned("tuned", "sgd", "tuned-lens SGD, least-squares start")

    def tuned_muon(self) -> Any:
        """The tuned lens by tuned-lens's schedule from the least-squares start, Muon on its matrices."""
        return self._tuned("tuned-muon", "muon", "tuned-lens schedule, Muon, least-squares start")

    def _tuned(self, name: str, optimizer: str, recipe: str) -> Any:
        from ..training.tuned import TunedTrainConfig, train_tuned_lens

        cfg = TunedTrainConfig(num_steps=self.plan.tuned_steps, val_fraction=self.plan.val_fraction,
                               seed=self.plan.seed, optimizer=optimizer)

        def train() -> Any:
            lens, hist = train_tuned_lens(self.store, self.lm, cfg, device=self.run.compute_device,
                                          progress=self.progress, targets=self.targets.get(cfg.kl_top_k))
            lens.extra = {"history": hist.to_dict(), "recipe": recipe}
            return lens.cpu()

        return self.get(name, name, cfg.to_dict(), train)

    def jtc(self) -> Any:
        from ..lenses.jtc import JTCLens, LinearJTC

        return self.get("jtc", "jtc", {"ridge": 1e-6}, lambda: JTCLens(
            self.lm, LinearJTC.fit(self.store, device=self.run.compute_device).cpu()))


def collect(run: Any, plan: FrontierPlan, progress: bool = True) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Every point's lens (name -> lens), where it came from (``run`` or ``frontier``), and the reused names."""
    from ..lenses.base import LogitLens

    store, lm = run.store(), run.lm()
    plan.validate(store.hidden_size)
    pts = _Points(run, plan, progress)
    lenses: dict[str, Any] = {"logit": LogitLens(lm)}
    source = {"logit": "model"}
    for name in RUN_POINTS:
        if name not in plan.skip and run.has_lens(name):
            lenses[name], source[name] = run.lens(name), "run"
    base = default_rank(store.hidden_size)
    jump_ranks = plan.jump_ranks if plan.jump_ranks is not None else (() if "best" in lenses else (2 * base,))
    trained = [(f"lowrank-r{r}", lambda r=r: pts.lowrank(r)) for r in plan.ranks]
    trained += [(f"jump-r{r}", lambda r=r: pts.joint(r)) for r in jump_ranks]
    trained += [] if "jtc" in lenses else [("jtc", pts.jtc)]
    trained += [] if "tuned" in lenses else [("tuned", pts.tuned_sgd)]
    trained += [("tuned-adam", pts.tuned_adam)] if plan.tuned_adam else []
    trained += [("tuned-muon", pts.tuned_muon)] if plan.tuned_muon else []
    for name, make in trained:
        lenses[name], source[name] = make(), "frontier"
    return lenses, source, pts.reused


def _candidates(lenses: dict[str, Any], record: dict[str, Any]) -> tuple[list[Candidate], list[Candidate], dict]:
    """The bars' candidates and tuned lenses: the points whose training held out exactly ``record``'s rows."""
    cands, tuned, left_out = [], [], {}
    for name, lens in lenses.items():
        if name in ("logit", "jtc") or lens.num_parameters == 0:
            continue
        if lens.extra.get("held_out") != record:
            left_out[name] = "its training held out other rows (or none): no held-out score to choose it by"
            continue
        c = Candidate(name, int(lens.num_parameters), lens.kind in ONE_SET_KINDS)
        (tuned if name in TUNED_POINTS else cands).append(c)
    return cands, tuned, left_out


def _point(result: Any, name: str, lens: Any, source: str, tuned_parameters: int | None) -> dict[str, Any]:
    p1 = result.samples(name, "precision@1").double().numpy()  # (K, N)
    kl = result.samples(name, "kl").double().numpy()
    ci_p, ci_kl = bootstrap_ci(p1.mean(0)), bootstrap_ci(kl.mean(0))
    params = int(lens.num_parameters)
    return {"name": name, "kind": lens.kind, "source": source, "parameters": params,
            "fraction_of_tuned": params / tuned_parameters if tuned_parameters else None,
            "rank": getattr(lens, "rank", None) if lens.kind in ("lowrank", "jump", "per-level") else None,
            "mean_precision@1": ci_p.mean, "mean_precision@1_ci": [ci_p.low, ci_p.high],
            "mean_kl": ci_kl.mean, "mean_kl_ci": [ci_kl.low, ci_kl.high],
            "precision@1": p1.mean(1).tolist(), "kl": kl.mean(1).tolist(), "train_seconds": _seconds(lens),
            "train_cpu_seconds": lens.extra.get("frontier", {}).get("cpu_seconds"),
            "config": lens.extra.get("frontier", {}).get("config")}


def frontier(run: Any, plan: FrontierPlan | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Train or reuse every point, register the bars on held-out rows, evaluate the test split once, mark
    the Pareto-optimal points, check the bars; writes ``frontier.json`` and ``frontier.png``; returns the former."""
    plan = plan or FrontierPlan()
    lenses, source, reused = collect(run, plan, progress)
    store = run.store()
    out_dir = run.folder / "frontier"
    out_dir.mkdir(parents=True, exist_ok=True)
    record = held_out_record(store, plan.val_fraction, plan.seed)
    folders = {"run": lambda n: run.layout.lens_path(n), "frontier": lambda n: out_dir / "points" / n}
    stage = run.stages.frontier(sorted(run.layout.relative(folders[source[n]](n)) for n in lenses
                                       if source[n] in folders), asdict(plan))
    run.records.begin(stage)
    cands, tuned, left_out = _candidates(lenses, record)
    registration = None
    if tuned:
        rows = trained_holdout(store, record)
        names = [c.name for c in [*cands, *tuned]]
        held = evaluate(store, {n: lenses[n] for n in names}, rows=rows, progress=progress)
        H = store.hidden_size
        registration = preregister(held, cands, tuned, jump_parameter_count(H, default_rank(H)))
        registration["left_out"] = left_out
        atomic_write_text(out_dir / "preregistration.json", json.dumps(registration, indent=1))
    t0 = time.perf_counter()
    test = evaluate(store, lenses, split="test", progress=progress)
    seconds = time.perf_counter() - t0
    tuned_params = registration["baseline_parameters"] if registration else None
    points = [_point(test, name, lens, source[name], tuned_params) for name, lens in lenses.items()]
    params = [p["parameters"] for p in points]
    for flag, metric, better in (("pareto_precision", "mean_precision@1", "higher"), ("pareto_kl", "mean_kl", "lower")):
        for p, on in zip(points, pareto_optimal(params, [p[metric] for p in points], better)):
            p[flag] = on
    K, H = store.num_blocks, store.hidden_size
    out = {"model": run.lm().name, "num_blocks": K, "hidden_size": H, "store": store.identity,
           "n_train": len(store.indices("train")), "n_test": len(store.indices("test")),
           "held_out_rows": registration["held_out_rows"] if registration else 0, "plan": asdict(plan),
           "points": sorted(points, key=lambda p: (p["parameters"], p["name"])), "reused": reused,
           "evaluate_seconds": seconds,
           "baseline": registration["baseline"] if registration else None, "preregistration": registration,
           "bars": check(test, registration) if registration else None}
    atomic_write_text(out_dir / "frontier.json", json.dumps(_jsonable(out), indent=1))
    from .frontier_figure import frontier_figure

    frontier_figure(out, out_dir / "frontier.png")
    run.records.complete(stage)
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, float) and x == float("inf"):
        return None
    return x


def frontier_entry(run: Any) -> dict[str, Any] | None:
    """The ``frontier`` entry of a run's results.json: its points (means, CIs, per level, parameters, training
    time, frontier marks) and both bars' verdicts; None when the frontier was not run. ``run``: an opened
    run folder (the frontier must then be current) or a folder's path (read as it is)."""
    opened = not isinstance(run, (str, Path))
    path = (run.folder if opened else Path(run)) / "frontier" / "frontier.json"
    if not path.is_file():
        return None
    if opened:
        run.records.require(run.stages.frontier())
    data = json.loads(path.read_text())
    bars = {name: {k: b.get(k) for k in ("verdict", "chosen", "chosen_parameters", "budget", "parts",
                                         "levels_missed", "levels_inconclusive")}
            for name, b in (data.get("bars") or {}).items()}
    return {"points": data["points"], "baseline": data.get("baseline"), "bars": bars,
            "held_out_rows": data.get("held_out_rows")}


__all__ = ["FrontierPlan", "collect", "frontier", "frontier_entry", "pareto_optimal"]
