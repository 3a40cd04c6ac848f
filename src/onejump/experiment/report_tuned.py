"""The report's section on one jump against the tuned lens: per level, and the three-part bar."""

from __future__ import annotations

from typing import Any

import numpy as np

from .lens_table import display


def tuned_lines(results: dict[str, Any]) -> list[str]:
    """The single jumps against the tuned lens, per level, with the parameter ratio."""
    methods = results["methods"]
    tuned = methods.get("tuned")
    if tuned is None:
        return []
    singles = {"ojfa": methods["ojfa"]}
    best = (results.get("beyond") or {}).get("best")
    if best:
        singles["best"] = best
    def fewer(n: int) -> str:
        return f"{tuned['parameters'] / n:,.0f}x fewer" if n > 0 else "none at all"

    lines = ["", "## One jump against the tuned lens (precision@1, test set)", "",
             f"The tuned lens holds {tuned['parameters']:,} numbers; " + "; ".join(
                 f"{display(n)} holds {m['parameters']:,} ({fewer(m['parameters'])})" for n, m in singles.items())
             + ".", "", "| level | logit lens | tuned lens | " + " | ".join(
                 f"{n} | {n} / tuned" for n in singles) + " |", "|---" * (3 + 2 * len(singles)) + "|"]
    undefined = False
    for k in results["levels"]:
        t_k = tuned["precision@1"][k]
        undefined |= not t_k > 0
        cells = [f"{m['precision@1'][k]:.3f} | {_over(m['precision@1'][k], t_k)}" for m in singles.values()]
        lines.append(f"| {k} | {methods['identity']['precision@1'][k]:.3f} | {t_k:.3f} | " + " | ".join(cells) + " |")
    mean_t = float(np.mean(tuned["precision@1"]))
    lines.append("| mean | " + f"{methods['identity']['mean_precision@1']:.3f} | {mean_t:.3f} | " + " | ".join(
        f"{m['mean_precision@1']:.3f} | {_over(m['mean_precision@1'], mean_t)}" for m in singles.values()) + " |")
    if undefined:
        lines += ["", "n/a: the tuned lens's precision@1 is 0 there, so a fraction of it is undefined."]
    lines += ["", "![tuned_vs_single](tuned_vs_single.png)"] + _training_lines(results, best)
    return lines + _bar_lines(results.get("tuned_bar"))


def _over(value: float, tuned: float) -> str:
    """``value`` as a fraction of the tuned lens's, or n/a where the tuned lens's is 0."""
    return f"{value / tuned:.2f}" if tuned > 0 else "n/a"


def _training_lines(results: dict[str, Any], best: dict[str, Any] | None) -> list[str]:
    """Training time of the tuned lens and of the best single jump (with the jump it was warm-started from)."""
    from .presets import VARIANTS

    timings = results.get("timings") or {}
    tuned = timings.get("train:tuned")
    if tuned is None:
        return []
    line = f"Training, on this run's machine and threads: the tuned lens {tuned:,.0f} s"
    if best:
        configs = [f"{best['objective']}-r{best['rank']}"]
        warm = VARIANTS[best["objective"]].warm_start if best["objective"] in VARIANTS else None
        if warm:
            configs.append(f"{warm}-r{best['rank']}")
        ends = tuple(f"({c})" for c in configs)
        seconds = [v for k, v in timings.items() if k.startswith("train:") and k.endswith(ends)]
        if seconds:
            line += f"; the best single jump {sum(seconds):,.0f} s" + (
                f" (including the {warm} jump it was trained on from)" if warm else "")
    return ["", line + "."]


def counted(n: int, noun: str) -> str:
    """``n`` and the noun, plural unless n is 1: "1 level", "6 levels"."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def levels_text(levels: list[int]) -> str:
    """"level 27" or "levels 2, 24, 26"."""
    return ("level " if len(levels) == 1 else "levels ") + ", ".join(map(str, levels))


def _ci(part: dict[str, Any], digits: int = 3) -> str:
    lo, hi = part["ci"]
    return f"{part['margin']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _verdict(part: dict[str, Any]) -> str:
    """held (CI at or above 0), not held (CI below 0), or inconclusive (the CI straddles 0)."""
    v = part["verdict"]
    if _plain(v) == "inconclusive":
        return f"inconclusive (margin {'>=' if part['margin'] >= 0 else '<'} 0 on the point estimate)"
    return "**held**" if v == "held" else "not held"


def _plain(verdict: str) -> str:
    """A part's verdict; "too close to call" is how results.json files before the shared rule said inconclusive."""
    return "inconclusive" if verdict == "too close to call" else verdict


def _ratio(value: float | None) -> str:
    return "n/a (the tuned lens's is 0)" if value is None else f"{value:.2f}"


def _bar_status(bar: dict[str, Any]) -> str:
    """met (every part held), not met (a part's CI lies below its bar) or not shown (a part inconclusive)."""
    if bar["met"]:
        return "**met**"
    parts = [bar["mean"], *bar["levels"][1:], *([bar["kl"]] if "kl" in bar else [])]
    if any(p["verdict"] == "not held" for p in parts) or "kl" not in bar:
        return "**not met**"
    return "**not shown**: no part fails, but a part's CI straddles its bar (inconclusive)"


def _bar_lines(bar: dict[str, Any] | None) -> list[str]:
    """The three-part bar of the best single jump against the tuned lens, each part with its paired test."""
    if not bar:
        return []
    mean, every = bar["mean"], bar["every_level"]
    lines = ["", "### The bar: one jump against the tuned lens (pre-registered, checked once on test)", "",
             "Each part is tested on paired per-sample differences (single jump minus the bar's share of the tuned "
             "lens; for KL, the bar's share of the tuned lens's KL minus the jump's): the margin, its 95% bootstrap "
             "CI and the sign-flip permutation p-value. A part is held when its CI lies at or above 0, not held "
             "when it lies below 0, and inconclusive when it straddles 0; the bar is met when every part is "
             "held.", "",
             "| part | single jump | tuned lens | ratio | bar | margin [95% CI] | p | verdict |", "|---" * 8 + "|",
             f"| mean precision@1 over exit levels | {mean['single']:.3f} | {mean['tuned']:.3f} | "
             f"{_ratio(mean['ratio'])} | >= {bar['mean_ratio']:.2f} | {_ci(mean)} | {mean['p_value']:.3g} | "
             f"{_verdict(mean)} |"]
    lowest = every["lowest_ratio"]
    by = {v: [lv["level"] for lv in bar["levels"][1:] if _plain(lv["verdict"]) == v] for v in ("not held",
                                                                                             "inconclusive")}
    where = "; ".join(f"{v} at {levels_text(ks)}" for v, ks in by.items() if ks) or "every level"
    status = "**held**" if every["held"] else "not held" if by["not held"] else "inconclusive"
    lines.append(f"| precision@1 at every exit level 1..K-1 | lowest ratio {_ratio(lowest)} | | | "
                 f">= {bar['level_ratio']:.2f} each | per level below | | {status} ({where}) |")
    if "kl" in bar:
        kl = bar["kl"]
        lines.append(f"| mean KL(p_final \\|\\| p_lens), nats | {kl['single']:.3f} | {kl['tuned']:.3f} | "
                     f"{_ratio(kl['ratio'])} | <= {bar['kl_ratio']:.2f} | {_ci(kl)} | {kl['p_value']:.3g} | "
                     f"{_verdict(kl)} |")
    lines += ["", f"Bar {_bar_status(bar)}.", "",
              f"| level | single jump | tuned lens | ratio | margin vs {bar['level_ratio']:.1f}x [95% CI] | p "
              "| verdict |",
              "|---" * 7 + "|"]
    for lv in bar["levels"]:
        ratio = f"{lv['ratio']:.2f}" if lv["ratio"] is not None else "n/a (tuned lens 0)"
        note = " (level 0: not in the bar)" if lv["level"] == 0 else ""
        lines.append(f"| {lv['level']} | {lv['single']:.3f} | {lv['tuned']:.3f} | {ratio} | {_ci(lv)} | "
                     f"{lv['p_value']:.3g} | {_plain(lv['verdict'])}{note} |")
    return lines
