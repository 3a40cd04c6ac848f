"""The report's figures (matplotlib): the paper's Fig. 2-4 analogues, heatmaps, the sweep's Pareto plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation.metrics import metrics as registered
from ..textsafe import figure_text
from .lens_table import LENSES, colour, display


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curve(ax, results: dict[str, Any], name: str, metric: str, **kw: Any) -> None:
    levels = results["levels"]
    method = results["methods"][name]
    ax.plot(levels, method[metric], label=figure_text(display(name)), color=colour(name), marker=".", **kw)
    ci = method.get(f"{metric}_ci")
    if ci is not None:
        ci = np.asarray(ci)
        ax.fill_between(levels, ci[:, 0], ci[:, 1], color=colour(name), alpha=0.15, linewidth=0)


def make_figures(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Fig. 2, 3 and 4 analogues and the K x K reuse heatmaps; returns the PNG paths."""
    plt = _plt()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = figure_text(results["model"]["name"])
    levels = results["levels"]
    K = len(levels)
    chosen = results["selection"]["chosen"]
    paths = []

    # Figure 2: OJFA vs arbitrary jumps vs joint
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    reuse_p = np.asarray(results["reuse"]["precision@1"])
    reuse_s = np.asarray(results["reuse"]["surprisal"])
    for ax, mat, metric, ylabel in ((axes[0], reuse_p, "precision@1", "precision@1 (higher is better)"),
                                    (axes[1], reuse_s, "surprisal", "surprisal, nats (lower is better)")):
        for m in range(K):
            ax.plot(levels, mat[m], color=colour("arbitrary_mean"), alpha=0.18, linewidth=0.8,
                    label="arbitrary jumps (each m)" if m == 0 else None)
        _curve(ax, results, "arbitrary_mean", metric, linestyle="--")
        if "joint" in results["methods"]:  # `train --no-joint`
            _curve(ax, results, "joint", metric)
        _curve(ax, results, "ojfa", metric, linewidth=2)
        ax.set_xlabel("exit level k")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{model}: OJFA (jump {chosen}) vs arbitrary jumps vs joint jump (Fig. 2 analogue)")
    paths.append(_save(fig, out_dir / "fig2_ojfa_vs_arbitrary_joint.png", plt))

    # Figure 3: softmax(D / 5e-4)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    soft = np.asarray(results["selection"]["softmax"])
    colors = ["tab:red" if m == chosen else "tab:blue" for m in range(K)]
    ax.bar(range(K), soft, color=colors)
    ax.set_xlabel("jump m (trained from level m)")
    ax.set_ylabel("softmax(D_m / 5e-4)")
    ax2 = ax.twinx()
    ax2.plot(range(K), results["selection"]["D"], color="black", marker=".", linewidth=0.8)
    ax2.set_ylabel("D_m (black)")
    ax.set_title(f"{model}: signed sensitive cosine score per jump; OJFA choice = jump {chosen} (Fig. 3 analogue)")
    paths.append(_save(fig, out_dir / "fig3_selection_softmax.png", plt))

    # Figure 4: OJFA vs identity vs full N-NJTC (and JTC for reference)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, metric, ylabel in ((axes[0], "precision@1", "precision@1 (higher is better)"),
                               (axes[1], "surprisal", "surprisal, nats (lower is better)")):
        for name in ("identity", "full", "ojfa", "jtc"):
            if name in results["methods"]:
                _curve(ax, results, name, metric, linewidth=2 if name == "ojfa" else 1.2,
                       linestyle=":" if name == "jtc" else "-")
        ax.set_xlabel("exit level k")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")  # the logit lens' surprisal at low levels would flatten the rest
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{model}: OJFA vs identity vs full N-NJTC, 95% bootstrap CIs (Fig. 4 analogue)")
    paths.append(_save(fig, out_dir / "fig4_ojfa_vs_identity_full.png", plt))

    # Heatmaps: D[m][k] and precision@1[m][k]
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, mat, title, bar_label in (
            (axes[0], np.asarray(results["selection"]["scores"]), "D: jump m at level k (train)",
             "D[m][k]: mean sign(C) C² of the cosine C"),
            (axes[1], reuse_p, "precision@1: jump m at level k (test)", "precision@1 (higher is better)")):
        im = ax.imshow(mat, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xlabel("exit level k")
        ax.set_ylabel("jump m")
        ax.axhline(chosen, color="red", linewidth=0.8)
        ax.set_title(title)
        for axis in (ax.xaxis, ax.yaxis):  # levels and jumps are whole numbers
            axis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(im, ax=ax, label=bar_label)
    fig.suptitle(f"{model}: reuse matrices (OJFA row in red)")
    paths.append(_save(fig, out_dir / "reuse_heatmaps.png", plt))
    if results.get("beyond"):
        paths += beyond_figures(results["beyond"], out_dir)
    return paths


METHOD_MARKERS = {"per-level": "s", "ojfa-paper": "o", "ojfa-head": "^", "joint": "D"}
OBJECTIVE_COLORS = {"mse": "tab:blue", "kl": "tab:red", "kl-res": "black", "kl-res-cond": "tab:green",
                    "kl-res-cond-warm": "tab:olive", "kl-res-warm": "tab:cyan"}


def beyond_figures(beyond: dict[str, Any], out_dir: Path) -> list[Path]:
    """The Pareto figure (mean test precision@1 and surprisal vs shortcut parameters) and the
    per-level curves of the best single jump against the logit lens, per-level jumps and paper OJFA."""
    plt = _plt()
    paths = []
    model = figure_text(beyond["model"])
    refs = beyond["references"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, metric in ((axes[0], "precision@1"), (axes[1], "surprisal")):
        for cfg in beyond["configs"]:
            for name, m in cfg["methods"].items():
                lo, hi = m[f"mean_{metric}_ci"]
                y = m[f"mean_{metric}"]
                ax.errorbar(m["parameters"], y, yerr=[[y - lo], [hi - y]], fmt=METHOD_MARKERS.get(name, "o"),
                            color=OBJECTIVE_COLORS.get(cfg["objective"], "k"), markersize=5, capsize=2, alpha=0.85)
                ax.annotate(f"r{cfg['rank']}", (m["parameters"], y), fontsize=6, xytext=(3, 2),
                            textcoords="offset points")
        if "jtc" in refs:
            m = refs["jtc"]
            ax.plot(m["parameters"], m[f"mean_{metric}"], "*", color="tab:purple", markersize=11)
        if "identity" in refs:
            ax.axhline(refs["identity"][f"mean_{metric}"], color="tab:gray", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("shortcut parameters held at inference (log)")
        ax.set_ylabel(f"mean test {metric} over exit levels" + (" (higher is better)" if metric == "precision@1"
                                                                else ", nats (lower is better)"))
        ax.grid(alpha=0.3, which="both")
    handles = [plt.Line2D([], [], marker=mk, linestyle="", color="k", label=n) for n, mk in METHOD_MARKERS.items()]
    present = {cfg["objective"] for cfg in beyond["configs"]}
    handles += [plt.Line2D([], [], marker="s", linestyle="", color=c, label=f"objective {o}")
                for o, c in OBJECTIVE_COLORS.items() if o in present or o in ("mse", "kl")]
    handles += [plt.Line2D([], [], color="tab:gray", linestyle="--", label="logit lens (0 parameters)"),
                plt.Line2D([], [], marker="*", linestyle="", color="tab:purple", label="full-rank JTC")]
    axes[0].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(f"{model}: objective x rank x method, 95% bootstrap CIs over test samples")
    paths.append(_save(fig, out_dir / "beyond_pareto.png", plt))

    best = beyond.get("best")
    if best:
        K = beyond["num_blocks"]
        levels = list(range(K))
        paper = next((c for c in beyond["configs"] if c["objective"] == "mse" and c["rank"] == beyond["base_rank"]),
                     None)
        base_objective = best["objective"].split("-")[0]  # kl-res -> the plain kl per-level jumps
        same = next((c for c in beyond["configs"] if c["objective"] == base_objective
                     and c["rank"] == best["rank"] and "per-level" in c["methods"]), None)
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        for ax, metric in ((axes[0], "precision@1"), (axes[1], "surprisal")):
            if "identity" in refs:
                ax.plot(levels, refs["identity"][metric], color="tab:gray", label="logit lens")
            if paper is not None:
                ax.plot(levels, paper["methods"]["ojfa-paper"][metric], color="tab:red", linestyle="--",
                        label=f"paper OJFA (mse, r{paper['rank']})")
            if same is not None:
                ax.plot(levels, same["methods"]["per-level"][metric], color="tab:blue", alpha=0.7,
                        label=f"per-level jumps ({base_objective}, r{best['rank']})")
            ax.plot(levels, best[metric], color="black", linewidth=2,
                    label=f"best single jump: {best['method']} ({best['objective']}, r{best['rank']})")
            ax.axvline(K - 5, color="k", linewidth=0.6, linestyle=":")
            ax.set_xlabel("exit level k")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
        axes[1].set_yscale("log")
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{model}: the best single jump per level (dotted line: level K-5)")
        paths.append(_save(fig, out_dir / "beyond_per_level.png", plt))
    return paths


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def field_figure(results: dict[str, Any], out_dir: Path) -> Path | None:
    """KL to the final distribution and cross-entropy against the text, per level and lens."""
    methods = {n: m for n, m in results["methods"].items() if "kl" in m}
    if not methods:
        return None
    plt = _plt()
    metrics = [m for m in registered(figure=True) if any(m.name in e for e in methods.values())]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name, m in methods.items():
            if metric.name in m:
                ax.plot(results["levels"], m[metric.name], label=figure_text(display(name)), color=colour(name),
                        marker=".")
        if metric.floor is not None and results.get(metric.floor) is not None:
            ax.axhline(results[metric.floor], color="black", linestyle=":", label="the model itself")
        ax.set_yscale("log")
        ax.set_xlabel("exit level k")
        ax.set_ylabel(metric.label + " (log scale)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{figure_text(results['model']['name'])}: the field's metrics per level (test set)")
    return _save(fig, Path(out_dir) / "field_metrics.png", plt)


def tuned_figure(results: dict[str, Any], out_dir: Path) -> Path | None:
    """One jump against the tuned lens per level: precision@1, KL, and the jump's fraction of the tuned lens."""
    methods = results["methods"]
    tuned = methods.get("tuned")
    if tuned is None:
        return None
    best = (results.get("beyond") or {}).get("best")
    lenses = {"identity": methods["identity"], "tuned": tuned, "ojfa": methods["ojfa"]}
    if best:
        lenses["best"] = best
    style = {"identity": ("tab:gray", "-", 1.2), "tuned": ("black", "-", 1.8), "ojfa": ("tab:red", "--", 1.2),
             "best": ("tab:blue", "-", 2.2)}
    label = {n: row.display for n, row in LENSES.items()}
    label["best"] = f"best single jump ({best['objective']}, r{best['rank']})" if best else ""
    levels = results["levels"]
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.4))
    for ax, metric in ((axes[0], "precision@1"), (axes[1], "kl")):
        for name, m in lenses.items():
            if metric in m:
                color, ls, lw = style[name]
                ax.plot(levels, m[metric], color=color, linestyle=ls, linewidth=lw,
                        label=figure_text(label.get(name, name)))
        ax.set_xlabel("exit level k")
        ax.set_ylabel(metric if metric == "precision@1" else "KL(p_final || p_lens), nats (log)")
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    ax = axes[2]
    t = np.asarray(tuned["precision@1"], dtype=np.float64)
    for name in ("ojfa", "best"):
        if name in lenses:
            ratio = np.divide(np.asarray(lenses[name]["precision@1"]), t, out=np.full_like(t, np.nan), where=t > 0)
            ax.plot(levels, ratio, color=style[name][0], linestyle=style[name][1], marker=".",
                    label=figure_text(label.get(name, name)))
    bar = results.get("tuned_bar")
    if bar:
        missed = [lv["level"] for lv in bar["levels"][1:] if not lv["held"]]
        ratios = {lv["level"]: lv["ratio"] for lv in bar["levels"]}
        ax.plot(missed, [ratios[k] for k in missed], "x", color="tab:red", markersize=8,
                label="below the per-level bar")
    ax.axhline(0.8, color="tab:red", linewidth=0.8, label="bar: 0.8x at every level 1..K-1")
    ax.axhline(0.9, color="tab:red", linewidth=0.8, linestyle="--", label="bar: 0.9x of the mean")
    ax.set_ylim(0, 1.2)
    ax.set_xlabel("exit level k")
    ax.set_ylabel("precision@1 / the tuned lens's")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(f"{figure_text(results['model']['name'])}: one jump against the tuned lens "
                 f"({tuned['parameters']:,} parameters" + (f" vs {best['parameters']:,}" if best else "") + ")")
    return _save(fig, Path(out_dir) / "tuned_vs_single.png", plt)
