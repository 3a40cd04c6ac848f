"""The frontier's Pareto figure: mean precision@1 and mean KL against parameters held at inference (log x)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..textsafe import figure_text

#: Colour per kind of lens (the points of one kind share it).
KIND_COLOURS = {"logit": "tab:gray", "lowrank": "tab:orange", "jump": "tab:blue", "jump-cond": "tab:cyan",
                "per-level": "tab:green", "jtc": "tab:purple", "tuned": "black"}


def frontier_figure(data: dict[str, Any], path: str | Path) -> Path:
    """Two panels (precision@1, KL), one marker per point coloured by kind, the Pareto-optimal points
    joined; the logit lens (0 parameters, off a log axis) as a dashed line; the bars' parameter
    budgets as dotted verticals. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = data["points"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    panels = (("mean_precision@1", "mean precision@1 over exit levels", "pareto_precision"),
              ("mean_kl", "mean KL(p_final || p_lens), nats", "pareto_kl"))
    for ax, (metric, label, flag) in zip(axes, panels):
        for p in points:
            if p["parameters"] == 0:
                ax.axhline(p[metric], color=KIND_COLOURS["logit"], linestyle="--", linewidth=1)
                ax.annotate(figure_text(f"{p['name']} (0 parameters)"), (0.01, p[metric]),
                            xycoords=("axes fraction", "data"), fontsize=7, va="bottom", color="tab:gray")
                continue
            colour = KIND_COLOURS.get(p["kind"], "tab:red")
            lo, hi = p[f"{metric}_ci"]
            ax.errorbar(p["parameters"], p[metric], yerr=[[p[metric] - lo], [hi - p[metric]]], fmt="o",
                        color=colour, markersize=6 if p[flag] else 4, alpha=1.0 if p[flag] else 0.55,
                        markeredgecolor="red" if p[flag] else colour, capsize=2)
            ax.annotate(figure_text(p["name"]), (p["parameters"], p[metric]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
        front = sorted((p for p in points if p[flag] and p["parameters"] > 0), key=lambda p: p["parameters"])
        xs, ys = [p["parameters"] for p in front], [p[metric] for p in front]
        zero = [p for p in points if p[flag] and p["parameters"] == 0]
        if zero and xs:  # the logit lens is on the frontier up to the first point that beats it
            xs, ys = [xs[0] / 3, *xs], [zero[0][metric], *ys]
        if front:
            ax.plot(xs, ys, color="red", linewidth=1, label="Pareto frontier")
        for name, bar in (data.get("bars") or {}).items():
            if bar.get("budget"):
                ax.axvline(bar["budget"], color="tab:gray", linestyle=":", linewidth=1)
                ax.annotate(figure_text(f"{name} budget"), (bar["budget"], 0.98), xycoords=("data", "axes fraction"),
                            rotation=90, fontsize=7, va="top", ha="right", color="tab:gray")
        ax.set_xscale("log")
        ax.set_xlabel("parameters held at inference (log)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.25)
        if front:
            ax.legend(fontsize=8, loc="lower right" if metric == "mean_precision@1" else "upper right")
    fig.suptitle(figure_text(f"{data['model']}: the lens frontier ({data['n_train']} train / {data['n_test']} test "
                             f"sentences, K = {data['num_blocks']})"), fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["frontier_figure"]
