"""Early exit in the report: the blocks-saved table and the frontier figure of an exit simulation.

Both take an :class:`~onejump.evaluation.exit_simulation.ExitSimulation` or its ``to_dict()`` (as kept in
``results.json``), so a report can be rendered again without the per-token records.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation.exit_simulation import AGREEMENTS, ExitSimulation
from ..textsafe import figure_text

MEASURE_NAMES = {"max_prob": "max probability", "margin": "top-1 minus top-2"}


def _as_dict(sim: ExitSimulation | dict[str, Any]) -> dict[str, Any]:
    return sim.to_dict() if isinstance(sim, ExitSimulation) else sim


def _cell(best: dict[str, Any] | None) -> str:
    if best is None:
        return "not reached"
    return f"{best['blocks_saved']:.2f} ({100 * best['fraction_saved']:.1f}%), λ={best['lam']:g}"


def render_exit_table(sim: ExitSimulation | dict[str, Any]) -> list[str]:
    """Markdown lines: blocks saved at each agreement target of the summary, per lens and confidence measure.

    Each target has two columns: blocks saved (K minus the mean blocks computed, the field's
    number) and compute saved with the exit checks' own cost counted (block-equivalents, see
    :mod:`onejump.evaluation.early_exit`); a cell gives the saving, its fraction of K and the best
    lambda reaching the target, or "not reached".
    """
    d = _as_dict(sim)
    K = d["num_blocks"]
    agreements = sorted({row["agreement"] for row in d["summary"]})
    cells_of = {(r["lens"], r["measure"], r["agreement"]): r for r in d["summary"]}
    head = ["lens", "confidence", "check: MACs/token (blocks)"]
    for a in agreements:
        head += [f"{100 * a:g}%: blocks saved", f"{100 * a:g}%: with checks"]
    lines = [
        f"Early exit simulated on the {d['split']} split ({d['num_samples']} tokens, K = {K}, exit checks at "
        f"{len(d['levels'])} levels): a token exits at the first level whose confidence reaches λ; agreement: "
        "the exited prediction equals the full model's top-1. One block = "
        f"{d['block_macs']:,} multiply-adds per token, the model's head = {d['head_macs']:,} "
        f"({d['head_macs'] / d['block_macs']:.2f} blocks). 'With checks' counts every exit check made and "
        "credits the head an exiting token skips. Each cell: saving (fraction of K), best λ.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, info in d["lenses"].items():
        for measure in d["measures"]:
            cells = [name, MEASURE_NAMES.get(measure, measure), f"{info['check_macs']:,} ({info['check_blocks']:.3g})"]
            for a in agreements:
                row = cells_of[(name, measure, a)]
                cells += [_cell(row["checks_excluded"]), _cell(row["checks_included"])]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot_exit_frontier(sim: ExitSimulation | dict[str, Any], path: str | Path, *, include_checks: bool = True,
                       agreements: Sequence[float] = AGREEMENTS) -> Path:
    """Agreement vs mean compute per token (block-equivalents), one curve per lens and measure.

    With ``include_checks`` the compute is all of a token's: its blocks, its exit checks and the
    model's head where it runs (a token that exits skips the head), so it is never below 0 and plain
    decoding costs K plus the head. (The simulation's ``mean_cost`` leaves out the full model's head
    and credits an exiting token with it, which puts a cheap check's exits below 0 when the head
    costs more than a few blocks; the savings are the same either way.) Without, blocks only.

    Solid: max probability, dashed: margin; one point per lambda with at least one exit, ending where
    no token exits (every block, every check and the head); dotted lines at the agreement targets; the
    star is plain decoding. Right panel: zoom on the targets and on compute up to 1.1 x plain decoding.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = frontier_figure(sim, include_checks=include_checks, agreements=agreements)
    fig.savefig(path, dpi=110)
    return path


def frontier_figure(sim: ExitSimulation | dict[str, Any], *, include_checks: bool = True,
                    agreements: Sequence[float] = AGREEMENTS) -> Any:
    """The figure :func:`plot_exit_frontier` saves (a matplotlib Figure, without pyplot)."""
    from matplotlib import rcParams
    from matplotlib.figure import Figure

    d = _as_dict(sim)
    K = d["num_blocks"]
    fig = Figure(figsize=(12, 5))
    axes = fig.subplots(1, 2)
    colors = rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"max_prob": "-", "margin": "--"}
    floor = min(agreements, default=0.9) - 0.05
    head = d["head_macs"] / d["block_macs"] if include_checks and d["block_macs"] > 0 else 0.0
    plain = K + head  # plain decoding: every block and the head
    lowest = plain
    for ax, zoom in zip(axes, (False, True)):
        for i, name in enumerate(d["lenses"]):
            # lambda above every confidence: no exit, but every check made (or plain decoding)
            never = plain + len(d["levels"]) * d["lenses"][name]["check_blocks"] if include_checks else K
            for measure in d["measures"]:
                c = {k: np.asarray(v) for k, v in d["curves"][name][measure].items()}
                keep = c["exit_rate"] > 0
                x = (c["mean_cost"] + head if include_checks else c["mean_blocks"])[keep]
                lowest = min([lowest, *x[c["agreement"][keep] >= floor]])
                ax.plot(list(x) + [never], list(c["agreement"][keep]) + [1.0], styles.get(measure, ":"),
                        color=colors[i % len(colors)], marker=".", markersize=3,
                        label=figure_text(f"{name} ({MEASURE_NAMES.get(measure, measure)})"))
        for a in agreements:
            ax.axhline(a, color="k", linewidth=0.6, linestyle=":")
        ax.axvline(plain, color="k", linewidth=0.6)
        ax.plot([plain], [1.0], "k*", markersize=9, label="full model")
        ax.set_xlabel("mean compute per token (block-equivalents)" + (
            f"\nblocks + exit checks + the model's head ({head:.2g} blocks) where it runs" if include_checks
            else ": blocks run"))
        ax.set_ylabel("agreement with the full model's top-1")
        ax.grid(alpha=0.3)
        if zoom:
            ax.set_ylim(floor, 1.005)
            ax.set_xlim(max(0.0, lowest - 0.05 * plain), 1.1 * plain)
            ax.set_title("zoom: the agreement targets, at most the full model's compute")
        ax.legend(fontsize=7, loc="best" if zoom else "lower right")
    title = f"{figure_text(d['model'])}: " if d.get("model") else ""
    fig.suptitle(f"{title}early exit on the {d['split']} split (K = {K})")
    fig.tight_layout()
    return fig


def exit_report_section(sim: ExitSimulation | dict[str, Any], out_dir: str | Path, *,
                        figure_name: str = "early_exit_frontier.png") -> tuple[list[str], list[Path]]:
    """The report's early-exit section (markdown lines) and the figure it links (written to ``out_dir``)."""
    fig = plot_exit_frontier(sim, Path(out_dir) / figure_name)
    lines = ["## Early exit (simulated on the test store)", "", *render_exit_table(sim), "",
             f"![early exit: agreement vs compute]({figure_name})", ""]
    return lines, [fig]
