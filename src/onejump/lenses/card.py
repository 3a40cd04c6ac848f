"""Lens cards: the ``README.md`` written next to a lens's config and weights, in the hub's model-card form.

A card is a YAML header (``library_name: onejump``, ``base_model``, ``license``, ``tags``,
``datasets``) and a body: the lens kind, its parameters, the data it was trained on, the recipe,
precision@1 and KL per level on its test split, and the command that reproduces it. What is known
about a lens beyond its weights (its card information) is kept in ``lens.extra["card"]``, so it
travels in ``config.json`` and comes back with the lens; a field nobody supplied is left out of the
card, never filled in with a guess.

Card information keys (all optional): ``base_model`` (a hub id), ``license``, ``datasets`` (hub
dataset ids), ``corpus`` (words: where the text came from), ``train_rows``, ``train_tokens``,
``recipe`` (name -> setting), ``command``, ``evaluation`` (from :func:`onejump.evaluation.card_entry.evaluation_card`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

CARD_NAME = "README.md"
CARD_KEYS = ("base_model", "license", "datasets", "corpus", "train_rows", "train_tokens", "recipe", "command",
             "evaluation")

# What is known of the offline aliases' upstream models (their GGUF files are quantized copies of these).
KNOWN_MODELS: dict[str, dict[str, str]] = {
    "smollm2-135m": {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0"},
    "gemma3-270m": {"base_model": "google/gemma-3-270m", "license": "gemma"},
    "qwen2.5-coder-0.5b": {"base_model": "Qwen/Qwen2.5-Coder-0.5B-Instruct", "license": "apache-2.0"},
    "qwen2.5-coder-1.5b": {"base_model": "Qwen/Qwen2.5-Coder-1.5B-Instruct", "license": "apache-2.0"},
}

_KIND_WORDS = {
    "logit": "the logit lens (the model's head on the hidden state as it is)",
    "jump": "one low-rank jump reused at every exit level (OJFA / joint jump)",
    "per-level": "the per-level low-rank jumps of N-NJTC (jump k at level k)",
    "jtc": "the full-rank linear JTC maps (one per level)",
    "tuned": "the tuned lens (a full-rank affine translator per level, trained by KL through the head)",
    "jump-cond": "one shared jump with a gain and a shift per exit level in its rank-r code",
    "lowrank": "a low-rank residual correction per exit level (h + BN_k(h) A_k B_k)",
}


def model_facts(lm: Any) -> dict[str, str]:
    """``base_model`` and ``license`` of a loaded model where onejump knows them (offline aliases; a hub id
    gives ``base_model`` alone)."""
    from .hub_ids import looks_like_hub_id

    name = str(getattr(lm, "name", ""))
    if name in KNOWN_MODELS:
        return dict(KNOWN_MODELS[name])
    return {"base_model": name} if looks_like_hub_id(name) else {}


def card_info(lens: Any, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The lens's card information: what its file already carries, updated by ``info`` (unknown keys refused)."""
    merged = {**model_facts(lens.lm), **dict((getattr(lens, "extra", None) or {}).get("card") or {})}
    for key, value in (info or {}).items():
        if key not in CARD_KEYS:
            raise ConfigError(f"unknown card field '{key}' (known: {', '.join(CARD_KEYS)})")
        if value is not None:
            merged[key] = value
    return {k: merged[k] for k in CARD_KEYS if merged.get(k) not in (None, "", [], {})}


def _header(lens: Any, info: dict[str, Any]) -> Any:
    from huggingface_hub import ModelCardData

    tags = ["onejump", "lens", "interpretability", "early-exit", f"onejump-{lens.kind}"]
    datasets = info.get("datasets")
    return ModelCardData(library_name="onejump", base_model=info.get("base_model"), license=info.get("license"),
                         datasets=[datasets] if isinstance(datasets, str) else datasets, tags=tags)


def _evaluation_lines(ev: dict[str, Any]) -> list[str]:
    mean = ev["precision@1_mean"]
    lines = [f"## Evaluation ({ev['split']} split, {ev['sentences']} sentences, one position each)", "",
             f"precision@1 (top-1 equals the model's own top-1), mean over levels: **{mean['mean']:.4f}** "
             f"(95% {mean['method']} interval {mean['low']:.4f} to {mean['high']:.4f})"
             + (f"; KL(p_final || p_lens), mean over levels: {ev['kl_mean']:.4f} nats" if "kl_mean" in ev else ""),
             "", "| level | precision@1 |" + (" KL (nats) |" if "kl" in ev else ""),
             "|---|---|" + ("---|" if "kl" in ev else "")]
    for i, level in enumerate(ev["levels"]):
        kl = f" {ev['kl'][i]:.4f} |" if "kl" in ev else ""
        lines.append(f"| {level} | {ev['precision@1'][i]:.4f} |{kl}")
    return lines


def card_text(lens: Any, info: dict[str, Any]) -> str:
    """The card's markdown (YAML header and body) from the lens and its card information."""
    from huggingface_hub import ModelCard

    kind = _KIND_WORDS.get(lens.kind, lens.kind)
    config = lens.lens_config()
    body = [f"# onejump {lens.kind} lens for {info.get('base_model') or lens.lm.name}", "",
            f"A lens reads next-token logits from a hidden state at an exit level: here {kind}.", "",
            "| | |", "|---|---|", f"| kind | `{lens.kind}` |", f"| model | `{lens.lm.name}` (weights fingerprint "
            f"`{lens.lm.fingerprint}`) |", f"| blocks K, hidden size H | {lens.num_blocks}, {lens.hidden_size} |",
            f"| parameters held at inference | {lens.num_parameters:,} |"]
    for key in ("rank", "residual", "trained_at"):
        if key in config:
            body.append(f"| {key.replace('_', ' ')} | {config[key]} |")
    for key, label in (("corpus", "training text"), ("train_rows", "training rows (hidden states)"),
                       ("train_tokens", "training prefix tokens")):
        if key in info:
            value = info[key]
            body.append(f"| {label} | {value:,} |" if isinstance(value, int) else f"| {label} | {value} |")
    if "license" in info:
        body.append(f"| base model's licence | {info['license']} |")
    if "recipe" in info:
        body += ["", "## Recipe", ""] + [f"- {k}: {v}" for k, v in info["recipe"].items()]
    if "evaluation" in info:
        body += [""] + _evaluation_lines(info["evaluation"])
    body += ["", "## Use", "", "```python", "import onejump as oj", "",
             f"lm = oj.load_model({lens.lm.name!r})", "lens = oj.Lens.from_pretrained(PATH_OR_HUB_ID, lm)",
             "logits = lens(hidden_state_at_level, level)", "```", "",
             "The lens is refused for a model whose weights differ from the fingerprint above."]
    if "command" in info:
        body += ["", "## Reproduce", "", "```", info["command"], "```"]
    content = f"---\n{_header(lens, info).to_yaml()}\n---\n\n" + "\n".join(body) + "\n"
    return str(ModelCard(content))


def write_card(lens: Any, folder: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Write ``README.md`` for ``lens`` into ``folder``; ``info`` adds to or overrides its card information."""
    from ..io import atomic_write_text

    path = Path(folder) / CARD_NAME
    atomic_write_text(path, card_text(lens, card_info(lens, info)))
    return path


def read_evaluation(config: dict[str, Any]) -> dict[str, Any] | None:
    """The card's evaluation entry of a lens config (``config.json``), or None when it records none."""
    ev = ((config.get("extra") or {}).get("card") or {}).get("evaluation")
    if not isinstance(ev, dict) or "precision@1_mean" not in ev:
        return None
    return ev


def interval_at(ev: dict[str, Any], n: int) -> tuple[float, float]:
    """The card's 95% interval of mean precision@1, widened for a check on ``n`` other sentences.

    The mean of n sentences drawn apart from the card's N differs from the card's mean by two
    sampling errors: its own (sqrt(N/n) times the card's) and the card's, so the half-width grows
    by sqrt(N/n + 1). A check on sentences overlapping the card's (the same split, other positions)
    varies less, so the widened interval is a conservative bound for it too. Bounds stay in [0, 1].
    """
    mean = ev["precision@1_mean"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"a check needs at least one sentence, got {n!r}")
    half = (mean["high"] - mean["low"]) / 2 * float(np.sqrt(int(ev["sentences"]) / n + 1.0))
    return max(0.0, mean["mean"] - half), min(1.0, mean["mean"] + half)


__all__ = ["CARD_NAME", "KNOWN_MODELS", "card_info", "card_text", "interval_at", "model_facts",
           "read_evaluation", "write_card"]
