"""results.json: every number of a run with confidence intervals and paired tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..evaluation.metrics import metrics as registered
from .lens_table import EVALUATED


def _bootstrap_weights(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Multinomial resampling weights (n_boot, n) / n: a bootstrap mean is one matrix product."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64) / n


def _per_level_ci(values: np.ndarray, weights: np.ndarray, alpha: float = 0.05) -> list[list[float]]:
    """Percentile bootstrap CI of the mean for each row of ``values`` (K, N)."""
    boot = values.astype(np.float64) @ weights.T  # (K, n_boot)
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2], axis=1)
    return [[float(a), float(b)] for a, b in zip(low, high)]


def _selection_summary(selection: dict[str, Any]) -> dict[str, Any]:
    """The paper's D matrix / D_m for the figures, whichever rule made the choice."""
    out = {"rule": selection.get("rule", "paper"), "chosen": selection["chosen"]}
    if out["rule"] == "paper":
        out.update(scores=selection["matrix"], D=selection["scores"], softmax=selection["softmax"])
    else:
        d = torch.tensor(selection["paper_scores"], dtype=torch.float64)
        out.update(scores=selection["paper_matrix"], D=selection["paper_scores"],
                   softmax=torch.softmax(d / selection.get("temperature", 5e-4), 0).tolist(),
                   paper_chosen=selection["paper_chosen"], head_scores=selection["scores"],
                   head_matrix=selection["matrix"])
    return out


def _ojfa_tests(result: Any) -> dict[str, Any]:
    """Paired tests of OJFA against full N-NJTC and the joint jump (per-sample precision@1 over levels)."""
    from ..evaluation.statistics import paired_test

    tests = {}
    ojfa = result.samples("ojfa", "precision@1").numpy().astype(np.float64).mean(0)
    for other in ("full", "joint"):
        if other in result.methods:
            b = result.samples(other, "precision@1").numpy().astype(np.float64).mean(0)
            t = paired_test(ojfa, b)
            tests[f"ojfa_vs_{other}"] = {"mean_diff": float(t.mean_diff), "ci": [float(t.low), float(t.high)],
                                         "p_value": float(t.p_value), "method": t.test, "n": int(t.n)}
    return tests


def _method_entry(result: Any, key: str, weights: np.ndarray, parameters: int) -> dict[str, Any]:
    """One lens's results.json entry: each registered metric per level (its CI and its mean over levels
    where the registry asks for them; a field metric only where the evaluation has it)."""
    entry: dict[str, Any] = {}
    for metric in registered():
        if not result.has(key, metric.name):
            continue
        if metric.field:
            values = result.metric(key, metric.name).numpy()
            if not np.isnan(values).all():  # cross-entropy needs the store's next tokens
                entry[metric.name] = values.tolist()
                if metric.headline:
                    entry[f"mean_{metric.name}"] = float(np.nanmean(values))
            continue
        if metric.ci:
            values = result.samples(key, metric.name).numpy().astype(np.float64)
            entry[metric.name] = values.mean(1).tolist()
            entry[f"{metric.name}_ci"] = _per_level_ci(values, weights)
        else:
            entry[metric.name] = result.metric(key, metric.name).tolist()
    entry["parameters"] = parameters
    return entry


def build_results(run: Any, result: Any) -> dict[str, Any]:
    """The ``results.json`` dictionary: every number of the run, its CIs, paired tests and claims."""
    from ..evaluation.evaluator import parameter_counts

    args = run.data_args()
    store = run.store()
    lm = run.lm()
    selection = run.select_result()
    K = store.num_blocks
    per_level = run.lens("full")
    rank = per_level.rank
    weights = _bootstrap_weights(result.num_samples)
    names = [name for name in EVALUATED if name != "best"]  # the sweep's best jump: its own section
    params = parameter_counts(K, store.hidden_size, rank)
    params.update({name: result.parameters[name] for name in names if name in result.parameters})
    methods: dict[str, Any] = {}
    for name in names:
        if name in result.methods:
            methods[name] = _method_entry(result, name, weights, params.get(name, 0))
    arbitrary: dict[str, Any] = {}
    for metric in registered(field=False):  # the reuse matrix has the metrics of the basic pass
        if result.has_pairs(metric.name):
            arbitrary[metric.name] = result.pair_matrix(metric.name).numpy().mean(0).tolist()
    methods["arbitrary_mean"] = {**arbitrary, "parameters": params["ojfa"]}
    for entry in methods.values():
        for metric in registered(field=False, headline=True):
            if metric.name in entry:
                entry[f"mean_{metric.name}"] = float(np.mean(entry[metric.name]))
    tests = _ojfa_tests(result)
    train_cfg = per_level.extra.get("history") or {}
    bar = None
    if "tuned" in result.lens_names and "best" in result.lens_names:  # one jump against the tuned lens
        from ..evaluation.tuned_bar import tuned_bar

        bar = tuned_bar(result, "best")
    joint = run.lens("joint") if run.has_lens("joint") else None
    return {
        "model": {"name": lm.name, "fingerprint": lm.fingerprint, "num_blocks": K, "hidden_size": store.hidden_size,
                  "vocab_size": lm.adapter.vocab_size},
        "data": {"corpus": args.corpus, "n_train": int(store.manifest["n_train"]),
                 "n_test": int(store.manifest["n_test"]), "seed": args.seed},
        "config": {"rank": rank, "train": train_cfg.get("config", {}), "preset": run.preset(),
                   "joint_residual": joint.residual if joint is not None else None},
        "selection": _selection_summary(selection),
        "levels": list(range(K)),
        "methods": methods,
        "reuse": {m.name: result.pair_matrix(m.name).numpy().tolist() for m in registered(reuse=True)},
        "parameters": params,
        "final_surprisal": result.final_surprisal,
        "final_cross_entropy": result.final_cross_entropy,
        "tests": tests,
        **({"tuned_bar": bar} if bar is not None else {}),
    }
