"""Early exit in the report: the blocks-saved table and the frontier figure of an exit simulation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..evaluation.early_exit import AGREEMENTS, ExitSimulation, SavedAt

MEASURE_NAMES = {"max_prob": "max probability", "margin": "top-1 minus top-2"}


def _cell(best: SavedAt | None) -> str:
    if best is None:
        return "not reached"
    return f"{best.blocks_saved:.2f} ({100 * best.fraction_saved:.1f}%), λ={best.lam:g}"


def render_exit_table(sim: ExitSimulation, agreements: Sequence[float] = AGREEMENTS) -> list[str]:
    """Markdown lines: blocks saved at each agreement target, per lens and confidence measure.

    Each target has two columns: blocks saved (K minus the mean blocks computed, the field's
    number) and compute saved with the exit checks' own cost counted (in block-equivalents, see
    :mod:`onejump.evaluation.early_exit`); each cell gives the saving, its fraction of K and the
    best lambda reaching the target.
    """
    K = sim.num_blocks
    head = ["lens", "confidence", "check (MACs/token, blocks)"]
    for a in agreements:
        head += [f"{100 * a:g}%: blocks saved", f"{100 * a:g}%: with checks"]
    lines = [
        f"Early exit simulated on the {sim.split} split ({sim.num_samples} tokens, K = {K}, exit checks at "
        f"{len(sim.levels)} levels): exit at the first level whose confidence reaches λ; agreement = the "
        "exited prediction equals the full model's top-1. One block = "
        f"{sim.block_macs:,} multiply-adds per token, the model's head = {sim.head_macs:,} "
        f"({sim.head_macs / sim.block_macs:.2f} blocks). 'With checks' counts every exit check made and "
        "credits the head an exiting token skips.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, rec in sim.lenses.items():
        for measure in sim.measures:
            cells = [name, MEASURE_NAMES.get(measure, measure),
                     f"{rec.check_macs:,} ({sim.check_blocks(name):.3g})"]
            for a in agreements:
                cells += [_cell(sim.saved_at(name, measure, a, include_checks=False)),
                          _cell(sim.saved_at(name, measure, a, include_checks=True))]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot_exit_frontier(sim: ExitSimulation, path: str | Path, *, include_checks: bool = True,
                       agreements: Sequence[float] = AGREEMENTS) -> Path:
    """Agreement vs mean compute per token (block-equivalents), one curve per lens and measure.

    Solid: max probability, dashed: margin; dotted horizontal lines at the agreement targets; the
    full model is the point (K, 1).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"max_prob": "-", "margin": "--"}
    for ax, zoom in zip(axes, (False, True)):
        for i, name in enumerate(sim.lenses):
            for measure in sim.measures:
                c = sim.curve(name, measure)
                keep = c.exit_rate > 0
                x = (c.mean_cost if include_checks else c.mean_blocks)[keep]
                ax.plot(list(x) + [sim.num_blocks], list(c.agreement[keep]) + [1.0], styles.get(measure, ":"),
                        color=colors[i % len(colors)], marker=".", markersize=3,
                        label=f"{name} ({MEASURE_NAMES.get(measure, measure)})")
        for a in agreements:
            ax.axhline(a, color="k", linewidth=0.6, linestyle=":")
        ax.axvline(sim.num_blocks, color="k", linewidth=0.6)
        ax.plot([sim.num_blocks], [1.0], "k*", markersize=9, label="full model")
        ax.set_xlabel("mean compute per token (blocks" + (", exit checks included)" if include_checks else ")"))
        ax.set_ylabel("agreement with the full model's top-1")
        ax.grid(alpha=0.3)
        if zoom:
            ax.set_ylim(min(agreements, default=0.9) - 0.05, 1.005)
            ax.set_title("zoom on the agreement targets")
    axes[0].legend(fontsize=7, loc="lower right")
    title = f"{sim.model}: " if sim.model else ""
    fig.suptitle(f"{title}early exit on the {sim.split} split (K = {sim.num_blocks})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def exit_report_section(sim: ExitSimulation, out_dir: str | Path, *, figure_name: str = "early_exit_frontier.png",
                        ) -> tuple[list[str], list[Path]]:
    """The report's early-exit section (markdown lines) and the figure it links."""
    fig = plot_exit_frontier(sim, Path(out_dir) / figure_name)
    lines: list[Any] = ["## Early exit (simulated on the test store)", "", *render_exit_table(sim), "",
                        f"![early exit frontier]({figure_name})", ""]
    return lines, [fig]
