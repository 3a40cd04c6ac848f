"""results.json: every number of a run with confidence intervals, paired tests and the claims, built in
this one place from the saved stages (never from the model).

``results.json`` (schema below), PNG figures and ``report.md``.

``results.json`` (schema ``onejump-results/1``)::

    model       {name, fingerprint, num_blocks K, hidden_size H, vocab_size V}
    data        {corpus, n_train, n_test, seed}
    config      {rank, train: TrainConfig as dict}
    selection   {scores: K x K D[m][k], D: [K] D_m, chosen, softmax: [K] softmax(D/5e-4)}
    levels      [0..K-1] exit levels
    methods     {name: {precision@1: [K], precision@1_ci: [[lo, hi]] * K, precision@5: [K],
                 surprisal: [K], surprisal_ci: [[lo, hi]] * K, reverse_surprisal: [K],
                 mean_precision@1, mean_precision@5, mean_surprisal, parameters}}
                 names: the lens table's ids (identity, full, ojfa, joint, jtc, tuned) and arbitrary_mean
    reuse       {precision@1: K x K [m][k], surprisal: K x K [m][k]}
    parameters  {per_jump, full, ojfa, joint, jtc, identity, reduction_factor}
    tests       {ojfa_vs_full: {...}, ojfa_vs_joint: {...}}: paired tests on test-set samples
    claims      [{id, claim, paper, ours, verdict, held}]: verdict held / not held / inconclusive
                 from the claim's 95% interval (onejump.experiment.claim_intervals); held = verdict is held
    timings     {stage: seconds}
    memory      (optional) {peak_rss_mib: {stage: MiB}, method: {stage: "stage peak" | "process peak so far"},
                 model_mib, model_parameters, model_dtype}: each stage's peak resident memory and the
                 model's own size (its parameters' bytes)
    beyond      (optional) the sweep of ``onejump sweep`` (onejump.sweep: references, configs, best, bar);
                 bar.verdicts {params, precision, lens, bar}: held / not held / inconclusive from 95% intervals
                 (onejump.experiment.claim_intervals.sweep_bar_verdicts)
    frontier    (optional) the lens frontier of ``onejump frontier`` (onejump.experiment.frontier.frontier_entry)
    scaling     (optional) the scaling curves of ``onejump scaling``, by training size
                 (onejump.experiment.scaling.scaling_entry)

All numbers are measured on the test split; nothing in the report is typed in by hand.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..evaluation.metrics import metrics as registered
from ..evaluation.statistics import bootstrap_intervals
from .lens_table import EVALUATED

SCHEMA = "onejump-results/1"


def _per_level_cis(result: Any, names: list[str]) -> dict[tuple[str, str], list[list[float]]]:
    """Each lens's per-level 95% bootstrap CI of every metric the registry gives one, ``(lens, metric) ->
    [[lo, hi]] * K``: every row of every lens under the same resamples, in one pass over them."""
    keys = [(name, metric.name) for name in names if name in result.methods
            for metric in registered(ci=True, field=False) if result.has(name, metric.name)]
    if not keys:
        return {}
    values = np.concatenate([result.samples(name, metric).numpy().astype(np.float64) for name, metric in keys])
    intervals = bootstrap_intervals(values).tolist()
    K = result.num_blocks
    return {key: intervals[i * K:(i + 1) * K] for i, key in enumerate(keys)}


def _optimizers(run: Any) -> dict[str, str]:
    """How each trained lens of the run was optimised, as its training config records it."""
    out = {}
    for name, default in (("full", "adam"), ("joint", "adam"), ("tuned", "sgd")):
        cfg = run.lens_config(name)
        if cfg is not None:
            history = (cfg.get("extra") or {}).get("history") or {}
            out[name] = (history.get("config") or {}).get("optimizer", default)
    return out


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


def _method_entry(result: Any, key: str, cis: dict[tuple[str, str], list[list[float]]],
                  parameters: int) -> dict[str, Any]:
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
            entry[f"{metric.name}_ci"] = cis[key, metric.name]
        else:
            entry[metric.name] = result.metric(key, metric.name).tolist()
    entry["parameters"] = parameters
    return entry


def build_results(run: Any, result: Any) -> dict[str, Any]:
    """The ``results.json`` dictionary of the run folder ``run`` (schema above), from its current stages
    (``result``: its evaluation and reuse matrix) and its lenses' saved configs: the model is not loaded."""
    from ..evaluation.evaluator import parameter_counts
    from .claim_intervals import sweep_bar_verdicts
    from .claims import evaluate_claims

    args = run.data_args()
    store = run.store()
    selection = run.select_result()
    K = store.num_blocks
    per_level = run.lens_config("full")
    rank = per_level["rank"]
    names = [name for name in EVALUATED if name != "best"]  # the sweep's best jump: its own section
    cis = _per_level_cis(result, names)
    params = parameter_counts(K, store.hidden_size, rank)
    params.update({name: result.parameters[name] for name in names if name in result.parameters})
    methods: dict[str, Any] = {}
    for name in names:
        if name in result.methods:
            methods[name] = _method_entry(result, name, cis, params.get(name, 0))
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
    train_cfg = (per_level.get("extra") or {}).get("history") or {}
    bar = None
    if "tuned" in result.lens_names and "best" in result.lens_names:  # one jump against the tuned lens
        from ..evaluation.tuned_bar import tuned_bar

        bar = tuned_bar(result, "best")
    joint = run.lens_config("joint")
    results = {
        "model": {"name": store.manifest["model"], "fingerprint": store.fingerprint, "num_blocks": K,
                  "hidden_size": store.hidden_size, "vocab_size": result.vocab_size},
        "data": {"corpus": args.corpus, "n_train": int(store.manifest["n_train"]),
                 "n_test": int(store.manifest["n_test"]), "seed": args.seed},
        "config": {"rank": rank, "train": train_cfg.get("config", {}), "preset": run.preset(),
                   "joint_residual": bool(joint["residual"]) if joint is not None else None,
                   "optimizers": _optimizers(run)},
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
    beyond = _beyond(run)
    if beyond is not None:
        results["beyond"] = beyond
    from .frontier import frontier_entry

    frontier = frontier_entry(run)
    if frontier is not None:
        results["frontier"] = frontier
    from .scaling import scaling_entry

    curves = scaling_entry(run)
    if curves is not None:
        results["scaling"] = curves
    exits = run.exits()
    if exits is not None:
        results["early_exit"] = exits.to_dict()
    results["schema"] = SCHEMA
    results["claims"] = evaluate_claims(results)
    if (beyond or {}).get("bar") and beyond.get("best"):
        beyond["bar"]["verdicts"] = sweep_bar_verdicts(results)
    return results


def _beyond(run: Any) -> dict[str, Any] | None:
    """The run's sweep (refused unless current), without the per-sample vectors (they stay in sweep/sweep.json);
    its bar's verdicts are added by :func:`build_results`, from intervals."""
    from .sweep import load_sweep

    if not run.stages.has_sweep():
        return None
    run.records.require(run.stages.sweep())
    beyond = load_sweep(run.folder)
    for cfg in [*beyond["configs"], {"methods": beyond["references"]}]:
        for m in cfg["methods"].values():
            m.pop("sample_precision@1", None)
    # flags judged on point estimates (a sweep.json written by an earlier version holds them) would sit beside
    # the verdicts and could contradict them
    for key in ("params_ok", "precision_ok", "lens_ok", "met"):
        (beyond.get("bar") or {}).pop(key, None)
    return beyond
