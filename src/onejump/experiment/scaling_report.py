"""The scaling curves in a report: the figure (mean precision@1 and KL on the test split against training
rows, log x) and the table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..textsafe import figure_text

#: Colour per curve (the lenses of :data:`onejump.experiment.scaling.LENSES`).
COLOURS = {"tuned": "black", "joint-residual": "tab:blue", "per-level": "tab:green"}


def scaling_figure(data: dict[str, Any], path: str | Path) -> Path:
    """Two panels (precision@1, KL), one line per lens through its training sizes (x: the distinct
    training rows of the size, log), 95% CIs as error bars; the logit lens as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    panels = (("mean_precision@1", "mean precision@1 over exit levels"),
              ("mean_kl", "mean KL(p_final || p_lens), nats"))
    for ax, (metric, label) in zip(axes, panels):
        ax.axhline(data["logit"][metric], color="tab:gray", linestyle="--", linewidth=1, label="logit lens")
        for lens in COLOURS:
            pts = sorted((p for p in data["points"] if p["lens"] == lens and p["train_rows"]),
                         key=lambda p: p["train_rows"])
            if not pts:
                continue
            xs, ys = [p["train_rows"] for p in pts], [p[metric] for p in pts]
            err = [[y - p[f"{metric}_ci"][0] for y, p in zip(ys, pts)],
                   [p[f"{metric}_ci"][1] - y for y, p in zip(ys, pts)]]
            ax.errorbar(xs, ys, yerr=err, marker="o", color=COLOURS[lens], capsize=2, label=lens)
            for x, y, p in zip(xs, ys, pts):
                ax.annotate(figure_text(p["size"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("distinct training rows (positions), log")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
    fig.suptitle(figure_text(f"{data['model']}: lenses against training size (test: {data['n_test']} sentences, "
                             f"one position each)"), fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scaling_section(entry: dict[str, Any], out_dir: str | Path) -> list[str]:
    """The report's section on the scaling curves (``entry``: results.json's ``scaling``); draws
    ``scaling.png`` into ``out_dir``."""
    scaling_figure(entry, Path(out_dir) / "scaling.png")
    plan = entry["plan"]
    lines = ["## Lenses against training size", "",
             "Every point is scored on this run's test split (one position per test sentence). `rows`: the run's "
             "own lenses (one position per train sentence, the project's recipes); `train-all`: every position of "
             "the train sentences; `corpus-all`: every position of every usable corpus sentence outside the test "
             f"split. Both token-scale sizes are trained straight from the model in {plan['steps']} steps, "
             f"{plan['passes']:g} pass(es) over their positions, {plan['val_sentences']} train sentences held out: "
             "the tuned lens by tuned-lens's SGD from zero, the residual KL joint jump at 2 floor(H/100) and the "
             "per-level MSE jumps at floor(H/100) with Adam (lr 0.01), every rate decayed linearly to zero"
             + (f"; each size cut to its first {plan['max_sentences']} sentences" if plan.get("max_sentences") else "")
             + ". Training seconds of a token-scale size are its stream's (the tuned lens and the joint jump share "
               "one).", "",
             "| size | lens | train rows | parameters | mean precision@1 (95% CI) | mean KL (95% CI) | seconds "
             "| rows/s |",
             "|---|---|---|---|---|---|---|---|",
             f"| - | logit lens | 0 | 0 | {entry['logit']['mean_precision@1']:.3f} | {entry['logit']['mean_kl']:.3f} "
             "| - | - |"]
    for p in entry["points"]:
        lo, hi = p["mean_precision@1_ci"]
        klo, khi = p["mean_kl_ci"]
        sec = "-" if p.get("train_seconds") is None else f"{p['train_seconds']:,.0f}"
        rate = "-" if p.get("rows_per_s") is None else f"{p['rows_per_s']:,.0f}"
        lines.append(f"| {p['size']} | {figure_text(p['lens'])} | {p['train_rows'] or 0:,} | {p['parameters']:,} | "
                     f"{p['mean_precision@1']:.3f} ({lo:.3f}-{hi:.3f}) | {p['mean_kl']:.3f} ({klo:.3f}-{khi:.3f}) | "
                     f"{sec} | {rate} |")
    return [*lines, "", "![scaling](scaling.png)"]


__all__ = ["scaling_figure", "scaling_section"]
