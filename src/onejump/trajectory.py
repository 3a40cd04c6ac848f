"""Prediction trajectories: what a lens reads out of every level, for every token of a prompt.

:class:`PredictionTrajectory` holds, for each level 0..K-1 (plus the model's own output as the last
row) and each prompt position, the lens's top-1 next-token prediction, its probability, the KL
divergence from the model's final distribution ``KL(p_final || p_lens)`` (nats), the entropy of the
lens's distribution (nats) and its top-k tokens. :meth:`~PredictionTrajectory.plot` draws the
token x level grid (one panel per lens, side by side); :func:`write_html` writes a small
self-contained page where hovering a cell shows its top tokens.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ConfigError
from .textsafe import figure_text
from .trajectory_plot import STATISTICS, html_page, plot_trajectories


def _display(tokenizer: Any, token_id: int) -> str:
    """A token as shown in a grid cell: decoded, with spaces and line breaks made visible."""
    text = tokenizer.decode([int(token_id)])
    return text.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "\u2423") or "\u2205"


def context_length(lm: Any) -> int | None:
    """The longest input the model reads (positions), or None when its config does not say."""
    cfg = getattr(lm.model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def encode_prompt(lm: Any, prompt: str) -> list[int]:
    """Token ids of ``prompt`` as extraction tokenizes text (special tokens the model adds included).

    Raises :class:`ConfigError` for an empty prompt or one longer than the model's context.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("the prompt is empty; give some text with --prompt")
    ids = list(lm.tokenizer(prompt, add_special_tokens=True)["input_ids"])
    limit = context_length(lm)
    if limit is not None and len(ids) > limit:
        raise ConfigError(f"the prompt has {len(ids)} tokens but {lm.name} reads at most {limit}; shorten it")
    return ids


@torch.no_grad()
def hidden_states(lm: Any, ids: Sequence[int]) -> torch.Tensor:
    """Hidden states at levels 0..K for every position: (K+1, T, H), in the model's dtype and on its device."""
    device = next(lm.model.parameters()).device
    captured: dict[int, torch.Tensor] = {}
    handles = lm.adapter.level_hooks(lambda level, h: captured.__setitem__(level, h[0].detach()))
    try:
        lm.model(input_ids=torch.tensor([list(ids)], device=device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    K = lm.adapter.num_blocks
    return torch.stack([captured[k] for k in range(K + 1)])


@dataclass
class PredictionTrajectory:
    """One lens's readings on one prompt. Arrays are (levels, tokens); the last row is the model's output.

    ``input_tokens`` (T,) display strings of the prompt's tokens; ``level_labels`` one per row;
    ``top_ids`` / ``top_tokens`` the top-1 prediction; ``probs`` its probability; ``kl``
    KL(p_final || p_lens) in nats (0 on the output row); ``entropy`` in nats; ``topk_ids`` /
    ``topk_tokens`` / ``topk_probs`` (levels, T, k) the top-k for hover texts.
    """

    lens_name: str
    input_ids: list[int]
    input_tokens: list[str]
    level_labels: list[str]
    top_ids: np.ndarray
    top_tokens: list[list[str]]
    probs: np.ndarray
    kl: np.ndarray
    entropy: np.ndarray
    topk_ids: np.ndarray
    topk_tokens: list[list[list[str]]]
    topk_probs: np.ndarray

    @property
    def num_levels(self) -> int:
        return len(self.level_labels)

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @classmethod
    def from_lens(cls, lens: Any, lm: Any, prompt: str, *, name: str | None = None,
                  top_k: int = 5) -> PredictionTrajectory:
        """Run ``lm`` on ``prompt`` once and read every level with ``lens``."""
        return trajectories([lens], lm, prompt, names=[name] if name else None, top_k=top_k)[0]

    def statistic(self, stat: str) -> np.ndarray:
        if stat not in STATISTICS:
            raise ConfigError(f"unknown statistic {stat!r}; use one of {', '.join(STATISTICS)}")
        return getattr(self, stat)

    def plot(self, statistic: str = "probs", *, others: Sequence[PredictionTrajectory] = (), ax: Any = None,
             max_chars: int = 7) -> Any:
        """Draw the token x level grid (with ``others`` as further panels, side by side); returns the figure."""
        return plot_trajectories([self, *others], statistic, axes=[ax] if ax is not None else None,
                                 max_chars=max_chars)


@torch.no_grad()
def trajectories(lenses: Sequence[Any], lm: Any, prompt: str, *, names: Sequence[str] | None = None,
                 top_k: int = 5) -> list[PredictionTrajectory]:
    """One :class:`PredictionTrajectory` per lens, all from one forward pass of ``lm`` on ``prompt``.

    The lenses must be on the model's device. ``names`` label the panels (default: each lens's kind).
    """
    if not lenses:
        raise ConfigError("give at least one lens")
    if names is not None and len(names) != len(lenses):
        raise ConfigError(f"{len(names)} names for {len(lenses)} lenses")
    ids = encode_prompt(lm, prompt)
    hidden = hidden_states(lm, ids)
    K = hidden.shape[0] - 1
    final = torch.log_softmax(lm.adapter.head(hidden[K]).float(), -1)  # (T, V)
    p_final = final.exp()
    tok = lm.tokenizer
    shown: dict[int, str] = {}

    def show(i: int) -> str:
        if i not in shown:
            shown[i] = _display(tok, i)
        return shown[i]

    labels = [f"level {k}" for k in range(K)] + ["output"]
    out = []
    for j, lens in enumerate(lenses):
        kls, entropies, tops = [], [], []
        for k in range(K + 1):  # one level at a time: (T, V) in memory, not (K+1, T, V)
            logp = final if k == K else torch.log_softmax(lens(hidden[k], k).float(), -1)
            p = logp.exp()
            kls.append((p_final * (final - logp)).sum(-1).clamp_min(0))
            entropies.append(-(p * logp).sum(-1))
            tops.append(p.topk(min(top_k, logp.shape[-1]), dim=-1))
        kl, entropy = torch.stack(kls), torch.stack(entropies)
        top_p = torch.stack([t.values for t in tops])
        top_i_np = torch.stack([t.indices for t in tops]).cpu().numpy()
        topk_tokens = [[[show(int(i)) for i in cell] for cell in row] for row in top_i_np]
        name = names[j] if names is not None else str(getattr(lens, "kind", "") or f"lens {j}")
        out.append(PredictionTrajectory(
            lens_name=name, input_ids=list(ids), input_tokens=[show(i) for i in ids], level_labels=labels,
            top_ids=top_i_np[..., 0], top_tokens=[[cell[0] for cell in row] for row in topk_tokens],
            probs=top_p[..., 0].cpu().numpy(), kl=kl.cpu().numpy(), entropy=entropy.cpu().numpy(),
            topk_ids=top_i_np, topk_tokens=topk_tokens, topk_probs=top_p.cpu().numpy()))
    return out


def write_html(trajs: Sequence[PredictionTrajectory], path: str | Path, statistic: str = "probs",
               title: str = "") -> Path:
    """A self-contained HTML page: one grid per lens, cells coloured by ``statistic``, top-k on hover."""
    from .io import atomic_write_text
    path = Path(path)
    atomic_write_text(path, html_page(trajs, statistic, title=title))
    return path


def save_trajectories(trajs: Sequence[PredictionTrajectory], path: str | Path, statistic: str = "probs",
                      title: str = "") -> Path:
    """Write the side-by-side grid to ``path``: ``.html`` (:func:`write_html`) or an image matplotlib
    writes (``.png``, ``.pdf``, ``.svg``), through a temporary file and a rename."""
    path = Path(path)
    if path.suffix.lower() == ".html":
        return write_html(trajs, path, statistic, title=title)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "pdf", "svg"):
        raise ConfigError(f"a trajectory figure is .png, .pdf, .svg or .html, got '{path.name}'")
    fig = trajs[0].plot(statistic, others=trajs[1:])
    if title:
        fig.suptitle(figure_text(title), fontsize=10)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with warnings.catch_warnings():  # tokens in scripts the font lacks are drawn as boxes; no need to say so
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")
            fig.savefig(tmp, dpi=130, format=fmt)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


__all__ = ["PredictionTrajectory", "STATISTICS", "context_length", "encode_prompt", "hidden_states",
           "save_trajectories", "trajectories", "write_html"]
