"""results.json: every number of a run with confidence intervals and paired tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


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
    for other, key in (("full_nnjtc", "full"), ("joint", "joint")):
        if key in result.methods:
            b = result.samples(key, "precision@1").numpy().astype(np.float64).mean(0)
            t = paired_test(ojfa, b)
            tests[f"ojfa_vs_{other}"] = {"mean_diff": float(t.mean_diff), "ci": [float(t.low), float(t.high)],
                                         "p_value": float(t.p_value), "method": t.test, "n": int(t.n)}
    return tests


def build_results(run: Any, result: Any) -> dict[str, Any]:
    """The ``results.json`` dictionary (schema in :mod:`onejump.reporting`)."""
    from ..evaluation.metrics import parameter_counts

    args = run.data_args()
    store = run.store()
    lm = run.lm()
    selection = run.select_result()
    K = store.num_blocks
    per_level = run.lens("nnjtc")
    rank = per_level.rank
    weights = _bootstrap_weights(result.num_samples)
    names = {"identity": "identity", "full_nnjtc": "full", "ojfa": "ojfa", "joint": "joint", "jtc": "jtc",
             "tuned": "tuned"}
    params = parameter_counts(K, store.hidden_size, rank)
    params.update({name: result.parameters[key] for name, key in names.items() if key in result.parameters})
    methods: dict[str, Any] = {}
    for name, key in names.items():
        if key not in result.methods:
            continue
        p1 = result.samples(key, "precision@1").numpy().astype(np.float64)
        sur = result.samples(key, "surprisal").numpy().astype(np.float64)
        entry = {
            "precision@1": p1.mean(1).tolist(),
            "precision@1_ci": _per_level_ci(p1, weights),
            "precision@5": result.metric(key, "precision@5").tolist(),
            "surprisal": sur.mean(1).tolist(),
            "surprisal_ci": _per_level_ci(sur, weights),
            "reverse_surprisal": result.metric(key, "reverse_surprisal").tolist(),
            "parameters": params.get(name, 0),
        }
        for metric in ("kl", "entropy", "cross_entropy"):  # the field's metrics, where the evaluation has them
            values = result.metric(key, metric).numpy() if result.has(key, metric) else None
            if values is not None and not np.isnan(values).all():  # CE needs the store's next tokens
                entry[metric] = values.tolist()
                entry[f"mean_{metric}"] = float(np.nanmean(values))
        methods[name] = entry
    pair_p1 = result.pair_matrix("precision@1").numpy()
    pair_p5 = result.pair_matrix("precision@5").numpy()
    pair_s = result.pair_matrix("surprisal").numpy()
    pair_r = result.pair_matrix("reverse_surprisal").numpy()
    methods["arbitrary_mean"] = {
        "precision@1": pair_p1.mean(0).tolist(),
        "precision@5": pair_p5.mean(0).tolist(),
        "surprisal": pair_s.mean(0).tolist(),
        "reverse_surprisal": pair_r.mean(0).tolist(),
        "parameters": params["ojfa"],
    }
    for entry in methods.values():
        entry["mean_precision@1"] = float(np.mean(entry["precision@1"]))
        entry["mean_precision@5"] = float(np.mean(entry["precision@5"]))
        entry["mean_surprisal"] = float(np.mean(entry["surprisal"]))
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
        "reuse": {"precision@1": pair_p1.tolist(), "surprisal": pair_s.tolist()},
        "parameters": params,
        "final_surprisal": result.final_surprisal,
        "final_cross_entropy": result.final_cross_entropy,
        "tests": tests,
        **({"tuned_bar": bar} if bar is not None else {}),
    }
