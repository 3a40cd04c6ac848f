"""The report: ``results.json`` (schema below), PNG figures and ``report.md``.

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
    beyond      (optional) the sweep of ``onejump sweep`` (onejump.sweep: references, configs, best, bar)

All numbers are measured on the test split; nothing in the report is typed in by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation.metrics import metrics as registered
from ..evaluation.verdict import above, at_least, at_most, between
from ..io import atomic_write_text
from .claim_intervals import (
    ceiling_interval,
    flipped,
    judged,
    levels_interval,
    paired_interval,
    points_text,
    sweep_bar_verdicts,
)
from .exit_figures import exit_report_section
from .figures import field_figure, make_figures, tuned_figure
from .lens_table import canonical_results, display
from .report_tuned import tuned_lines

SCHEMA = "onejump-results/1"


#: OJFA's mean precision@1 counts as "largely matching" full N-NJTC within this many points.
MATCH_TOLERANCE = 0.03

#: The paper (Sec. 7): no low-rank shortcut reaches over this precision for hard early exits at any level.
HARD_EXIT_CEILING = 0.60

#: The low-rank shortcut methods the ceiling is about (the reuse matrix's arbitrary jumps join them).
LOW_RANK_METHODS = ("full", "ojfa", "joint")


def early_levels(K: int) -> int:
    """How many exit levels (0..n-1) count as early: the first third."""
    return max(1, K // 3)


def evaluate_claims(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's claims, each with our number and its verdict: held only where the claim's 95% interval
    supports it, not held where the interval excludes it, inconclusive otherwise (see
    :mod:`~onejump.experiment.claim_intervals`)."""
    m = results["methods"]
    K = len(results["levels"])
    early = early_levels(K)
    ojfa_p = np.asarray(m["ojfa"]["precision@1"])
    full_p = np.asarray(m["full"]["precision@1"])
    id_p = np.asarray(m["identity"]["precision@1"])
    joint_p = np.asarray(m["joint"]["precision@1"]) if "joint" in m else None  # `train --no-joint`
    arb_p = np.asarray(m["arbitrary_mean"]["precision@1"])
    reuse = (results.get("reuse") or {}).get("precision@1")
    gap = float(full_p.mean() - ojfa_p.mean())
    gap_ci = flipped(paired_interval(results, "ojfa_vs_full"))
    # a paired test recorded for a comparison beats the bound from per-level precisions
    early_ci = paired_interval(results, "ojfa_vs_identity_early") or levels_interval(results, ojfa_p[:early],
                                                                                      id_p[:early])
    joint_ci = paired_interval(results, "ojfa_vs_joint")
    arb_ci = paired_interval(results, "ojfa_vs_arbitrary") or levels_interval(
        results, ojfa_p, np.asarray(reuse) if reuse else arb_p)
    factor = float(results["parameters"]["reduction_factor"])
    early_wins = int((ojfa_p[:early] > id_p[:early]).sum())
    claims = [
        {
            "id": "ojfa_matches_full",
            "claim": f"OJFA largely matches full N-NJTC (mean precision@1 within {MATCH_TOLERANCE * 100:.0f} points)",
            "paper": "Sec. 6, Fig. 4",
            "ours": f"OJFA {ojfa_p.mean():.3f} vs full N-NJTC {full_p.mean():.3f} (gap {gap * 100:+.1f} points, "
                    f"{points_text(gap_ci)})",
            **judged(gap_ci, at_most(MATCH_TOLERANCE)),
        },
        {
            "id": "ojfa_beats_identity_early",
            "claim": f"OJFA outperforms identity shortcuts at early levels (0..{early - 1})",
            "paper": "Sec. 6, Fig. 4",
            "ours": f"OJFA {ojfa_p[:early].mean():.3f} vs identity {id_p[:early].mean():.3f} mean precision@1; "
                    f"OJFA higher at {early_wins}/{early} early levels; difference {points_text(early_ci)}",
            **judged(early_ci, above(0.0)),
        },
        *([{
            "id": "ojfa_at_least_joint",
            "claim": "OJFA is at least as good as a jointly trained jump",
            "paper": "Sec. 5, Fig. 2",
            "ours": f"OJFA {ojfa_p.mean():.3f} vs joint {joint_p.mean():.3f} mean precision@1"
                    + _pvalue_text(results, "ojfa_vs_joint") + f"; difference {points_text(joint_ci)}",
            **judged(joint_ci, at_least(0.0)),
        }] if joint_p is not None else []),
        {
            "id": "ojfa_beats_arbitrary",
            "claim": "OJFA is better than an arbitrary choice of jump",
            "paper": "Sec. 5, Fig. 2",
            "ours": f"OJFA {ojfa_p.mean():.3f} vs mean arbitrary jump {arb_p.mean():.3f} mean precision@1 "
                    f"(OJFA ranks {_rank_of_chosen(results)} of {K} jumps); difference {points_text(arb_ci)}",
            **judged(arb_ci, above(0.0)),
        },
        {
            "id": "parameter_reduction",
            "claim": "OJFA cuts shortcut parameters K-fold",
            "paper": "Sec. 4",
            "ours": f"{results['parameters']['full']:,} -> {results['parameters']['ojfa']:,} parameters "
                    f"({factor:.0f}x)",
            **judged((factor, factor), between(K - 1e-6, K + 1e-6)),  # counted, not sampled: exact
        },
    ]
    for c in (c for c in claims if c["id"] in ("ojfa_matches_full", "ojfa_at_least_joint")):
        key = "ojfa_vs_full" if c["id"] == "ojfa_matches_full" else "ojfa_vs_joint"
        c["p_value"] = (results.get("tests") or {}).get(key, {}).get("p_value")
    claims.append(_hard_exit_claim(results))
    for c in claims:
        c["n_test"] = int(results["data"]["n_test"])
    return claims


def _hard_exit_claim(results: dict[str, Any]) -> dict[str, Any]:
    """Sec. 7: no low-rank shortcut exceeds 60% precision@1 at any exit level 0..K-1."""
    top = highest_low_rank_precision(results)
    ci = top["ci"]
    ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci is not None else ""
    where = display(top["method"]).split(" (")[0]
    interval = ceiling_interval(results, LOW_RANK_METHODS)
    upper = f"; the highest upper 95% bound over all of them {interval[1]:.3f}" if interval else ""
    return {
        "id": "low_rank_below_60",
        "claim": f"No low-rank shortcut exceeds {HARD_EXIT_CEILING:.0%} precision@1 at any exit level",
        "paper": "Sec. 7",
        "ours": f"highest precision@1 {top['value']:.3f}{ci_text} ({where} at level {top['level']}), over "
                f"full N-NJTC, OJFA, the joint jump and every jump at every level{upper}",
        **judged(interval, at_most(HARD_EXIT_CEILING)),
        "value": top["value"], "method": top["method"], "level": top["level"], "ci": ci,
    }


def highest_low_rank_precision(results: dict[str, Any]) -> dict[str, Any]:
    """The highest precision@1 of a low-rank shortcut at an exit level: {value, method, level, ci}.

    ``method`` is a key of ``results["methods"]``, or ``jump m`` for jump m of the reuse matrix at another
    level; ``ci`` is that level's 95% bootstrap CI where the method has one (the reuse matrix has none)."""
    methods = results["methods"]
    top: dict[str, Any] | None = None
    for name in (n for n in LOW_RANK_METHODS if n in methods):
        p = np.asarray(methods[name]["precision@1"], dtype=np.float64)
        k = int(p.argmax())
        if top is None or p[k] > top["value"]:
            ci = methods[name].get("precision@1_ci")
            top = {"value": float(p[k]), "method": name, "level": k,
                   "ci": [float(ci[k][0]), float(ci[k][1])] if ci else None}
    reuse = (results.get("reuse") or {}).get("precision@1")
    if reuse:
        r = np.asarray(reuse, dtype=np.float64)
        m, k = (int(i) for i in np.unravel_index(int(r.argmax()), r.shape))
        if top is None or r[m, k] > top["value"]:  # a tie keeps the named method, which has a CI
            top = {"value": float(r[m, k]), "method": f"jump {m}", "level": k, "ci": None}
    if top is None:
        raise KeyError("no low-rank shortcut method in results")
    return top


def _pvalue_text(results: dict[str, Any], key: str) -> str:
    test = results.get("tests", {}).get(key)
    if not test or test.get("p_value") is None:
        return ""
    return f" (paired test p = {test['p_value']:.3g})"


def _rank_of_chosen(results: dict[str, Any]) -> int:
    reuse = np.asarray(results["reuse"]["precision@1"])
    means = reuse.mean(axis=1)
    chosen = results["selection"]["chosen"]
    return int((means > means[chosen]).sum()) + 1


def write_report(results: dict[str, Any], out_dir: Path) -> Path:
    """Write ``results.json``, the figures and ``report.md`` into ``out_dir``; return report.md's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = dict(canonical_results(results))
    results.setdefault("schema", SCHEMA)
    results["claims"] = evaluate_claims(results)
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=1))
    figures = make_figures(results, out_dir)
    extra = (field_figure(results, out_dir), out_dir / "trajectory.png")
    figures += [p for p in extra if p is not None and p.is_file()]
    tuned_figure(results, out_dir)  # shown in its own section, not among the figures at the end
    sections: list[str] = []
    if results.get("early_exit"):
        sections, _ = exit_report_section(results["early_exit"], out_dir)
    md = render_markdown(results, [p.name for p in figures], sections)
    atomic_write_text(out_dir / "report.md", md)
    return out_dir / "report.md"


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def render_beyond(beyond: dict[str, Any], results: dict[str, Any] | None = None) -> list[str]:
    """The "Beyond the paper" section (from ``onejump sweep``); ``results`` gives the test rows' count for
    the bar's verdicts (without it, the test sentences are unknown and every sampled part inconclusive)."""
    results = results or {}
    K = beyond["num_blocks"]
    lines = ["", "## Beyond the paper: objective x rank x method (`onejump sweep`)", "",
             f"Ranks r = m x floor(H/100) = m x {beyond['base_rank']}; objectives `mse` (the paper's Eq. 2) and `kl` "
             "(KL from the model's next-token distribution through the frozen head). Single jumps: `ojfa-paper` "
             "(the paper's D_m rule), `ojfa-head` (held-out precision@1 rule), `joint` (one jump trained on all "
             "levels). Test split, mean over exit levels 0..K-1, 95% bootstrap CIs.", "",
             "| objective | r | method | parameters | mean precision@1 | mean surprisal | held-out precision@1 |",
             "|---|---|---|---|---|---|---|"]
    for name, m in beyond["references"].items():
        lo, hi = m["mean_precision@1_ci"]
        lines.append(f"| - | - | {display(name)} | {_fmt_params(m['parameters'])} | "
                     f"{m['mean_precision@1']:.3f} [{lo:.3f}, {hi:.3f}] | {m['mean_surprisal']:.2f} | - |")
    for cfg in beyond["configs"]:
        for name, m in cfg["methods"].items():
            lo, hi = m["mean_precision@1_ci"]
            jump = f" (jump {m['jump']})" if "jump" in m else ""
            held = m.get("holdout_precision@1")
            held_s = f"{held:.3f}" if held is not None else "-"
            lines.append(f"| {cfg['objective']} | {cfg['rank']} | {name}{jump} | {_fmt_params(m['parameters'])} | "
                         f"{m['mean_precision@1']:.3f} [{lo:.3f}, {hi:.3f}] | {m['mean_surprisal']:.2f} | {held_s} |")
    best, bar = beyond.get("best"), beyond.get("bar")
    verdicts = sweep_bar_verdicts({**results, "beyond": beyond}) if best and bar else None
    if verdicts:
        lines += ["", f"**Best single jump** (chosen on the held-out part of the train split, never on test, among "
                      f"jumps with at most 2x the paper OJFA's {bar['paper_ojfa_parameters']:,} parameters): "
                      f"`{best['method']}`, objective `{best['objective']}`, r = {best['rank']}, "
                      f"{best['parameters']:,} parameters.", "",
                  "| the bar (pre-registered) | ours | verdict (95% interval) |", "|---|---|---|",
                  f"| <= 2x paper OJFA parameters | {bar['parameter_ratio']:.2f}x | {_said(verdicts['params'])} |",
                  f"| >= 2x paper OJFA mean precision@1 ({bar['paper_ojfa_mean_precision@1']:.3f}) | "
                  f"{best['mean_precision@1']:.3f} = {_paper_ratio(bar)} (paired p = "
                  f"{bar['vs_paper_ojfa']['p_value']:.2g}) | {_said(verdicts['precision'])} |",
                  f"| above the logit lens at every level 0..{K - 5} | below or equal at "
                  f"{len(bar['levels_not_above_logit_lens'])} of {bar['levels_checked']} levels"
                  + (f" ({', '.join(map(str, bar['levels_not_above_logit_lens']))})"
                     if bar["levels_not_above_logit_lens"] else "") + f" | {_said(verdicts['lens'])} |"]
        lens = beyond["references"].get("identity", {}).get("precision@1")
        if lens:
            lines += ["", "| level | logit lens | best single jump |", "|---|---|---|"]
            lines += [f"| {k} | {lens[k]:.3f} | {best['precision@1'][k]:.3f} |" for k in range(K)]
    return lines


def _paper_ratio(bar: dict[str, Any]) -> str:
    """The best jump's mean precision@1 over the paper OJFA's, or n/a where the latter is 0 (the sweep then
    divides by 1e-12)."""
    if not bar["paper_ojfa_mean_precision@1"] > 0:
        return "n/a (paper OJFA's mean precision@1 is 0)"
    return f"{bar['precision_ratio']:.2f}x"


def _preset_line(results: dict[str, Any]) -> str:
    cfg = results.get("config", {})
    preset = (cfg.get("preset") or {}).get("name", "paper")
    train = cfg.get("train") or {}
    line = (f"Preset `{preset}`: objective `{train.get('objective', 'mse')}`, lr {train.get('lr')}, batch "
            f"{train.get('batch_size')}, at most {train.get('max_epochs')} epochs (patience {train.get('patience')})")
    if cfg.get("joint_residual"):
        line += "; the joint jump is residual (h + BN(h) A B)"
    if (cfg.get("preset") or {}).get("joint_warm"):
        line += ", trained, then trained on from where it stopped for as long again"
    return line + "."


def _field_lines(results: dict[str, Any]) -> list[str]:
    """The field's metrics (tuned-lens's): KL to the final distribution, cross-entropy against the text."""
    methods = {n: m for n, m in results["methods"].items() if "kl" in m}
    if not methods:
        return []
    floor = results.get("final_cross_entropy")
    lines = ["", "## The field's metrics (test set, mean over exit levels)", "",
             "KL(p_final || p_lens) is tuned-lens's headline metric; cross-entropy is against the sentence's real "
             "next token" + (f" (the model's own: {floor:.3f} nats, the floor of every lens)" if floor is not None
                             else " (not available: the store predates next-token recording)") + ".", "",
             *_table_head("lens", registered(table="field"))]
    best = (results.get("beyond") or {}).get("best") or {}
    if "mean_kl" in best:  # the sweep's best single jump, evaluated on the same test split
        methods["best single jump"] = best
    for name, m in methods.items():
        lines.append(f"| {display(name)} | {_table_cells(m, registered(table='field'))} |")
    return lines


def _table_head(first: str, columns: list, *more: str) -> list[str]:
    """A markdown table's header: ``first``, one column per metric (its registry header), then ``more``."""
    names = [first, *(m.header for m in columns), *more]
    return ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]


def _table_cells(entry: dict[str, Any], columns: list) -> str:
    """One row's metric cells: ``mean_<metric>`` in the metric's format, ``-`` where it is absent."""
    return " | ".join(f"{entry[f'mean_{m.name}']:{m.fmt}}" if f"mean_{m.name}" in entry else "-" for m in columns)


def _said(verdict: str) -> str:
    """A verdict in a table: held, **not held** or inconclusive."""
    return "**not held**" if verdict == "not held" else verdict


def render_markdown(results: dict[str, Any], figures: list[str], sections: list[str] | None = None) -> str:
    """The human-readable report."""
    mdl, data, sel = results["model"], results["data"], results["selection"]
    K = len(results["levels"])
    lines = [
        f"# onejump report: {mdl['name']}",
        "",
        f"Model {mdl['name']} (weights {mdl['fingerprint']}): K = {K} blocks, H = {mdl['hidden_size']}, "
        f"V = {mdl['vocab_size']}. Data: {data['n_train']} train / {data['n_test']} test sentences from "
        f"`{data['corpus']}`, one random position each, seed {data['seed']}. Rank r = {results['config']['rank']}.",
        "",
        _preset_line(results),
        "",
        f"**OJFA choice: jump {sel['chosen']}** (D = {sel['D'][sel['chosen']]:.4f}; "
        f"softmax(D/5e-4) = {sel['softmax'][sel['chosen']]:.3f}"
        + (f"; chosen by the head-aware rule, held-out precision@1 {sel['head_scores'][sel['chosen']]:.3f}; the "
           f"paper's D_m rule picks jump {sel['paper_chosen']}" if sel.get("rule") == "head" else "") + ").",
        "",
        "## The paper's claims, checked",
        "",
        f"On {data['n_test']} test samples" + (" (a small test set: differences of a few points are noise, not "
                                               "evidence)" if data["n_test"] < 1000 else "")
        + ". A claim is held when its 95% interval lies inside what it claims, not held when the interval lies "
        "outside it, and *inconclusive* otherwise: the data cannot tell.",
        "",
        "| claim | paper | ours | held |",
        "|---|---|---|---|",
    ]
    for c in results["claims"]:
        verdict = {"held": "yes", "not held": "**no**"}.get(c.get("verdict"), c.get("verdict", "yes" if c["held"]
                                                                                     else "**no**"))
        lines.append(f"| {c['claim']} | {c['paper']} | {c['ours']} | {verdict} |")
    lines += [
        "",
        "## Summary over exit levels 0..K-1 (test set)",
        "",
        *_table_head("method", registered(table="main"), "shortcut parameters"),
    ]
    for name, method in results["methods"].items():
        params = method.get("parameters")
        lines.append(f"| {display(name)} | {_table_cells(method, registered(table='main'))} | "
                     f"{_fmt_params(params) if params is not None else '-'} |")
    lines += _field_lines(results)
    lines += tuned_lines(results)
    tests = results.get("tests", {})
    if tests:
        lines += ["", "## Paired tests (per test sample, all exit levels pooled)", "",
                  "| comparison | mean difference in precision@1 | 95% CI | p-value |", "|---|---|---|---|"]
        for key, t in tests.items():
            lines.append(f"| {key.replace('_', ' ')} | {t['mean_diff']:+.4f} | "
                         f"[{t['ci'][0]:+.4f}, {t['ci'][1]:+.4f}] | {t['p_value']:.3g} |")
    lines += ["", "## Per level (precision@1)", "",
              "| level | " + " | ".join(display(n) for n in results["methods"]) + " |",
              "|---" * (len(results["methods"]) + 1) + "|"]
    for k in results["levels"]:
        lines.append(f"| {k} | " + " | ".join(f"{m['precision@1'][k]:.3f}" for m in results["methods"].values())
                     + " |")
    if results.get("beyond"):
        lines += render_beyond(results["beyond"], results)
    if sections:
        lines += ["", *sections]
    if "trajectory.png" in figures:
        lines += ["", "## What each level predicts", "",
                  "A test sentence (in corpus order, the first whose prefix has 12 to 20 tokens), read at every level "
                  "by the logit lens and by the run's single jump "
                  "(each cell: the top-1 next token, coloured by its probability). `onejump lens --prompt ...` "
                  "draws this for any prompt and lens.", "", "![trajectory](trajectory.png)"]
        figures = [f for f in figures if f != "trajectory.png"]
    lines += ["", "## Figures", ""]
    lines += [f"![{f}]({f})" for f in figures]
    lines += timing_lines(results)
    lines += ["", "Generated by `onejump report` from results.json; every number was measured in this run.", ""]
    return "\n".join(lines)


def timing_lines(results: dict[str, Any]) -> list[str]:
    """The timings section: each stage's seconds and, where recorded, its peak resident memory."""
    timings = results.get("timings")
    if not timings:
        return []
    memory = results.get("memory") or {}
    peaks, method = memory.get("peak_rss_mib", {}), memory.get("method", {})
    if not peaks:
        return ["", "## Timings", "", "| stage | seconds |", "|---|---|",
                *(f"| {k} | {v:.1f} |" for k, v in timings.items())]
    lines = ["", "## Timings and peak memory", "", "| stage | seconds | peak RSS (MiB) |", "|---|---|---|"]
    for k, v in timings.items():
        peak = peaks.get(k)
        mark = "" if peak is None or method.get(k, "stage peak") == "stage peak" else " *"
        lines.append(f"| {k} | {v:.1f} | {'-' if peak is None else f'{peak:,.0f}{mark}'} |")
    lines += ["", "Peak RSS: the process's resident memory at its highest during the stage (the model, the "
              "store pages read and the stage's own arrays); a stage reused from an earlier command keeps the "
              "figure of the command that computed it."]
    if any(method.get(k) == "process peak so far" for k in timings):
        lines += ["", "\\* the process's peak up to the end of the stage (this system could not reset the "
                     "high-water mark, so it may come from an earlier stage)."]
    if "model_mib" in memory:
        lines += ["", f"For comparison, the model's own weights: {memory['model_mib']:,.0f} MiB "
                  f"({memory['model_parameters'] / 1e6:,.1f}M parameters in {memory['model_dtype']})."]
    return lines
