"""Drawing prediction trajectories: the token x level grid as a matplotlib figure or an HTML page."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from .errors import ConfigError
from .textsafe import figure_text, html_text

STATISTICS = {"probs": "top-1 probability", "kl": "KL(p_final || p_lens) [nats]", "entropy": "entropy [nats]"}


# statistic -> (colour map, fixed upper bound or None for the data's maximum)
_STYLE = {"probs": ("Blues", 1.0), "kl": ("Reds", None), "entropy": ("Purples", None)}

#: KL below this many nats is drawn as agreement. The KL colour scale is logarithmic, from the larger of
#: this and the smallest few per cent of the cells to the largest cell, so that a lens within hundredths of
#: a nat of the model still shows its pattern beside the logit lens's tens of nats at low levels.
KL_FLOOR = 1e-3


class _Scale(NamedTuple):
    """A statistic's colour scale: linear from ``low`` to ``high``, or logarithmic (``log``)."""

    cmap: str
    low: float
    high: float
    log: bool

    def shade(self, values: np.ndarray | float) -> np.ndarray:
        """Each value's place on the scale, 0 to 1 (values beyond an end clipped to it)."""
        v = np.clip(np.asarray(values, dtype=np.float64), self.low, self.high)
        if self.high <= self.low:
            return np.zeros_like(v)
        if self.log:
            return np.log(v / self.low) / np.log(self.high / self.low)
        return (v - self.low) / (self.high - self.low)

    def norm(self) -> Any:
        from matplotlib.colors import LogNorm, Normalize

        return LogNorm(self.low, self.high, clip=True) if self.log else Normalize(self.low, self.high)

    def text(self) -> str:
        if self.log:
            return f"log scale from {self.low:.3g} (and below) to {self.high:.3g}"
        return f"{self.low:.3g} to {self.high:.3g}"


def _limits(trajs: Sequence[Any], statistic: str) -> _Scale:
    if statistic not in STATISTICS:
        raise ConfigError(f"unknown statistic {statistic!r}; use one of {', '.join(STATISTICS)}")
    cmap, top = _STYLE[statistic]
    if top is None:
        top = max(float(np.nanmax(t.statistic(statistic))) for t in trajs) or 1.0
    if statistic == "kl":
        cells = np.concatenate([t.statistic(statistic)[:-1].reshape(-1) for t in trajs])  # the output row is 0
        cells = cells[np.isfinite(cells) & (cells > 0)]
        low = max(KL_FLOOR, float(np.quantile(cells, 0.02))) if cells.size else KL_FLOOR
        if top > 10 * low:
            return _Scale(cmap, low, top, True)
    return _Scale(cmap, 0.0, top, False)


def plot_trajectories(trajs: Sequence[Any], statistic: str = "probs", *,
                      axes: Sequence[Any] | None = None, max_chars: int = 7) -> Any:
    """One panel per trajectory (same prompt), side by side, sharing one colour scale.

    Rows are levels (level 0 at the bottom, the model's output on top), columns the prompt's tokens;
    a cell shows the lens's top-1 prediction for the *next* token and is coloured by ``statistic``.
    Returns the matplotlib figure (without pyplot, so it works on any backend).
    """
    from matplotlib.figure import Figure

    if not trajs:
        raise ConfigError("nothing to plot")
    if len({tuple(t.input_ids) for t in trajs}) != 1:
        raise ConfigError("trajectories drawn side by side must come from the same prompt")
    scale = _limits(trajs, statistic)
    L, T = trajs[0].num_levels, trajs[0].num_tokens
    if axes is None:
        width = max(4.0, 0.62 * T + 1.8)
        fig = Figure(figsize=(width * len(trajs) + 0.8, max(3.0, 0.27 * L + 1.9)), layout="constrained")
        axes = fig.subplots(1, len(trajs), squeeze=False)[0]
    else:
        fig = axes[0].figure
    from matplotlib import colormaps

    cmap = colormaps[scale.cmap]
    image = None
    for ax, traj in zip(axes, trajs):
        values = traj.statistic(statistic)
        shades = scale.shade(values)
        image = ax.imshow(np.clip(values, scale.low, scale.high), origin="lower", aspect="auto", cmap=cmap,
                          norm=scale.norm())
        for r in range(L):
            for c in range(T):
                ax.text(c, r, figure_text(traj.top_tokens[r][c], max_chars), ha="center", va="center", fontsize=6,
                        color="white" if shades[r, c] > 0.6 else "black")
        ax.set_xticks(range(T), [figure_text(t, max_chars + 3) for t in traj.input_tokens], rotation=60, ha="right",
                      fontsize=7)
        ax.set_yticks(range(L), [figure_text(lab.replace("level ", ""), 12) for lab in traj.level_labels], fontsize=7)
        ax.set_ylabel("level")
        ax.set_title(figure_text(traj.lens_name, 80), fontsize=10)
    axes[0].set_xlabel("input token (each cell predicts the next one)", fontsize=8)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label=_label(statistic) + (" (log scale)" if scale.log else ""))
    return fig


def _label(statistic: str) -> str:

    return STATISTICS[statistic]


def _hex(rgba: Sequence[float]) -> str:
    return "#" + "".join(f"{int(round(255 * v)):02x}" for v in rgba[:3])


_CSS = ("body{font:13px sans-serif;margin:16px}table{border-collapse:collapse;margin-bottom:20px}"
        "td,th{font:11px monospace;padding:2px 5px;white-space:nowrap;border:1px solid #fff}"
        "th{font-weight:normal;color:#555}td:hover{outline:2px solid #e80}")


def html_page(trajs: Sequence[Any], statistic: str = "probs", title: str = "") -> str:
    """A self-contained page (no scripts, no external files): one table per trajectory, coloured by
    ``statistic``; hovering a cell shows its top tokens, their probabilities, KL and entropy."""
    from matplotlib import colormaps

    scale = _limits(trajs, statistic)
    cmap = colormaps[scale.cmap]
    esc = html_text
    parts = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{esc(title or 'lens', 200)}</title>",
             f"<style>{_CSS}</style></head><body>"]
    if title:
        parts.append(f"<h2>{esc(title, 500)}</h2>")
    parts.append(f"<p>Cells: the lens's top-1 next-token prediction, coloured by {esc(_label(statistic))} "
                 f"({scale.text()}). Hover for the top tokens.</p>")
    for traj in trajs:
        shades = scale.shade(traj.statistic(statistic))
        parts.append(f"<h3>{esc(traj.lens_name, 200)}</h3><table>")
        for r in reversed(range(traj.num_levels)):
            cells = [f"<th>{esc(traj.level_labels[r])}</th>"]
            for c in range(traj.num_tokens):
                shade = float(shades[r, c])
                # each token escaped on its own, so the line breaks between them stay line breaks
                tops = "\n".join(f"{esc(t, 60)} {p:.3f}"
                                  for t, p in zip(traj.topk_tokens[r][c], traj.topk_probs[r, c]))
                tip = f"{tops}\nKL {traj.kl[r, c]:.3f}  entropy {traj.entropy[r, c]:.3f}"
                color = "#fff" if shade > 0.6 else "#000"
                cells.append(f"<td style='background:{_hex(cmap(float(shade)))};color:{color}' "
                             f"title='{tip}'>{esc(traj.top_tokens[r][c], 40)}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("<tr><th></th>" + "".join(f"<th>{esc(t, 40)}</th>" for t in traj.input_tokens) + "</tr></table>")
    parts.append("</body></html>")
    return "".join(parts)


__all__ = ["html_page", "plot_trajectories"]
