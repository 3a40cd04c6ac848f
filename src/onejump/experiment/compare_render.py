"""The comparison's ``models.md`` and its figure (OJFA's gap against the hidden size H)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..textsafe import figure_text
from .claims import MATCH_TOLERANCE

#: The paper's models span these hidden sizes (GPT2-XL, Phi-3-mini, Llama-2-7B): shaded in the figure.
PAPER_H = (1600, 4096)

NA = "n/a"


# ---- models.md ----------------------------------------------------------------------------------
def _header(m: dict[str, Any]) -> str:
    return f"{m['name']}<br>K = {m['K']}, H = {m['H']}, r = {m['r']}<br>{m['n_train']} / {m['n_test']}"


def _p_text(p: float | None) -> str:
    return f" (p = {p:.2g})" if p is not None else ""


def claim_cell(entry: dict[str, Any] | None) -> str:
    """One cell: the number, the verdict, the paired test's p-value where the claim has one."""
    if entry is None:
        return NA
    verdict = "**not held**" if entry["verdict"] == "not held" else entry["verdict"]
    return f"{entry['text']}, {verdict}{_p_text(entry.get('p_value'))}"


def _num(value: float | None, fmt: str = "{:.3f}") -> str:
    return NA if value is None else fmt.format(value)


def _single_rows(models: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """The single-jump table's rows: a label and one cell per model."""
    def col(fn):
        return [fn(m["single_jump"]) for m in models]

    def best_name(s):
        b = s["best"]
        return NA if b is None else f"{b['method']} ({b['objective']}, r = {b['rank']})"

    def params(entry):
        return NA if entry is None or entry.get("parameters") is None else f"{entry['parameters']:,}"

    return [
        ("best single jump (`onejump sweep`)", col(best_name)),
        ("best single jump: mean precision@1", col(lambda s: _num(s["best"] and s["best"]["mean_precision@1"]))),
        ("logit lens: mean precision@1", col(lambda s: _num(s["logit_lens"]["mean_precision@1"]))),
        ("tuned lens: mean precision@1",
         col(lambda s: _num(s["tuned_lens"] and s["tuned_lens"]["mean_precision@1"]))),
        ("best single jump / logit lens", col(lambda s: _num(s["ratios"]["best_over_logit_lens"], "{:.2f}x"))),
        ("best single jump / tuned lens", col(lambda s: _num(s["ratios"]["best_over_tuned_lens"], "{:.2f}x"))),
        ("exit levels where the best single jump reaches 0.8x the tuned lens",
         col(lambda s: _num(s["ratios"]["levels_best_keeps_up_with_tuned"], "{:.0%}"))),
        ("the bar (mean >= 0.9x, every level 1..K-1 >= 0.8x, KL <= 1.25x; paired tests)",
         col(lambda s: s.get("bar") or NA)),
        ("logit lens: mean KL (nats)", col(lambda s: _num(s["logit_lens"]["mean_kl"]))),
        ("tuned lens: mean KL (nats)", col(lambda s: _num(s["tuned_lens"] and s["tuned_lens"]["mean_kl"]))),
        ("best single jump: mean KL (nats)", col(lambda s: _num(s["best"] and s["best"]["mean_kl"]))),
        ("parameters: best single jump", col(lambda s: params(s["best"]))),
        ("parameters: tuned lens", col(lambda s: params(s["tuned_lens"]))),
        ("tuned lens / best single jump parameters",
         col(lambda s: _num(s["ratios"]["tuned_parameters_over_best"], "{:,.0f}x"))),
    ]


def render_models_md(summary: dict[str, Any]) -> str:
    """The two tables (claims per model; best single jump against the lenses) and the figure."""
    models = summary["models"]
    head = "| | " + " | ".join(_header(m) for m in models) + " |"
    rule = "|---" * (len(models) + 1) + "|"
    lines = ["# onejump across models", "",
             f"{len(models)} runs, sorted by hidden size H; each column: model, K blocks, hidden size H, rank r, "
             "train / test sentences. Every number is read from or recomputed from the runs' results.json "
             "(sources at the end); `onejump compare` wrote this file.", "",
             "## The paper's claims, per model", "",
             "Differences are in points of mean precision@1 over exit levels 0..K-1 on the test split. Each cell: "
             "our number, the verdict, and the paired test's p-value where the claim has one. A claim is held when "
             "its 95% interval lies inside what it claims, not held when the interval lies outside it, and "
             "*inconclusive* otherwise (the run's report gives each interval). The 60% claim "
             "gives the highest precision@1 of full N-NJTC, OJFA, the joint jump and every jump at every level, "
             "with its 95% bootstrap CI where the run has one.", "", head, rule]
    for row in summary["rows"]:
        cells = [claim_cell(m["claims"].get(row["id"])) for m in models]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines += ["", "![OJFA's gap against H](ojfa_gap_vs_h.png)", "",
              "## The best single jump against the logit lens and the tuned lens", "",
              "The best single jump is the one `onejump sweep` chose on held-out train data; means over exit "
              "levels 0..K-1 of the test split; n/a where a run has no sweep, no tuned lens or no KL, and for a "
              "ratio whose denominator is 0.", "",
              head, rule]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in _single_rows(models)]
    lines += ["", "## Sources", ""] + [f"- {m['name']} (weights {m['fingerprint']}): `{m['source']}`" for m in models]
    return "\n".join(lines) + "\n"


# ---- the figure ---------------------------------------------------------------------------------
def _h_axis(ax: Any, models: list[dict[str, Any]]) -> None:
    """H on a log scale; each model is named at its H on the axis, where no point or error bar can hide it."""
    from matplotlib.ticker import NullFormatter

    H = [float(m["H"]) for m in models]
    ax.set_xscale("log")
    ax.set_xlim(min(*H, PAPER_H[0]) / 1.3, max(*H, PAPER_H[1]) * 1.3)
    ax.axvspan(*PAPER_H, color="0.9", zorder=0)
    ax.text(float(np.sqrt(PAPER_H[0] * PAPER_H[1])), 0.98, f"the paper's models\nH {PAPER_H[0]}-{PAPER_H[1]}",
            transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=8, color="0.35")
    names: dict[float, list[str]] = {}
    twice = {m["name"] for m in models if sum(o["name"] == m["name"] for o in models) > 1}
    for h, m in zip(H, models):  # one model run on two data sets: told apart by their test rows
        name = f"{m['name']} ({m['n_test']} test)" if m["name"] in twice else m["name"]
        names.setdefault(h, []).append(figure_text(name, 60))
    ticks = sorted(names)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" + (f"  {', '.join(names[t])}" if names[t] else "") for t in ticks],
                       rotation=90, fontsize=8)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("hidden size H (log scale)")


def _legends(fig: Any, axes: list[Any]) -> None:
    """Each panel's legend below everything under its axes (the model names on the H axis run to any length)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in axes:
        to_axes = ax.transAxes.inverted()
        parts = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
        parts.append(ax.xaxis.label.get_window_extent(renderer))
        bottom = min(to_axes.transform((0, b.y0))[1] for b in parts)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, bottom - 0.02), ncol=2, frameon=False)


def _gap_panel(ax: Any, models: list[dict[str, Any]], H: np.ndarray) -> None:
    series = (("full", "full N-NJTC minus OJFA", "tab:blue", 0.98),
              ("joint", "joint jump minus OJFA", "tab:green", 1.02))
    for other, label, color, shift in series:  # shifted a little sideways so that the error bars stay apart
        gaps = [m["ojfa_gap"][other] for m in models]
        y = np.array([g["gap_points"] for g in gaps])
        err = np.array([[v - g["ci_points"][0], g["ci_points"][1] - v] if g["ci_points"] else [0.0, 0.0]
                        for v, g in zip(y, gaps)]).T
        err = np.maximum(err, 0.0)  # a percentile CI may, rarely, sit beside the mean by a rounding error
        ax.errorbar(H * shift, y, yerr=err, fmt="o-", color=color, capsize=4, label=f"{label} (95% CI)")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axhline(MATCH_TOLERANCE * 100, color="tab:red", linestyle="--", linewidth=1,
               label=f"{MATCH_TOLERANCE * 100:.0f}-point tolerance (OJFA 'largely matches' below it)")
    _h_axis(ax, models)
    ax.set_ylabel("gap in mean precision@1 (points)")
    ax.set_title("OJFA's gap to full N-NJTC and to the joint jump")


def _lens_panel(ax: Any, models: list[dict[str, Any]], H: np.ndarray) -> None:
    def ratio(key: str) -> np.ndarray:
        return np.array([np.nan if m["single_jump"]["ratios"][key] is None else m["single_jump"]["ratios"][key]
                         for m in models])

    best, tuned = ratio("best_over_logit_lens"), ratio("tuned_over_logit_lens")
    ax.plot(H, best, "o-", color="tab:red", label="best single jump")
    ax.plot(H, tuned, "s-", color="black", label="tuned lens")
    ax.axhline(1, color="tab:gray", linewidth=1, label="logit lens")
    _h_axis(ax, models)
    ax.set_ylabel("mean precision@1 / the logit lens's")
    ax.set_title("Single jump and tuned lens against the logit lens")


def gap_figure(summary: dict[str, Any]) -> bytes:
    """OJFA's gap against H; beside it, where a run has a sweep, the lenses against the logit lens (PNG bytes)."""
    import io

    buffer = io.BytesIO()
    gap_plot(summary).savefig(buffer, dpi=110, format="png", bbox_inches="tight")
    return buffer.getvalue()


def gap_plot(summary: dict[str, Any]) -> Any:
    """The figure of :func:`gap_figure` (a matplotlib Figure, without pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = summary["models"]
    H = np.array([m["H"] for m in models], dtype=np.float64)
    with_best = any(m["single_jump"]["best"] is not None for m in models)
    fig = Figure(figsize=(13 if with_best else 7, 5.5))
    FigureCanvasAgg(fig)  # the legends are placed from the drawn tick labels' extents
    axes = fig.subplots(1, 2 if with_best else 1, squeeze=False)
    _gap_panel(axes[0][0], models, H)
    if with_best:
        _lens_panel(axes[0][1], models, H)
    _legends(fig, list(axes[0]))
    return fig
